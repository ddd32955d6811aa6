"""Fine-tuning data: targets from label maps, held-out splits, label fractions, class balancing.

:class:`TaskDataset` wraps any pair dataset of :mod:`training.data` (DFC2020, SEN12MS, paired
folders, synthetic scenes) and a list of its indices, and turns each sample's label map into the
target of the task (see :mod:`training.labels`):

* ``"classification"``: ``target`` int64 scalar (majority class among valid pixels, 255 = ignored);
  multi-label: ``target`` float32 ``(K,)`` multi-hot and ``target_valid`` bool;
* ``"segmentation"``: ``target`` int64 ``(h, w)`` with 255 ignored.

Pixels without input data (``valid`` False with ``nan_policy: mask``) are ignored in the labels too.

Which samples are trained on is decided here, in this order, each step with its own fixed seed:

1. **held-out split** (``protocol: held_out``): a fraction of the training dataset is set aside for
   evaluation (the papers instead train on DFC2020 "validation" and test on "test": ``train_test``);
2. **label fraction**: ``round(fraction * N)`` samples (at least 1) drawn from one permutation with
   ``fraction_seed``, so the subsets are nested (the 1 % subset is inside the 10 % subset) and the
   same for every run seed, as in the papers (§3.4), but drawn *before* any oversampling (the
   original sampled the already oversampled CSV, so copies of one patch could be drawn several times);
3. **class-balanced oversampling** (optional): every class (by the sample's majority label) is
   repeated up to the size of the largest class, whole copies first, the remainder drawn without
   replacement with ``oversampling_seed``; samples whose label map has no valid pixel are dropped;
4. a subset smaller than one global batch is repeated (whole copies) until it fills one batch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from s1s2_encoders.classes import IGNORE_INDEX
from s1s2_encoders.errors import ConfigError, DatasetError

from .labels import MULTI_LABEL_MIN_FRACTION, dfc_to_classes, igbp_to_classes, multi_label, single_label
from .sampling import SampleKey, unpack_key

LabelSource = Literal["dfc", "lc", "label_map"]
CLASS_READ_SEED = 0
"""Sample seed used when a sample is read only to learn its class (balancing, statistics)."""


@dataclass
class LabelConfig:
    """The ``labels`` section.

    Attributes:
        source: which label field of the samples to use: ``dfc`` (DFC2020 10-class maps),
            ``lc`` (SEN12MS / DFC2020 MODIS IGBP maps) or ``label_map`` (already class indices
            ``0..K-1``, 255 ignored: synthetic scenes, paired folders with a class map).
        multi_label_min_fraction: a class is a multi-label positive from this fraction of the
            valid pixels on (0.1 in the papers).
    """

    source: LabelSource = "dfc"
    multi_label_min_fraction: float = MULTI_LABEL_MIN_FRACTION

    def __post_init__(self) -> None:
        if not 0.0 < self.multi_label_min_fraction <= 1.0:
            raise ConfigError(f"labels.multi_label_min_fraction must be in (0, 1], got {self.multi_label_min_fraction}")


def label_classes(sample: dict[str, Any], source: LabelSource, num_classes: int) -> np.ndarray:
    """The sample's ``(h, w)`` uint8 class map (0..K-1, 255 ignored) from its raw label field.

    Raises:
        DatasetError: the sample has no such label field, or values outside the scheme.
    """
    if source not in sample:
        fields = sorted(k for k in sample if k not in ("s1", "s2", "valid", "index", "n_nan_replaced"))
        raise DatasetError(
            f"samples have no {source!r} label map (label fields present: {fields or 'none'}); "
            "set labels.source, or ask the dataset for that label (e.g. DFC2020 labels: [dfc])"
        )
    raw = sample[source]
    raw = raw.numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    if raw.ndim != 2:
        raise DatasetError(f"label map {source!r} must be (h, w), got shape {raw.shape}")
    if source == "dfc":
        classes = dfc_to_classes(raw)
    elif source == "lc":
        classes = igbp_to_classes(raw)
    else:
        bad = (raw != IGNORE_INDEX) & ((raw < 0) | (raw >= num_classes))
        if bad.any():
            raise DatasetError(
                f"label_map holds value(s) {np.unique(raw[bad])[:10].tolist()}; expected 0..{num_classes - 1} or {IGNORE_INDEX}"
            )
        classes = raw.astype(np.uint8)
    if "valid" in sample:
        valid = sample["valid"]
        valid = valid.numpy() if isinstance(valid, torch.Tensor) else np.asarray(valid)
        classes = np.where(valid.reshape(classes.shape), classes, IGNORE_INDEX).astype(np.uint8)
    return classes


class TaskDataset(Dataset):
    """Samples of ``base`` at ``indices`` (repeats allowed) with task targets.

    Args:
        base: a pair dataset whose ``__getitem__`` accepts :class:`SampleKey`.
        indices: positions in ``base`` (a label-fraction subset, oversampled, ...).
        task: ``"classification"`` or ``"segmentation"``.
        num_classes: K.
        labels: where labels come from.
        multi_label: classification only.
    """

    def __init__(self, base: Dataset, indices: Sequence[int], task: str, num_classes: int, labels: LabelConfig,
                 multi_label: bool = False):
        if task not in ("classification", "segmentation"):
            raise ConfigError(f"task must be classification or segmentation, got {task!r}")
        if not len(indices):
            raise DatasetError("the fine-tuning dataset is empty (no sample selected)")
        n = len(base)  # type: ignore[arg-type]
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise DatasetError(f"indices {bad[:5]} outside the dataset of {n} samples")
        self.base, self.indices = base, [int(i) for i in indices]
        self.task, self.num_classes, self.labels, self.multi_label = task, num_classes, labels, multi_label

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | SampleKey) -> dict[str, torch.Tensor]:
        index, seed = unpack_key(key)
        sample = self.base[SampleKey(self.indices[index], seed)]
        classes = label_classes(sample, self.labels.source, self.num_classes)
        out = {"s1": sample["s1"], "s2": sample["s2"]}
        for passthrough in ("valid", "n_nan_replaced"):
            if passthrough in sample:
                out[passthrough] = sample[passthrough]
        if self.task == "segmentation":
            out["target"] = torch.from_numpy(classes.astype(np.int64))
        elif self.multi_label:
            targets, ok = multi_label(classes, self.num_classes, self.labels.multi_label_min_fraction)
            out["target"] = torch.from_numpy(targets)
            out["target_valid"] = torch.tensor(bool(ok))
        else:
            out["target"] = torch.tensor(int(single_label(classes, self.num_classes)), dtype=torch.int64)
        return out


# ---------------------------------------------------------------------------------------- selection
def _check_fraction(name: str, value: float, allow_one: bool = True) -> None:
    if not (0.0 < value < 1.0 or (allow_one and value == 1.0)):
        raise ConfigError(f"{name} must be in (0, 1{']' if allow_one else ')'}, got {value}")


def held_out_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """``(train, evaluation)`` indices: ``round(fraction * n)`` (at least 1) samples held out.

    Raises:
        ConfigError: fraction outside (0, 1), or nothing would be left to train on.
    """
    _check_fraction("split.held_out_fraction", fraction, allow_one=False)
    k = max(1, int(round(fraction * n)))
    if k >= n:
        raise ConfigError(f"holding out {k} of {n} samples leaves none to train on")
    order = np.random.default_rng([int(seed), 0x4E1D]).permutation(n)
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def label_fraction_subset(indices: Sequence[int], fraction: float, seed: int) -> list[int]:
    """``round(fraction * len(indices))`` (at least 1) of ``indices``; nested for growing fractions
    (one permutation per ``seed``, prefixes of it)."""
    _check_fraction("split.label_fraction", fraction)
    indices = list(indices)
    k = max(1, int(round(fraction * len(indices))))
    order = np.random.default_rng([int(seed), 0xF4AC]).permutation(len(indices))
    return sorted(indices[i] for i in order[:k])


def balanced_oversampling(indices: Sequence[int], classes: Sequence[int], seed: int) -> list[int]:
    """Repeat samples so that every class (``classes[i]`` is the class of ``indices[i]``) is as
    frequent as the largest one; class 255 (no valid pixel) is dropped.

    Returns:
        Indices (with repeats), sorted.
    """
    by_class: dict[int, list[int]] = {}
    for index, cls in zip(indices, classes):
        if int(cls) != IGNORE_INDEX:
            by_class.setdefault(int(cls), []).append(int(index))
    if not by_class:
        raise DatasetError("no sample has a valid label: nothing to oversample")
    target = max(len(v) for v in by_class.values())
    rng = np.random.default_rng([int(seed), 0xBA1])
    out: list[int] = []
    for cls in sorted(by_class):
        members = by_class[cls]
        copies, remainder = divmod(target, len(members))
        out += members * copies
        out += [members[i] for i in rng.choice(len(members), size=remainder, replace=False)]
    return sorted(out)


def fill_one_batch(indices: Sequence[int], global_batch_size: int) -> list[int]:
    """Repeat ``indices`` (whole copies) until there are at least ``global_batch_size`` of them."""
    indices = list(indices)
    if len(indices) >= global_batch_size:
        return indices
    return indices * -(-global_batch_size // len(indices))


def sample_classes(base: Dataset, indices: Sequence[int], labels: LabelConfig, num_classes: int) -> np.ndarray:
    """Majority class (255: no valid pixel) of each sample, read with a fixed sample seed."""
    out = np.empty(len(indices), dtype=np.int64)
    for position, index in enumerate(indices):
        sample = base[SampleKey(int(index), CLASS_READ_SEED)]
        out[position] = int(single_label(label_classes(sample, labels.source, num_classes), num_classes))
    return out


def class_counts(classes: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    """``{class name: count}`` (and ``"ignored"`` for 255), for logs and result rows."""
    counts = Counter(int(c) for c in classes)
    out = {name: counts.get(i, 0) for i, name in enumerate(names)}
    if counts.get(IGNORE_INDEX):
        out["ignored"] = counts[IGNORE_INDEX]
    return out


__all__ = [
    "LabelConfig",
    "TaskDataset",
    "balanced_oversampling",
    "class_counts",
    "fill_one_batch",
    "held_out_split",
    "label_classes",
    "label_fraction_subset",
    "sample_classes",
]
