"""Inference-optimised copies of the timm towers: same weights, same mathematics, less overhead.

:class:`InferenceTower` deep-copies a tower once and rewrites the parts that cost time without doing
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
    * **Attention scale folded into the query weights** (bfloat16 copies): ``q * scale`` is an extra
      pass over the queries; multiplying the query rows of the ``qkv`` weight and bias by ``scale``
      (in float32, before the cast) gives the same scores up to rounding.
    * **fc1 + GELU fused** (CPU): oneDNN's linear with a GELU post-op
      (``torch.ops.mkldnn._linear_pointwise``) instead of a separate, memory-bound GELU pass over
      the largest activation of the block. The same erf GELU; rounding differs in the last bit.
      Used only for a dtype where the op exists on this CPU and reproduces ``F.gelu(F.linear(...))``
      (checked once per dtype: oneDNN has no bfloat16 inner product on CPUs without AVX-512).

ResNet
    * **BatchNorm folded into the preceding convolution** (eval-mode statistics), exact up to
      float32 rounding.
    * **channels_last** memory format, which oneDNN convolutions run without layout reorders.

**Freshness.** A copy never computes with weights the source no longer has: :meth:`InferenceTower.refresh`
re-derives every tensor of the copy (cast, folded BatchNorm, scaled queries) from the source's
*current* tensors, looked up by name, and drops the caches that depend on weights (the summed
relative-position bias). It is one pass over the weights (~10 ms per Swin-T tower on CPU), so it
catches every kind of edit, including ``param.data`` writes and ``vector_to_parameters`` that leave
no trace in version counters. A source whose structure changed (a module replaced, a tensor
reshaped) makes :meth:`InferenceTower.matches` false and the copy is rebuilt.

**Bounded caches.** The per-size window bookkeeping is an LRU of :data:`WINDOW_CACHE_SIZES` feature
map sizes per block, so workloads with many input sizes keep flat memory.

Anything that does not look like the expected timm structure is left untouched (the copy is then
just a cast copy), so a future timm release degrades speed, never results; the tests compare the
copies with the plain towers.
"""

from __future__ import annotations

import copy
import functools
import types
from collections import OrderedDict
from typing import Any, Callable, Hashable

import torch
import torch.nn.functional as F
from torch import nn

from .towers import is_swin

WINDOW_CACHE_SIZES = 4
"""Feature-map sizes whose window indices and biases each Swin block keeps (least recently used go)."""


class LRUCache:
    """A small least-recently-used mapping (the window caches of one block)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.maxsize:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def values(self):
        return self._items.values()


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def structure_of(module: nn.Module) -> tuple[tuple[str, tuple[int, ...], torch.dtype], ...]:
    """Names, shapes and dtypes of a module's parameters and buffers: what a copy's layout depends on."""
    return tuple((name, tuple(t.shape), t.dtype) for name, t in _named_tensors(module).items())


class InferenceTower:
    """An eval-mode, gradient-free copy of a tower in ``dtype`` on ``device``, optimised for inference,
    that can be brought up to date with its source.

    Attributes:
        module: the copy (call its ``forward_features`` / ``forward_intermediates`` as timm's).
        dtype / device: what it computes in and where.
        optimized: ``False`` for a plain cast copy (``optimize=False``: the reference towers on
            another device), ``True`` for the rewritten one.
    """

    def __init__(self, source: nn.Module, architecture: str, dtype: torch.dtype, device: torch.device,
                 optimize: bool = True):
        self.architecture = architecture
        self.dtype = dtype
        self.device = device
        self.optimized = optimize
        self._structure = structure_of(source)
        # Each derivation re-computes some of the copy's tensors from the source's named tensors.
        self._derivations: list[Callable[[dict[str, torch.Tensor]], None]] = []
        self._caches: list[LRUCache] = []  # weight-dependent caches, dropped at every refresh
        with torch.no_grad():
            copied = copy.deepcopy(source).eval()
            copied.to(device=device)
            if optimize and is_swin(architecture):
                derived = self._fold_attention_scales(copied)
            elif optimize:
                derived = self._fold_batchnorms(copied)
            else:
                derived = set()
            copied.to(dtype=dtype)
            targets = _named_tensors(copied)
            plain = [name for name in targets if name not in derived and targets[name].is_floating_point()]
            self._derivations.append(functools.partial(self._copy_by_name, plain))
            if optimize and is_swin(architecture):
                self._caches = _patch_swin(copied, device, dtype)
            elif optimize:
                copied = copied.to(memory_format=torch.channels_last)
                targets.update(_named_tensors(copied))  # channels_last made new conv weight tensors
            for parameter in copied.parameters():
                parameter.requires_grad_(False)
        self.module = copied
        self._targets = targets
        self.refresh(source)

    def matches(self, source: nn.Module) -> bool:
        """Whether ``source`` still has the layout this copy was built from (else rebuild it)."""
        return structure_of(source) == self._structure

    def refresh(self, source: nn.Module) -> None:
        """Re-derive every tensor of the copy from ``source``'s current values.

        Raises:
            ValueError: ``source`` no longer has the layout of the copy (see :meth:`matches`).
        """
        if not self.matches(source):
            raise ValueError("the tower's parameters or buffers changed layout; build a new InferenceTower")
        tensors = _named_tensors(source)
        with torch.no_grad():
            for derive in self._derivations:
                derive(tensors)
        for cache in self._caches:
            cache.clear()

    # -------------------------------------------------------------------------------- rewrites
    def _fold_attention_scales(self, copied: nn.Module) -> set[str]:
        """Multiply the query rows of every WindowAttention's ``qkv`` by its ``scale`` (bfloat16 copies
        only) and set the scale to 1, so that timm's own (non-fused) forward stays correct too.

        Attention modules on timm's fused path are skipped: ``scaled_dot_product_attention`` applies
        its own default scale, not ``attn.scale``. In float32 the scale stays a separate multiply: the
        saving is small and a shared rounding with the reference is worth more there.
        """
        from timm.models.swin_transformer import WindowAttention

        if self.dtype == torch.float32:
            return set()
        derived: set[str] = set()
        for name, attn in copied.named_modules():
            if (
                not isinstance(attn, WindowAttention) or not isinstance(getattr(attn, "qkv", None), nn.Linear)
                or getattr(attn, "fused_attn", False) or not isinstance(getattr(attn, "scale", None), float)
            ):
                continue
            rows, scale = attn.qkv.out_features // 3, attn.scale
            for kind in ("weight", "bias"):
                if getattr(attn.qkv, kind) is not None:
                    key = f"{name}.qkv.{kind}"
                    derived.add(key)
                    self._derivations.append(functools.partial(self._scaled_rows, key, rows, scale))
            attn.scale = 1.0
        return derived

    def _fold_batchnorms(self, copied: nn.Module) -> set[str]:
        """Fold every eval-mode BatchNorm2d into the Conv2d that feeds it.

        Pairs are found as ``convN``/``bnN`` attributes of one parent (timm's ResNet stem and blocks)
        and as a Conv2d directly followed by a BatchNorm2d in an ``nn.Sequential`` (downsample
        paths). Returns the names of the copy's tensors that the folding derives.
        """
        derived: set[str] = set()
        for parent_name, parent in list(copied.named_modules()):
            children = dict(parent.named_children())
            pairs: list[tuple[str, str]] = []
            if isinstance(parent, nn.Sequential):
                names = list(children)
                pairs += [(a, b) for a, b in zip(names, names[1:])]
            pairs += [(f"conv{n[2:]}", n) for n in children if n.startswith("bn") and f"conv{n[2:]}" in children]
            prefix = f"{parent_name}." if parent_name else ""
            for conv_name, bn_name in pairs:
                conv, bn = children.get(conv_name), children.get(bn_name)
                if not (isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                        and bn.affine):
                    continue
                if conv.bias is None:
                    conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
                setattr(parent, bn_name, nn.Identity())
                children[bn_name] = getattr(parent, bn_name)
                conv_key, bn_key = prefix + conv_name, prefix + bn_name
                derived.update({f"{conv_key}.weight", f"{conv_key}.bias"})
                self._derivations.append(functools.partial(self._fold_one, conv_key, bn_key, bn.eps))
        return derived

    def _fold_one(self, conv_key: str, bn_key: str, eps: float, tensors: dict[str, torch.Tensor]) -> None:
        weight = tensors[f"{conv_key}.weight"].float()
        bias = tensors.get(f"{conv_key}.bias")
        scale = tensors[f"{bn_key}.weight"].float() * torch.rsqrt(tensors[f"{bn_key}.running_var"].float() + eps)
        mean = tensors[f"{bn_key}.running_mean"].float()
        shift = tensors[f"{bn_key}.bias"].float() - mean * scale
        if bias is not None:
            shift = shift + bias.float() * scale
        self._target(f"{conv_key}.weight").copy_(weight * scale.view(-1, 1, 1, 1))
        self._target(f"{conv_key}.bias").copy_(shift)

    def _copy_by_name(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        for name in names:
            self._target(name).copy_(tensors[name])

    def _scaled_rows(self, key: str, rows: int, scale: float, tensors: dict[str, torch.Tensor]) -> None:
        source, target = tensors[key].float(), self._target(key)
        target[:rows].copy_(source[:rows] * scale)
        target[rows:].copy_(source[rows:])

    def _target(self, name: str) -> torch.Tensor:
        # Looked up at call time: the channels_last conversion replaces the conv weight tensors.
        return self._targets[name]


# ---------------------------------------------------------------------------------------------- Swin
def _patch_swin(tower: nn.Module, device: torch.device, dtype: torch.dtype) -> list[LRUCache]:
    """Give every timm Swin block the cached window attention; returns the weight-dependent caches."""
    from timm.layers import Mlp
    from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention

    fuse_gelu = device.type == "cpu" and linear_gelu_available(dtype)
    caches: list[LRUCache] = []
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
        block._s1s2_windows = LRUCache(WINDOW_CACHE_SIZES)  # (H, W) -> (gather, scatter, mask, padded)
        block._s1s2_bias = LRUCache(WINDOW_CACHE_SIZES)  # (H, W) -> bias + mask, depends on weights
        caches.append(block._s1s2_bias)
        block._attn = types.MethodType(_fast_block_attention, block)
        mlp = getattr(block, "mlp", None)
        if (
            fuse_gelu and type(mlp) is Mlp and isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
            and isinstance(mlp.norm, nn.Identity) and isinstance(mlp.fc1, nn.Linear)
        ):
            mlp.forward = types.MethodType(_mlp_fused_gelu, mlp)
    return caches


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


def _window_mask(block: nn.Module, hp: int, wp: int, device: torch.device) -> torch.Tensor | None:
    """``(nW, 1, N, N)`` float32 shifted-window mask (0 / -100) for a map padded to ``hp x wp``, or None."""
    if not any(block.shift_size):
        return None
    if getattr(block, "dynamic_mask", False):
        mask = block.get_attn_mask(torch.zeros(1, hp, wp, 1, device=device))
    else:
        mask = block.attn_mask
    return mask.float().unsqueeze(1)


def _fast_block_attention(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``SwinTransformerBlock._attn`` with cached window permutations and bias (see module docstring)."""
    from timm.models.swin_transformer import SwinTransformerBlock

    if torch.compiler.is_compiling():  # tracing wants the original, shape-generic code
        return SwinTransformerBlock._attn(self, x)
    b, h, w, c = x.shape
    wh, ww = self.window_size
    windows = self._s1s2_windows.get((h, w))
    if windows is None:
        gather, scatter = _window_permutation(h, w, self.window_size, self.shift_size, x.device)
        hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
        windows = (gather, scatter, _window_mask(self, hp, wp, x.device), hp * wp != h * w)
        self._s1s2_windows.put((h, w), windows)
    gather, scatter, mask, padded = windows
    bias = self._s1s2_bias.get((h, w))
    if bias is None:
        bias = self.attn._get_rel_pos_bias()[0].float().unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            bias = mask + bias
        bias = bias.to(x.dtype).contiguous()
        self._s1s2_bias.put((h, w), bias)
    tokens = x.reshape(b, h * w, c)
    if padded:  # a zero token at index h*w stands for timm's zero padding
        tokens = torch.cat([tokens, tokens.new_zeros(b, 1, c)], dim=1)
    out = window_attention(self.attn, tokens.index_select(1, gather).view(-1, wh * ww, c), bias)
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


@functools.lru_cache(maxsize=None)
def linear_gelu_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's fused linear + GELU exists here for ``dtype`` and matches ``gelu(linear(x))``.

    Checked per dtype: on CPUs without AVX-512 oneDNN has no bfloat16 inner product and the op raises
    "could not create a primitive descriptor", while the float32 one works.
    """
    try:
        op: Any = torch.ops.mkldnn._linear_pointwise
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(8, 16, generator=generator)
        weight = torch.randn(24, 16, generator=generator) / 4
        bias = torch.randn(24, generator=generator)
        with torch.no_grad():
            fused = op(x.to(dtype), weight.to(dtype), bias.to(dtype), "gelu", [], "none").float()
            reference = F.gelu(F.linear(x.to(dtype), weight.to(dtype), bias.to(dtype)).float())
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        return bool(torch.allclose(fused, reference, rtol=tolerance * 10, atol=tolerance))
    except Exception:  # the op is missing (no oneDNN build), refuses this dtype, or has another signature
        return False


def cached_window_tensors(tower: nn.Module) -> tuple[int, int]:
    """``(entries, bytes)`` held by the window caches of a patched Swin copy (for tests and memory reports)."""
    entries = size = 0
    for block in tower.modules():
        for cache in (getattr(block, "_s1s2_windows", None), getattr(block, "_s1s2_bias", None)):
            if cache is None:
                continue
            entries += len(cache)
            for value in cache.values():
                items = value if isinstance(value, tuple) else (value,)
                size += sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))
    return entries, size


__all__ = ["InferenceTower", "LRUCache", "WINDOW_CACHE_SIZES", "linear_gelu_available", "window_attention"]
