"""Augmentations for multispectral and SAR samples (not RGB colour jitter), in raw units.

They act on ``s1`` (dB) and ``s2`` (digital numbers) *before* the model's normalisation, so they
mean something physical:

* geometry - horizontal/vertical flips, 90-degree rotations and random resized crops, applied
  identically to S1, S2 and the validity mask of one view (the modalities stay co-located);
* Sentinel-2 radiometry - a per-band multiplicative gain (calibration, illumination, phenology),
  a per-band additive offset in DN (haze / path radiance), per-pixel Gaussian sensor noise;
* Sentinel-1 radiometry - a per-band offset in dB (calibration, incidence angle) and extra
  multiplicative speckle: intensity times Gamma(L, 1/L), applied in linear power.

:class:`ViewDataset` wraps a pair dataset: for SimCLR it returns two independently augmented views
(``s1``/``s2`` and ``s1_view2``/``s2_view2``); for Dual-SimCLR with augmentation, one view whose
geometry is shared by both modalities. Randomness comes from the sample's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from s1s2_encoders.errors import ConfigError

from ..sampling import SampleKey, sample_seed, unpack_key


@dataclass
class AugmentConfig:
    """The ``augment`` section (all on by default at moderate strength; ``0``/``null`` disables).

    Attributes:
        flip: random horizontal and vertical flips.
        rotate90: random multiples of 90 degrees.
        crop_scale: random resized crop area fraction range (``null``: no resized crop).
        crop_ratio: aspect-ratio range of the resized crop.
        s2_gain_std: per-band multiplicative gain, ``N(1, std)``.
        s2_offset_std: per-band additive offset, digital numbers.
        s2_noise_std: per-pixel Gaussian noise, digital numbers.
        s1_offset_std: per-band offset, dB.
        s1_speckle_looks: looks of the extra speckle (``null``: none; fewer looks = stronger).
    """

    flip: bool = True
    rotate90: bool = True
    crop_scale: tuple[float, float] | None = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.333)
    s2_gain_std: float = 0.1
    s2_offset_std: float = 100.0
    s2_noise_std: float = 30.0
    s1_offset_std: float = 1.0
    s1_speckle_looks: float | None = 4.0

    def __post_init__(self) -> None:
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {list(self.crop_scale)}")
        if self.s1_speckle_looks is not None and not self.s1_speckle_looks > 0:
            raise ConfigError(f"augment.s1_speckle_looks must be > 0 or null, got {self.s1_speckle_looks}")


def _resized_crop(x: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int], mode: str) -> torch.Tensor:
    top, left, h, w = box
    crop = x[..., top : top + h, left : left + w]
    if (h, w) == size:
        return crop
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    lead = crop.shape[:-2]
    resized = F.interpolate(crop.reshape(1, -1, h, w).float(), size=size, mode=mode, **kwargs)
    return resized.reshape(*lead, *size).to(x.dtype)


def _crop_box(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return 0, 0, height, width


def augment_view(sample: dict[str, torch.Tensor], config: AugmentConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One augmented view of a sample (``s1`` ``(2, h, w)`` dB, ``s2`` ``(13, h, w)`` DN, optional
    ``valid`` ``(1, h, w)`` and label maps ``(h, w)``); geometry is shared by all of them."""
    out = dict(sample)
    spatial = [k for k, v in sample.items() if isinstance(v, torch.Tensor) and v.ndim >= 2 and k not in ("index", "n_nan_replaced")]
    height, width = sample["s1"].shape[-2:]
    if config.crop_scale is not None:
        box = _crop_box(rng, height, width, config.crop_scale, config.crop_ratio)
        for k in spatial:
            continuous = k in ("s1", "s2")
            out[k] = _resized_crop(out[k], box, (height, width), "bilinear" if continuous else "nearest")
    if config.flip:
        if rng.random() < 0.5:
            for k in spatial:
                out[k] = out[k].flip(-1)
        if rng.random() < 0.5:
            for k in spatial:
                out[k] = out[k].flip(-2)
    if config.rotate90:
        turns = int(rng.integers(4))
        if turns:
            for k in spatial:
                out[k] = torch.rot90(out[k], turns, dims=(-2, -1))
    s2 = out["s2"].clone()
    c2 = s2.shape[0]
    if config.s2_gain_std:
        s2 *= torch.from_numpy(rng.normal(1.0, config.s2_gain_std, size=(c2, 1, 1)).astype(np.float32)).clamp_min(0.1)
    if config.s2_offset_std:
        s2 += torch.from_numpy(rng.normal(0.0, config.s2_offset_std, size=(c2, 1, 1)).astype(np.float32))
    if config.s2_noise_std:
        s2 += torch.from_numpy(rng.normal(0.0, config.s2_noise_std, size=tuple(s2.shape)).astype(np.float32))
    s1 = out["s1"].clone()
    if config.s1_speckle_looks is not None:
        gamma = rng.gamma(config.s1_speckle_looks, 1.0 / config.s1_speckle_looks, size=tuple(s1.shape)).astype(np.float32)
        s1 = s1 + 10.0 * torch.log10(torch.from_numpy(gamma).clamp_min(1e-6))  # x gamma in linear power
    if config.s1_offset_std:
        s1 += torch.from_numpy(rng.normal(0.0, config.s1_offset_std, size=(s1.shape[0], 1, 1)).astype(np.float32))
    if "valid" in out:  # keep invalid pixels at 0 (they are masked anyway)
        s1 = torch.where(out["valid"], s1, torch.zeros(()))
        s2 = torch.where(out["valid"], s2, torch.zeros(()))
    out["s1"], out["s2"] = s1, s2
    return out


class ViewDataset(Dataset):
    """Augmented views of a pair dataset's samples.

    Args:
        base: a dataset returning sample dicts (takes :class:`~training.sampling.SampleKey`).
        config: augmentation strengths.
        views: ``2`` for SimCLR (keys ``s1, s2, valid`` and ``s1_view2, s2_view2, valid_view2``),
            ``1`` for one augmented co-located view.
    """

    def __init__(self, base: Dataset, config: AugmentConfig, views: Literal[1, 2] = 2):
        if views not in (1, 2):
            raise ConfigError(f"views must be 1 or 2, got {views}")
        self.base, self.config, self.views = base, config, views

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        index, seed = unpack_key(key)
        sample = self.base[SampleKey(index, seed)]
        first = augment_view(sample, self.config, np.random.default_rng([seed, 1]))
        if self.views == 1:
            return first
        second = augment_view(sample, self.config, np.random.default_rng([seed, 2]))
        for k in ("s1", "s2", "valid"):
            if k in second:
                first[f"{k}_view2"] = second[k]
        return first


__all__ = ["AugmentConfig", "ViewDataset", "augment_view", "sample_seed"]
