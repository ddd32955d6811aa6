"""Resolve a model reference to a local checkpoint folder: a registry name, a local folder, or a hub repo.

Downloads go through ``huggingface_hub`` (its cache, its ``HF_HOME`` / ``HF_HUB_CACHE``), with:

* the revision pinned to the registry's commit for named models;
* the sha256 of ``model.safetensors`` verified after every resolve, against the registry or, for
  ``hf-hub:`` repos, against the Hub's LFS object id; on mismatch the cached copy is deleted so it
  is not used next time, and nothing is loaded;
* ``HF_HUB_OFFLINE=1`` / ``local_files_only=True`` honoured, with a message that says the model is
  not cached and how to get it;
* ``HF_ENDPOINT`` read when called (not only when ``huggingface_hub`` was imported), so a mirror
  or a test server can be pointed at any time.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import read_config, sha256_file
from .config import CONFIG_FILENAME, MODEL_CARD_FILENAME, WEIGHTS_FILENAME
from .errors import (
    ChecksumError,
    DownloadError,
    ModelNotCachedError,
    ModelNotFoundError,
    WeightsNotAvailableError,
)
from .registry import REGISTRY, get_entry

HF_HUB_PREFIX = "hf-hub:"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model reference resolved to.

    Attributes:
        folder: local folder holding ``config.json`` and ``model.safetensors``.
        kind: ``"local"``, ``"registry"`` or ``"hub"``.
        repo_id / revision: hub repository and the revision asked for (hub sources only).
        sha256: verified sha256 of ``model.safetensors`` (hub sources only).
    """

    folder: Path
    kind: str
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it only at import)."""
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` as set now, or None for huggingface_hub's default."""
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def parse_hub_reference(reference: str) -> tuple[str, str | None]:
    """``"hf-hub:org/repo@rev"`` -> ``("org/repo", "rev")``."""
    body = reference[len(HF_HUB_PREFIX):]
    repo_id, _, revision = body.partition("@")
    if not REPO_ID_PATTERN.match(repo_id):
        raise ModelNotFoundError(f"{reference!r} is not a valid hub reference; expected 'hf-hub:ORG/REPO[@REVISION]'")
    return repo_id, revision or None


def resolve_model(
    reference: str | os.PathLike[str],
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: str | bool | None = None,
) -> ModelSource:
    """Turn a model reference into a local checkpoint folder, downloading if needed.

    Args:
        reference: a registry name (``"swin-s1s2"``), a local folder, or ``"hf-hub:ORG/REPO[@REV]"``.
        revision: hub revision (branch, tag or commit); defaults to the registry's pinned commit
            for named models and to ``"main"`` for ``hf-hub:`` repos.
        cache_dir: huggingface_hub cache folder (default: ``HF_HUB_CACHE``).
        local_files_only: never touch the network (also forced by ``HF_HUB_OFFLINE=1``).
        force_download: download again even if cached.
        token: hub token for private repos.

    Raises:
        ModelNotFoundError: unknown name, missing folder, or repo / revision / file not on the hub.
        WeightsNotAvailableError: a registry entry without published weights.
        ModelNotCachedError: offline and not cached.
        ChecksumError: the downloaded weights do not have the recorded sha256.
        DownloadError: server errors and broken transfers.
    """
    if isinstance(reference, os.PathLike):
        reference = os.fspath(reference)
    if not isinstance(reference, str) or not reference:
        raise ModelNotFoundError(f"model reference must be a non-empty string or path, got {reference!r}")

    if reference.startswith(HF_HUB_PREFIX):
        repo_id, ref_revision = parse_hub_reference(reference)
        return _download(
            repo_id, revision or ref_revision or "main", expected_sha256=None, label=reference,
            cache_dir=cache_dir, local_files_only=local_files_only, force_download=force_download, token=token,
        )

    path = Path(reference).expanduser()
    if path.is_dir():
        read_config(path)  # fail early, with the folder named, if it is not a checkpoint
        if not (path / WEIGHTS_FILENAME).is_file():
            raise ModelNotFoundError(f"{path} is not a checkpoint folder: {WEIGHTS_FILENAME} is missing")
        return ModelSource(folder=path, kind="local")

    if reference in REGISTRY:
        entry = get_entry(reference)
        if not entry.available:
            raise WeightsNotAvailableError(entry.how_to_get())
        pinned = revision is None or revision == entry.revision
        return _download(
            entry.repo_id, revision or entry.revision, expected_sha256=entry.sha256 if pinned else None,  # type: ignore[arg-type]
            label=reference, cache_dir=cache_dir, local_files_only=local_files_only,
            force_download=force_download, token=token, kind="registry",
        )

    if path.exists():
        raise ModelNotFoundError(f"{path} is a file, not a checkpoint folder (config.json + model.safetensors)")
    hint = f" For a hub repository use 'hf-hub:{reference}'." if REPO_ID_PATTERN.match(reference) else ""
    raise ModelNotFoundError(
        f"{reference!r} is neither a registry name ({', '.join(REGISTRY)}) nor an existing folder.{hint}"
    )


def _download(
    repo_id: str,
    revision: str,
    *,
    expected_sha256: str | None,
    label: str,
    cache_dir: Any,
    local_files_only: bool,
    force_download: bool,
    token: Any,
    kind: str = "hub",
) -> ModelSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or is_offline()
    common = dict(
        repo_id=repo_id, revision=revision, cache_dir=cache_dir, local_files_only=offline,
        force_download=force_download, token=token, endpoint=hub_endpoint(),
    )

    def fetch(filename: str, required: bool = True) -> Path | None:
        try:
            return Path(hf_hub_download(filename=filename, **common))  # type: ignore[arg-type]
        except LocalEntryNotFoundError as exc:
            if offline:
                raise ModelNotCachedError(
                    f"{label}: {filename} of {repo_id}@{revision} is not in the local cache and offline mode "
                    f"is on ({'local_files_only=True' if local_files_only else 'HF_HUB_OFFLINE=1'}). Run once "
                    f"with network access (e.g. `s1s2 download {label}`), or copy a checkpoint folder and "
                    "pass its path."
                ) from exc
            if not required:
                return None
            raise DownloadError(f"{label}: could not download {filename} from {repo_id}@{revision}: {exc}") from exc
        except RepositoryNotFoundError as exc:
            raise ModelNotFoundError(f"{label}: repository {repo_id} not found on the hub ({exc.response.url if exc.response is not None else ''})") from exc
        except RevisionNotFoundError as exc:
            raise ModelNotFoundError(f"{label}: revision {revision!r} not found in {repo_id}") from exc
        except EntryNotFoundError as exc:
            if not required:
                return None
            raise ModelNotFoundError(f"{label}: {repo_id}@{revision} has no file {filename}") from exc
        except HfHubHTTPError as exc:
            raise DownloadError(f"{label}: the hub answered with an error for {filename}: {exc}") from exc
        except OSError as exc:  # truncated or broken transfers
            raise DownloadError(f"{label}: download of {filename} from {repo_id}@{revision} failed: {exc}") from exc
        except Exception as exc:  # httpx transport errors after huggingface_hub's retries
            if type(exc).__module__.startswith(("httpx", "httpcore")):
                raise DownloadError(f"{label}: download of {filename} failed: {exc}") from exc
            raise

    config_path = fetch(CONFIG_FILENAME)
    weights_path = fetch(WEIGHTS_FILENAME)
    fetch(MODEL_CARD_FILENAME, required=False)
    assert config_path is not None and weights_path is not None
    if config_path.parent != weights_path.parent:
        raise DownloadError(f"{label}: config and weights resolved to different snapshots")

    actual = sha256_file(weights_path)
    expected = expected_sha256 or _lfs_sha256(weights_path)
    if expected is not None and actual != expected:
        _evict(weights_path)
        raise ChecksumError(
            f"{label}: {WEIGHTS_FILENAME} of {repo_id}@{revision} has sha256 {actual}, expected {expected}. "
            "The corrupted copy was removed from the cache; nothing was loaded. Try again; if it "
            "persists, the file on the hub differs from the one the registry pins."
        )
    return ModelSource(folder=weights_path.parent, kind=kind, repo_id=repo_id, revision=revision, sha256=actual)


def _lfs_sha256(snapshot_file: Path) -> str | None:
    """The Hub stores LFS files under their sha256; the cache names the blob after that etag."""
    blob = snapshot_file.resolve()
    return blob.name if _SHA256.match(blob.name) else None


def _evict(snapshot_file: Path) -> None:
    """Delete a cached file (blob and snapshot link) so a corrupted download is not reused."""
    blob = snapshot_file.resolve()
    for path in (snapshot_file, blob):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
