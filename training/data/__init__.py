"""Datasets for training: SEN12MS, DFC2020, paired GeoTIFF folders and synthetic scenes.

A recipe's ``data`` section lists one or more datasets; they are concatenated (each optionally
repeated), e.g. the quickstart's three real TerraMesh pairs plus synthetic scenes::

    data:
      crop_size: 64
      nan_policy: skip
      datasets:
        - {kind: paired_folder, root: examples/data/terramesh, s2_offset: 1000, repeat: 32}
        - {kind: synthetic, n_samples: 128}

Keys common to all datasets (``crop_size``, ``crop``, ``nan_policy``, ``min_valid_fraction``,
``max_nan_redraws``) can be set once at the ``data`` level; an entry's own value wins.
All datasets return the sample dict of :mod:`training.data.common`; their ``__getitem__`` accepts
:class:`~training.sampling.SampleKey`.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch.utils.data import Dataset

from s1s2_encoders.errors import ConfigError, DatasetError

from ..config import from_dict
from ..sampling import SampleKey, unpack_key
from .augment import AugmentConfig, ViewDataset
from .common import PairDataset, PairOptions, collate_samples
from .dfc2020 import DFC2020Dataset, DFC2020Options
from .paired_folder import PairedFolderDataset, PairedFolderOptions
from .sen12ms import SEN12MSDataset, SEN12MSOptions
from .synthetic import SyntheticOptions, SyntheticPairsDataset, synthetic_scene

DATASET_KINDS: dict[str, tuple[type, Callable[[Any], Dataset]]] = {
    "sen12ms": (SEN12MSOptions, SEN12MSDataset),
    "dfc2020": (DFC2020Options, DFC2020Dataset),
    "paired_folder": (PairedFolderOptions, PairedFolderDataset),
    "synthetic": (SyntheticOptions, SyntheticPairsDataset),
}
_COMMON_KEYS = ("crop_size", "crop", "nan_policy", "min_valid_fraction", "max_nan_redraws")


@dataclass
class DataConfig:
    """The ``data`` section.

    Attributes:
        datasets: entries ``{kind: sen12ms | dfc2020 | paired_folder | synthetic, repeat: N, ...options}``.
        crop_size, crop, nan_policy, min_valid_fraction, max_nan_redraws: defaults for every entry
            (``crop_size`` defaults to the model's ``input_size``).
        augment: augmentation strengths (used by SimCLR, and by Dual-SimCLR when given).
    """

    datasets: list[dict[str, Any]] = field(default_factory=list)
    crop_size: int | None = None
    crop: str | None = None
    nan_policy: str | None = None
    min_valid_fraction: float | None = None
    max_nan_redraws: int | None = None
    augment: AugmentConfig | None = None

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigError("data.datasets must list at least one dataset")


class RepeatedDataset(Dataset):
    """``base`` repeated ``times`` times (each repetition gets its own crops: seeds differ by position)."""

    def __init__(self, base: Dataset, times: int):
        if times < 1:
            raise ConfigError(f"repeat must be >= 1, got {times}")
        self.base, self.times = base, times

    def __len__(self) -> int:
        return len(self.base) * self.times  # type: ignore[arg-type]

    def __getitem__(self, key: int | SampleKey) -> Any:
        index, seed = unpack_key(key)
        return self.base[SampleKey(index % len(self.base), seed)]  # type: ignore[arg-type]


class ConcatenatedDataset(Dataset):
    """Several datasets end to end; keys are routed with their seeds."""

    def __init__(self, parts: list[Dataset]):
        self.parts = parts
        self.ends: list[int] = []
        total = 0
        for part in parts:
            total += len(part)  # type: ignore[arg-type]
            self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, key: int | SampleKey) -> Any:
        index, seed = unpack_key(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        part = bisect.bisect_right(self.ends, index)
        start = self.ends[part - 1] if part else 0
        return self.parts[part][SampleKey(index - start, seed)]


def build_dataset(config: DataConfig, default_crop_size: int | None = None, where: str = "data") -> Dataset:
    """Instantiate and concatenate the datasets of a ``data`` section (without augmentation).

    Raises:
        ConfigError: unknown ``kind``, unknown or mistyped options (named with their position).
        DataFileNotFoundError, DatasetError: from the datasets (missing files, malformed CSVs, ...).
    """
    parts: list[Dataset] = []
    for i, entry in enumerate(config.datasets):
        here = f"{where}.datasets[{i}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise ConfigError(f"{here} must be a mapping with a 'kind' ({', '.join(DATASET_KINDS)})")
        options = dict(entry)
        kind = options.pop("kind")
        repeat = options.pop("repeat", 1)
        if kind not in DATASET_KINDS:
            raise ConfigError(f"{here}.kind {kind!r} is unknown; choose from {', '.join(DATASET_KINDS)}")
        for key in _COMMON_KEYS:
            default = getattr(config, key)
            if key == "crop_size" and default is None:
                default = default_crop_size
            if default is not None and key not in options:
                options[key] = default
        options_cls, dataset_cls = DATASET_KINDS[kind]
        try:
            opts = from_dict(options_cls, options, where=here)
        except DatasetError as exc:
            raise ConfigError(f"{here}: {exc}") from exc
        dataset = dataset_cls(opts)
        parts.append(RepeatedDataset(dataset, int(repeat)) if repeat != 1 else dataset)
    return parts[0] if len(parts) == 1 else ConcatenatedDataset(parts)


__all__ = [
    "AugmentConfig",
    "ConcatenatedDataset",
    "DATASET_KINDS",
    "DFC2020Dataset",
    "DFC2020Options",
    "DataConfig",
    "PairDataset",
    "PairOptions",
    "PairedFolderDataset",
    "PairedFolderOptions",
    "RepeatedDataset",
    "SEN12MSDataset",
    "SEN12MSOptions",
    "SyntheticOptions",
    "SyntheticPairsDataset",
    "ViewDataset",
    "build_dataset",
    "collate_samples",
    "synthetic_scene",
]
