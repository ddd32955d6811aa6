"""The authors' original checkpoints: fetched from Google Drive once, converted, cached as checkpoint folders.

A registry entry without a Hub pin but with an ``original_file_id`` loads through here
(:func:`resolve_original`, called by :func:`s1s2_encoders.hub.resolve_model`):

1. **Cached?** ``<cache root>/original--NAME/`` is a normal checkpoint folder (``config.json``,
   ``model.safetensors``, ``README.md`` with the conversion section) plus ``download.json``, which
   records the Drive file id, the URL, the size and sha256 of the original file, and the sha256 of
   ``model.safetensors``. A cached folder is loaded only if ``model.safetensors`` still has that sha256
   (and the original file the one pinned, when a sha256 is pinned); otherwise it is reported and fetched
   again (offline: refused). No network is touched for a good cached folder.
2. **Fetch** (:mod:`s1s2_encoders.gdrive`): streamed into a temporary folder inside the cache root,
   size and sha256 checked against the registry or ``expected_sha256`` where known.
3. **Convert** with the converter (:func:`s1s2_encoders.convert.convert_sslt_checkpoint`: read with
   ``torch.load(weights_only=True)``, strict keys), into the same temporary folder; ``download.json``
   added; the folder renamed into place. The original file is not kept (``s1s2 download NAME --verify``
   fetches it again to re-check it).

Any failure (Drive page, short or broken transfer, timeout, HTML instead of a checkpoint, a file that
``torch.load(weights_only=True)`` refuses, a conversion error, a checksum mismatch) removes the temporary
folder: nothing lands in the cache, and the error says which step failed.

A file lock (``<cache root>/.locks/original--NAME.lock``, :mod:`filelock`, which huggingface_hub and torch
depend on) makes parallel processes (torchrun ranks, notebooks) wait for one download instead of each
fetching 220 MB.

The cache root: the ``cache_dir`` argument, else ``S1S2_CACHE_DIR``, else ``$HF_HOME/s1s2-encoders``
(``HF_HOME`` defaults to ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``), read when called.
Remove a cached model with ``s1s2 cache remove NAME`` (:func:`remove_cached`) or by deleting its folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import sha256_file
from .config import CONFIG_FILENAME, WEIGHTS_FILENAME
from .durable import atomic_write_text, fsync_path, replace_folder
from .errors import ChecksumError, CheckpointError, ModelNotCachedError
from .gdrive import DriveFile, download_drive_file
from .hub import ModelSource, is_offline, normalize_sha256
from .registry import LICENSE_NOTE_ORIGINAL, ORIGINAL_REPO, RegistryEntry

logger = logging.getLogger(__name__)

CACHE_ENV = "S1S2_CACHE_DIR"
MANIFEST_FILENAME = "download.json"
FOLDER_PREFIX = "original--"
_MANIFEST_VERSION = 1


# --------------------------------------------------------------------------- where


def hf_home() -> Path:
    """The Hugging Face cache root as set now: ``HF_HOME``, else ``$XDG_CACHE_HOME/huggingface``, else
    ``~/.cache/huggingface`` (huggingface_hub's own rule; it reads it only at import)."""
    home = os.environ.get("HF_HOME")
    if home:
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "huggingface"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where converted original checkpoints are cached: ``cache_dir``, else ``S1S2_CACHE_DIR``, else
    ``$HF_HOME/s1s2-encoders``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else hf_home() / "s1s2-encoders"


def cache_folder(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached checkpoint folder of registry entry ``name`` (``<root>/original--NAME``; the prefix keeps
    it apart from huggingface_hub's ``models--ORG--NAME`` folders when both share a cache_dir)."""
    return cache_root(cache_dir) / f"{FOLDER_PREFIX}{name}"


def _lock_path(folder: Path) -> Path:
    return folder.parent / ".locks" / f"{folder.name}.lock"


# --------------------------------------------------------------------------- what is cached


@dataclass(frozen=True)
class CachedOriginal:
    """A converted original checkpoint in the cache, as its ``download.json`` records it.

    Attributes:
        name: registry name.
        folder: the checkpoint folder.
        file_id: Drive file id it was fetched from.
        source_url: the Drive page of that file.
        download_url: the URL the bytes came from.
        filename: the original file's name (``swin_t.pth``).
        size / sha256: size in bytes and sha256 of the original file.
        weights_sha256: sha256 of ``model.safetensors`` when it was written.
        downloaded_at: UTC time of the download (ISO 8601).
    """

    name: str
    folder: Path
    file_id: str
    source_url: str
    download_url: str
    filename: str
    size: int
    sha256: str
    weights_sha256: str
    downloaded_at: str

    def to_source(self) -> ModelSource:
        return ModelSource(folder=self.folder, kind="original", sha256=self.weights_sha256, source_url=self.source_url,
                           source_sha256=self.sha256, source_size=self.size)


def read_cached(name: str, cache_dir: str | os.PathLike[str] | None = None) -> CachedOriginal | None:
    """What ``download.json`` of ``name``'s cached folder says, without checking the weights (cheap; for
    listings). ``None`` when there is no folder or no readable manifest."""
    folder = cache_folder(name, cache_dir)
    try:
        record = json.loads((folder / MANIFEST_FILENAME).read_text(encoding="utf-8"))
        return CachedOriginal(
            name=name, folder=folder, file_id=record["file_id"], source_url=record["source_url"],
            download_url=record["download_url"], filename=record["filename"], size=int(record["size"]),
            sha256=record["sha256"], weights_sha256=record["weights_sha256"], downloaded_at=record["downloaded_at"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_cached(entry: RegistryEntry, cache_dir: Any = None, pin: str | None = None) -> tuple[CachedOriginal | None, str | None]:
    """``(cached, None)`` for a cached folder that may be loaded, ``(None, None)`` when nothing is cached,
    ``(None, problem)`` for a folder that must not be loaded (``problem`` says why). Hashes
    ``model.safetensors``."""
    folder = cache_folder(entry.name, cache_dir)
    if not folder.exists():
        return None, None
    cached = read_cached(entry.name, cache_dir)
    if cached is None:
        return None, f"has no readable {MANIFEST_FILENAME} (an interrupted or foreign folder)"
    if cached.file_id != entry.original_file_id:
        return None, f"was fetched from Drive file {cached.file_id}, but the registry now names {entry.original_file_id}"
    for expected, what in ((entry.original_sha256, "the registry's"), (pin, "the pinned (expected_sha256)")):
        if expected is not None and cached.sha256 != expected:
            return None, f"was converted from a file with sha256 {cached.sha256}, not {what} {expected}"
    if entry.original_size is not None and cached.size != entry.original_size:
        return None, f"was converted from a file of {cached.size:,} bytes, not the registry's {entry.original_size:,}"
    for required in (CONFIG_FILENAME, WEIGHTS_FILENAME):
        if not (folder / required).is_file():
            return None, f"lacks {required}"
    actual = sha256_file(folder / WEIGHTS_FILENAME)
    if actual != cached.weights_sha256:
        return None, (f"is corrupted: {WEIGHTS_FILENAME} has sha256 {actual}, but {cached.weights_sha256} was recorded "
                      "when it was written")
    return cached, None


# --------------------------------------------------------------------------- resolve


def resolve_original(
    entry: RegistryEntry,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    expected_sha256: str | None = None,
    timeout: float | None = None,
    progress: bool = True,
) -> ModelSource:
    """The cached, converted original checkpoint of ``entry``, fetching and converting it first if needed.

    Args:
        entry: a registry entry with an ``original_file_id``.
        cache_dir: cache root (default :func:`cache_root`).
        local_files_only: never touch the network (also forced by ``HF_HUB_OFFLINE=1``).
        force_download: fetch and convert again even if a good copy is cached.
        expected_sha256: the sha256 the original file must have (checked before conversion; a cached
            folder converted from another file is fetched again).
        timeout: Drive connect / read timeout in seconds (default ``S1S2_GDRIVE_TIMEOUT`` or 30).
        progress: show a progress bar while downloading.

    Raises:
        ModelNotCachedError: offline and not cached.
        ChecksumError: a corrupted cached folder while offline; a download whose size or sha256 differs
            from the registry's or ``expected_sha256``.
        DriveDownloadError: the download failed (``cause`` says how).
        CheckpointError: the downloaded file does not load with ``torch.load(weights_only=True)`` or does
            not convert.
    """
    if entry.original_file_id is None:
        raise ValueError(f"registry entry {entry.name} has no original checkpoint")
    pin = normalize_sha256(expected_sha256)
    if pin and entry.original_sha256 and pin != entry.original_sha256:
        raise ChecksumError(
            f"{entry.name}: expected_sha256={pin} differs from the registry's sha256 of the original file "
            f"({entry.original_sha256}); nothing was downloaded"
        )
    folder = cache_folder(entry.name, cache_dir)
    offline = local_files_only or is_offline()
    if offline:
        cached, problem = check_cached(entry, cache_dir, pin)
        if cached is not None:
            return cached.to_source()
        switch = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE=1"
        if problem is not None:
            raise ChecksumError(
                f"{entry.name}: the cached copy in {folder} {problem}. It was not loaded, and offline mode is on "
                f"({switch}), so it cannot be fetched again. Run `s1s2 download {entry.name}` with network access."
            )
        raise ModelNotCachedError(
            f"{entry.name}: not in the local cache ({folder}) and offline mode is on ({switch}). Run once with "
            f"network access: `s1s2 download {entry.name}` (fetches the authors' original checkpoint from "
            f"{entry.original_weights} and converts it), or copy a converted folder here and pass its path.\n"
            f"{entry.manual_route()}"
        )

    if not force_download:
        cached, problem = check_cached(entry, cache_dir, pin)
        if cached is not None:
            return cached.to_source()
    with _FolderLock(folder, entry.name):
        if not force_download:
            # Whoever held the lock before may have fetched it meanwhile.
            cached, problem = check_cached(entry, cache_dir, pin)
            if cached is not None:
                return cached.to_source()
            if problem is not None:
                logger.warning("%s: the cached copy in %s %s; it is not loaded and is fetched again.", entry.name,
                               folder, problem)
        return _fetch_and_convert(entry, folder, pin, timeout=timeout, progress=progress).to_source()


class _FolderLock:
    """The cache folder's file lock; says so once when it has to wait for another process."""

    def __init__(self, folder: Path, name: str):
        from filelock import FileLock

        path = _lock_path(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.lock, self.path, self.name = FileLock(str(path)), path, name

    def __enter__(self) -> "_FolderLock":
        from filelock import Timeout

        try:
            self.lock.acquire(timeout=0.5)
        except Timeout:
            logger.warning("%s: another process is fetching it; waiting for it to finish (lock %s).", self.name, self.path)
            self.lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _fetch_and_convert(entry: RegistryEntry, folder: Path, pin: str | None, *, timeout: float | None,
                       progress: bool) -> CachedOriginal:
    """Download, check, convert, and rename the result into ``folder``; nothing stays behind on failure."""
    from .convert import convert_sslt_checkpoint, read_original_checkpoint

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    link = entry.original_weights
    try:
        logger.warning(
            "%s: downloading the authors' original checkpoint %s from Google Drive (%s, linked from %s), to be converted "
            "once and cached in %s. Licence: %s", entry.name, entry.original_filename or entry.original_file_id, link,
            ORIGINAL_REPO, folder, LICENSE_NOTE_ORIGINAL,
        )
        got = download_drive_file(entry.original_file_id, work / "download", timeout=timeout, progress=progress,  # type: ignore[arg-type]
                                  label=entry.name, manual_route=entry.manual_route())
        what = f"the file downloaded from {link} ({got.filename}, {got.size:,} bytes, sha256 {got.sha256})"
        _check_download(entry, got, pin, what)
        base = entry.config()
        config = base.replace(provenance={
            **base.provenance, "downloaded_from": link, "download_url": got.url, "downloaded_bytes": got.size,
            "downloaded_at": _now(),
        })
        # The converter's messages name the file by its path, a temporary one here: name it as Drive does.
        def named(exc: Exception) -> str:
            return str(exc).replace(str(got.path), got.filename)

        try:
            original = read_original_checkpoint(got.path)
        except CheckpointError as exc:
            raise CheckpointError(
                f"{entry.name}: {what} is not a checkpoint that torch.load(weights_only=True) accepts: {named(exc)}. "
                f"Nothing was cached.\n  {entry.manual_route()}"
            ) from exc
        out = work / folder.name
        try:
            report = convert_sslt_checkpoint(got.path, arch=entry.architecture, output=out, config=config,
                                             original=original, tool="fetched from Google Drive and converted")
        except CheckpointError as exc:
            raise CheckpointError(
                f"{entry.name}: {what} loads but does not convert to {entry.architecture}: {named(exc)}\n  Nothing was "
                "cached."
            ) from exc
        record = {
            "manifest_version": _MANIFEST_VERSION, "name": entry.name, "file_id": entry.original_file_id,
            "source_url": link, "download_url": got.url, "filename": got.filename, "size": got.size,
            "sha256": got.sha256, "weights_sha256": report.weights_sha256,
            "downloaded_at": config.provenance["downloaded_at"], "converter": _converter(out),
            "license_note": LICENSE_NOTE_ORIGINAL,
        }
        atomic_write_text(out / MANIFEST_FILENAME, json.dumps(record, indent=2) + "\n")
        got.path.unlink()
        _replace(out, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cached = read_cached(entry.name, folder.parent)
    if cached is None:  # only if something removed the folder between the rename and now
        raise ModelNotCachedError(f"{entry.name}: {folder} disappeared right after it was written")
    pin_hint = "" if (pin or entry.original_sha256) else (
        f" Its sha256 is not in the registry: pin it with load_backbone({entry.name!r}, expected_sha256='{got.sha256}')."
    )
    logger.warning("%s: fetched %s (%s bytes, sha256 %s); converted and cached in %s.%s", entry.name, got.filename,
                   f"{got.size:,}", got.sha256, folder, pin_hint)
    return cached


def _check_download(entry: RegistryEntry, got: DriveFile, pin: str | None, what: str) -> None:
    if entry.original_size is not None and got.size != entry.original_size:
        raise ChecksumError(f"{entry.name}: {what} should have {entry.original_size:,} bytes (registry). Nothing was cached.")
    for expected, whose in ((entry.original_sha256, "the registry's"), (pin, "expected_sha256")):
        if expected is not None and got.sha256 != expected:
            raise ChecksumError(f"{entry.name}: {what} does not have {whose} sha256 {expected}. Nothing was cached.")


def _converter(folder: Path) -> str | None:
    """``provenance.converter`` of a converted folder's config."""
    try:
        return json.loads((folder / CONFIG_FILENAME).read_text(encoding="utf-8"))["provenance"]["converter"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _replace(new: Path, folder: Path) -> None:
    """Put the complete folder ``new`` at ``folder`` (replacing an old one) with renames only."""
    replace_folder(new, folder)


# --------------------------------------------------------------------------- maintenance


def remove_cached(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Delete ``name``'s cached folder (under its lock, so no process is half-way writing it).

    Returns:
        The folder that was removed, or ``None`` if nothing was cached.
    """
    folder = cache_folder(name, cache_dir)
    if not folder.exists():
        return None
    with _FolderLock(folder, name):
        if not folder.exists():
            return None
        trash = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
        os.replace(folder, trash)  # gone from its name at once; the deletion may take a moment
        shutil.rmtree(trash, ignore_errors=True)
        fsync_path(folder.parent)
    return folder


@dataclass(frozen=True)
class Verification:
    """What :func:`verify_original` found: the file on Drive now against the one the cache was made from."""

    cached: CachedOriginal
    size: int
    sha256: str
    url: str

    @property
    def matches(self) -> bool:
        return self.size == self.cached.size and self.sha256 == self.cached.sha256


def verify_original(entry: RegistryEntry, cache_dir: Any = None, *, timeout: float | None = None,
                    progress: bool = True) -> Verification:
    """Re-check a cached model: its ``model.safetensors`` against the recorded sha256, and the file on Drive
    (downloaded again into a temporary folder, not kept) against the recorded size and sha256.

    Raises:
        ModelNotCachedError: nothing cached. ChecksumError: the cached folder is corrupted.
        DriveDownloadError: the new download failed.
    """
    cached, problem = check_cached(entry, cache_dir)
    folder = cache_folder(entry.name, cache_dir)
    if problem is not None:
        raise ChecksumError(f"{entry.name}: the cached copy in {folder} {problem}")
    if cached is None:
        raise ModelNotCachedError(f"{entry.name}: nothing cached in {folder}; `s1s2 download {entry.name}` fetches it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".verify-{folder.name}-", dir=folder.parent) as work:
        got = download_drive_file(entry.original_file_id, work, timeout=timeout, progress=progress,  # type: ignore[arg-type]
                                  label=entry.name, manual_route=entry.manual_route())
    return Verification(cached=cached, size=got.size, sha256=got.sha256, url=got.url)


__all__ = [
    "CACHE_ENV", "CachedOriginal", "MANIFEST_FILENAME", "Verification", "cache_folder", "cache_root", "check_cached",
    "hf_home", "read_cached", "remove_cached", "resolve_original", "verify_original",
]
