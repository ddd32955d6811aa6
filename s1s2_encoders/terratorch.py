"""TerraTorch backbones: importing this module registers ``s1s2_swin``, ``s1s2_resnet50`` and
``s1s2_resnet18`` in TerraTorch's backbone registry.

TerraTorch has no plugin entry points; third-party backbones register when their module is
imported. Its command line imports the folder named by ``custom_modules_path`` (a top-level key of
the configuration), so a folder whose ``__init__.py`` says ``import s1s2_encoders.terratorch`` is
enough (``examples/terratorch/``). Then, in a configuration or in Python::

    from terratorch.models import EncoderDecoderFactory
    model = EncoderDecoderFactory().build_model(
        task="segmentation", backbone="s1s2_swin", backbone_pretrained=True, backbone_s2_offset=1000,
        decoder="UNetDecoder", decoder_channels=[256, 128, 64, 32], num_classes=10)
    out = model({"S2L1C": s2, "S1RTC": s1}).output        # (B, 10, H, W)

The backbone takes TerraTorch's multimodal dict input. Sentinel-1 comes under ``S1``, ``S1GRD`` or
``S1RTC`` (TerraMind's names), VV and VH in dB; Sentinel-2 under ``S2``, ``S2L1C`` or ``S2L2A``, in
digital numbers (``S2L2A`` and 12-channel ``S2`` inputs are taken as the 12 L2A bands, without
B10). Values are raw: this package's band selection, unit checks, S2 offset and the checkpoint's
normalisation run inside (:func:`~s1s2_encoders.models.backbone.prepare_pair`), so the datamodule's
``means`` should be 0 and ``stds`` 1. ``forward`` returns the feature pyramid at strides 4, 8, 16
and 32, the S1 and S2 features of each level concatenated (S1 first), and ``out_channels`` lists
their widths, as TerraTorch's decoders expect.

Needs TerraTorch (the ``terratorch`` extra): ``pip install 's1s2-encoders[terratorch]'``.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import torch
from torch import nn

TERRATORCH_EXTRA = "pip install 's1s2-encoders[terratorch]'"


def _import_registry():
    # TerraTorch 1.2 sets torch.set_float32_matmul_precision("medium") when it is imported (in its
    # Clay v1.5 backbone module), which lets float32 matrix products run in lower precision in
    # every model of the process. Registering our backbones must not change the caller's numerics,
    # so the setting is put back when this module is what imports TerraTorch.
    first_import = "terratorch" not in sys.modules
    precision = torch.get_float32_matmul_precision()
    try:
        from terratorch.registry import TERRATORCH_BACKBONE_REGISTRY
    except ImportError as exc:
        raise ImportError(f"s1s2_encoders.terratorch needs TerraTorch (the 'terratorch' extra): {TERRATORCH_EXTRA}") from exc
    finally:
        if first_import:
            torch.set_float32_matmul_precision(precision)
    return TERRATORCH_BACKBONE_REGISTRY


TERRATORCH_BACKBONE_REGISTRY = _import_registry()

from .bands import S2_L1C_BANDS, S2_L2A_BANDS  # noqa: E402
from .errors import ConfigError, InputShapeError  # noqa: E402
from .models.backbone import MODALITIES, S1S2Backbone, prepare_pair  # noqa: E402
from .models.factory import load_backbone  # noqa: E402

S1_KEYS = ("S1", "S1GRD", "S1RTC")
"""Dict keys that hold Sentinel-1 (VV, VH in dB)."""
S2_KEYS = ("S2", "S2L1C", "S2L2A")
"""Dict keys that hold Sentinel-2 digital numbers."""
REGISTERED = {"s1s2_swin": "swin-s1s2", "s1s2_resnet50": "resnet50-s1s2", "s1s2_resnet18": "resnet18-s1s2"}
"""TerraTorch backbone name -> this package's registry name."""
_ARCHITECTURE = {"s1s2_swin": "swin-t", "s1s2_resnet50": "resnet50", "s1s2_resnet18": "resnet18"}


def _modality_of_key(key: str) -> str | None:
    if key in S1_KEYS:
        return "s1"
    if key in S2_KEYS:
        return "s2"
    return None


class S1S2TerraTorchBackbone(nn.Module):
    """A two-tower backbone as TerraTorch uses it: a dict of raw modalities in, a list of feature maps out.

    Args:
        backbone: the :class:`~s1s2_encoders.S1S2Backbone` (its weights are this module's weights).
        modalities: the dict keys to use, e.g. ``["S2L1C", "S1RTC"]`` (any order; S1 features
            come first in the output). ``None``: both towers, each fed by whichever of its keys
            the batch holds. With one key, only that tower runs and a plain tensor input is taken
            as that modality.
        s1_bands / s2_bands: names of the input channels when they are not the model's bands in
            model order (``S2L2A`` and 12-channel ``S2`` inputs default to the 12 L2A bands).
        s2_offset: digital numbers to subtract from S2 (1000 for processing baseline >= 04.00;
            TerraMesh's S2L1C / S2L2A carry it); ``None``: 0, with a warning when values look offset.
        nodata: ``"raise"`` on NaN / inf input, or ``"mask"``: such pixels are left out of the
            normalisation, and feature cells without any valid pixel are 0.
        check_units: raise on S2 reflectance in 0-1 or S1 in linear power.

    Attributes:
        out_channels: widths of the four feature maps (S1 + S2 channels per level).
        patch_size: ``None``. TerraTorch pads inputs to a multiple of twice the first ``patch_size``
            it finds among a backbone's modules (Swin's patch embedding has 4) with reflected
            pixels; the towers pad to 32 inside (zeros after normalisation, which keeps feature
            cells aligned with input pixels), so that padding is not needed.
    """

    def __init__(
        self,
        backbone: S1S2Backbone,
        modalities: Sequence[str] | None = None,
        s1_bands: Sequence[str] | None = None,
        s2_bands: Sequence[str] | None = None,
        s2_offset: float | None = None,
        nodata: str = "raise",
        check_units: bool = True,
    ):
        super().__init__()
        if nodata not in ("raise", "mask"):
            raise ConfigError(f"backbone_nodata must be 'raise' or 'mask', got {nodata!r}")
        # load_backbone hands out models in eval mode (for inference); a module built for training
        # starts in train mode like any other, so BatchNorm statistics follow the new data.
        self.backbone = backbone.train()
        self.keys: dict[str, str | None] = {"s1": None, "s2": None}
        if modalities is not None:
            wanted = {}
            for key in modalities:
                modality = _modality_of_key(key)
                if modality is None:
                    raise ConfigError(
                        f"unknown modality key {key!r}; Sentinel-1: {', '.join(S1_KEYS)}; Sentinel-2: {', '.join(S2_KEYS)}"
                    )
                if modality in wanted:
                    raise ConfigError(f"modality keys {wanted[modality]!r} and {key!r} are both {modality.upper()}; give one")
                wanted[modality] = key
            if not wanted:
                raise ConfigError("modalities is empty; give at least one of S1/S2 keys")
            self.keys = {m: wanted[m] for m in MODALITIES if m in wanted}
        self.modalities = tuple(m for m in MODALITIES if m in self.keys)
        self.s1_bands = list(s1_bands) if s1_bands is not None else None
        self.s2_bands = list(s2_bands) if s2_bands is not None else None
        self.s2_offset = s2_offset
        self.nodata = nodata
        self.check_units = check_units
        channels = backbone.pyramid_channels
        self.out_channels = [sum(channels[m][level] for m in self.modalities) for level in range(4)]
        self.patch_size = None

    def _inputs(self, x: Any) -> dict[str, tuple[str, torch.Tensor]]:
        """The batch's ``(key, tensor)`` for each tower."""
        if isinstance(x, torch.Tensor):
            if len(self.modalities) != 1:
                raise InputShapeError(
                    "this backbone runs both towers and takes a dict of modalities (e.g. {'S2L1C': s2, 'S1RTC': s1}); "
                    "build it with backbone_modalities: [ONE_KEY] for a single-modality tensor input"
                )
            modality = self.modalities[0]
            return {modality: (self.keys[modality] or modality.upper(), x)}
        if not isinstance(x, Mapping):
            raise InputShapeError(f"expected a dict of modalities or a tensor, got {type(x).__name__}")
        found: dict[str, tuple[str, torch.Tensor]] = {}
        for modality in self.modalities:
            key = self.keys[modality]
            candidates = [key] if key is not None else [k for k in (S1_KEYS if modality == "s1" else S2_KEYS) if k in x]
            present = [k for k in candidates if k in x]
            if not present:
                expected = key or " / ".join(S1_KEYS if modality == "s1" else S2_KEYS)
                raise InputShapeError(
                    f"the batch has no {modality.upper()} input: expected key {expected}, got keys {', '.join(map(str, x))}"
                    + ("" if key else "; build the backbone with backbone_modalities to use one tower only")
                )
            if len(present) > 1:
                raise InputShapeError(
                    f"the batch holds several {modality.upper()} inputs ({', '.join(present)}); choose one with backbone_modalities"
                )
            found[modality] = (present[0], x[present[0]])
        return found

    def _s2_bands(self, key: str, tensor: torch.Tensor) -> Sequence[str] | None:
        if self.s2_bands is not None:
            return self.s2_bands
        if key == "S2L2A" or (key == "S2" and tensor.dim() >= 3 and tensor.shape[-3] == len(S2_L2A_BANDS)):
            return S2_L2A_BANDS
        if key == "S2L1C":
            return S2_L1C_BANDS
        return None

    def forward(self, x: Any, **kwargs: Any) -> list[torch.Tensor]:
        """Feature maps ``[(B, C_s, ceil(H/s), ceil(W/s)) for s in 4, 8, 16, 32]``; ``kwargs`` (the
        batch's other keys, which TerraTorch passes on) are not used."""
        inputs = self._inputs(x)
        s1 = inputs["s1"][1] if "s1" in inputs else None
        s2 = inputs["s2"][1] if "s2" in inputs else None
        s2_bands = self._s2_bands(*inputs["s2"]) if "s2" in inputs else None
        prepared = prepare_pair(
            self.backbone.config, s1, s2, self.s1_bands, s2_bands, self.s2_offset,
            nodata=self.nodata, check_units=self.check_units,  # type: ignore[arg-type]
        )
        levels: dict[str, list[torch.Tensor]] = {}
        for modality, item in prepared.items():
            out = self.backbone.encode(modality, item.data, valid=item.valid, present=item.present, dense=True)  # type: ignore[arg-type]
            maps = out.pyramid or []
            if item.valid is not None:
                maps = [torch.nan_to_num(level, nan=0.0) for level in maps]
            levels[modality] = maps
        return [torch.cat([levels[m][i] for m in self.modalities], dim=1) for i in range(4)]


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"backbone_{name} must be true or false, got {value!r}")


def build_backbone(
    name: str,
    pretrained: bool = True,
    ckpt_path: str | None = None,
    modalities: Sequence[str] | None = None,
    s1_bands: Sequence[str] | None = None,
    s2_bands: Sequence[str] | None = None,
    s2_offset: float | None = None,
    nodata: str = "raise",
    check_units: bool = True,
) -> S1S2TerraTorchBackbone:
    """Build a registered backbone (what TerraTorch calls with the ``backbone_*`` arguments).

    Args:
        name: ``s1s2_swin``, ``s1s2_resnet50`` or ``s1s2_resnet18``.
        pretrained: load weights: those of ``ckpt_path`` when given, else the registry entry's
            (:func:`~s1s2_encoders.load_backbone`). ``False``: random weights, no download.
        ckpt_path: a checkpoint folder (``config.json`` + ``model.safetensors``), a registry name or
            ``hf-hub:ORG/REPO``, instead of the entry's weights; it must be of ``name``'s architecture.
        modalities / s1_bands / s2_bands / s2_offset / nodata / check_units: see
            :class:`S1S2TerraTorchBackbone`.

    Raises:
        ConfigError: ``ckpt_path`` holds another architecture (or a task model).
    """
    # Values overridden on TerraTorch's command line arrive as strings inside model_args (a plain dict).
    pretrained = _as_bool(pretrained, "pretrained")
    s2_offset = None if s2_offset is None else float(s2_offset)
    source = ckpt_path if ckpt_path is not None else REGISTERED[name]
    backbone = load_backbone(source, pretrained=pretrained)
    if backbone.config.architecture != _ARCHITECTURE[name]:
        raise ConfigError(
            f"{name} is a {_ARCHITECTURE[name]} backbone but {ckpt_path} holds a {backbone.config.architecture} "
            f"model; use {next(k for k, v in _ARCHITECTURE.items() if v == backbone.config.architecture)} for it"
        )
    return S1S2TerraTorchBackbone(backbone, modalities, s1_bands, s2_bands, s2_offset, nodata, check_units)


@TERRATORCH_BACKBONE_REGISTRY.register
def s1s2_swin(pretrained: bool = True, **kwargs: Any) -> S1S2TerraTorchBackbone:
    """Dual Swin-T (S1: 2 bands, S2: 13 bands; 96/192/384/768 channels per tower); see :func:`build_backbone`."""
    return build_backbone("s1s2_swin", pretrained, **kwargs)


@TERRATORCH_BACKBONE_REGISTRY.register
def s1s2_resnet50(pretrained: bool = True, **kwargs: Any) -> S1S2TerraTorchBackbone:
    """Dual ResNet-50 (Dual-SimCLR; 256/512/1024/2048 channels per tower); see :func:`build_backbone`."""
    return build_backbone("s1s2_resnet50", pretrained, **kwargs)


@TERRATORCH_BACKBONE_REGISTRY.register
def s1s2_resnet18(pretrained: bool = True, **kwargs: Any) -> S1S2TerraTorchBackbone:
    """Dual ResNet-18 (Dual-SimCLR; 64/128/256/512 channels per tower); see :func:`build_backbone`."""
    return build_backbone("s1s2_resnet18", pretrained, **kwargs)
