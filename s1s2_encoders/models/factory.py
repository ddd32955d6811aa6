"""``load_backbone``: one entry point for registry names, local folders and hub repositories that gives
embedding backbones (fine-tuned task models: :func:`s1s2_encoders.models.task_factory.load_model`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..checkpoint import load_state_dict_strict, read_config, read_weights
from ..config import WEIGHTS_FILENAME, ModelConfig
from ..errors import ConfigError
from ..hub import resolve_model
from ..registry import REGISTRY, get_entry
from .backbone import S1S2Backbone

M = TypeVar("M", bound=torch.nn.Module)


def create_backbone(config: ModelConfig) -> S1S2Backbone:
    """Build a backbone with random weights from a config."""
    if config.task != "backbone":
        raise ConfigError(f"config describes a {config.task} model, not a backbone; use load_model()")
    return S1S2Backbone(config)


def load_backbone(
    name_or_path: str | os.PathLike[str] | ModelConfig,
    *,
    pretrained: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
    expected_sha256: str | None = None,
) -> S1S2Backbone:
    """Load a two-tower S1 + S2 backbone, in eval mode.

    Args:
        name_or_path: a registry name (``"swin-s1s2"``, ``"resnet50-s1s2"``, ``"resnet18-s1s2"``,
            see :func:`list_models`), a local checkpoint folder (``"./folder"``, an absolute path or a
            :class:`pathlib.Path`; a registry name always means the registry entry),
            ``"hf-hub:ORG/REPO[@REVISION]"``, or a :class:`ModelConfig` (random weights). A registry
            entry without a Hub pin loads the authors' original checkpoint: downloaded from Google Drive
            and converted on first use, then loaded from the cache (see :mod:`s1s2_encoders.original`).
        pretrained: load weights; ``False`` builds the architecture with random weights (timm's
            convention) and never touches the network for registry names.
        revision, cache_dir, local_files_only, force_download, token, expected_sha256: download options
            (see :func:`s1s2_encoders.hub.resolve_model`).
        device: move the model there.

    Raises:
        ModelNotFoundError, WeightsNotAvailableError, ModelNotCachedError, ChecksumError,
        DownloadError (DriveDownloadError for Google Drive), ConfigError, CheckpointError (see
        :mod:`s1s2_encoders.errors`).
    """
    weights = None
    if isinstance(name_or_path, ModelConfig):
        model = create_backbone(name_or_path)
    elif not pretrained and isinstance(name_or_path, str) and name_or_path in REGISTRY:
        model = create_backbone(get_entry(name_or_path).config())
    else:
        config, weights = resolve_config(
            name_or_path, pretrained, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            force_download=force_download, token=token, expected_sha256=expected_sha256,
        )
        model = create_backbone(config)
    return ready_for_use(model, weights, device)


def resolve_config(name_or_path: Any, pretrained: bool, **hub: Any) -> tuple[ModelConfig, Path | None]:
    """Resolve a reference (see :func:`load_backbone`) to its config and, when ``pretrained``, the folder
    holding its weights; ``hub`` are :func:`s1s2_encoders.hub.resolve_model`'s options."""
    source = resolve_model(name_or_path, **hub)
    config = read_config(source.folder)
    if source.kind != "local":
        config.provenance = {**config.provenance, "loaded_from": source.loaded_from}
    return config, (source.folder if pretrained else None)


def ready_for_use(model: M, weights: Path | None, device: str | torch.device | None) -> M:
    """Load the folder ``weights`` strictly into ``model`` (none: keep its random weights), switch it
    to eval mode and move it to ``device``."""
    if weights is not None:
        load_state_dict_strict(model, read_weights(weights), str(weights / WEIGHTS_FILENAME))
    model.eval()
    if device is not None:
        model.to(device)
    return model
