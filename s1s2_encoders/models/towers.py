"""Single-modality towers: plain timm models, plus the few functions that read features out of them.

The towers are ``timm.create_model(name, in_chans=C, num_classes=0)`` so that their state-dict
keys are timm's (``patch_embed.proj.weight``, ``layers.0.blocks.0.attn.qkv.weight``, ``conv1.weight``
...). Swin towers are built with ``strict_img_size=False``; the backbone pads inputs to a multiple
of :data:`TOTAL_STRIDE` so any height and width work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
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


# ---------------------------------------------------------------------------------------------- geometry
def cell_centre(architecture: str, stride: int) -> float:
    """Where cell ``i`` of a tower's stride-``stride`` map is centred, in input pixels from ``stride * i``.

    Coordinates are continuous: input pixel ``k`` spans ``[k, k + 1)``. Measured from the models in
    ``tests/test_alignment.py`` (the gradient support of each cell):

    * **Swin**: ``stride / 2``. A cell is exactly the patch ``[s*i, s*(i+1))`` (4 x 4 patchify, then
      2 x 2 patch merging), so its centre is the middle of that block.
    * **ResNet**: ``0.5``, the centre of pixel ``s*i``. Every stride-2 layer (7 x 7 stem, 3 x 3 max pool,
      3 x 3 and 1 x 1 downsampling convolutions) pads by ``k // 2`` and so centres output ``i`` on input
      ``2 * i``; composed, cell ``i`` is centred on pixel ``s * i``, not on the middle of
      ``[s*i, s*(i+1))`` (15.5 px further at stride 32).
    """
    return stride / 2 if is_swin(architecture) else 0.5


def cell_origin_shift(architecture: str, stride: int) -> float:
    """Input pixels from pixel ``s*i`` to the upper-left corner of the ``s x s`` footprint centred on
    cell ``i`` (0 for Swin, ``0.5 - s/2`` for ResNet): what a georeferenced dense map's origin moves by."""
    return cell_centre(architecture, stride) - stride / 2


# ---------------------------------------------------------------------------------------------- read-out
@dataclass
class TowerOutput:
    """What one tower produced for a batch.

    Attributes:
        pooled: ``(B, D)`` float32: the stride-32 map averaged over its cells, each weighted by the
            number of valid input pixels it covers (NaN rows where no pixel was valid).
        pyramid: ``[(B, C_s, ceil(H/s), ceil(W/s)) for s in 4, 8, 16, 32]`` float32 (cells without
            any valid pixel NaN), or ``None`` when only the pooled vector was asked for.
    """

    pooled: torch.Tensor
    pyramid: list[torch.Tensor] | None = None


def pad_to_stride(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``(B, C, H, W)`` at the bottom and right to a multiple of :data:`TOTAL_STRIDE`.

    Padding at the end keeps cell ``i`` of the stride-``s`` map at pixel ``s * i`` (see
    :func:`cell_centre`): features stay aligned with the input pixels.
    """
    h, w = x.shape[-2:]
    # (n + 31) // 32 * 32 rather than (-n) % 32: under torch.export every later size (stages,
    # windows) is then a multiple of one symbol, which keeps the symbolic shape algebra small.
    pad_h = ceil_div(h, TOTAL_STRIDE) * TOTAL_STRIDE - h
    pad_w = ceil_div(w, TOTAL_STRIDE) * TOTAL_STRIDE - w
    # Under torch.export / torch.compile the sizes are symbolic: branching on them would pin the
    # exported program to one size, so the (possibly zero) padding is always applied there.
    if not torch.compiler.is_compiling() and pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def cell_pixel_counts(valid: torch.Tensor | None, size: tuple[Any, Any], stride: int, cells: tuple[Any, Any],
                      device: torch.device) -> torch.Tensor:
    """Valid input pixels in each ``stride x stride`` cell: ``(B or 1, 1, cells_h, cells_w)`` float32.

    Without ``valid`` every in-image pixel counts, so the partly padded cells at the bottom and right
    edge weigh what they cover (computed from the sizes, no mask needed); with ``valid``
    (``(B, 1, H, W)`` bool) only the valid ones do. Either way a sample's weights depend on that
    sample alone, never on the other samples of its batch.
    """
    if valid is None:
        h, w = size
        rows = (h - stride * torch.arange(cells[0], device=device)).clamp(0, stride)
        cols = (w - stride * torch.arange(cells[1], device=device)).clamp(0, stride)
        return (rows[:, None] * cols[None, :]).float()[None, None]
    padded = pad_to_stride(valid.float())
    counts = F.avg_pool2d(padded, kernel_size=stride, stride=stride) * float(stride * stride)
    return counts[..., : cells[0], : cells[1]]


def pool_cells(last: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` stride-32 map -> ``(B, C)`` mean weighted by ``counts`` (from
    :func:`cell_pixel_counts`); NaN for a sample whose cells hold no valid pixel."""
    total = counts.sum(dim=(2, 3))
    pooled = (last * counts).sum(dim=(2, 3)) / total.clamp_min(1.0)
    return torch.where(total > 0, pooled, torch.full((), math.nan, device=pooled.device))


def tower_output(
    tower: nn.Module, architecture: str, normalized: torch.Tensor, valid: torch.Tensor | None = None,
    dense: bool = False,
) -> TowerOutput:
    """Run one tower on a normalised input and read out the pooled vector (and the pyramid).

    The one read-out of every model in the package (backbones, classifiers, the inference
    engine's copies): pad to a multiple of 32, run the tower, crop every map to the cells that
    cover the input, pool the stride-32 map by :func:`cell_pixel_counts`.

    Args:
        tower: a timm tower (or its inference copy); the input is cast to its weight dtype and
            memory format.
        architecture: ``"swin-t"``, ``"resnet18"`` or ``"resnet50"``.
        normalized: ``(B, C, H, W)`` float32, invalid pixels already 0.
        valid: optional ``(B, 1, H, W)`` bool mask of pixels with data.
        dense: also return the feature pyramid (cells without a valid pixel are NaN).
    """
    h, w = normalized.shape[-2:]
    if is_swin(architecture) and not dense and valid is None and torch.compiler.is_compiling():
        # Traced (torch.export, torch.compile): timm's window padding would pin the program to the example's
        # size; the shape-generic form of the same arithmetic keeps H and W symbolic.
        from .swin_graph import swin_pooled

        return TowerOutput(pooled=swin_pooled(tower, normalized.to(tower_dtype(tower))).float())
    x = pad_to_stride(normalized).to(dtype=tower_dtype(tower), memory_format=input_memory_format(tower))
    # Integer ceil-division (ceil_div): exact, and symbolic sizes under torch.export stay symbolic.
    if dense:
        pyramid = feature_pyramid(tower, architecture, x)
        sizes = [(ceil_div(h, s), ceil_div(w, s)) for s in PYRAMID_STRIDES]
        pyramid = [m[..., : sh, : sw].float() for m, (sh, sw) in zip(pyramid, sizes)]
        last = pyramid[-1]
    else:
        pyramid = None
        last = last_feature_map(tower, architecture, x)
        last = last[..., : ceil_div(h, TOTAL_STRIDE), : ceil_div(w, TOTAL_STRIDE)].float()
    counts = cell_pixel_counts(valid, (h, w), TOTAL_STRIDE, last.shape[-2:], last.device)
    pooled = pool_cells(last, counts)
    if pyramid is not None and valid is not None:
        masked = []
        for stride, level in zip(PYRAMID_STRIDES, pyramid):
            seen = cell_pixel_counts(valid, (h, w), stride, level.shape[-2:], level.device) > 0
            masked.append(torch.where(seen, level, torch.full((), math.nan, device=level.device)))
        pyramid = masked
    return TowerOutput(pooled=pooled, pyramid=pyramid)


def input_memory_format(tower: nn.Module) -> torch.memory_format:
    """``channels_last`` if the tower's stem convolution is stored channels-last, else contiguous."""
    for parameter in tower.parameters():
        if parameter.dim() == 4:
            if parameter.is_contiguous(memory_format=torch.channels_last) and not parameter.is_contiguous():
                return torch.channels_last
            break
    return torch.contiguous_format


def tower_dtype(tower: nn.Module) -> torch.dtype:
    """dtype of the tower's weights (what its input must be cast to)."""
    return next(tower.parameters()).dtype
