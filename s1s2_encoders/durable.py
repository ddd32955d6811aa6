"""Durability of written files: what "write to a temporary name, then rename" needs to survive a crash."""

from __future__ import annotations

import os
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
