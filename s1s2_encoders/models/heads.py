"""Task heads: a linear classifier, a SwinUNet-style decoder for Swin towers, a UNet-style decoder
for ResNet towers, and the fusion head that turns the decoded maps into per-pixel class logits.

The segmentation design follows the CVPRW 2022 segmenter (reference_facts.md §1.4), itself Swin-Unet
with one decoder per modality:

* a Swin decoder takes the bottleneck (final-normed stride-32 map) and three skips: the
  patch-embedding output (stride 4) and the outputs of the patch merging ("downsample") that opens
  stages 1, 2 and 3 (strides 8, 16). These are the inputs of each encoder stage, *before* its blocks;
  :func:`swin_skip_features` reads them by walking the timm stages, which gives exactly what forward
  hooks on ``patch_embed`` and ``layers[i].downsample`` capture (tested);
* each decoder stage concatenates the skip, projects 2C -> C with a Linear, runs Swin blocks and
  (except the last) a 2x patch expansion;
* the per-modality stride-4 maps are concatenated, expanded x4 (Linear to 16 C, pixel shuffle,
  LayerNorm) and classified by a 1x1 convolution without bias.

Unlike the original, no decoder holds an unused copy of the encoder stages or a second reference to
the encoder, so the state dict only has weights that are used in ``forward``.

All Swin-side tensors are channels-last ``(B, H, W, C)`` like timm's Swin; ResNet-side tensors are
``(B, C, H, W)``. Every map here has height and width divisible by the stride of its level, because
the task models pad inputs to a multiple of 32.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn


# ---------------------------------------------------------------------------------------- classification
class LinearClassifier(nn.Module):
    """``Linear(D -> K)`` over the concatenated pooled features (late fusion by concatenation, §1.3)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> ``(B, K)`` logits."""
        return self.fc(pooled)


# ---------------------------------------------------------------------------------------- Swin decoder
def swin_skip_features(tower: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run a timm Swin tower and collect the SwinUNet skips.

    Args:
        tower: a timm ``SwinTransformer`` (``num_classes=0``).
        x: ``(B, C_in, H, W)`` normalised input, H and W divisible by 32.

    Returns:
        ``(skips, bottleneck)``: ``skips[k]`` is the input of encoder stage ``k`` for k = 0, 1, 2
        (``(B, H/4, W/4, C0)`` patch-embedding output, then the stage-1 and stage-2 patch-merging
        outputs ``(B, H/8, W/8, 2 C0)`` and ``(B, H/16, W/16, 4 C0)``); ``bottleneck`` is
        ``tower.forward_features(x)``, ``(B, H/32, W/32, 8 C0)`` with the final LayerNorm.
    """
    h = tower.patch_embed(x)
    skips = [h]
    n_stages = len(tower.layers)
    for index, stage in enumerate(tower.layers):
        h = stage.downsample(h)  # Identity for stage 0
        if 0 < index < n_stages - 1:
            skips.append(h)
        h = run_swin_blocks(stage.blocks, h)
    return skips, tower.norm(h)


def run_swin_blocks(blocks: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``blocks(x)``; when traced (torch.export / torch.compile), the shape-generic form of the same
    arithmetic (:func:`~.swin_graph.blocks_forward`), so the height and width stay symbolic."""
    if torch.compiler.is_compiling():
        from .swin_graph import blocks_forward

        return blocks_forward(blocks, x)
    return blocks(x)


class PatchExpand(nn.Module):
    """2x upsampling of a channels-last map: ``(B, H, W, C)`` -> ``(B, 2H, 2W, C/2)``.

    A bias-free Linear doubles the channels, each token's 2C values are laid out as a 2 x 2 block of
    C/2 channels (row-major: block row, block column, channel), then LayerNorm(C/2). Swin-Unet's
    PatchExpand, written with reshape/permute so it exports without einops.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"PatchExpand needs an even channel count, got {dim}")
        self.expand = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(pixel_shuffle_nhwc(self.expand(x), 2))


def pixel_shuffle_nhwc(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, H, W, f*f*C)`` -> ``(B, f*H, f*W, C)``: each token's channels become an f x f block,
    ordered (block row, block column, channel) as in einops ``b h w (p1 p2 c) -> b (h p1) (w p2) c``."""
    b, h, w, c = x.shape
    out = c // (factor * factor)
    x = x.reshape(b, h, w, factor, factor, out).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h * factor, w * factor, out)


class SwinDecoderStage(nn.Module):
    """One decoder stage: concat skip -> Linear(2C -> C) -> Swin blocks -> optional PatchExpand."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        resolution: tuple[int, int],
        window_size: int,
        drop_path: Sequence[float],
        upsample: bool,
    ):
        super().__init__()
        self.concat_proj = nn.Linear(2 * dim, dim)
        # dynamic_mask: attention masks are built for the actual feature size on each call, as the
        # encoder towers do with strict_img_size=False, so any input size works.
        self.blocks = nn.Sequential(*[
            SwinTransformerBlock(
                dim=dim, input_resolution=resolution, num_heads=num_heads, window_size=window_size,
                shift_size=0 if i % 2 == 0 else window_size // 2, dynamic_mask=True, drop_path=drop_path[i],
            )
            for i in range(depth)
        ])
        self.upsample = PatchExpand(dim) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.concat_proj(torch.cat([x, skip], dim=-1))
        return self.upsample(run_swin_blocks(self.blocks, x))


class SwinUNetDecoder(nn.Module):
    """SwinUNet decoder for one modality: bottleneck + 3 skips -> ``(B, H/4, W/4, C0)`` channels-last.

    Args:
        embed_dim: C0, the patch-embedding width of the encoder (96 for Swin-T).
        depths / num_heads: blocks and heads of the decoder stages at strides 16, 8, 4 (Swin-T
            mirrored: (6, 2, 2) and (12, 6, 3)).
        grid: the encoder's nominal stride-4 grid (56 x 56 for 224 px); only sets the nominal
            window/shift sizes, any input size works.
        window_size: attention window (7 for Swin-T).
        drop_path_rate: stochastic depth, increasing linearly over the decoder blocks from the
            output side, as Swin-Unet assigns it (the deepest decoder stage gets the largest rates).
    """

    def __init__(
        self,
        embed_dim: int,
        depths: Sequence[int],
        num_heads: Sequence[int],
        grid: tuple[int, int],
        window_size: int = 7,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if len(depths) != 3 or len(num_heads) != 3:
            raise ValueError(f"a SwinUNet decoder has 3 stages; got depths {list(depths)}, num_heads {list(num_heads)}")
        self.embed_dim = embed_dim
        self.bottleneck_expand = PatchExpand(8 * embed_dim)
        # Swin-Unet: dpr over sum(depths) in encoder order (stride 4 first), read per stage.
        encoder_order = list(reversed(depths))
        rates = torch.linspace(0, drop_path_rate, sum(encoder_order)).tolist()
        stages = []
        for position, (depth, heads) in enumerate(zip(depths, num_heads)):
            level = 2 - position  # stride 16 -> level 2, stride 8 -> 1, stride 4 -> 0
            start = sum(encoder_order[:level])
            stages.append(SwinDecoderStage(
                dim=embed_dim * 2 ** level, depth=depth, num_heads=heads,
                resolution=(max(grid[0] // 2 ** level, 1), max(grid[1] // 2 ** level, 1)),
                window_size=window_size, drop_path=rates[start:start + depth], upsample=level > 0,
            ))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(embed_dim)

    @property
    def out_channels(self) -> int:
        return self.embed_dim

    def forward(self, skips: Sequence[torch.Tensor], bottleneck: torch.Tensor) -> torch.Tensor:
        """``skips`` as returned by :func:`swin_skip_features` (strides 4, 8, 16), channels-last."""
        x = self.bottleneck_expand(bottleneck)
        for stage, skip in zip(self.stages, reversed(list(skips))):
            x = stage(x, skip)
        return self.norm(x)


# ---------------------------------------------------------------------------------------- ResNet decoder
class ConvBlock(nn.Sequential):
    """Two 3x3 conv - BatchNorm - ReLU layers."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetDecoder(nn.Module):
    """UNet decoder over the four ResNet stage outputs (strides 4, 8, 16, 32) -> stride-4 map.

    At each level: 2x bilinear upsampling, concatenation with the stage output of that stride,
    :class:`ConvBlock`. Output ``(B, H/4, W/4, channels[-1])`` channels-last, like the Swin decoder,
    so both feed the same fusion head.

    Args:
        skip_channels: channels of the stage outputs at strides 4, 8, 16, 32.
        channels: output channels of the decoder blocks at strides 16, 8, 4.
    """

    def __init__(self, skip_channels: Sequence[int], channels: Sequence[int]):
        super().__init__()
        if len(skip_channels) != 4 or len(channels) != 3:
            raise ValueError(
                f"a UNet decoder needs 4 skip widths and 3 block widths; got {list(skip_channels)}, {list(channels)}"
            )
        blocks = []
        below = skip_channels[3]
        for level, width in zip((2, 1, 0), channels):
            blocks.append(ConvBlock(below + skip_channels[level], width))
            below = width
        self.blocks = nn.ModuleList(blocks)
        self._out = channels[-1]

    @property
    def out_channels(self) -> int:
        return self._out

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        """``pyramid``: ``[(B, C_s, H/s, W/s) for s in 4, 8, 16, 32]``."""
        x = pyramid[3]
        for block, skip in zip(self.blocks, (pyramid[2], pyramid[1], pyramid[0])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x.permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------- fusion head
class FusionSegmentationHead(nn.Module):
    """Concatenated stride-4 maps -> x4 expansion + LayerNorm -> 1x1 conv classifier (§1.4).

    ``(B, H/4, W/4, C)`` channels-last (C = sum over modalities) -> ``(B, K, H, W)`` logits.
    The expansion is Swin-Unet's FinalPatchExpand_X4 (bias-free Linear to 16 C, pixel shuffle,
    LayerNorm(C)); the classifier is a bias-free 1x1 convolution, as in the original.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.expand = nn.Linear(in_channels, 16 * in_channels, bias=False)
        self.norm = nn.LayerNorm(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=False)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        x = self.norm(pixel_shuffle_nhwc(self.expand(fused), 4))
        # The bias-free 1x1 convolution as a matrix product over the channels of the NHWC map: the same
        # numbers, no layout change before it, and no memory-format question for torch.export to
        # answer about the batch size.
        return F.linear(x, self.classifier.weight.flatten(1)).permute(0, 3, 1, 2)


__all__ = [
    "ConvBlock",
    "FusionSegmentationHead",
    "LinearClassifier",
    "PatchExpand",
    "SwinDecoderStage",
    "SwinUNetDecoder",
    "UNetDecoder",
    "pixel_shuffle_nhwc",
    "swin_skip_features",
]
