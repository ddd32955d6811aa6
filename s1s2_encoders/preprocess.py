"""Input normalisation, recorded per checkpoint and applied inside the model.

Two kinds exist (``Normalization.kind``):

``"sslt_channel_max"``
    What the original SSLTransformerRS weights were trained with (reference_facts.md §3.2):
    S1 clipped to [-25, 0] dB, S2 clipped to [0, 10000]; the lower clip bound is subtracted (S1 + 25,
    S2 + 0) and **each channel is divided by its own maximum within the sample** plus 1e-5.
    The result depends on the content of the tile: the same pixel gets different values in
    different crops, so whole-scene inference shows seams at tile borders. Needed only for the
    converted original weights.

``"fixed"``
    Content-independent: clip to ``[lo, hi]`` then ``(x - mean_b) / std_b`` per band. With
    ``mean = lo`` and ``std = hi - lo`` this is a plain clip-and-scale to [0, 1]. Used by the
    checkpoints this project trains; tiles of a scene agree where they overlap.

Missing Sentinel-2 bands (an L2A stack for a 13-band model) are set to 0 *after* normalisation,
which is exactly equivalent to dropping the first layer's weights for those bands.

The Sentinel-2 processing-baseline offset (+1000 digital numbers in products of baseline 04.00 and
later, from 25 January 2022) is an input property, not a model property: it is removed before
normalisation by :func:`remove_s2_offset` when the caller says so (``s2_offset=1000``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ._warnings import warn_user
from .errors import ConfigError

NormalizationKind = Literal["sslt_channel_max", "fixed"]

S2_BASELINE_OFFSET_DN = 1000.0
"""Offset (digital numbers) added to L1C/L2A values from processing baseline 04.00 (25 Jan 2022)."""

S1_CLIP_DB: tuple[float, float] = (-25.0, 0.0)
S2_CLIP_DN: tuple[float, float] = (0.0, 10000.0)
SSLT_EPS = 1e-5


@dataclass(frozen=True)
class ModalityNormalization:
    """Normalisation of one modality.

    Attributes:
        clip: ``(lo, hi)`` in input units (dB for S1, digital numbers for S2).
        mean: per-band mean subtracted after clipping (``"fixed"`` only), model band order.
        std: per-band standard deviation divided by (``"fixed"`` only).
    """

    clip: tuple[float, float]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"clip": list(self.clip)}
        if self.mean is not None:
            out["mean"] = list(self.mean)
            out["std"] = list(self.std or ())
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "ModalityNormalization":
        unknown = set(data) - {"clip", "mean", "std"}
        if unknown:
            raise ConfigError(f"{where}: unknown normalisation field(s) {sorted(unknown)}")
        if "clip" not in data or len(data["clip"]) != 2:
            raise ConfigError(f"{where}: 'clip' must be [lo, hi]")
        lo, hi = (float(v) for v in data["clip"])
        if not lo < hi:
            raise ConfigError(f"{where}: clip bounds must satisfy lo < hi, got [{lo}, {hi}]")
        mean = tuple(float(v) for v in data["mean"]) if data.get("mean") is not None else None
        std = tuple(float(v) for v in data["std"]) if data.get("std") is not None else None
        if (mean is None) != (std is None):
            raise ConfigError(f"{where}: 'mean' and 'std' must be given together")
        if std is not None and any(not s > 0 for s in std):
            raise ConfigError(f"{where}: every std must be > 0, got {list(std)}")
        return cls(clip=(lo, hi), mean=mean, std=std)


@dataclass(frozen=True)
class Normalization:
    """Normalisation of both modalities, stored in a checkpoint's ``config.json``."""

    kind: NormalizationKind
    s1: ModalityNormalization
    s2: ModalityNormalization
    eps: float = SSLT_EPS

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "s1": self.s1.to_dict(), "s2": self.s2.to_dict()}
        if self.kind == "sslt_channel_max":
            out["eps"] = self.eps
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        if not isinstance(data, dict):
            raise ConfigError(f"normalization must be an object, got {type(data).__name__}")
        unknown = set(data) - {"kind", "s1", "s2", "eps"}
        if unknown:
            raise ConfigError(f"normalization: unknown field(s) {sorted(unknown)}")
        kind = data.get("kind")
        if kind not in ("sslt_channel_max", "fixed"):
            raise ConfigError(
                f"normalization.kind must be 'sslt_channel_max' or 'fixed', got {kind!r}"
            )
        for modality in ("s1", "s2"):
            if modality not in data:
                raise ConfigError(f"normalization.{modality} is missing")
        s1 = ModalityNormalization.from_dict(data["s1"], "normalization.s1")
        s2 = ModalityNormalization.from_dict(data["s2"], "normalization.s2")
        if kind == "fixed" and (s1.mean is None or s2.mean is None):
            raise ConfigError("normalization.kind 'fixed' needs per-band 'mean' and 'std' for s1 and s2")
        return cls(kind=kind, s1=s1, s2=s2, eps=float(data.get("eps", SSLT_EPS)))

    def validate_bands(self, s1_bands: Sequence[str], s2_bands: Sequence[str]) -> None:
        """Check that per-band statistics have one value per band."""
        for name, spec, bands in (("s1", self.s1, s1_bands), ("s2", self.s2, s2_bands)):
            if spec.mean is not None and len(spec.mean) != len(bands):
                raise ConfigError(
                    f"normalization.{name}: {len(spec.mean)} mean/std values for {len(bands)} bands "
                    f"({', '.join(bands)})"
                )


def sslt_channel_max() -> Normalization:
    """The original SSLTransformerRS normalisation (per-sample, per-channel maximum)."""
    return Normalization(
        kind="sslt_channel_max",
        s1=ModalityNormalization(clip=S1_CLIP_DB),
        s2=ModalityNormalization(clip=S2_CLIP_DN),
    )


def fixed_clip_scale(n_s1_bands: int = 2, n_s2_bands: int = 13) -> Normalization:
    """Content-independent clip-and-scale to [0, 1]: S1 [-25, 0] dB, S2 [0, 10000] DN."""

    def scale(clip: tuple[float, float], n: int) -> ModalityNormalization:
        return ModalityNormalization(clip=clip, mean=(clip[0],) * n, std=(clip[1] - clip[0],) * n)

    return Normalization(kind="fixed", s1=scale(S1_CLIP_DB, n_s1_bands), s2=scale(S2_CLIP_DN, n_s2_bands))


def fixed_standardize(
    s1_mean: Sequence[float], s1_std: Sequence[float], s2_mean: Sequence[float], s2_std: Sequence[float],
    s1_clip: tuple[float, float] = S1_CLIP_DB, s2_clip: tuple[float, float] = S2_CLIP_DN,
) -> Normalization:
    """Content-independent clip then per-band standardisation with dataset statistics."""
    return Normalization(
        kind="fixed",
        s1=ModalityNormalization(clip=s1_clip, mean=tuple(map(float, s1_mean)), std=tuple(map(float, s1_std))),
        s2=ModalityNormalization(clip=s2_clip, mean=tuple(map(float, s2_mean)), std=tuple(map(float, s2_std))),
    )


class InputNormalizer(nn.Module):
    """Normalises one modality inside the model: ``(B, C_in, H, W)`` raw -> ``(B, C, H, W)``.

    Buffers are not persistent: they come from ``config.json``, not from ``model.safetensors``.
    Computation is done in float32 whatever autocast says: S2 digital numbers reach 10000 and
    bfloat16 keeps only 8 bits of mantissa.
    """

    def __init__(self, kind: NormalizationKind, spec: ModalityNormalization, n_bands: int, eps: float = SSLT_EPS):
        super().__init__()
        self.kind = kind
        self.eps = float(eps)
        self.n_bands = n_bands
        lo, hi = spec.clip
        self.lo, self.hi = float(lo), float(hi)
        mean = spec.mean if spec.mean is not None else (0.0,) * n_bands
        std = spec.std if spec.std is not None else (1.0,) * n_bands
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        present: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Normalise.

        Args:
            x: ``(B, C_in, H, W)`` raw values, channels in model order. ``C_in`` equals the model's
                band count, or ``len(present)`` when some bands are missing.
            valid: optional ``(B, 1, H, W)`` bool mask of pixels with data; invalid pixels are set
                to 0 after normalisation and do not enter the per-sample maximum.
            present: model positions of the channels in ``x`` when some bands are missing; the
                missing ones are 0 in the output.

        Returns:
            ``(B, n_bands, H, W)`` float32.
        """
        # Devices without autocast (e.g. "meta", used to trace shapes) need no guard against it.
        no_autocast = (torch.autocast(device_type=x.device.type, enabled=False)
                       if torch.amp.is_autocast_available(x.device.type) else contextlib.nullcontext())
        with no_autocast:
            x = x.float()
            y = x.clamp(self.lo, self.hi)
            # y is a new tensor: without autograd, shift and scale it in place. Every allocation the
            # size of a batch is fresh memory the kernel must fault in (~15 ms per 40 MB here).
            in_place = not y.requires_grad
            y = y.sub_(self.lo) if in_place else y - self.lo
            if valid is not None:
                y = torch.where(valid, y, torch.zeros((), dtype=y.dtype, device=y.device))
            if self.kind == "sslt_channel_max":
                scale = y.amax(dim=(2, 3), keepdim=True) + self.eps
                y = y.div_(scale) if in_place else y / scale
            else:
                mean, std = self.mean, self.std
                if present is not None:
                    index = torch.as_tensor(list(present), device=x.device)
                    mean, std = mean.index_select(1, index), std.index_select(1, index)
                y = (y + self.lo - mean) / std
                if valid is not None:
                    y = torch.where(valid, y, torch.zeros((), dtype=y.dtype, device=y.device))
            if present is not None and len(present) != self.n_bands:
                full = y.new_zeros((y.shape[0], self.n_bands, y.shape[2], y.shape[3]))
                full[:, list(present)] = y
                y = full
        return y


def remove_s2_offset(x: torch.Tensor, offset: float) -> torch.Tensor:
    """Subtract the processing-baseline offset from S2 digital numbers (values may go below 0;
    normalisation clips them)."""
    return x - float(offset) if offset else x


def looks_like_s2_offset(x: torch.Tensor, band_names: Sequence[str], valid: torch.Tensor | None = None) -> bool:
    """Heuristic: does this S2 stack (``(B, C, H, W)``, raw DN) carry the +1000 offset?

    The cirrus band B10 is close to 0 DN under clear skies and about 1000-1100 with the offset;
    without B10, every band's 1st percentile at or above 1000 is a strong sign (dark pixels such as
    water are far below 1000 DN without the offset).
    """
    def percentile(values: torch.Tensor, q: float) -> float:
        if valid is not None:
            values = values[valid[:, 0]]
        values = values.flatten().float()
        if values.numel() == 0:
            return math.nan
        # A heuristic needs no exact percentile of millions of pixels: an even subsample of
        # <= 100k values (quantile() sorts, and refuses inputs above 16M values anyway).
        if values.numel() > 100_000:
            values = values[:: values.numel() // 100_000 + 1]
        return float(torch.quantile(values, q))

    if "B10" in band_names:
        return percentile(x[:, list(band_names).index("B10")], 0.5) >= S2_BASELINE_OFFSET_DN
    lows = [percentile(x[:, c], 0.01) for c in range(x.shape[1])]
    lows = [v for v in lows if not math.isnan(v)]
    return bool(lows) and min(lows) >= S2_BASELINE_OFFSET_DN


def warn_s2_offset() -> None:
    warn_user(
        "The Sentinel-2 values look like they carry the +1000 offset of processing baseline 04.00 "
        "(products from 25 January 2022 on), which the models were not trained with. Pass "
        "s2_offset=1000 to remove it, or s2_offset=0 to keep the values as they are and silence "
        "this warning."
    )
