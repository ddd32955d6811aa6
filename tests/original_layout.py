"""Checkpoints in the ORIGINAL SSLTransformerRS key layout, built from random weights, and reference
forwards of the original architectures. Written for the tests, independently of the original code
(which may not be copied into this project): the layout below was written out from
reference_facts.md §1.5, §1.6, §2.2, and the Swin forward from the Swin paper's definitions
(Liu et al., ICCV 2021) and the facts recorded there.

Original layout
===============

Top level: ``{"epoch": int, "arch": None, "state_dict": {...}, "optimizer": {...}}`` (the trainer's
``save_checkpoint``), or a bare state dict. Every key starts with ``backbone1.`` (Sentinel-1 tower,
2 input channels: VV, VH) or ``backbone2.`` (Sentinel-2 tower, 13 channels). Below, ``C`` is the
channel count of a stage (96, 192, 384, 768 for Swin-T) and ``nH`` its heads (3, 6, 12, 24).

Dual Swin-T (Microsoft Swin code as vendored by the original repo; 190 keys per tower)::

    patch_embed.proj.weight            (96, in_chans, 4, 4)     conv, stride 4
    patch_embed.proj.bias              (96,)
    patch_embed.norm.{weight,bias}     (96,)                    LayerNorm after the patch embedding
    layers.S.blocks.B.norm1.{weight,bias}                       (C,)
    layers.S.blocks.B.attn.relative_position_bias_table         (169, nH)    (2*7-1)^2 rows
    layers.S.blocks.B.attn.relative_position_index   BUFFER     (49, 49) int64, every block
    layers.S.blocks.B.attn.qkv.{weight,bias}                    (3C, C), (3C,)
    layers.S.blocks.B.attn.proj.{weight,bias}                   (C, C), (C,)
    layers.S.blocks.B.norm2.{weight,bias}                       (C,)
    layers.S.blocks.B.mlp.fc1.{weight,bias}                     (4C, C), (4C,)
    layers.S.blocks.B.mlp.fc2.{weight,bias}                     (C, 4C), (C,)
    layers.S.blocks.B.attn_mask      BUFFER     odd B of stages 0, 1, 2 only (shifted windows):
                                                (64, 49, 49), (16, 49, 49), (4, 49, 49) float32, 0 / -100.
                                                Stage 3 (7 x 7 tokens = one window) is never shifted
                                                and registers None, which state_dict leaves out.
    layers.S.downsample.reduction.weight        (2C, 4C)  no bias   S = 0, 1, 2: patch merging at the
    layers.S.downsample.norm.{weight,bias}      (4C,)               END of stage S (timm: start of S+1)
    norm.{weight,bias}                          (768,)
    head.{weight,bias}                          (1000, 768), (1000,)  never used by the SSL loss

Dual ResNet (torchvision ResNet-18/50, conv1 replaced by Conv2d(in_chans, 64, 7, stride 2, pad 3,
bias=False), fc replaced by the SimCLR projection head Sequential(Linear(d, d), ReLU, Linear(d, 128)),
d = 512 / 2048)::

    conv1.weight (64, in_chans, 7, 7), bn1.{weight,bias,running_mean,running_var,num_batches_tracked},
    layerK.I.{conv1,bn1,conv2,bn2[,conv3,bn3]}.*, layerK.0.downsample.{0,1}.*,
    fc.0.{weight,bias} (d, d), (d,);  fc.2.{weight,bias} (128, d), (128,)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

PREFIXES = {"s1": "backbone1.", "s2": "backbone2."}
REGISTRY_NAMES = {"swin-t": "swin-s1s2", "resnet50": "resnet50-s1s2", "resnet18": "resnet18-s1s2"}
IN_CHANS = {"s1": 2, "s2": 13}


@dataclass(frozen=True)
class SwinSpec:
    """Hyper-parameters of a Swin tower in the original code (Swin-T by default)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window: int = 7
    patch: int = 4
    img_size: int = 224
    num_classes: int = 1000

    def resolution(self, stage: int) -> int:
        return self.img_size // self.patch // 2**stage

    def stage_window(self, stage: int) -> int:
        return min(self.window, self.resolution(stage))

    def shift(self, stage: int, block: int) -> int:
        # Blocks alternate regular / shifted windows; a stage that fits in one window never shifts.
        if block % 2 == 0 or self.resolution(stage) <= self.window:
            return 0
        return self.window // 2


SWIN_T = SwinSpec()


def tiny_registry_config(architecture: str):
    """The registry config of the published model with this architecture, with the small towers of
    tests/conftest.py (same key layout, a fraction of the compute)."""
    from conftest import TINY_TOWER_KWARGS

    from s1s2_encoders.registry import REGISTRY

    return REGISTRY[REGISTRY_NAMES[architecture]].config().replace(tower_kwargs=dict(TINY_TOWER_KWARGS[architecture]))


def tiny_registry_entry(architecture: str):
    """The published registry entry of this architecture (same name, Drive file id, licence) whose config
    has the small towers of :func:`tiny_registry_config`: what the original-checkpoint fetch builds and
    converts into when a test serves a tiny original checkpoint under the real file id."""
    from conftest import TINY_TOWER_KWARGS

    from s1s2_encoders.registry import REGISTRY, RegistryEntry

    class TinyEntry(RegistryEntry):
        def config(self):
            return RegistryEntry.config(self).replace(tower_kwargs=dict(TINY_TOWER_KWARGS[self.architecture]))

    return TinyEntry(**REGISTRY[REGISTRY_NAMES[architecture]].__dict__)


def tiny_swin_spec() -> SwinSpec:
    """Matches tests/conftest.py TINY_TOWER_KWARGS['swin-t'] (same grid and windows as Swin-T)."""
    return SwinSpec(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


# --------------------------------------------------------------------------- buffers


def relative_position_index(window: int) -> torch.Tensor:
    """``(window^2, window^2)`` int64: row-major token i = (yi, xi), j = (yj, xj) ->
    (yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1), an index into the bias table."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return (dy * (2 * window - 1) + dx).to(torch.int64)


def shifted_window_mask(resolution: int, window: int, shift: int) -> torch.Tensor:
    """``(num_windows, window^2, window^2)`` float32 attention mask of a shifted-window block.

    After the cyclic shift by ``-shift``, the last ``window`` rows/columns hold pixels from up to three
    source regions (bands [0, R - window), [R - window, R - shift), [R - shift, R)); tokens of a
    window may only attend to tokens from the same region: 0 there, -100 elsewhere.
    """
    coords = torch.arange(resolution)
    band = (coords >= resolution - window).long() + (coords >= resolution - shift).long()
    region = band[:, None] * 3 + band[None, :]  # (R, R)
    n = resolution // window
    windows = region.view(n, window, n, window).permute(0, 2, 1, 3).reshape(n * n, window * window)
    same = windows[:, :, None] == windows[:, None, :]
    return torch.where(same, 0.0, -100.0).to(torch.float32)


# --------------------------------------------------------------------------- builders


def _linear(gen: torch.Generator, out_f: int, in_f: int, bias: bool = True) -> list[torch.Tensor]:
    weight = torch.randn(out_f, in_f, generator=gen) * 0.02
    return [weight, torch.randn(out_f, generator=gen) * 0.02] if bias else [weight]


def _norm(gen: torch.Generator, dim: int) -> list[torch.Tensor]:
    return [1.0 + 0.1 * torch.randn(dim, generator=gen), 0.02 * torch.randn(dim, generator=gen)]


def swin_tower(in_chans: int, spec: SwinSpec = SWIN_T, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """One Swin tower in the original key layout (no prefix), random weights, exact buffers."""
    gen = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    d0 = spec.embed_dim
    sd["patch_embed.proj.weight"] = torch.randn(d0, in_chans, spec.patch, spec.patch, generator=gen) * 0.2
    sd["patch_embed.proj.bias"] = torch.randn(d0, generator=gen) * 0.02
    sd["patch_embed.norm.weight"], sd["patch_embed.norm.bias"] = _norm(gen, d0)
    for s, depth in enumerate(spec.depths):
        dim, heads, window = d0 * 2**s, spec.num_heads[s], spec.stage_window(s)
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}."
            shift = spec.shift(s, b)
            if shift:
                sd[p + "attn_mask"] = shifted_window_mask(spec.resolution(s), window, shift)
            sd[p + "norm1.weight"], sd[p + "norm1.bias"] = _norm(gen, dim)
            sd[p + "attn.relative_position_bias_table"] = torch.randn((2 * window - 1) ** 2, heads, generator=gen) * 0.5
            sd[p + "attn.relative_position_index"] = relative_position_index(window)
            sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = _linear(gen, 3 * dim, dim)
            sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = _linear(gen, dim, dim)
            sd[p + "norm2.weight"], sd[p + "norm2.bias"] = _norm(gen, dim)
            sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = _linear(gen, 4 * dim, dim)
            sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = _linear(gen, dim, 4 * dim)
        if s < len(spec.depths) - 1:
            (sd[f"layers.{s}.downsample.reduction.weight"],) = _linear(gen, 2 * dim, 4 * dim, bias=False)
            sd[f"layers.{s}.downsample.norm.weight"], sd[f"layers.{s}.downsample.norm.bias"] = _norm(gen, 4 * dim)
    last = d0 * 2 ** (len(spec.depths) - 1)
    sd["norm.weight"], sd["norm.bias"] = _norm(gen, last)
    sd["head.weight"], sd["head.bias"] = _linear(gen, spec.num_classes, last)
    return sd


def torchvision_resnet(
    architecture: str, in_chans: int, layers: tuple[int, ...] | None = None, seed: int | None = 0
) -> nn.Module:
    """The original ResNet tower: torchvision ResNet, conv1 -> in_chans x 7x7 stride 2, fc -> projection MLP.
    With a ``seed``, every parameter and BatchNorm statistic is random (so that a mis-mapped key changes
    the output); ``seed=None`` keeps torchvision's initialisation (for a model that gets loaded anyway)."""
    block = torchvision.models.resnet.Bottleneck if architecture == "resnet50" else torchvision.models.resnet.BasicBlock
    default = (3, 4, 6, 3) if architecture == "resnet50" else (2, 2, 2, 2)
    model = torchvision.models.resnet.ResNet(block, list(layers or default))
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    d = model.fc.in_features
    model.fc = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128))
    if seed is None:
        return model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(1000 + seed)
            elif name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                tensor.copy_(0.5 + 0.5 * torch.rand(tensor.shape, generator=gen))
            elif tensor.dim() > 1:  # conv / linear weights: He-like scale keeps activations O(1)
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
    return model.eval()


def resnet_tower(architecture: str, in_chans: int, layers: tuple[int, ...] | None = None, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict(torchvision_resnet(architecture, in_chans, layers, seed).state_dict())


def original_state_dict(architecture: str, *, tiny: bool = False, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """A dual checkpoint's ``state_dict`` in the original layout (``backbone1.*`` then ``backbone2.*``)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for i, (modality, prefix) in enumerate(PREFIXES.items()):
        if architecture == "swin-t":
            tower = swin_tower(IN_CHANS[modality], tiny_swin_spec() if tiny else SWIN_T, seed=seed * 2 + i)
        else:
            tower = resnet_tower(architecture, IN_CHANS[modality], (1, 1, 1, 1) if tiny else None, seed=seed * 2 + i)
        out.update((prefix + k, v) for k, v in tower.items())
    return out


def save_original(path, state_dict, *, wrapper: bool = True, epoch: int = 299, with_optimizer: bool = True) -> None:
    """``torch.save`` the way the original trainers did: ``{"epoch", "arch", "state_dict", "optimizer"}``."""
    if not wrapper:
        torch.save(state_dict, path)
        return
    obj = {"epoch": epoch, "arch": None, "state_dict": state_dict}
    if with_optimizer:
        # A small but real AdamW state: tensors, ints, floats, tuples, None (all weights_only-safe).
        param = nn.Parameter(torch.zeros(3))
        opt = torch.optim.AdamW([param], lr=5e-7, weight_decay=0.0)
        param.grad = torch.ones(3)
        opt.step()
        obj["optimizer"] = opt.state_dict()
    torch.save(obj, path)


# --------------------------------------------------------------------------- reference forwards


def sslt_normalise(x: torch.Tensor, modality: str) -> torch.Tensor:
    """The original dataset normalisation (reference_facts.md §3.2): clip S1 to [-25, 0] dB and add 25,
    clip S2 to [0, 10000]; divide each channel by its own maximum in the sample + 1e-5."""
    x = x.double()
    x = x.clamp(-25, 0) + 25 if modality == "s1" else x.clamp(0, 10000)
    return (x / (x.amax(dim=(-2, -1), keepdim=True) + 1e-5)).float()


def _ln(x: torch.Tensor, sd, key: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps=1e-5)


def _window_attention(x, sd, p, heads, window, shift, resolution):
    """Shifted-window multi-head self-attention of one block on ``(B, R*R, C)`` tokens."""
    b, _, c = x.shape
    grid = x.view(b, resolution, resolution, c)
    if shift:
        grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
    n = resolution // window
    tokens = grid.view(b, n, window, n, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b * n * n, window * window, c)
    qkv = F.linear(tokens, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.view(tokens.shape[0], window * window, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    scores = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    index = sd[p + "attn.relative_position_index"].reshape(-1)
    bias = sd[p + "attn.relative_position_bias_table"][index].view(window * window, window * window, heads)
    scores = scores + bias.permute(2, 0, 1)[None]
    if shift:
        mask = sd[p + "attn_mask"]  # taken from the checkpoint, as the original code does
        scores = (scores.view(b, n * n, heads, window * window, window * window) + mask[None, :, None]).flatten(0, 1)
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(tokens.shape[0], window * window, c)
    out = F.linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    grid = out.view(b, n, n, window, window, c).permute(0, 1, 3, 2, 4, 5).reshape(b, resolution, resolution, c)
    if shift:
        grid = torch.roll(grid, shifts=(shift, shift), dims=(1, 2))
    return grid.reshape(b, resolution * resolution, c)


def reference_swin_pooled(sd, x: torch.Tensor, spec: SwinSpec = SWIN_T) -> torch.Tensor:
    """Pooled features (final LayerNorm, mean over tokens) of the original Swin on ``(B, C, 224, 224)``,
    computed from an original-layout tower state dict (no prefix). Patch merging is applied at the end
    of each stage 0..2, as in the original layout."""
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=spec.patch)
    x = _ln(x.flatten(2).transpose(1, 2), sd, "patch_embed.norm")
    for s, depth in enumerate(spec.depths):
        res, window = spec.resolution(s), spec.stage_window(s)
        for blk in range(depth):
            p = f"layers.{s}.blocks.{blk}."
            x = x + _window_attention(_ln(x, sd, p + "norm1"), sd, p, spec.num_heads[s], window, spec.shift(s, blk), res)
            hidden = F.gelu(F.linear(_ln(x, sd, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
            x = x + F.linear(hidden, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        if f"layers.{s}.downsample.reduction.weight" in sd:
            b, _, c = x.shape
            g = x.view(b, res, res, c)
            # 2x2 neighbourhood concatenated in the order (0,0), (1,0), (0,1), (1,1) (row, column)
            merged = torch.cat([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2], g[:, 1::2, 1::2]], dim=-1)
            merged = _ln(merged.view(b, -1, 4 * c), sd, f"layers.{s}.downsample.norm")
            x = F.linear(merged, sd[f"layers.{s}.downsample.reduction.weight"])
    return _ln(x, sd, "norm").mean(dim=1)


def tower_state(sd, modality: str) -> dict[str, torch.Tensor]:
    """The un-prefixed tower of a dual original state dict."""
    prefix = PREFIXES[modality]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def reference_resnet_pooled(architecture: str, sd, modality: str, x: torch.Tensor, layers=None) -> torch.Tensor:
    """Pooled features of the original torchvision ResNet (projection head removed) loaded strictly
    from an original-layout state dict."""
    model = torchvision_resnet(architecture, IN_CHANS[modality], layers, seed=None)
    model.load_state_dict(tower_state(sd, modality), strict=True)
    model.fc = nn.Identity()
    with torch.no_grad():
        return model.eval()(x)
