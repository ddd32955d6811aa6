"""Single-modality towers: plain timm models, plus the few functions that read features out of them.

The towers are ``timm.create_model(name, in_chans=C, num_classes=0)`` so that their state-dict
keys are timm's (``patch_embed.proj.weight``, ``layers.0.blocks.0.attn.qkv.weight``, ``conv1.weight``
...). Swin towers are built with ``strict_img_size=False``; the backbone pads inputs to a multiple
of :data:`TOTAL_STRIDE` so any height and width work.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from ..config import TIMM_NAMES, check_tower_kwargs

TOTAL_STRIDE = 32
"""Downsampling factor of the last feature map of every tower."""

PYRAMID_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
"""Strides (input pixels per feature cell) of the dense feature pyramid."""


def ceil_div(n: Any, d: int) -> Any:
    """``ceil(n / d)`` for a non-negative int or a symbolic int ``n`` (``math.ceil`` would fix a
    symbolic size to its example value under ``torch.export``)."""
    return (n + d - 1) // d


def is_swin(architecture: str) -> bool:
    return architecture.startswith("swin")


def create_tower(architecture: str, in_chans: int, **overrides: Any) -> nn.Module:
    """Build one randomly initialised tower.

    Args:
        architecture: ``"swin-t"``, ``"resnet18"`` or ``"resnet50"``.
        in_chans: number of input bands.
        overrides: timm architecture arguments (e.g. ``embed_dim=24, depths=(1, 1, 1, 1)``); only
            the keys :data:`~s1s2_encoders.config.TOWER_KWARGS` lists for ``architecture``.

    Raises:
        ConfigError: an override that is not an architecture setting (``pretrained``,
            ``checkpoint_path``, ...), checked again here because a config's dict can be edited
            after it was validated.
    """
    check_tower_kwargs(architecture, overrides)
    # The package's own settings come last, so that nothing can switch timm's downloads back on.
    kwargs: dict[str, Any] = {**overrides, "pretrained": False, "in_chans": in_chans, "num_classes": 0}
    if is_swin(architecture):
        kwargs["strict_img_size"] = False
    return timm.create_model(TIMM_NAMES[architecture], **kwargs)


def pyramid_channels(tower: nn.Module) -> tuple[int, ...]:
    """Channels of the four pyramid levels (strides 4, 8, 16, 32)."""
    info = tower.feature_info
    channels = [entry["num_chs"] for entry in info]
    return tuple(channels[-4:])


def feature_pyramid(tower: nn.Module, architecture: str, x: torch.Tensor) -> list[torch.Tensor]:
    """Dense features at strides 4, 8, 16, 32 as ``(B, C_s, H/s, W/s)`` maps.

    ``x`` must have height and width divisible by 32. For Swin the maps are the stage outputs
    (after each stage's blocks) and the last one carries the final LayerNorm, so that its spatial
    mean is exactly the pooled embedding. For ResNet they are the outputs of ``layer1 .. layer4``.
    """
    if is_swin(architecture):
        return tower.forward_intermediates(x, indices=4, norm=True, intermediates_only=True)
    maps = tower.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    return list(maps)


def last_feature_map(tower: nn.Module, architecture: str, x: torch.Tensor) -> torch.Tensor:
    """The stride-32 map ``(B, C, H/32, W/32)`` (normalised for Swin), cheaper than the pyramid."""
    features = tower.forward_features(x)
    if is_swin(architecture):
        features = features.permute(0, 3, 1, 2)  # timm Swin is NHWC
    return features
