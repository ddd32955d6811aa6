"""Every error path of input validation, through the public ``embed`` API, with its message."""

import warnings

import numpy as np
import pytest
import torch
from conftest import synthetic_pair, tiny_model

from s1s2_encoders import BandError, InputShapeError, InvalidValueError, UnitsError


@pytest.fixture(scope="module")
def model():
    return tiny_model("resnet18")


@pytest.fixture()
def pair():
    return synthetic_pair()


def test_two_band_array_as_s2_names_the_bands(model, pair):
    s1, _ = pair
    with pytest.raises(BandError, match=r"Sentinel-2 input has 2 channels but the model expects 13 \(B01, B02"):
        model.embed(s1=s1, s2=s1)


def test_wrong_rank(model, pair):
    s1, s2 = pair
    with pytest.raises(InputShapeError, match=r"Sentinel-1 input has shape \(64, 64\) \(2 dimensions\); expected \(C, H, W\) or \(B, C, H, W\)"):
        model.embed(s1=s1[0], s2=s2)
    with pytest.raises(InputShapeError, match=r"Sentinel-2 input has shape \(1, 1, 13, 64, 64\)"):
        model.embed(s2=s2[None, None])


def test_channels_last_gets_a_hint(model, pair):
    _, s2 = pair
    with pytest.raises(InputShapeError, match=r"looks channels-last.*np.moveaxis"):
        model.embed(s2=np.moveaxis(s2, 0, -1))


@pytest.mark.parametrize("bad", [np.array([["a"]], dtype=object), np.zeros((13, 4, 4), dtype=bool), np.zeros((13, 4, 4), dtype=np.complex64)])
def test_non_numeric_dtypes(model, bad):
    with pytest.raises(InputShapeError, match=r"Sentinel-2 (array|tensor) has dtype"):
        model.embed(s2=bad)


def test_not_an_array(model):
    with pytest.raises(InputShapeError, match=r"Sentinel-1 input must be a numpy array or a torch tensor, got list"):
        model.embed(s1=[[[0.0]]])


def test_size_mismatch_shows_both_sizes(model, pair):
    s1, s2 = pair
    with pytest.raises(InputShapeError, match=r"S1 is 64 x 32 pixels, S2 is 64 x 64"):
        model.embed(s1[:, :, :32], s2)


def test_batch_mismatch(model, pair):
    s1, s2 = pair
    with pytest.raises(InputShapeError, match=r"differ in batch size: 2 vs 3"):
        model.embed(np.stack([s1] * 2), np.stack([s2] * 3))


def test_batched_and_unbatched_mixed(model, pair):
    s1, s2 = pair
    with pytest.raises(InputShapeError, match=r"one of S1 and S2 has a batch dimension"):
        model.embed(s1[None], s2)


def test_nothing_given(model):
    with pytest.raises(InputShapeError, match=r"pass at least one of s1 and s2"):
        model.embed()


def test_nan_is_refused_naming_band_and_count(model, pair):
    s1, s2 = pair
    s1 = s1.copy()
    s1[1, :3, 0] = np.nan
    with pytest.raises(InvalidValueError, match=r"Sentinel-1 input has 3 NaN/inf value\(s\) in band\(s\) VH.*nodata='mask'"):
        model.embed(s1, s2)


def test_inf_is_refused(model, pair):
    s1, s2 = pair
    s2 = s2.copy()
    s2[8, 5, 5] = np.inf
    with pytest.raises(InvalidValueError, match=r"Sentinel-2 input has 1 NaN/inf value\(s\) in band\(s\) B8A"):
        model.embed(s1, s2)


def test_s2_scaled_to_unit_range_is_refused(model, pair):
    s1, s2 = pair
    with pytest.raises(UnitsError, match=r"reflectance scaled to 0-1.*Multiply by 10000"):
        model.embed(s1, s2 / 10000)


def test_s1_in_linear_power_is_refused(model, pair):
    s1, s2 = pair
    with pytest.raises(UnitsError, match=r"Sentinel-1 values are all >= 0.*linear power.*10 \* log10"):
        model.embed(10 ** (s1 / 10), s2)


def test_units_check_can_be_turned_off(model, pair):
    s1, s2 = pair
    out = model.embed(10 ** (s1 / 10), s2 / 10000, check_units=False)
    assert out.shape == (1, 1024) and np.isfinite(out).all()


def test_all_zero_input_is_not_judged_for_units(model, pair):
    s1, _ = pair
    out = model.embed(s1, np.zeros((13, 64, 64), dtype=np.uint16))
    assert np.isfinite(out).all()


def test_s2_offset_is_warned_about_when_not_given(model, real_pair):
    s1, s2 = real_pair
    with pytest.warns(UserWarning, match=r"\+1000 offset of processing baseline 04.00.*s2_offset=1000"):
        model.embed(s1, s2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.embed(s1, s2, s2_offset=1000)
        model.embed(s1, s2, s2_offset=0)


def test_s2_offset_is_subtracted(model, real_pair):
    s1, s2 = real_pair
    a = model.embed(s1, s2, s2_offset=1000)
    b = model.embed(s1, s2.astype(np.float32) - 1000, s2_offset=0)
    np.testing.assert_array_equal(a, b)


def test_tensor_inputs_of_integer_dtype(model, pair):
    s1, s2 = pair
    out = model.embed(torch.from_numpy(s1), torch.from_numpy(s2.astype(np.int16)))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (1, 1024)


def test_warnings_point_at_the_callers_line(model, real_pair):
    s1, s2 = real_pair
    with pytest.warns(UserWarning, match=r"\+1000 offset") as record:
        model.embed(s1, s2)
    assert record[0].filename == __file__
