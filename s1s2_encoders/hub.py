"""Resolve a model reference to a local checkpoint folder: a registry name, a local folder, or a hub repo.

How a reference resolves:

* a ``str`` that is a registry name resolves to the registry, always: a folder of the same name in the
  working directory does not replace it (a warning says how to load that folder instead);
* a local folder is a path: ``"./name"``, ``"/abs/name"``, ``"name/"``, any string that is not a registry
  name, or a :class:`pathlib.Path` (a ``Path`` is always a path, even when it spells a registry name);
* ``"hf-hub:ORG/REPO[@REVISION]"`` is a Hub repository.

A registry name loads its Hub pin when the entry has one, otherwise the authors' original checkpoint,
fetched from Google Drive, converted and cached once (:mod:`s1s2_encoders.original`).

Hub downloads go through ``huggingface_hub`` (its cache, its ``HF_HOME`` / ``HF_HUB_CACHE``), with:

* the revision pinned to the registry's commit for named models;
* the sha256 of ``model.safetensors`` verified after every resolve, against the registry or, for
  ``hf-hub:`` repos, against the Hub's LFS object id (or ``expected_sha256``); on mismatch the cached
  copy is deleted so it is not used next time, and nothing is loaded;
* ``HF_HUB_OFFLINE=1`` / ``local_files_only=True`` honoured, with a message that says the model is
  not cached and how to get it;
* ``HF_ENDPOINT`` read when called (not only when ``huggingface_hub`` was imported), so a mirror
  or a test server can be pointed at any time.
"""

from __future__ import annotations

import os
import re
import warnings
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
    OptionError,
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
        kind: ``"local"``, ``"registry"`` (a registry name's Hub pin), ``"hub"`` (an ``hf-hub:`` repo) or
            ``"original"`` (a registry name's original checkpoint, converted and cached).
        repo_id / revision: hub repository and the revision asked for (hub sources only).
        sha256: verified sha256 of ``model.safetensors`` (all but local sources).
        source_url: the Drive page of the original checkpoint (original sources only).
        source_sha256 / source_size: sha256 and size in bytes of the original file the cached folder
            was converted from (original sources only).
    """

    folder: Path
    kind: str
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None
    source_url: str | None = None
    source_sha256: str | None = None
    source_size: int | None = None

    @property
    def loaded_from(self) -> str:
        """Where the weights came from, in one line (recorded as ``provenance.loaded_from``)."""
        if self.kind == "original":
            return f"{self.source_url} (original checkpoint, sha256 {self.source_sha256}), converted, cached in {self.folder}"
        if self.kind in ("hub", "registry"):
            return f"{self.repo_id}@{self.revision}"
        return str(self.folder)


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


def normalize_sha256(value: str | None, what: str = "expected_sha256") -> str | None:
    """A sha256 given by a user, lower-cased; ``None`` stays ``None``.

    Raises:
        OptionError: not 64 hex digits.
    """
    if value is None:
        return None
    text = str(value).strip().lower()
    if not _SHA256.match(text):
        raise OptionError(f"{what} must be 64 hex digits, got {value!r}")
    return text


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
    expected_sha256: str | None = None,
) -> ModelSource:
    """Turn a model reference into a local checkpoint folder, downloading if needed.

    Args:
        reference: a registry name (``"swin-s1s2"``), a local folder (``"./folder"``, an absolute path,
            a :class:`pathlib.Path`), or ``"hf-hub:ORG/REPO[@REV]"``. A registry name always means the
            registry entry, even if the working directory has a folder of that name.
        revision: hub revision (branch, tag or commit); defaults to the registry's pinned commit
            for named models and to ``"main"`` for ``hf-hub:`` repos.
        cache_dir: huggingface_hub cache folder (default: ``HF_HUB_CACHE``); for registry names fetched
            from their original checkpoint, the folder of the converted copies (default:
            ``S1S2_CACHE_DIR``, else ``$HF_HOME/s1s2-encoders``).
        local_files_only: never touch the network (also forced by ``HF_HUB_OFFLINE=1``).
        force_download: download again even if cached.
        token: hub token for private repos (never sent anywhere but the Hub).
        expected_sha256: pin the sha256 of what is downloaded: ``model.safetensors`` for hub repos, the
            original ``.pth`` file for registry names fetched from Google Drive.

    Raises:
        ModelNotFoundError: unknown name, missing folder, or repo / revision / file not on the hub.
        WeightsNotAvailableError: a registry entry without pretrained weights.
        ModelNotCachedError: offline and not cached.
        ChecksumError: the downloaded weights do not have the recorded sha256.
        DownloadError: server errors and broken transfers (``DriveDownloadError`` for Google Drive).
        CheckpointError: a fetched original checkpoint that does not load or convert.
    """
    given_as_path = isinstance(reference, os.PathLike)
    if given_as_path:
        reference = os.fspath(reference)
    if not isinstance(reference, str) or not reference:
        raise ModelNotFoundError(f"model reference must be a non-empty string or path, got {reference!r}")
    expected_sha256 = normalize_sha256(expected_sha256)
    options = dict(cache_dir=cache_dir, local_files_only=local_files_only, force_download=force_download)

    if not given_as_path and reference.startswith(HF_HUB_PREFIX):
        repo_id, ref_revision = parse_hub_reference(reference)
        return _download(
            repo_id, revision or ref_revision or "main", expected_sha256=expected_sha256, label=reference,
            token=token, **options,
        )

    if not given_as_path and reference in REGISTRY:
        _warn_if_shadowed(reference)
        return _resolve_registry_name(reference, revision=revision, token=token, expected_sha256=expected_sha256, **options)

    path = Path(reference).expanduser()
    if path.is_dir():
        read_config(path)  # fail early, with the folder named, if it is not a checkpoint
        if not (path / WEIGHTS_FILENAME).is_file():
            raise ModelNotFoundError(f"{path} is not a checkpoint folder: {WEIGHTS_FILENAME} is missing")
        return ModelSource(folder=path, kind="local")
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file, not a checkpoint folder (config.json + model.safetensors)")
    if given_as_path:
        hint = f" (for the registry entry, pass the name as a string: {reference!r})" if reference in REGISTRY else ""
        raise ModelNotFoundError(f"{path}: no such checkpoint folder{hint}")
    hint = f" For a hub repository use 'hf-hub:{reference}'." if REPO_ID_PATTERN.match(reference) else ""
    raise ModelNotFoundError(
        f"{reference!r} is neither a registry name ({', '.join(REGISTRY)}) nor an existing folder.{hint}"
    )


def _warn_if_shadowed(name: str) -> None:
    """A folder named like a registry entry in the working directory is not what the name loads: say so."""
    if Path(name).is_dir():
        warnings.warn(
            f"{name!r} is a registry name and loads the registry entry; the folder {name}/ in the working "
            f"directory ({Path(name).resolve()}) is not used. To load that folder, pass it as a path: "
            f"'./{name}', its absolute path, or pathlib.Path('{name}').",
            UserWarning,
            stacklevel=5,  # the caller of load_backbone (via resolve_model, resolve_config)
        )


def _resolve_registry_name(
    name: str, *, revision: str | None, cache_dir: Any, local_files_only: bool, force_download: bool,
    token: Any, expected_sha256: str | None,
) -> ModelSource:
    entry = get_entry(name)
    if entry.weights_source == "hub":
        pinned = revision is None or revision == entry.revision
        if pinned and expected_sha256 is not None and expected_sha256 != entry.sha256:
            raise ChecksumError(
                f"{name}: expected_sha256={expected_sha256} differs from the registry's pin of model.safetensors "
                f"({entry.sha256}); nothing was downloaded"
            )
        return _download(
            entry.repo_id, revision or entry.revision, expected_sha256=entry.sha256 if pinned else expected_sha256,  # type: ignore[arg-type]
            label=name, cache_dir=cache_dir, local_files_only=local_files_only,
            force_download=force_download, token=token, kind="registry",
        )
    if entry.weights_source == "original":
        if revision is not None:
            raise ModelNotFoundError(
                f"{name} has no Hub revision to choose (revision={revision!r}): its weights are the authors' original "
                "checkpoint from Google Drive, converted on first use"
            )
        from .original import resolve_original  # imports the converter and the models

        return resolve_original(
            entry, cache_dir=cache_dir, local_files_only=local_files_only, force_download=force_download,
            expected_sha256=expected_sha256,
        )
    raise WeightsNotAvailableError(entry.how_to_get())


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
    assert config_path is not None
    read_config(config_path.parent)  # a config this package refuses stops here, before the weights download
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
