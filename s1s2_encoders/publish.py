"""Publishing a checkpoint folder on the Hugging Face Hub: check that it loads, then upload it.

Separate from :mod:`s1s2_encoders.hub` (which resolves and downloads) because checking a folder
before upload builds the model, so this module depends on :mod:`s1s2_encoders.models`, and the
models depend on the hub for loading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import load_state_dict_strict, read_config, read_weights, sha256_file
from .config import CONFIG_FILENAME, MODEL_CARD_FILENAME, WEIGHTS_FILENAME
from .errors import ModelNotFoundError, PublishError
from .hub import REPO_ID_PATTERN, hub_endpoint
from .models.factory import create_backbone


@dataclass(frozen=True)
class PushResult:
    """Outcome of :func:`push_to_hub`: what to paste into the registry.

    Attributes:
        repo_id: the Hub repository.
        commit: the 40-hex commit that holds the upload (pin the registry entry to it).
        sha256: sha256 of ``model.safetensors`` (verified on every load of a registry name).
        url: the commit's URL.
        name: the config's ``name`` (the registry entry the folder belongs to, if any).
    """

    repo_id: str
    commit: str
    sha256: str
    url: str | None = None
    name: str | None = None

    def registry_fields(self) -> str:
        """The three ``RegistryEntry`` arguments that publish an entry, as Python source."""
        return f'repo_id="{self.repo_id}",\nrevision="{self.commit}",\nsha256="{self.sha256}",'


def validate_for_push(folder: str | os.PathLike[str]) -> tuple[Any, str]:
    """Check that a checkpoint folder can be published: its config parses, its weights load strictly into
    that config, and its model card parses with licence metadata that agrees with the config.

    Returns:
        ``(config, sha256 of model.safetensors)``.

    Raises:
        ModelNotFoundError: a file is missing. ConfigError / CheckpointError: the folder does not load.
        PublishError: the model card has no metadata or its licence differs from the config's.
    """
    from huggingface_hub import ModelCard

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder} is not a folder (expected a checkpoint folder to publish)")
    config = read_config(folder)
    weights = folder / WEIGHTS_FILENAME
    if not weights.is_file():
        raise ModelNotFoundError(f"{folder} has no {WEIGHTS_FILENAME}")
    card_path = folder / MODEL_CARD_FILENAME
    if not card_path.is_file():
        raise ModelNotFoundError(f"{folder} has no {MODEL_CARD_FILENAME} (model card); write one before publishing")
    try:
        card = ModelCard(card_path.read_text(encoding="utf-8"))
    except Exception as exc:  # huggingface_hub raises ValueError / yaml errors for broken front matter
        raise PublishError(f"{card_path}: the model card does not parse: {exc}") from exc
    card_license = card.data.license
    if card_license is None:
        raise PublishError(f"{card_path} has no 'license' in its YAML metadata; the Hub needs one")
    if config.license is not None and card_license != config.license:
        raise PublishError(
            f"{card_path} says license {card_license!r} but config.json says {config.license!r}; make them agree"
        )
    # Never publish weights that do not load: the same strict check as load_backbone.
    load_state_dict_strict(create_backbone(config), read_weights(folder), str(weights))
    return config, sha256_file(weights)


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    branch: str | None = None,
) -> PushResult:
    """Upload a checkpoint folder (``config.json``, ``model.safetensors``, ``README.md``) to the Hub.

    The folder is validated first (:func:`validate_for_push`); only those three files are uploaded.
    The repository is created if needed. ``HF_ENDPOINT`` and ``HF_TOKEN`` are honoured.

    Returns:
        :class:`PushResult` with the commit and the sha256 to pin in the registry.

    Raises:
        ModelNotFoundError, ConfigError, CheckpointError: the folder is not publishable.
        PublishError: the Hub refused the upload (the message says why, e.g. not authorised).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if not REPO_ID_PATTERN.match(repo_id):
        raise PublishError(f"{repo_id!r} is not a Hub repository id; expected 'ORG/NAME'")
    folder = Path(folder)
    config, digest = validate_for_push(folder)
    api = HfApi(endpoint=hub_endpoint(), token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            allow_patterns=[CONFIG_FILENAME, WEIGHTS_FILENAME, MODEL_CARD_FILENAME],
            commit_message=commit_message or f"Upload {config.name or config.architecture} checkpoint (s1s2-encoders)",
            revision=branch,
        )
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        hint = (
            " Log in with `hf auth login`, set HF_TOKEN or pass a token with write access to the organisation."
            if status in (401, 403) else ""
        )
        raise PublishError(f"upload of {folder} to {repo_id} failed: {exc}{hint}") from exc
    commit = getattr(info, "oid", None) or str(info)
    return PushResult(
        repo_id=repo_id, commit=commit, sha256=digest, url=getattr(info, "commit_url", None), name=config.name
    )
