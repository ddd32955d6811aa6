"""Input options are validated before the data are looked at: a bad option gives the same error, with
the same message, whether the arrays are clean or hold NaN, through backbones' ``embed`` /
``embed_dense`` and task models' ``predict``."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

from conftest import synthetic_pair, tiny_config, tiny_model
from s1s2_encoders import BandError, OptionError, create_model, task_config
from s1s2_encoders.inputs import prepare_input

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OFFSET_MESSAGE = ("s2_offset must be None or a finite number of digital numbers >= 0 (1000 for processing "
                  "baseline 04.00 and later, 0 for none), got {}")

# (options, error type, message): every one of them must be refused whatever the data hold.
BAD_OPTIONS = [
    ({"nodata": "Mask"}, OptionError, "nodata must be 'raise' or 'mask', got 'Mask'"),
    ({"nodata": "ignore"}, OptionError, "nodata must be 'raise' or 'mask', got 'ignore'"),
    ({"nodata": None}, OptionError, "nodata must be 'raise' or 'mask', got None"),
    ({"nodata": True}, OptionError, "nodata must be 'raise' or 'mask', got True"),
    ({"check_units": "no"}, OptionError, "check_units must be True or False, got 'no'"),
    ({"check_units": 0}, OptionError, "check_units must be True or False, got 0"),
    ({"check_units": None}, OptionError, "check_units must be True or False, got None"),
    ({"s2_offset": -1000}, OptionError, OFFSET_MESSAGE.format("-1000")),
    ({"s2_offset": math.nan}, OptionError, OFFSET_MESSAGE.format("nan")),
    ({"s2_offset": math.inf}, OptionError, OFFSET_MESSAGE.format("inf")),
    ({"s2_offset": "1000"}, OptionError, OFFSET_MESSAGE.format("'1000'")),
    ({"s2_offset": True}, OptionError, OFFSET_MESSAGE.format("True")),
    ({"s1_bands": "VV,VH"}, OptionError,
     "s1_bands must be a list of band names in the array's channel order (e.g. ['VV', 'VH']), got 'VV,VH' (str)"),
    ({"s1_bands": {"VV", "VH"}}, OptionError, "s1_bands must be a list of band names in the array's channel order"),
    ({"s2_bands": {"B01": 0}}, OptionError,
     "s2_bands must be a list of band names in the array's channel order (e.g. ['B02', 'B03', 'B04', 'B08']), "
     "got {'B01': 0} (dict)"),
    ({"s1_bands": ["VV", 2]}, BandError, "S1 band names must be strings, got 2 (int)"),
    ({"s1_bands": ["VV", "HH"]}, BandError, "unknown Sentinel-1 band 'HH'; known bands: VV, VH"),
]
IDS = [f"{next(iter(o))}={next(iter(o.values()))!r}" for o, _, _ in BAD_OPTIONS]


def clean_and_nan_inputs(options: dict | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Clean arrays, and arrays with NaN in each modality and in both (the pair path checks every
    option of both modalities before it prepares either array)."""
    s1, s2 = synthetic_pair((2,), 32, 32, seed=3)
    s1_nan, s2_nan = s1.copy(), s2.copy()
    s1_nan[0, 1, 3, 4] = np.nan
    s2_nan[1, 5, 7, 7] = np.nan
    variants = {"clean": (s1, s2), "nan in s1": (s1_nan, s2), "nan in s2": (s1, s2_nan), "nan in both": (s1_nan, s2_nan)}
    return variants


def assert_one_error(seen: dict[str, tuple[type, str]], error: type, message: str) -> None:
    """Every variant gave the same error type and message, and it is the expected one."""
    assert len(set(seen.values())) == 1, seen
    kind, text = next(iter(seen.values()))
    assert kind is error and text.startswith(message), seen


def error_of(call) -> tuple[type, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the test compares what comes out
            return type(exc), str(exc)
    return type(None), "no error"


@pytest.fixture(scope="module")
def backbone():
    return tiny_model("resnet18", "fixed").eval()


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return create_model(task_config(tiny_config("resnet18", "fixed"), "classification")).eval()


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=IDS)
def test_embed_refuses_a_bad_option_the_same_way_on_clean_and_nan_inputs(backbone, options, error, message):
    for method in (backbone.embed, backbone.embed_dense):
        seen = {name: error_of(lambda: method(s1, s2, **options)) for name, (s1, s2) in clean_and_nan_inputs(options).items()}
        assert_one_error(seen, error, message)


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=IDS)
def test_predict_refuses_a_bad_option_the_same_way_on_clean_and_nan_inputs(classifier, options, error, message):
    seen = {name: error_of(lambda: classifier.predict(s1, s2, **options))
            for name, (s1, s2) in clean_and_nan_inputs(options).items()}
    assert_one_error(seen, error, message)


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS, ids=IDS)
def test_check_pair_options_refuses_every_bad_option_without_data(options, error, message):
    from s1s2_encoders.inputs import check_pair_options

    with pytest.raises(error) as caught:
        check_pair_options(**options)
    assert str(caught.value).startswith(message)


def test_option_errors_are_value_errors_and_come_before_shape_errors():
    # A caller catching ValueError (what nodata raised before) keeps working, and the option is
    # judged before the array: a 2-D array with a bad option reports the option.
    assert issubclass(OptionError, ValueError)
    with pytest.raises(OptionError, match=re.escape("nodata must be 'raise' or 'mask', got 'Mask'")):
        prepare_input(np.zeros((4, 4), np.float32), "s1", ("VV", "VH"), nodata="Mask")
    with pytest.raises(OptionError, match=re.escape(OFFSET_MESSAGE.format("-1.0"))):
        prepare_input(np.zeros((4, 4), np.float32), "s2", ("B02",), s2_offset=-1.0)


def test_good_options_are_accepted_and_mean_what_they_say(backbone):
    from s1s2_encoders.inputs import check_input_options

    # Every spelling that is valid passes the checks ...
    for options in ({"nodata": "raise"}, {"nodata": "mask"}, {"check_units": False}, {"check_units": np.bool_(True)},
                    {"s2_offset": 0}, {"s2_offset": 1000}, {"s2_offset": np.float32(1000.0)}, {"s2_offset": None},
                    {"given_bands": ("vh", "VV")}, {"given_bands": np.array(["VV", "VH"])}):
        given = options.pop("given_bands", None)
        check_input_options("s1", given, **options)  # no error
    # ... and they still work on the data: masking with NaN, the offset removed, band names reordered.
    variants = clean_and_nan_inputs()
    (s1, s2), (s1_nan, s2_nan) = variants["clean"], variants["nan in both"]
    ref = backbone.embed(s1, s2, s2_offset=0, dtype="float32")
    masked = backbone.embed(s1_nan, s2_nan, s2_offset=0, nodata="mask", dtype="float32")
    assert np.isfinite(masked).all() and masked.shape == ref.shape
    offset = backbone.embed(s1, s2 + np.float32(1000), s2_offset=np.float32(1000), dtype="float32")
    np.testing.assert_allclose(offset, ref, rtol=1e-5, atol=1e-5)
    swapped = backbone.embed(s1[:, ::-1].copy(), s2, s1_bands=["VH", "VV"], s2_offset=0, dtype="float32")
    np.testing.assert_allclose(swapped, ref, rtol=1e-5, atol=1e-5)
