"""A shape-generic forward of a timm Swin tower, for export with a dynamic height and width.

timm's ``SwinTransformerBlock`` pads every stage to whole windows with ``(w - H % w) % w``, crops
back, and reshapes through ``window_partition``. Traced with a symbolic ``H``, those steps make
``torch.export`` ask questions about the sizes (is the padding zero? is there one window or
several?) whose answers hold for one input size only, so the exported program is pinned to the
example's size. This module computes the same numbers without asking them:

* every stage works on a map padded to whole windows, ``w * ceil(r / w)`` for a real size ``r``;
  tokens beyond ``r`` are set to zero after ``norm1``, exactly where timm pads with zeros, and are
  never read by a real token (windows are independent, and patch merging groups real tokens with
  real tokens because every real stage size but the last is even);
* the cyclic shift, the window partition and their inverses are one ``index_select`` each, with
  indices computed from ``arange`` (data, not shapes), so no reshape depends on a size being 1;
* the shifted-window mask is computed from the same indices, with timm's region boundaries (timm
  rolls the unpadded map, then pads, and draws the regions from the padded end);
* pooling averages the real ``ceil(H/32) x ceil(W/32)`` cells of the last map, each weighted by the
  input pixels it covers, through weights computed from ``arange`` instead of a crop.

The result equals :meth:`S1S2Backbone.encode`'s pooled feature for a Swin tower (tested for
sizes that are and are not multiples of 32 and of the windows), to float32 rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from .fast import window_attention
from .towers import TOTAL_STRIDE, ceil_div

_MASKED = -100.0
"""timm's value for attention between tokens of different shifted-window regions."""


def _mod(a: torch.Tensor, m) -> torch.Tensor:
    """``a % m`` (floor semantics) for a symbolic ``m``: the ONNX exporter has no tensor % SymInt."""
    return a - (a // m) * m


def check_swin_structure(tower: nn.Module) -> None:
    """Raise ``ValueError`` unless ``tower`` is the timm Swin layout this module reproduces."""
    layers = getattr(tower, "layers", None)
    patch = getattr(getattr(tower, "patch_embed", None), "patch_size", None)
    if layers is None or len(layers) != 4 or tuple(patch or ()) != (4, 4):
        raise ValueError("expected a timm SwinTransformer with 4 stages and 4 x 4 patches")
    for layer in layers:
        windows = {tuple(block.window_size) for block in layer.blocks}
        if len(windows) != 1:
            raise ValueError(f"expected one window size per stage, got {sorted(windows)}")


def _zero_outside(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, N, C)`` with tokens where ``inside`` ``(N,)`` is false set to zero."""
    # where(), not a multiplication: padded tokens may hold inf/NaN from earlier blocks.
    return torch.where(inside[None, :, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _pad_rows_cols(x: torch.Tensor, dims: tuple[int, int], sizes: tuple, reals: tuple, zero: bool) -> torch.Tensor:
    """Extend ``x`` along ``dims`` to ``sizes`` by gathering; entries beyond ``reals`` repeat the last
    real one, or are zero with ``zero=True``."""
    for dim, size, real in zip(dims, sizes, reals):
        index = torch.arange(size, device=x.device)
        x = x.index_select(dim, index.clamp(max=real - 1))
        if zero:
            shape = [1] * x.dim()
            shape[dim] = -1
            x = torch.where((index < real).view(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x


def _block_forward(block: nn.Module, x: torch.Tensor, real_h, real_w) -> torch.Tensor:
    """One ``SwinTransformerBlock`` on ``x`` ``(B, Hp, Wp, C)`` (padded to whole windows) whose real
    tokens are the top-left ``real_h x real_w``; returns the same layout."""
    b, hp, wp, c = x.shape
    wh, ww = block.window_size
    sh, sw = block.shift_size
    n = wh * ww
    windows_w = wp // ww
    device = x.device

    # Window order j -> (row, col) on the shifted, padded grid.
    j = torch.arange(hp * wp, device=device)
    window, within = j // n, j % n
    row = (window // windows_w) * wh + within // ww
    col = _mod(window, windows_w) * ww + within % ww
    # timm rolls the real map by -shift, then pads: shifted (r, c) holds token ((r + sh) % real_h, ...).
    source = (torch.where(row < real_h, _mod(row + sh, real_h), row) * wp
              + torch.where(col < real_w, _mod(col + sw, real_w), col))
    tokens = block.norm1(x).reshape(b, hp * wp, c).index_select(1, source)
    tokens = _zero_outside(tokens, (row < real_h) & (col < real_w)).view(-1, n, c)

    attn = block.attn
    bias = attn._get_rel_pos_bias()  # (1, heads, n, n)
    if sh or sw:
        # timm's regions: [0, P - w), [P - w, P - shift), [P - shift, P) with P the padded size.
        padded_h, padded_w = ceil_div(real_h, wh) * wh, ceil_div(real_w, ww) * ww
        region = (((row >= padded_h - wh).long() + (row >= padded_h - sh).long()) * 3
                  + (col >= padded_w - ww).long() + (col >= padded_w - sw).long()).view(-1, n)
        mask = torch.where(region[:, :, None] != region[:, None, :], _MASKED, 0.0).to(bias.dtype)
        bias = bias + mask.unsqueeze(1)  # (windows, heads, n, n)
    out = window_attention(attn, tokens, bias)

    # Back: token (r, c) sits at shifted ((r - sh) % real_h, ...), at that cell's window position.
    r = torch.arange(hp, device=device)
    s = torch.arange(wp, device=device)
    rs = torch.where(r < real_h, _mod(r - sh, real_h), r)
    cs = torch.where(s < real_w, _mod(s - sw, real_w), s)
    position = (((rs // wh) * windows_w)[:, None] + (cs // ww)[None, :]) * n + ((rs % wh) * ww)[:, None] + (cs % ww)[None, :]
    x = x + out.reshape(b, hp * wp, c).index_select(1, position.reshape(-1)).view(b, hp, wp, c)
    return x + block.mlp(block.norm2(x))


def swin_pooled(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled feature ``(B, C)`` of a timm Swin tower for a normalised input ``(B, bands, H, W)``.

    Equal to padding ``x`` with zeros to a multiple of 32, running ``tower.forward_features`` and
    averaging the ``ceil(H/32) x ceil(W/32)`` cells that cover the input weighted by their in-image
    pixels (:func:`~.towers.tower_output`), but written so that
    ``torch.export`` keeps ``B``, ``H`` and ``W`` symbolic (see the module docstring).
    """
    _, _, h, w = x.shape
    cells_h, cells_w = ceil_div(h, TOTAL_STRIDE), ceil_div(w, TOTAL_STRIDE)
    for stage, layer in enumerate(tower.layers):
        scale = 2 ** (len(tower.layers) - 1 - stage)
        real_h, real_w = cells_h * scale, cells_w * scale  # timm's map size at this stage
        wh, ww = layer.blocks[0].window_size
        padded_h, padded_w = ceil_div(real_h, wh) * wh, ceil_div(real_w, ww) * ww
        if stage == 0:
            # Zeros beyond the input, as the backbone's stride-32 padding (and further, unread).
            x = _pad_rows_cols(x, (2, 3), (4 * padded_h, 4 * padded_w), (h, w), zero=True)
            x = tower.patch_embed(x)  # (B, Hp, Wp, C)
        else:
            x = _pad_rows_cols(x, (1, 2), (2 * padded_h, 2 * padded_w), (2 * real_h, 2 * real_w), zero=False)
        x = layer.downsample(x)
        for block in layer.blocks:
            x = _block_forward(block, x, real_h, real_w)
    x = tower.norm(x)
    # Each real cell weighs the input pixels it covers, as the backbone's pooling (towers.pool_cells);
    # cells of the window padding weigh 0 and are zeroed first (they may hold inf/NaN).
    rows = (h - TOTAL_STRIDE * torch.arange(x.shape[1], device=x.device)).clamp(0, TOTAL_STRIDE)
    cols = (w - TOTAL_STRIDE * torch.arange(x.shape[2], device=x.device)).clamp(0, TOTAL_STRIDE)
    weight = (rows[:, None] * cols[None, :]).flatten().to(x.dtype)
    inside = weight > 0
    total = (_zero_outside(x.flatten(1, 2), inside) * weight[None, :, None]).sum(dim=1)
    return total / weight.sum()


def blocks_forward(blocks, x: torch.Tensor) -> torch.Tensor:
    """A stage's ``SwinTransformerBlock`` sequence on a map ``(B, H, W, C)`` whose every token is real
    (the segmenter's encoder and decoder stages, on inputs padded to a multiple of 32), written as
    :func:`swin_pooled` writes them: padded to whole windows by gathering, every block through
    :func:`_block_forward`, cropped back. Equal to ``blocks(x)`` (timm's own forward) to float32 rounding.
    """
    blocks = list(blocks)
    if not blocks:
        return x
    _, h, w, _ = x.shape
    wh, ww = blocks[0].window_size
    padded = _pad_rows_cols(x, (1, 2), (ceil_div(h, wh) * wh, ceil_div(w, ww) * ww), (h, w), zero=False)
    for block in blocks:
        padded = _block_forward(block, padded, h, w)
    # Cropped by gathering: a slice would give the symbolic size min(h, padded size), and nested
    # min/max expressions over the stages make the symbolic shape algebra explode.
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    return padded.index_select(1, rows).index_select(2, cols)
