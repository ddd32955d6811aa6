"""Durability of written files: what "write to a temporary name, then rename" needs to survive a crash."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush ``path`` (a file, or a folder after a rename inside it) to disk, best effort.

    A rename is only durable once its folder is flushed; file systems or platforms that cannot
    open or flush a folder (e.g. Windows) are skipped silently, since the rename itself is still atomic.
    """
    try:
        fd = os.open(Path(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling that is flushed and then renamed
    over ``path``: readers see the old content or the new, never a part; the temporary file is
    removed on any failure or interrupt. Returns ``path``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
