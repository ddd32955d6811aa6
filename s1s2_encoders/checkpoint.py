"""Checkpoint folders on disk: ``config.json`` + ``model.safetensors`` + ``README.md``.

Writing is atomic: everything goes into a temporary sibling folder that is renamed into place at
the end, so an interrupted save never leaves a half-written checkpoint under the final name.
Loading is strict: every key of the architecture must be in the file with the right shape, and the
file must hold nothing else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import CONFIG_FILENAME, MODEL_CARD_FILENAME, WEIGHTS_FILENAME, ModelConfig
from .durable import replace_folder
from .errors import CheckpointError, ConfigError, ModelNotFoundError

_MAX_LISTED_KEYS = 25


def sha256_file(path: str | Path, chunk_size: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_checkpoint(
    folder: str | Path,
    config: ModelConfig,
    state_dict: Mapping[str, torch.Tensor],
    model_card: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a checkpoint folder atomically.

    Args:
        folder: destination folder (must not exist unless ``overwrite``).
        config: the model config, written to ``config.json``.
        state_dict: tensors for ``model.safetensors`` (made contiguous, moved to CPU).
        model_card: text of ``README.md``; generated from the config when ``None``.
        overwrite: replace an existing folder (the old one is removed only after the new one is
            complete).

    Returns:
        The folder path.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        if not folder.is_dir() or any(folder.iterdir()):
            raise FileExistsError(f"{folder} already exists and is not empty; pass overwrite=True to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILENAME), metadata={"format": "pt"})
        config.save(tmp / CONFIG_FILENAME)
        if model_card is None:
            from .model_card import render_model_card

            model_card = render_model_card(config)
        (tmp / MODEL_CARD_FILENAME).write_text(model_card, encoding="utf-8")
        for name in (WEIGHTS_FILENAME, CONFIG_FILENAME, MODEL_CARD_FILENAME):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_config(folder: str | Path) -> ModelConfig:
    """Read ``config.json`` from a checkpoint folder."""
    folder = Path(folder)
    path = folder / CONFIG_FILENAME
    if not path.is_file():
        raise ModelNotFoundError(f"{folder} is not a checkpoint folder: {CONFIG_FILENAME} is missing")
    return ModelConfig.load(path)


def read_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` from a checkpoint folder (never a pickle)."""
    path = Path(folder) / WEIGHTS_FILENAME
    if not path.is_file():
        raise ModelNotFoundError(f"{folder} is not a checkpoint folder: {WEIGHTS_FILENAME} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = f" ... and {len(keys) - _MAX_LISTED_KEYS} more" if len(keys) > _MAX_LISTED_KEYS else ""
    return f"{shown}{more}"


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load weights only if every key matches by name and shape; else raise listing the problems.

    Raises:
        CheckpointError: names the missing keys, the unexpected keys and the shape mismatches.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if tuple(state_dict[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        parts = [f"{source} does not match the architecture:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
        raise CheckpointError("\n  ".join(parts))
    module.load_state_dict(dict(state_dict), strict=True)


__all__ = [
    "ConfigError",
    "load_state_dict_strict",
    "read_config",
    "read_weights",
    "sha256_file",
    "write_checkpoint",
]
