"""Synthetic co-located Sentinel-1 / Sentinel-2 scenes with a known land-cover map.

For tests, benchmarks and examples that need labelled S1/S2 pairs without downloading anything.
The two modalities share information the way real ones do: both are rendered from the same
spatially structured land-cover map, each with its own physics and its own nuisances.

Land cover
    ``n_classes`` smooth random fields (Gaussian-filtered noise with a random correlation length);
    each pixel takes the class whose field is highest. Every scene uses a few classes, one of which
    dominates by a random margin, so the majority class varies in how clear-cut it is.
Sentinel-2 (L1C digital numbers, no +1000 offset)
    per-class 13-band top-of-atmosphere reflectance prototypes (B01..B12 with B8A and B10, SEN12MS
    order; e.g. water dark in the NIR, vegetation with a red edge, bare soil bright in SWIR),
    a per-class spatial texture, per-scene illumination gain and haze (an additive path radiance
    falling with wavelength), a near-zero cirrus band, and sensor noise; times 10000.
Sentinel-1 (dB)
    per-class VV/VH backscatter (water dark, urban bright, vegetation high VH), per-scene incidence
    offset, texture, and multiplicative speckle (Gamma-distributed intensity with ``looks`` looks)
    applied in linear power before conversion to dB.
Optional per-scene variability (off by default; ``phenology``, ``moisture``, ``mixing_px``)
    real land cover does not look the same in every scene: vegetation is greener or browner with
    the season and the crop calendar (and S1 volume scattering follows the biomass), wet soil is
    darker in the SWIR and brighter in C-band backscatter, and a pixel on a field edge mixes two
    classes while its reference label names one. Each is drawn per scene from a separate random
    stream, so switching them off gives back exactly the plain scenes. They make a few labelled
    scenes cover less of what the test scenes look like; their effect on the label-efficiency
    benchmark is in the README.

:func:`synthetic_scene` returns one scene; :class:`SyntheticPairsDataset` serves ``n_samples`` of
them as a training dataset (sample ``i`` is always the same scene; crops come from the sample
seed). Classes mean the same thing in every scene of a ``class_seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from s1s2_encoders.errors import DatasetError

from .common import PairDataset, PairOptions, RawSample, choose_window

CLASS_NAMES: tuple[str, ...] = ("forest", "shrubland", "grassland", "wetland", "cropland", "urban", "barren", "water")
"""Names of the first eight synthetic classes (the DFC2020 evaluation classes, in their order)."""

# Top-of-atmosphere reflectance (0..1) per band B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12.
_S2_PROTOTYPES = np.array([
    [0.12, 0.09, 0.08, 0.05, 0.10, 0.22, 0.27, 0.29, 0.30, 0.10, 0.005, 0.15, 0.07],  # forest
    [0.13, 0.10, 0.10, 0.09, 0.14, 0.20, 0.23, 0.25, 0.26, 0.09, 0.005, 0.22, 0.14],  # shrubland
    [0.13, 0.10, 0.10, 0.07, 0.13, 0.26, 0.31, 0.33, 0.34, 0.11, 0.005, 0.24, 0.13],  # grassland
    [0.12, 0.09, 0.08, 0.06, 0.08, 0.14, 0.16, 0.17, 0.17, 0.06, 0.004, 0.09, 0.05],  # wetland
    [0.14, 0.11, 0.12, 0.10, 0.16, 0.24, 0.28, 0.30, 0.31, 0.11, 0.005, 0.26, 0.17],  # cropland
    [0.17, 0.15, 0.15, 0.16, 0.18, 0.19, 0.20, 0.21, 0.22, 0.08, 0.006, 0.25, 0.22],  # urban
    [0.19, 0.18, 0.20, 0.24, 0.27, 0.29, 0.30, 0.31, 0.32, 0.12, 0.007, 0.38, 0.33],  # barren
    [0.11, 0.08, 0.06, 0.04, 0.03, 0.02, 0.02, 0.02, 0.02, 0.01, 0.003, 0.01, 0.01],  # water
], dtype=np.float64)
# Mean backscatter (dB): VV, VH.
_S1_PROTOTYPES = np.array([
    [-7.5, -13.0], [-9.0, -15.5], [-11.0, -17.5], [-8.0, -16.0],
    [-10.0, -16.5], [-4.0, -10.0], [-14.0, -22.0], [-20.0, -27.0],
], dtype=np.float64)
# Haze (path radiance) relative spectral shape: strong in the blue, ~0 in the SWIR.
_HAZE_SHAPE = np.array([1.0, 0.85, 0.65, 0.5, 0.42, 0.36, 0.32, 0.28, 0.26, 0.2, 0.0, 0.05, 0.02])
_B10 = 10
# Green-vegetation cover of each class (phenology acts on it) and exposed soil (moisture acts on it).
_VEGETATION = np.array([0.95, 0.6, 0.85, 0.7, 0.8, 0.15, 0.0, 0.0])
_SOIL = np.array([0.05, 0.4, 0.15, 0.3, 0.2, 0.2, 1.0, 0.0])
# Senescent vegetation / dry litter over soil: what a vegetated pixel tends to outside the growing season.
_SENESCENT = np.array([0.13, 0.11, 0.13, 0.16, 0.20, 0.23, 0.25, 0.27, 0.28, 0.10, 0.005, 0.33, 0.26])
# Relative darkening of wet soil per band: moderate in the visible, strongest in the SWIR (water absorption).
_WET_SHAPE = np.array([0.6, 0.6, 0.6, 0.65, 0.7, 0.75, 0.75, 0.8, 0.8, 0.8, 0.0, 1.0, 1.0])


@dataclass
class SyntheticScene:
    """One co-located scene.

    Attributes:
        s1_db: ``(2, H, W)`` float32, VV and VH in dB.
        s2_dn: ``(13, H, W)`` float32, L1C digital numbers (reflectance x 10000), no offset.
        labels: ``(H, W)`` int64 class map in ``[0, n_classes)``.
    """

    s1_db: np.ndarray
    s2_dn: np.ndarray
    labels: np.ndarray

    @property
    def majority_class(self) -> int:
        return int(np.bincount(self.labels.ravel()).argmax())


@lru_cache(maxsize=16)
def class_cover(n_classes: int, class_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(green vegetation cover (K,), exposed soil (K,))`` in [0, 1] per class, mixed like
    :func:`class_signatures` beyond eight classes."""
    vegetation, soil = _VEGETATION[:n_classes].copy(), _SOIL[:n_classes].copy()
    if n_classes > len(_VEGETATION):
        weights = np.random.default_rng([class_seed, 7]).dirichlet(np.full(len(_S2_PROTOTYPES), 0.3), size=n_classes - len(_VEGETATION))
        vegetation, soil = np.concatenate([vegetation, weights @ _VEGETATION]), np.concatenate([soil, weights @ _SOIL])
    return vegetation, soil


@lru_cache(maxsize=16)
def class_signatures(n_classes: int, class_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(s2 reflectance (K, 13), s1 dB (K, 2))`` per class.

    The first eight classes are the prototypes above; more classes are random mixtures of them
    (drawn from ``class_seed``) so that they stay physically plausible.
    """
    if n_classes < 2:
        raise DatasetError(f"n_classes must be >= 2, got {n_classes}")
    s2, s1 = _S2_PROTOTYPES[:n_classes].copy(), _S1_PROTOTYPES[:n_classes].copy()
    if n_classes > len(_S2_PROTOTYPES):
        rng = np.random.default_rng([class_seed, 7])
        extra = n_classes - len(_S2_PROTOTYPES)
        weights = rng.dirichlet(np.full(len(_S2_PROTOTYPES), 0.3), size=extra)
        s2 = np.concatenate([s2, weights @ _S2_PROTOTYPES])
        s1 = np.concatenate([s1, weights @ _S1_PROTOTYPES + rng.normal(0, 1.0, size=(extra, 2))])
    return s2, s1


def smooth_field(rng: np.random.Generator, size: int, correlation: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``correlation`` px."""
    noise = rng.standard_normal((size, size))
    freq = np.fft.fftfreq(size)
    kernel = np.exp(-2 * (np.pi * correlation) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.fft.ifft2(np.fft.fft2(noise) * kernel).real
    return (field - field.mean()) / (field.std() + 1e-12)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the last two axes (``sigma`` px, edges reflected); ``sigma <= 0``: a copy."""
    if sigma <= 0:
        return image.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = image.astype(np.float64)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return out


def land_cover_map(rng: np.random.Generator, n_classes: int, size: int, max_classes: int = 4) -> np.ndarray:
    """A blobby ``(size, size)`` class map using 1..``max_classes`` classes with one dominant."""
    count = int(rng.integers(1, min(max_classes, n_classes) + 1))
    present = rng.choice(n_classes, size=count, replace=False)
    correlation = float(rng.uniform(size / 24, size / 8))
    fields = np.stack([smooth_field(rng, size, correlation) for _ in present])
    fields[0] += rng.uniform(0.0, 1.5)  # the first class dominates by a random margin
    return present[fields.argmax(axis=0)].astype(np.int64)


def synthetic_scene(
    seed: int,
    n_classes: int = 8,
    size: int = 64,
    *,
    class_seed: int = 0,
    max_classes_per_scene: int = 4,
    looks: float = 4.0,
    s2_noise_dn: float = 40.0,
    s1_incidence_db: float = 1.5,
    illumination: tuple[float, float] = (0.75, 1.25),
    haze: float = 0.04,
    texture: float = 0.08,
    phenology: float = 0.0,
    moisture: float = 0.0,
    mixing_px: float = 0.0,
) -> SyntheticScene:
    """Render one co-located S1/S2 scene and its land-cover map.

    Args:
        seed: scene seed (same seed, same scene).
        n_classes: number of land-cover classes (>= 2).
        size: height and width in pixels.
        class_seed: fixes what each class looks like (only matters beyond 8 classes).
        max_classes_per_scene: at most this many classes appear in a scene.
        looks: equivalent number of looks of the S1 speckle (lower = noisier).
        s2_noise_dn: standard deviation of the S2 sensor noise, digital numbers.
        s1_incidence_db: standard deviation of the per-scene S1 offset (incidence angle), dB.
        illumination: range of the per-scene multiplicative S2 gain.
        haze: largest per-scene haze reflectance added in the blue band.
        texture: relative amplitude of the within-class spatial texture.
        phenology: spread of the vegetation state (0: every scene at its prototype). Per scene a
            season draws all vegetated classes greener or browner together, each class (crop
            calendars, species) with its own deviation, and the state also varies smoothly across
            the scene (fields at different stages). A vegetated class moves towards a senescent
            litter/soil spectrum when browner (red up, red edge and NIR plateau flatten, SWIR up)
            and away from it when greener; its S1 volume scattering (VH most) follows the biomass.
        moisture: strength of the per-scene soil moisture (0: dry everywhere). Wet exposed soil is
            darker in S2 (most in the SWIR) and brighter in S1 (higher permittivity), in
            proportion to each class's exposed soil.
        mixing_px: boundary mixing: the signal of a pixel is the mixture of the classes within a
            Gaussian footprint of this many pixels (a 10 m pixel straddles field edges, and S1 is
            resampled from 5 x 20 m), while its label stays the one class of the map; labels near
            class edges are therefore partly wrong for the signal, as in real reference maps.

    Returns:
        :class:`SyntheticScene` with ``s1_db (2, size, size)``, ``s2_dn (13, size, size)`` and
        ``labels (size, size)``.
    """
    rng = np.random.default_rng([int(seed) % (1 << 63), 0x5C3E])
    s2_sig, s1_sig = class_signatures(n_classes, class_seed)
    labels = land_cover_map(rng, n_classes, size, max_classes_per_scene)
    tex = smooth_field(rng, size, float(rng.uniform(1.0, 3.0)))
    # Per-class S2 reflectance (K, 13, H, W) and S1 dB (K, 2, H, W) of this scene, rendered per
    # pixel from the mixture weights of the classes around it. The scene's state (season, soil
    # moisture) comes from its own stream, so with phenology = moisture = mixing_px = 0 the scene
    # is exactly what it was without them.
    state = np.random.default_rng([int(seed) % (1 << 63), 0x57A7E])
    present = np.unique(labels)
    weights = blur((labels[None] == present[:, None, None]).astype(np.float64), mixing_px)
    weights /= weights.sum(axis=0, keepdims=True)
    s2_class, s1_class = _scene_signatures(state, present, n_classes, class_seed, size, phenology, moisture)
    # Sentinel-2: mixed class reflectance x texture x illumination + haze + noise.
    reflectance = np.einsum("khw,kbhw->bhw", weights, s2_class) * (1 + texture * tex)[None]
    reflectance = reflectance * rng.uniform(*illumination)
    reflectance = reflectance + rng.uniform(0, haze) * _HAZE_SHAPE[:, None, None]
    s2 = reflectance * 10000 + rng.normal(0, s2_noise_dn, size=reflectance.shape)
    s2[_B10] = np.abs(rng.normal(15, 5, size=(size, size)))  # cirrus band: ~0 under clear sky
    s2 = np.clip(s2, 1, 10000)
    # Sentinel-1: class backscatter (mixed in linear power) + incidence offset + texture, speckle
    # in linear power.
    if mixing_px > 0:
        mixed_db = 10 * np.log10(np.einsum("khw,kbhw->bhw", weights, 10 ** (s1_class / 10)))
    else:  # one class per pixel: no round trip through linear power
        mixed_db = np.take_along_axis(s1_class, np.searchsorted(present, labels)[None, None], axis=0)[0]
    s1_db_mean = mixed_db + rng.normal(0, s1_incidence_db) + 1.5 * tex[None]
    speckle = rng.gamma(looks, 1.0 / looks, size=s1_db_mean.shape)
    s1 = 10 * np.log10(10 ** (s1_db_mean / 10) * speckle)
    return SyntheticScene(s1.astype(np.float32), s2.astype(np.float32), labels)


def _scene_signatures(
    state: np.random.Generator, present: np.ndarray, n_classes: int, class_seed: int, size: int, phenology: float, moisture: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance ``(k, 13, H, W)`` and backscatter dB ``(k, 2, H, W)`` of the ``k`` present classes
    in this scene's season and soil moisture (see :func:`synthetic_scene`)."""
    s2_sig, s1_sig = class_signatures(n_classes, class_seed)
    vegetation, soil = class_cover(n_classes, class_seed)
    k = len(present)
    season = state.uniform(-1.0, 1.0)
    per_class = state.normal(0.0, 0.5, size=k)
    across = smooth_field(state, size, size / 6)
    wetness = state.uniform(0.0, 1.0) * moisture
    # Greenness g (1: the prototype): < 1 browner, > 1 greener; varies over classes and space.
    green = 1.0 + phenology * ((season + per_class)[:, None, None] + 0.5 * across[None])
    green = np.clip(green, 0.2, 1.6)
    veg = vegetation[present][:, None, None]
    delta = veg * (green - 1.0)  # (k, H, W): how far the class has moved from its prototype
    s2 = s2_sig[present][:, :, None, None] + delta[:, None] * (s2_sig[present] - _SENESCENT)[:, :, None, None]
    exposed = np.clip(soil[present][:, None, None] + veg * np.clip(1.0 - green, 0.0, None) * 0.5, 0.0, 1.0)
    s2 = s2 * (1.0 - 0.35 * wetness * exposed[:, None] * _WET_SHAPE[None, :, None, None])
    s2 = np.clip(s2, 0.002, 1.0)
    # S1 (dB): volume scattering follows biomass (VH more than VV); wet soil is brighter.
    s1 = s1_sig[present][:, :, None, None] + delta[:, None] * np.array([2.0, 4.0])[None, :, None, None]
    s1 = s1 + wetness * exposed[:, None] * np.array([5.0, 4.0])[None, :, None, None]
    return s2, s1


@dataclass
class SyntheticOptions(PairOptions):
    """The ``data`` entry for ``kind: synthetic``.

    Attributes:
        n_samples: number of scenes (sample ``i`` is always the same scene).
        size: scene size in pixels (crops of ``crop_size`` are taken from it).
        n_classes: land-cover classes.
        seed: scene seeds are derived from it.
        class_seed: fixes the class signatures.
        looks: S1 speckle looks.
        phenology / moisture / mixing_px: per-scene vegetation state, soil moisture and boundary
            mixing (see :func:`synthetic_scene`; 0 turns each off).
        nan_fraction: fraction of scenes given a NaN stripe in S1 (as SEN12MS has), to exercise
            the NaN policy.
    """

    n_samples: int = 256
    size: int = 64
    n_classes: int = 8
    seed: int = 0
    class_seed: int = 0
    looks: float = 4.0
    phenology: float = 0.0
    moisture: float = 0.0
    mixing_px: float = 0.0
    nan_fraction: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_samples < 1:
            raise DatasetError(f"n_samples must be >= 1, got {self.n_samples}")
        for name in ("phenology", "moisture", "mixing_px"):
            if getattr(self, name) < 0:
                raise DatasetError(f"{name} must be >= 0, got {getattr(self, name):g}")
        if not 0.0 <= self.nan_fraction <= 1.0:
            raise DatasetError(f"nan_fraction must be in [0, 1], got {self.nan_fraction}")


class SyntheticPairsDataset(PairDataset):
    """``n_samples`` synthetic scenes; samples carry ``label_map`` ``(h, w)`` and ``label`` (majority)."""

    name = "synthetic"

    def __init__(self, options: SyntheticOptions):
        super().__init__(options)
        self.options: SyntheticOptions = options

    def __len__(self) -> int:
        return self.options.n_samples

    def scene(self, index: int) -> SyntheticScene:
        o = self.options
        scene = synthetic_scene(
            o.seed * 1_000_003 + index, o.n_classes, o.size, class_seed=o.class_seed, looks=o.looks,
            phenology=o.phenology, moisture=o.moisture, mixing_px=o.mixing_px,
        )
        if o.nan_fraction and np.random.default_rng([o.seed, index, 0xBAD]).random() < o.nan_fraction:
            rows = slice(o.size // 3, o.size // 3 + max(1, o.size // 8))
            scene.s1_db[:, rows, :] = np.nan  # a missing-data stripe, as in some SEN12MS S1 patches
        return scene

    def read(self, index: int, rng: np.random.Generator) -> RawSample:
        scene = self.scene(index)
        o = self.options
        window = choose_window(o.size, o.size, o.crop_size, o.crop, rng, f"synthetic sample {index}")
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        labels = scene.labels[rows, cols]
        majority = np.array(np.bincount(labels.ravel(), minlength=o.n_classes).argmax())
        return RawSample(scene.s1_db[:, rows, cols], scene.s2_dn[:, rows, cols], {"label_map": labels, "label": majority})
