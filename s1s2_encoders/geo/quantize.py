"""int8 embeddings: each modality's part of a vector scaled to unit length, then ``round(127 x)``.

The scheme follows the published Earth-embedding products (AlphaEarth's int8 COGs: unit-length
vectors, ``-128`` as nodata): a unit vector has every component in ``[-1, 1]``, so ``127 x`` fits
int8 with ``-128`` left free for "no value". Each modality part (the S1 features, the S2 features)
is normalised on its own, so that a cosine computed on one part stays meaningful and a modality
that saw no valid pixel (NaN) does not blank the other.

De-quantisation: ``x = q / 127`` where ``q != -128``; ``NaN`` where ``q == -128``. The rule and the
scale are written into every file that holds int8 values (:func:`quantization_metadata`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import OptionError

INT8_SCALE = 127.0
INT8_NODATA = -128
QUANTIZATIONS = ("none", "int8")
DEQUANTIZATION_RULE = "value = int8 / 127; -128 = nodata (NaN); each modality part of a vector has unit L2 length"


def check_quantize(quantize: str | None) -> str:
    """``None`` -> ``"none"``; anything but ``"none"`` / ``"int8"`` is refused."""
    quantize = "none" if quantize is None else quantize
    if quantize not in QUANTIZATIONS:
        raise OptionError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    return quantize


def normalize_groups(values: np.ndarray, groups: Sequence[tuple[int, int]], axis: int = 0) -> np.ndarray:
    """Scale each channel group ``[a, b)`` along ``axis`` to unit L2 length (float32, a new array).

    Args:
        values: float array, channels along ``axis`` (``(C, H, W)`` stripes, ``(N, C)`` chips).
        groups: ``(start, end)`` channel ranges, one per modality, covering the channels.

    A group with any NaN stays NaN in every channel of it (the cell saw no valid pixel of that
    modality); an all-zero group stays zero.
    """
    values = np.asarray(values, dtype=np.float32)
    out = np.empty_like(values)
    for start, end in groups:
        part = np.take(values, np.arange(start, end), axis=axis)
        norm = np.sqrt(np.sum(np.square(part, dtype=np.float64), axis=axis, keepdims=True))
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = np.where(norm > 0, part / np.where(norm > 0, norm, 1.0), 0.0)
        unit = np.where(np.isnan(norm), np.nan, unit)  # a NaN anywhere in the part blanks the part
        index = [slice(None)] * values.ndim
        index[axis] = slice(start, end)
        out[tuple(index)] = unit.astype(np.float32)
    return out


def quantize_int8(values: np.ndarray, groups: Sequence[tuple[int, int]], axis: int = 0) -> np.ndarray:
    """Float embeddings -> int8: per-group unit length, ``round(127 x)``, ``-128`` where NaN.

    Args:
        values: float array, channels along ``axis``; NaN marks cells without a value.
        groups: ``(start, end)`` channel range of each modality part.

    Returns:
        int8 array of the same shape, values in ``[-127, 127]`` or ``-128``.
    """
    unit = normalize_groups(values, groups, axis)
    missing = np.isnan(unit)
    q = np.rint(np.where(missing, 0.0, unit) * INT8_SCALE)
    q = np.clip(q, -INT8_SCALE, INT8_SCALE).astype(np.int8)
    q[missing] = INT8_NODATA
    return q


def dequantize_int8(q: np.ndarray) -> np.ndarray:
    """int8 -> float32 by the rule above: ``q / 127``, NaN where ``q == -128``."""
    q = np.asarray(q)
    if q.dtype != np.int8:
        raise OptionError(f"dequantize_int8 expects int8 values, got {q.dtype}")
    out = q.astype(np.float32) / np.float32(INT8_SCALE)
    out[q == INT8_NODATA] = np.nan
    return out


def quantization_metadata(quantize: str, groups: Sequence[tuple[int, int]], names: Sequence[str]) -> dict:
    """What a file says about its values: scheme, scale, offset, nodata, rule and the unit-length groups.

    Args:
        quantize: ``"none"`` or ``"int8"``.
        groups / names: channel range and modality name of each part.
    """
    if check_quantize(quantize) == "none":
        return {"scheme": "none", "dtype": "float32", "nodata": "NaN"}
    return {
        "scheme": "int8", "dtype": "int8", "scale": 1.0 / INT8_SCALE, "offset": 0.0, "nodata": INT8_NODATA,
        "rule": DEQUANTIZATION_RULE,
        "unit_length_groups": {str(name): [int(a), int(b)] for name, (a, b) in zip(names, groups)},
    }
