"""The two-tower S1 + S2 backbone and its ``embed`` API."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..errors import InputShapeError
from ..inputs import ArrayLike, NodataPolicy, PreparedInput, check_pair, prepare_input, warn_missing_bands
from ..preprocess import InputNormalizer
from .compute import (
    ComputeChoice,
    InferenceTowers,
    choose_compute,
    inference_context,
    input_memory_format,
    parse_dtype,
    run_towers,
    tower_dtype,
)
from .towers import (
    PYRAMID_STRIDES,
    TOTAL_STRIDE,
    ceil_div,
    create_tower,
    feature_pyramid,
    last_feature_map,
    pyramid_channels,
)

Modality = Literal["s1", "s2"]
MODALITIES: tuple[Modality, Modality] = ("s1", "s2")
DTypeArg = str | torch.dtype | None


@dataclass
class TowerOutput:
    """What one tower produced for a batch.

    Attributes:
        pooled: ``(B, D)`` mean of the stride-32 map over valid cells (NaN rows where no pixel was valid).
        pyramid: ``[(B, C_s, ceil(H/s), ceil(W/s)) for s in 4, 8, 16, 32]`` or ``None``.
    """

    pooled: torch.Tensor
    pyramid: list[torch.Tensor] | None = None


def resolve_dtype(dtype: DTypeArg) -> torch.dtype:
    """``None``/``"float32"`` -> float32; ``"bfloat16"``/``"bf16"`` -> bfloat16 (no ``"auto"``:
    that needs a device, see :func:`~s1s2_encoders.models.compute.choose_compute`)."""
    if isinstance(dtype, str) and dtype.lower() == "auto":
        raise ValueError("resolve_dtype cannot decide 'auto' without a device; use choose_compute(dtype, device)")
    return parse_dtype(dtype) or torch.float32


def _pad_to_stride(x: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Zero-pad bottom/right to a multiple of 32 so every stage sees whole cells.

    Padding at the end keeps cell (i, j) of the stride-s map on input pixels
    [i*s, (i+1)*s) x [j*s, (j+1)*s): features stay aligned with input pixels.
    """
    h, w = x.shape[-2:]
    # (n + 31) // 32 * 32 rather than (-n) % 32: under torch.export every later size (stages,
    # windows) is then a multiple of one symbol, which keeps the symbolic shape algebra small.
    pad_h = ceil_div(h, TOTAL_STRIDE) * TOTAL_STRIDE - h
    pad_w = ceil_div(w, TOTAL_STRIDE) * TOTAL_STRIDE - w
    # Under torch.export / torch.compile the sizes are symbolic: branching on them would pin the
    # exported program to one size, so the (possibly zero) padding is always applied there.
    if not torch.compiler.is_compiling() and pad_h == 0 and pad_w == 0:
        return x, valid
    x = F.pad(x, (0, pad_w, 0, pad_h))
    if valid is not None:
        valid = F.pad(valid, (0, pad_w, 0, pad_h), value=False)
    return x, valid


def _valid_fraction(valid: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Fraction of valid input pixels in each stride x stride cell, ``(B, 1, h, w)``."""
    fraction = F.avg_pool2d(valid.float(), kernel_size=stride, stride=stride)
    return fraction[..., : size[0], : size[1]]


def pool_valid_cells(last: torch.Tensor, valid_padded: torch.Tensor | None) -> torch.Tensor:
    """Pool a cropped stride-32 map ``(B, C, h, w)`` to ``(B, C)``.

    Without a mask this is the plain spatial mean. With ``valid_padded`` (``(B, 1, H_pad, W_pad)``
    bool, the mask after :func:`_pad_to_stride`), cells are weighted by the fraction of valid
    pixels they saw, and a sample with no valid pixel gets NaN rather than a silent number.
    Shared by the backbone's ``embed`` and the classifiers built on it.
    """
    if valid_padded is None:
        return last.mean(dim=(2, 3))
    weight = _valid_fraction(valid_padded, TOTAL_STRIDE, last.shape[-2:])
    total = weight.sum(dim=(2, 3))
    pooled = (last * weight).sum(dim=(2, 3)) / total.clamp_min(1e-12)
    return torch.where(total > 0, pooled, torch.full_like(pooled, math.nan))


def prepare_pair(
    config: ModelConfig,
    s1: Any,
    s2: Any,
    s1_bands: Sequence[str] | None = None,
    s2_bands: Sequence[str] | None = None,
    s2_offset: float | None = None,
    nodata: NodataPolicy = "raise",
    check_units: bool = True,
) -> dict[str, PreparedInput]:
    """Validate and convert the user's S1 / S2 arrays for a model with ``config``'s bands.

    The one input path of every model in the package (backbones and task models): band selection
    and re-ordering by name, NaN/inf policy, unit checks, the S2 offset, the S1/S2 pairing checks
    and the missing-band warning. Modalities passed as ``None`` are left out of the result.

    Returns:
        ``{"s1": PreparedInput, "s2": PreparedInput}`` (only the given modalities).
    """
    prepared: dict[str, PreparedInput] = {}
    if s1 is not None:
        prepared["s1"] = prepare_input(s1, "s1", config.s1_bands, s1_bands, nodata=nodata, check_units=check_units)
    if s2 is not None:
        prepared["s2"] = prepare_input(
            s2, "s2", config.s2_bands, s2_bands, nodata=nodata, check_units=check_units, s2_offset=s2_offset,
        )
    check_pair(prepared.get("s1"), prepared.get("s2"))
    for modality, item in prepared.items():
        warn_missing_bands(item, modality)  # type: ignore[arg-type]
    return prepared


class S1S2Backbone(nn.Module):
    """Two independent towers, one for Sentinel-1 and one for Sentinel-2, with normalisation inside.

    State-dict keys are ``s1.<timm key>`` and ``s2.<timm key>``; the normalisation is rebuilt from
    the config and is not part of the weights.

    Use :meth:`embed` / :meth:`embed_dense` for raw numpy arrays or tensors; ``forward`` is the
    export-friendly tensor path (full band stacks in model order, finite values).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        kwargs = dict(config.tower_kwargs)
        self.s1 = create_tower(config.architecture, len(config.s1_bands), **kwargs)
        self.s2 = create_tower(config.architecture, len(config.s2_bands), **kwargs)
        norm = config.normalization
        self.s1_normalizer = InputNormalizer(norm.kind, norm.s1, len(config.s1_bands), norm.eps)
        self.s2_normalizer = InputNormalizer(norm.kind, norm.s2, len(config.s2_bands), norm.eps)
        # Inference copies of the towers used by embed (a plain attribute: never in state_dict()).
        self._inference_towers = InferenceTowers()
        self.last_compute: ComputeChoice | None = None
        """How the last :meth:`embed` / :meth:`embed_dense` call computed (dtype, device, why)."""

    # ------------------------------------------------------------------ introspection
    @property
    def embed_dims(self) -> dict[str, int]:
        """Pooled embedding size per modality (768 for Swin-T, 512 ResNet-18, 2048 ResNet-50)."""
        return {"s1": self.s1.num_features, "s2": self.s2.num_features}

    @property
    def embed_dim(self) -> int:
        """Size of the concatenated S1 + S2 embedding."""
        return sum(self.embed_dims.values())

    @property
    def pyramid_channels(self) -> dict[str, tuple[int, ...]]:
        """Channels of the dense maps at strides 4, 8, 16, 32 per modality."""
        return {"s1": pyramid_channels(self.s1), "s2": pyramid_channels(self.s2)}

    def tower(self, modality: Modality) -> nn.Module:
        return self.s1 if modality == "s1" else self.s2

    def normalizer(self, modality: Modality) -> InputNormalizer:
        return self.s1_normalizer if modality == "s1" else self.s2_normalizer

    def bands(self, modality: Modality) -> tuple[str, ...]:
        return self.config.s1_bands if modality == "s1" else self.config.s2_bands

    # ------------------------------------------------------------------ tensor paths
    def encode(
        self,
        modality: Modality,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        present: Sequence[int] | None = None,
        dense: bool = False,
        tower: nn.Module | None = None,
    ) -> TowerOutput:
        """Normalise and encode one modality.

        Args:
            modality: ``"s1"`` or ``"s2"``.
            x: ``(B, C, H, W)`` raw values in model band order (only ``present`` bands if given).
            valid: optional ``(B, 1, H, W)`` bool mask of pixels with data.
            present: model positions of ``x``'s channels when bands are missing.
            dense: also return the feature pyramid.
            tower: run this module instead of the modality's own tower (``embed`` passes its
                bfloat16 copy). The normalised input is cast to the tower's weight dtype and
                memory format; normalisation itself always runs in float32.
        """
        h, w = x.shape[-2:]
        normalized = self.normalizer(modality)(x, valid=valid, present=present)
        normalized, valid_padded = _pad_to_stride(normalized, valid)
        tower = self.tower(modality) if tower is None else tower
        normalized = normalized.to(dtype=tower_dtype(tower), memory_format=input_memory_format(tower))
        # Integer ceil-division, written like the padding in _pad_to_stride: exact, and symbolic
        # shapes under torch.export stay provably equal (math.ceil would fix the size).
        if dense:
            pyramid = feature_pyramid(tower, self.config.architecture, normalized)
            sizes = [(ceil_div(h, s), ceil_div(w, s)) for s in PYRAMID_STRIDES]
            pyramid = [m[..., : sh, : sw] for m, (sh, sw) in zip(pyramid, sizes)]
            last = pyramid[-1]
        else:
            pyramid = None
            last = last_feature_map(tower, self.config.architecture, normalized)
            last = last[..., : ceil_div(h, TOTAL_STRIDE), : ceil_div(w, TOTAL_STRIDE)]
        last = last.float()
        pooled = pool_valid_cells(last, valid_padded)
        if valid_padded is not None:
            if pyramid is not None:
                masked = []
                for stride, level in zip(PYRAMID_STRIDES, pyramid):
                    fraction = _valid_fraction(valid_padded, stride, level.shape[-2:])
                    masked.append(torch.where(fraction > 0, level.float(), torch.full((), math.nan, device=level.device)))
                pyramid = masked
        return TowerOutput(pooled=pooled, pyramid=pyramid)

    def forward(self, s1: torch.Tensor | None = None, s2: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embedding from raw tensors.

        Args:
            s1: ``(B, 2, H, W)`` backscatter in dB (VV, VH), or None.
            s2: ``(B, 13, H, W)`` L1C digital numbers in model band order, or None.

        Returns:
            ``(B, D)``: S1 then S2 pooled features concatenated (only the given modalities).
        """
        parts = [self.encode(m, x).pooled for m, x in (("s1", s1), ("s2", s2)) if x is not None]
        if not parts:
            raise InputShapeError("pass at least one of s1 and s2")
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ user API
    def embed(
        self,
        s1: ArrayLike | None = None,
        s2: ArrayLike | None = None,
        *,
        s1_bands: Sequence[str] | None = None,
        s2_bands: Sequence[str] | None = None,
        s2_offset: float | None = None,
        per_modality: bool = False,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: DTypeArg = "auto",
        nodata: NodataPolicy = "raise",
        check_units: bool = True,
    ) -> Any:
        """Pooled embeddings of co-located Sentinel-1 / Sentinel-2 inputs.

        Args:
            s1: ``(2, H, W)`` or ``(B, 2, H, W)`` backscatter in **dB** (VV, VH), numpy or torch.
            s2: ``(13, H, W)`` or ``(B, 13, H, W)`` **L1C digital numbers** (reflectance x 10000).
                Either may be omitted: the towers are independent.
            s1_bands / s2_bands: band names of the arrays' channels when they are not exactly the
                model's bands in model order (they are then selected and re-ordered). Missing S2
                bands are allowed with a warning (their first-layer weights are dropped).
            s2_offset: digital numbers to subtract from S2 first: 1000 for products of processing
                baseline 04.00 or later (acquired from 25 January 2022 on). ``None`` means 0 and
                warns if the values look offset.
            per_modality: return ``{"s1": (B, D1), "s2": (B, D2)}`` instead of the concatenation.
            batch_size: samples per forward pass (bounds memory for large inputs).
            device: where to compute (default: where the model is).
            dtype: ``"auto"`` (default): bfloat16 where the hardware runs it natively (CUDA with
                compute capability >= 8.0, CPUs with AVX512-BF16 or AMX), else float32; the
                choice is logged once (logger ``s1s2_encoders``, INFO) and kept in
                :attr:`last_compute`; the environment variable ``S1S2_DTYPE`` overrides it.
                ``"auto"`` and ``"bfloat16"`` run cached inference copies of the towers in that
                dtype (normalisation stays float32; see :mod:`s1s2_encoders.models.compute`);
                ``"float32"`` runs the model's own towers (the reference); ``"float16"`` autocast.
                Outputs are float32 whatever the compute dtype. bfloat16 embeddings agree with
                float32 to cosine similarity >= 0.999 (README, "Performance").
            nodata: ``"raise"`` on NaN/inf input, or ``"mask"`` them: they are excluded from
                pooling, and a sample with no valid pixel in a modality gets NaN for it.
            check_units: raise :class:`~s1s2_encoders.errors.UnitsError` on values that look like
                S2 reflectance in 0-1 or S1 in linear power.

        Returns:
            ``(B, D)`` float32 (always with a batch dimension): S1 features then S2 features,
            ``D = 1536`` for Swin-T, 1024 for ResNet-18, 4096 for ResNet-50 (half with one
            modality). numpy in -> numpy out; tensor in -> tensor out on the input's device.
        """
        results = self._run(
            s1, s2, s1_bands, s2_bands, s2_offset, batch_size, device, dtype, nodata, check_units, dense=False
        )
        pooled = {m: out["pooled"] for m, out in results.items()}
        if per_modality:
            return pooled
        return self._concat([pooled[m] for m in MODALITIES if m in pooled])

    def embed_dense(
        self,
        s1: ArrayLike | None = None,
        s2: ArrayLike | None = None,
        *,
        s1_bands: Sequence[str] | None = None,
        s2_bands: Sequence[str] | None = None,
        s2_offset: float | None = None,
        per_modality: bool = False,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: DTypeArg = "auto",
        nodata: NodataPolicy = "raise",
        check_units: bool = True,
    ) -> Any:
        """Dense feature pyramid, aligned with the input pixels.

        Same arguments as :meth:`embed`. Cell ``(i, j)`` of the stride-``s`` map describes input
        pixels ``[i*s, (i+1)*s) x [j*s, (j+1)*s)``; maps are ``ceil(H/s) x ceil(W/s)``.
        With ``nodata="mask"``, cells without any valid pixel are NaN.

        Returns:
            ``{4: (B, C4, H/4, W/4), 8: ..., 16: ..., 32: ...}`` in NCHW with S1 channels then S2
            channels; with ``per_modality=True``, ``{"s1": {...}, "s2": {...}}``. For Swin-T the
            channels per modality are 96, 192, 384, 768; the spatial mean of the stride-32 map is
            the pooled embedding.
        """
        results = self._run(
            s1, s2, s1_bands, s2_bands, s2_offset, batch_size, device, dtype, nodata, check_units, dense=True
        )
        per = {m: dict(zip(PYRAMID_STRIDES, out["pyramid"])) for m, out in results.items()}
        if per_modality:
            return per
        present = [m for m in MODALITIES if m in per]
        return {s: self._concat([per[m][s] for m in present]) for s in PYRAMID_STRIDES}

    def save_pretrained(self, folder: str | Path, model_card: str | None = None, overwrite: bool = False) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``folder`` atomically."""
        from ..checkpoint import write_checkpoint

        return write_checkpoint(folder, self.config, self.state_dict(), model_card=model_card, overwrite=overwrite)

    def compute_tower(self, modality: Modality, choice: ComputeChoice) -> nn.Module:
        """The module that computes ``modality`` for ``choice``: the tower itself for ``plain`` and
        ``autocast``, a cached inference copy in ``choice.dtype`` (rebuilt when the weights change)
        for ``inference-copy``."""
        tower = self.tower(modality)
        if choice.mode != "inference-copy":
            return tower
        return self._inference_towers.get(modality, tower, self.config.architecture, choice.dtype, choice.device)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _concat(parts: list[Any]) -> Any:
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts, axis=1)
        return torch.cat(parts, dim=1)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def _prepare(
        self, s1: Any, s2: Any, s1_bands: Any, s2_bands: Any, s2_offset: float | None, nodata: NodataPolicy,
        check_units: bool,
    ) -> dict[str, PreparedInput]:
        return prepare_pair(self.config, s1, s2, s1_bands, s2_bands, s2_offset, nodata, check_units)

    def _run(
        self, s1: Any, s2: Any, s1_bands: Any, s2_bands: Any, s2_offset: float | None, batch_size: int,
        device: Any, dtype: DTypeArg, nodata: NodataPolicy, check_units: bool, dense: bool,
    ) -> dict[str, dict[str, Any]]:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        parse_dtype(dtype)  # reject a bad dtype before any work
        prepared = self._prepare(s1, s2, s1_bands, s2_bands, s2_offset, nodata, check_units)
        target = torch.device(device) if device is not None else next(self.parameters()).device
        if target != next(self.parameters()).device:
            self.to(target)
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        choice = choose_compute(dtype, target)
        self.last_compute = choice
        towers = {m: self.compute_tower(m, choice) for m in prepared}
        n = next(iter(prepared.values())).data.shape[0]
        chunks: dict[str, dict[str, list[torch.Tensor]]] = {m: {"pooled": [], "pyramid": []} for m in prepared}

        def compute_context() -> ContextManager[None]:
            return inference_context(choice)

        def job(modality: str, item: PreparedInput, start: int, stop: int) -> Callable[[], TowerOutput]:
            def encode() -> TowerOutput:
                valid = item.valid[start:stop].to(target) if item.valid is not None else None
                return self.encode(
                    modality, item.data[start:stop].to(target), valid=valid,  # type: ignore[arg-type]
                    present=item.present, dense=dense, tower=towers[modality],
                )
            return encode

        with self._eval_mode(), compute_context():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                jobs = {m: job(m, item, start, stop) for m, item in prepared.items()}
                for modality, out in run_towers(jobs, target, compute_context).items():
                    chunks[modality]["pooled"].append(out.pooled.float())
                    if dense:
                        chunks[modality]["pyramid"].append([m.float() for m in out.pyramid])
        results: dict[str, dict[str, Any]] = {}
        for modality, item in prepared.items():
            pooled = torch.cat(chunks[modality]["pooled"])
            entry: dict[str, Any] = {"pooled": self._to_user(pooled, item)}
            if dense:
                levels = zip(*chunks[modality]["pyramid"])
                entry["pyramid"] = [self._to_user(torch.cat(level), item) for level in levels]
            results[modality] = entry
        return results

    @staticmethod
    def _to_user(x: torch.Tensor, item: PreparedInput) -> Any:
        if item.was_numpy:
            return x.cpu().numpy()
        return x.to(item.source_device)
