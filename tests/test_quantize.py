"""int8 quantisation of embeddings (geo/quantize.py): per-modality unit length, round(127 x), -128 nodata."""

import numpy as np
import pytest

from s1s2_encoders.errors import OptionError
from s1s2_encoders.geo.quantize import (INT8_NODATA, check_quantize, dequantize_int8, normalize_groups,
                                        quantization_metadata, quantize_int8)

GROUPS = [(0, 6), (6, 10)]


def test_each_modality_part_is_unit_length_and_round_trips_within_half_a_step():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(10, 5, 7)).astype(np.float32) * 3
    unit = normalize_groups(values, GROUPS, axis=0)
    for a, b in GROUPS:
        np.testing.assert_allclose(np.linalg.norm(unit[a:b], axis=0), 1.0, rtol=1e-6)
    q = quantize_int8(values, GROUPS, axis=0)
    assert q.dtype == np.int8 and q.min() >= -127
    assert np.abs(dequantize_int8(q) - unit).max() <= 0.5 / 127 + 1e-7


def test_nan_part_is_nodata_in_its_bands_only_and_dequantises_to_nan():
    values = np.ones((3, 10), dtype=np.float32)  # (N, C) chips
    values[1, 7] = np.nan  # chip 1 saw no valid S2 pixel
    q = quantize_int8(values, GROUPS, axis=1)
    assert (q[1, 6:] == INT8_NODATA).all() and (q[1, :6] != INT8_NODATA).all()
    assert (q[[0, 2]] != INT8_NODATA).all()
    back = dequantize_int8(q)
    assert np.isnan(back[1, 6:]).all() and not np.isnan(back[1, :6]).any()


def test_zero_vector_stays_zero_and_options_are_checked():
    q = quantize_int8(np.zeros((10, 1), dtype=np.float32), GROUPS, axis=0)
    assert (q == 0).all()
    assert check_quantize(None) == "none"
    with pytest.raises(OptionError, match="quantize must be one of none, int8, got 'int4'"):
        check_quantize("int4")
    with pytest.raises(OptionError, match="expects int8"):
        dequantize_int8(np.zeros(3, dtype=np.int16))
    meta = quantization_metadata("int8", GROUPS, ["s1", "s2"])
    assert meta["scale"] == pytest.approx(1 / 127) and meta["nodata"] == -128
    assert meta["unit_length_groups"] == {"s1": [0, 6], "s2": [6, 10]}
