"""Durability of written files: what "write to a temporary name, then rename" needs to survive a crash.

A rename is atomic, but not durable by itself: after a power loss the new name can point at a file
whose data never reached the disk (the rename's metadata may be written before the file's blocks).
So a finished file is flushed (:func:`fsync_file`) *before* it is renamed onto its final name, and
the folder is flushed after (:func:`fsync_path`), which is what :func:`commit_file` does.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

PARTIAL_SUFFIX = ".s1s2-partial"


def partial_path(final: Path) -> Path:
    """The temporary name an output is written under: a hidden sibling ``.NAME.s1s2-partial`` in the
    same folder, so that the final ``os.replace`` is an atomic rename on one file system."""
    return final.parent / f".{final.name}{PARTIAL_SUFFIX}"


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush ``path`` (a folder after a rename inside it) to disk, best effort.

    A rename is only durable once its folder is flushed; file systems or platforms that cannot
    open or flush a folder (e.g. Windows) are skipped silently, since the rename itself is still atomic.
    Use :func:`fsync_file` for a file's data, where a failure must not pass silently.
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


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a closed file's data and metadata to disk (``fsync`` works on the file, whichever
    descriptor wrote it). Errors propagate: data that may not be on disk must not be renamed into place.

    Raises:
        OSError: the file cannot be opened or flushed (e.g. an I/O error of the disk).
    """
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(temp: str | os.PathLike[str], final: str | os.PathLike[str]) -> Path:
    """Make the finished file ``temp`` the file ``final``, durably: flush ``temp``'s data, rename it
    over ``final`` (atomic on one file system), flush the folder. Returns ``final``."""
    temp, final = Path(temp), Path(final)
    fsync_file(temp)
    os.replace(temp, final)
    fsync_path(final.parent)
    return final


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling that is flushed and then renamed
    over ``path`` (:func:`commit_file`): readers see the old content or the new, never a part, also
    after a power loss; the temporary file is removed on any failure or interrupt. Returns ``path``."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(text, encoding="utf-8")
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def replace_folder(new: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Put the complete folder ``new`` at ``folder`` with renames only: an existing ``folder`` is moved
    aside first and deleted after, so ``folder`` is always either the old or the new one, never a mix.

    ``new`` must be a sibling of ``folder`` (same file system) whose files are already on disk (fsynced).
    """
    new, folder = Path(new), Path(folder)
    if folder.exists():
        backup = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(folder, backup)
        os.replace(new, folder)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(new, folder)
    fsync_path(folder.parent)
    return folder
