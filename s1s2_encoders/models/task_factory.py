"""``load_model``: fine-tuned task models (classifiers, segmenters) from local folders and hub
repositories, as :func:`~s1s2_encoders.models.factory.load_backbone` loads backbones."""

from __future__ import annotations

import os

import torch

from ..config import ModelConfig
from ..errors import ConfigError
from .factory import ready_for_use, resolve_config
from .task import S1S2TaskModel, create_model


def load_model(
    name_or_path: str | os.PathLike[str] | ModelConfig,
    *,
    pretrained: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    token: str | bool | None = None,
    device: str | torch.device | None = None,
) -> S1S2TaskModel:
    """Load a fine-tuned task model (classifier or segmenter), in eval mode.

    The folder's ``config.json`` names the task (``"classification"`` / ``"segmentation"``), the
    fusion variant, the classes and their colours; the weights are loaded strictly.

    Args:
        name_or_path: a local checkpoint folder, ``"hf-hub:ORG/REPO[@REVISION]"``, or a
            :class:`ModelConfig` with a task (random weights).
        pretrained, revision, cache_dir, local_files_only, force_download, token, device: as for
            :func:`load_backbone`.

    Returns:
        An :class:`~s1s2_encoders.models.task.S1S2Classifier` or
        :class:`~s1s2_encoders.models.task.S1S2Segmenter`.

    Raises:
        ConfigError: the folder holds a backbone (use :func:`load_backbone`) or a malformed head;
        plus everything :func:`load_backbone` raises.
    """
    weights = None
    if isinstance(name_or_path, ModelConfig):
        model = create_model(name_or_path)
    else:
        config, weights = resolve_config(
            name_or_path, pretrained, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
            force_download=force_download, token=token,
        )
        if config.task == "backbone":
            raise ConfigError(
                f"{name_or_path} is a backbone (task 'backbone'), not a fine-tuned model; load it with "
                "load_backbone(), or build a task model on it with S1S2Classifier.from_backbone() / "
                "S1S2Segmenter.from_backbone()"
            )
        model = create_model(config)
    return ready_for_use(model, weights, device)
