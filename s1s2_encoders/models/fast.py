"""Inference-optimised copies of the timm towers: same weights, same mathematics, less overhead.

:func:`inference_tower` deep-copies a tower and rewrites the parts that cost time without doing
arithmetic, so that ``embed`` spends its time in matrix products. The copy keeps timm's module tree
and methods (``forward_features``, ``forward_intermediates``), so the feature read-out code is the
same for both. What is changed, and why it is exact:

Swin (``SwinTransformerBlock``)
    * **Window gather instead of roll + pad + partition, window scatter instead of reverse + crop +
      roll**: one ``index_select`` with a cached index per feature-map size replaces four copies of
      the activations per block (the cyclic shift and the window partition are both permutations of
      the tokens). Bit-identical.
    * **Relative-position bias and shifted-window mask added once, pre-summed**: timm gathers the
      bias table and (with ``strict_img_size=False``) rebuilds the mask with Python loops at every
      call; the sum ``bias + mask`` per window is cached per feature-map size. Identical up to the
      order of one addition in the masked (-100) entries, which softmax sends to 0 either way.
    * **Attention scale folded into the query weights**: ``q * scale`` is an extra pass over the
      queries (and a copy of the strided view); multiplying the query rows of the ``qkv`` weight and
      bias by ``scale`` (in float32, before the cast) gives the same scores up to rounding.
    * **fc1 + GELU fused** (CPU): oneDNN's linear with a GELU post-op
      (``torch.ops.mkldnn._linear_pointwise``) instead of a separate, memory-bound GELU pass over
      the largest activation of the block. The same erf GELU; rounding differs in the last bit.
      Used only where the op exists and reproduces ``F.gelu(F.linear(...))`` (checked once).

ResNet
    * **BatchNorm folded into the preceding convolution** (eval-mode statistics):
      ``torch.nn.utils.fusion.fuse_conv_bn_eval``, exact up to float32 rounding.
    * **channels_last** memory format, which oneDNN convolutions run without layout reorders.

Anything that does not look like the expected timm structure is left untouched (the copy is then
just a cast copy), so a future timm release degrades speed, never results; the tests compare the
copies with the plain towers.
"""

from __future__ import annotations

import copy
import functools
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .towers import is_swin


def inference_tower(tower: nn.Module, architecture: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    """An eval-mode, gradient-free copy of ``tower`` in ``dtype`` on ``device``, optimised for inference."""
    copied = copy.deepcopy(tower).eval()
    if is_swin(architecture):
        _fold_attention_scales(copied)  # in float32, before the cast
    else:
        _fold_batchnorms(copied)  # in float32, before the cast
    copied = copied.to(device=device, dtype=dtype)
    if is_swin(architecture):
        _patch_swin(copied, device)
    else:
        copied = copied.to(memory_format=torch.channels_last)
    for parameter in copied.parameters():
        parameter.requires_grad_(False)
    return copied


# ---------------------------------------------------------------------------------------------- ResNet
def _fold_batchnorms(module: nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d into the Conv2d that feeds it; returns how many were folded.

    Pairs are found as ``convN``/``bnN`` attributes of one parent (timm's ResNet stem and blocks)
    and as a Conv2d directly followed by a BatchNorm2d in an ``nn.Sequential`` (downsample paths).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        pairs: list[tuple[str, str]] = []
        if isinstance(parent, nn.Sequential):
            names = list(children)
            pairs += [(a, b) for a, b in zip(names, names[1:])]
        pairs += [(f"conv{n[2:]}", n) for n in children if n.startswith("bn") and f"conv{n[2:]}" in children]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
                children[conv_name], children[bn_name] = getattr(parent, conv_name), getattr(parent, bn_name)
                folded += 1
    return folded


# ---------------------------------------------------------------------------------------------- Swin
def _patch_swin(tower: nn.Module, device: torch.device) -> None:
    from timm.layers import Mlp
    from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

    fuse_gelu = device.type == "cpu" and _linear_gelu_available()
    for block in tower.modules():
        if not isinstance(block, SwinTransformerBlock):
            continue
        attn = getattr(block, "attn", None)
        if not isinstance(attn, WindowAttention) or not all(
            hasattr(obj, name) for obj, name in (
                (block, "window_size"), (block, "shift_size"), (attn, "qkv"), (attn, "proj"), (attn, "num_heads"),
                (attn, "scale"), (attn, "relative_position_bias_table"), (attn, "relative_position_index"),
            )
        ):
            continue
        block._s1s2_windows = {}  # (H, W, dtype, device) -> (gather, scatter, bias + mask)
        block._attn = types.MethodType(_fast_block_attention, block)
        mlp = getattr(block, "mlp", None)
        if (
            fuse_gelu and type(mlp) is Mlp and isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
            and isinstance(mlp.norm, nn.Identity) and isinstance(mlp.fc1, nn.Linear)
        ):
            mlp.forward = types.MethodType(_mlp_fused_gelu, mlp)


def _fold_attention_scales(tower: nn.Module) -> int:
    """Multiply the query rows of every WindowAttention's ``qkv`` by its ``scale`` and set the scale
    to 1, so that timm's own (non-fused) forward stays correct too; returns how many were folded.

    Attention modules on timm's fused path are skipped: ``scaled_dot_product_attention`` applies its
    own default scale, not ``attn.scale``.
    """
    from timm.models.swin_transformer import WindowAttention

    folded = 0
    for attn in tower.modules():
        if (
            not isinstance(attn, WindowAttention) or not isinstance(getattr(attn, "qkv", None), nn.Linear)
            or getattr(attn, "fused_attn", False) or not isinstance(getattr(attn, "scale", None), float)
        ):
            continue
        rows = attn.qkv.out_features // 3
        with torch.no_grad():
            attn.qkv.weight[:rows] *= attn.scale
            if attn.qkv.bias is not None:
                attn.qkv.bias[:rows] *= attn.scale
        attn.scale = 1.0
        folded += 1
    return folded


def _window_permutation(h: int, w: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device):
    """Where timm's roll + pad + window partition takes every window token from, and back.

    Returns ``gather`` (``Hp*Wp`` indices into the row-major ``h*w`` token grid, ``h*w`` standing
    for a zero padding token) and ``scatter`` (``h*w`` indices into the window-ordered tokens) for
    the feature map padded to whole windows, ``Hp x Wp``.
    """
    wh, ww = window
    hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
    grid = torch.arange(h * w, device=device).view(h, w)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(0, 1))
    padded = torch.full((hp, wp), h * w, dtype=grid.dtype, device=device)  # timm pads after the roll
    padded[:h, :w] = grid
    gather = padded.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1)
    scatter = torch.empty(h * w, dtype=gather.dtype, device=device)
    real = gather < h * w
    scatter[gather[real]] = torch.arange(gather.numel(), device=device)[real]
    return gather, scatter


def _window_bias(block: nn.Module, hp: int, wp: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(nW or 1, heads, N, N)``: relative-position bias plus the shifted-window mask, summed once."""
    bias = block.attn._get_rel_pos_bias()[0].float()  # (heads, N, N)
    if any(block.shift_size):
        if getattr(block, "dynamic_mask", False):
            mask = block.get_attn_mask(torch.zeros(1, hp, wp, 1, device=device))  # (nW, N, N) of 0 / -100
        else:
            mask = block.attn_mask
        bias = mask.float().unsqueeze(1) + bias.unsqueeze(0)
    else:
        bias = bias.unsqueeze(0)
    return bias.to(dtype).contiguous()


def _fast_block_attention(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``SwinTransformerBlock._attn`` with cached window permutations and bias (see module docstring)."""
    from timm.models.swin_transformer import SwinTransformerBlock

    if torch.compiler.is_compiling():  # tracing wants the original, shape-generic code
        return SwinTransformerBlock._attn(self, x)
    b, h, w, c = x.shape
    wh, ww = self.window_size
    key = (h, w, x.dtype, x.device)
    cached = self._s1s2_windows.get(key)
    if cached is None:
        gather, scatter = _window_permutation(h, w, self.window_size, self.shift_size, x.device)
        hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
        cached = (gather, scatter, _window_bias(self, hp, wp, x.dtype, x.device), hp * wp != h * w)
        self._s1s2_windows[key] = cached
    gather, scatter, bias, padded = cached
    tokens = x.reshape(b, h * w, c)
    if padded:  # a zero token at index h*w stands for timm's zero padding
        tokens = torch.cat([tokens, tokens.new_zeros(b, 1, c)], dim=1)
    windows = tokens.index_select(1, gather).view(-1, wh * ww, c)
    out = window_attention(self.attn, windows, bias)
    return out.view(b, -1, c).index_select(1, scatter).view(b, h, w, c)


def window_attention(attn: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """timm's ``WindowAttention.forward`` (non-fused path) with a pre-summed ``bias``.

    ``x`` is ``(B * nW, n, C)`` window tokens, batch-major; ``bias`` is ``(nW or 1, heads, n, n)``
    (relative-position bias plus any shifted-window mask). Shared by the inference copies and the
    shape-generic export forward (:mod:`.swin_graph`).
    """
    windows, n, c = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).view(windows, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scores = (q if attn.scale == 1.0 else q * attn.scale) @ k.transpose(-2, -1)  # (windows, heads, n, n)
    scores = (scores.view(-1, bias.shape[0], heads, n, n) + bias).softmax(dim=-1)
    out = scores.view(windows, heads, n, n) @ v
    return attn.proj(out.transpose(1, 2).reshape(windows, n, -1))


def _mlp_fused_gelu(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm ``Mlp.forward`` (eval) with fc1 + GELU as one oneDNN call."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return self.fc2(self.act(self.fc1(x)))
    shape = x.shape
    hidden = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.fc1.weight, self.fc1.bias, "gelu", [], "none")
    return self.fc2(hidden.view(*shape[:-1], -1))


@functools.lru_cache(maxsize=1)
def _linear_gelu_available() -> bool:
    """Whether oneDNN's fused linear + GELU exists here and matches ``gelu(linear(x))``."""
    try:
        op: Any = torch.ops.mkldnn._linear_pointwise
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(8, 16, generator=generator)
        weight = torch.randn(24, 16, generator=generator) / 4
        bias = torch.randn(24, generator=generator)
        with torch.no_grad():
            fused = op(x, weight, bias, "gelu", [], "none")
            reference = F.gelu(F.linear(x, weight, bias))
        return bool(torch.allclose(fused, reference, rtol=1e-4, atol=1e-5))
    except Exception:  # the op is missing (no oneDNN build) or has another signature
        return False
