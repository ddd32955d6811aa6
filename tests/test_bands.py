import pytest

from s1s2_encoders.bands import (
    S1_BANDS,
    S2_L1C_BANDS,
    S2_L2A_BANDS,
    canonical_band_name,
    select_bands,
)
from s1s2_encoders.errors import BandError


def test_catalogues_follow_sen12ms_order():
    assert S1_BANDS == ("VV", "VH")
    assert S2_L1C_BANDS == (
        "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"
    )
    assert S2_L2A_BANDS == tuple(b for b in S2_L1C_BANDS if b != "B10")
    assert len(S2_L2A_BANDS) == 12


@pytest.mark.parametrize(
    "name, modality, expected",
    [
        ("B1", "s2", "B01"), ("b01", "s2", "B01"), ("B08A", "s2", "B8A"), ("b8a", "s2", "B8A"),
        ("S2B8A", "s2", "B8A"), ("B8", "s2", "B08"), (" B12 ", "s2", "B12"), ("vv", "s1", "VV"),
        ("S1VH", "s1", "VH"),
    ],
)
def test_canonical_band_names(name, modality, expected):
    assert canonical_band_name(name, modality) == expected


@pytest.mark.parametrize("name, modality", [("B13", "s2"), ("B9A", "s2"), ("HH", "s1"), ("B0", "s2"), ("VV", "s2")])
def test_unknown_band_names_are_refused_with_the_catalogue(name, modality):
    with pytest.raises(BandError, match=rf"unknown Sentinel-{modality[1]} band '{name}'"):
        canonical_band_name(name, modality)


def test_reordering_by_name_maps_each_model_band_to_its_source_channel():
    given = ["B02", "B03", "B04", "B08"] + [b for b in S2_L1C_BANDS if b not in ("B02", "B03", "B04", "B08")]
    selection = select_bands("s2", S2_L1C_BANDS, 13, given)
    assert [given[i] for i in selection.source_index] == list(S2_L1C_BANDS)
    assert not selection.missing and not selection.is_identity


def test_l2a_stack_for_an_l1c_model_reports_b10_missing():
    selection = select_bands("s2", S2_L1C_BANDS, 12, S2_L2A_BANDS)
    assert selection.missing == ("B10",)
    assert selection.present_positions == tuple(i for i in range(13) if i != 10)


def test_extra_bands_are_ignored():
    selection = select_bands("s2", S2_L2A_BANDS, 13, S2_L1C_BANDS)
    assert not selection.missing
    assert 10 not in selection.source_index  # B10 (channel 10 of the L1C stack) is not used


def test_wrong_channel_count_without_names_explains_what_was_expected():
    with pytest.raises(BandError, match=r"Sentinel-2 input has 12 channels but the model expects 13 \(B01, .*B12\).*S2_L2A_BANDS"):
        select_bands("s2", S2_L1C_BANDS, 12)


def test_two_channels_as_s2_hints_at_swapped_modalities():
    with pytest.raises(BandError, match=r"has 2 channels but the model expects 13.*swap s1 and s2"):
        select_bands("s2", S2_L1C_BANDS, 2)


def test_duplicate_band_names_are_named():
    with pytest.raises(BandError, match=r"band VV appears twice .*channels 0 and 1"):
        select_bands("s1", S1_BANDS, 2, ["VV", "vv"])


def test_name_count_must_match_channels():
    with pytest.raises(BandError, match=r"3 band names given \(VV, VH, VV\) but the array has 2 channels"):
        select_bands("s1", S1_BANDS, 2, ["VV", "VH", "VV"])


def test_missing_s1_band_is_an_error():
    with pytest.raises(BandError, match=r"needs band\(s\) VH, which the input does not have"):
        select_bands("s1", S1_BANDS, 1, ["VV"])


def test_no_overlap_is_an_error():
    with pytest.raises(BandError, match=r"none of the given bands \(B10\) is used"):
        select_bands("s2", S2_L2A_BANDS, 1, ["B10"])
