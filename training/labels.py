"""Land-cover labels for fine-tuning: DFC2020 / SEN12MS IGBP -> the papers' 8 classes, and the
single-label, multi-label and segmentation targets derived from a label map.

The 8 classes (``s1s2_encoders.DFC2020_CLASS_NAMES``) are the 10-class DFC2020 scheme without
Savanna (3) and Snow/Ice (8); those two and no-data (0) become :data:`IGNORE_INDEX` (255)
(reference_facts.md §3.3):

=====================  ======  =========================
DFC2020 (10 classes)   value   8-class index
=====================  ======  =========================
no data                0       255 (ignored)
Forest                 1       0
Shrubland              2       1
Savanna                3       255 (ignored)
Grassland              4       2
Wetlands               5       3
Croplands              6       4
Urban/Built-up         7       5
Snow/Ice               8       255 (ignored)
Barren                 9       6
Water                  10      7
=====================  ======  =========================

SEN12MS MODIS IGBP maps (band 1 of ``lc``, values 1..17, 0 = no data) go to the DFC2020 scheme with
the original ``IGBP2DFC`` table first, then through the same mapping.

Targets from a label map that already holds 8-class indices and 255:

* **single label**: the majority class among the *valid* (non-255) pixels; ties go to the lower
  class index. The original took the majority including 255, so a mostly Savanna crop got label
  255 and then an extra "class_255" entry with accuracy 0 in the average accuracy (§3.5). Here a
  crop **without any valid pixel** gets :data:`IGNORE_INDEX`: it is skipped by the loss
  (``ignore_index=255``) and left out of every metric (the evaluators count such samples
  separately and report the count), instead of being scored.
* **multi label**: every class covering at least 10 % of the crop's *valid* pixels (the original
  divided by all pixels, 255 included). With 8 classes some class always reaches 1/8 > 10 %, so a
  crop with valid pixels has at least one label; a crop without valid pixels gets an all-zero
  vector and ``valid=False`` and is ignored like above.
* **segmentation**: the 8-class map itself, with 255 ignored by the loss and the metrics.
"""

from __future__ import annotations

import numpy as np

from s1s2_encoders.classes import DFC2020_CLASS_NAMES, IGNORE_INDEX
from s1s2_encoders.errors import DatasetError

NUM_CLASSES = len(DFC2020_CLASS_NAMES)
MULTI_LABEL_MIN_FRACTION = 0.10
"""A class is a multi-label positive when it covers at least this fraction of the valid pixels
(the rule of Schmitt & Wu, arXiv 2104.00704, used by the papers)."""

DFC10_TO_8: dict[int, int] = {
    0: IGNORE_INDEX, 1: 0, 2: 1, 3: IGNORE_INDEX, 4: 2, 5: 3, 6: 4, 7: 5, 8: IGNORE_INDEX, 9: 6, 10: 7,
}
"""DFC2020 10-class value -> 8-class index (255: ignored)."""

IGBP_TO_DFC10: tuple[int, ...] = (0, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 6, 8, 9, 10)
"""IGBP value (0 = no data, 1..17) -> DFC2020 10-class value: the original ``IGBP2DFC`` table.
Forests 1-5 -> Forest, shrublands 6-7 -> Shrubland, savannas 8-9 -> Savanna, 10 Grassland,
11 Wetlands, 12 Croplands and 14 Cropland/natural mosaic -> Croplands, 13 Urban, 15 Snow/Ice,
16 Barren, 17 Water."""


def _lookup_table(mapping: dict[int, int]) -> np.ndarray:
    table = np.full(256, -1, dtype=np.int16)
    for source, target in mapping.items():
        table[source] = target
    return table


_DFC_TABLE = _lookup_table(DFC10_TO_8)
_IGBP_TABLE = _lookup_table(dict(enumerate(IGBP_TO_DFC10)))


def _apply(table: np.ndarray, labels: np.ndarray, scheme: str, valid_values: str) -> np.ndarray:
    values = np.asarray(labels)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise DatasetError(f"{scheme} labels must be numeric, got dtype {values.dtype}")
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            raise DatasetError(f"{scheme} labels must be whole numbers ({valid_values}); found NaN or fractions")
    as_int = values.astype(np.int64)
    out_of_range = (as_int < 0) | (as_int > 255)
    mapped = np.where(out_of_range, -1, table[np.clip(as_int, 0, 255)])
    if (mapped < 0).any():
        bad = np.unique(as_int[mapped < 0])[:10].tolist()
        raise DatasetError(f"{scheme} labels contain value(s) {bad} outside the scheme ({valid_values})")
    return mapped.astype(np.uint8)


def dfc_to_classes(dfc: np.ndarray) -> np.ndarray:
    """DFC2020 10-class map (0 = no data, 1..10) -> 8-class indices with 255 ignored, uint8, same shape.

    Raises:
        DatasetError: a value outside 0..10 (named in the message).
    """
    return _apply(_DFC_TABLE, dfc, "DFC2020", "0 = no data, 1..10")


def igbp_to_classes(igbp: np.ndarray) -> np.ndarray:
    """SEN12MS MODIS IGBP map (0 = no data, 1..17) -> 8-class indices with 255 ignored, uint8.

    Raises:
        DatasetError: a value outside 0..17.
    """
    dfc10 = _apply(_IGBP_TABLE, igbp, "IGBP", "0 = no data, 1..17")
    return dfc_to_classes(dfc10)


def class_histogram(classes: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixel count per class over the last two axes, ignoring 255: ``(..., H, W)`` -> ``(..., K)`` int64."""
    classes = np.asarray(classes)
    flat = classes.reshape(*classes.shape[:-2], -1).astype(np.int64)
    lead = flat.shape[:-1]
    flat = flat.reshape(-1, flat.shape[-1])
    valid = flat != IGNORE_INDEX
    bad = valid & ((flat < 0) | (flat >= num_classes))
    if bad.any():
        raise DatasetError(
            f"class map holds value(s) {np.unique(flat[bad])[:10].tolist()}; expected 0..{num_classes - 1} or {IGNORE_INDEX}"
        )
    rows = np.broadcast_to(np.arange(flat.shape[0])[:, None], flat.shape)
    counts = np.bincount((rows * num_classes + flat)[valid], minlength=flat.shape[0] * num_classes)
    counts = counts.reshape(flat.shape[0], num_classes).astype(np.int64)
    return counts.reshape(*lead, num_classes)


def single_label(classes: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Majority class among valid pixels; 255 when no pixel is valid. Ties: lowest class index.

    Args:
        classes: ``(H, W)`` or ``(B, H, W)`` 8-class map (uint8, 255 ignored).

    Returns:
        ``()`` or ``(B,)`` int64.
    """
    counts = class_histogram(classes, num_classes)
    label = counts.argmax(axis=-1)
    return np.where(counts.sum(axis=-1) > 0, label, IGNORE_INDEX).astype(np.int64)


def multi_label(
    classes: np.ndarray, num_classes: int = NUM_CLASSES, min_fraction: float = MULTI_LABEL_MIN_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot vector of the classes covering at least ``min_fraction`` of the valid pixels.

    Args:
        classes: ``(H, W)`` or ``(B, H, W)`` 8-class map (255 ignored).

    Returns:
        ``(targets, valid)``: ``(..., K)`` float32 in {0, 1} and ``(...)`` bool, False for maps
        without any valid pixel (their targets are all zero and must be ignored).
    """
    counts = class_histogram(classes, num_classes)
    total = counts.sum(axis=-1, keepdims=True)
    # compare counts, not rounded fractions: exactly 10 % is in
    targets = (counts * 1.0 >= min_fraction * total - 1e-9) & (counts > 0)
    return targets.astype(np.float32), (total[..., 0] > 0)


__all__ = [
    "DFC10_TO_8",
    "IGBP_TO_DFC10",
    "IGNORE_INDEX",
    "MULTI_LABEL_MIN_FRACTION",
    "NUM_CLASSES",
    "class_histogram",
    "dfc_to_classes",
    "igbp_to_classes",
    "multi_label",
    "single_label",
]
