"""Reading one modality from GeoTIFFs: band names, per-band files at 10/20/60 m, nodata, offsets, errors."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from conftest import TERRAMESH
from geo_helpers import BEN_PAIRS, BIGEARTHNET, UTM, UTM_TRANSFORM, WGS84, WGS84_TRANSFORM, write_raster
from s1s2_encoders import BandError, GridMismatchError, RasterReadError, S1_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from s1s2_encoders.geo.grid import Grid, check_same_grid
from s1s2_encoders.geo.scene import SceneInputs, open_scene
from s1s2_encoders.geo.sources import band_token, open_modality, s2_offset_from_metadata


def read_all(source, window=None):
    grid = source.output_grid
    window = window or Window(0, 0, grid.width, grid.height)
    with source.reader() as reader:
        return reader.read(window)


@pytest.mark.parametrize("text,modality,expected", [
    ("B04", "s2", "B04"), ("B4, central wavelength 665 nm", "s2", "B04"), ("S2A_MSIL2A_20170613T101031_87_48_B8A", "s2", "B8A"),
    ("T33UUP_20220315T101031_B8A_20m", "s2", "B8A"), ("Sigma0_VH_db", "s1", "VH"), ("S1A_IW_..._VV", "s1", "VV"),
    ("bands", "s2", None), ("bands", "s1", None), ("B13", "s2", None), ("", "s1", None),
])
def test_band_token(text, modality, expected):
    assert band_token(text, modality) == expected


def test_bigearthnet_per_band_folder_is_resampled_to_the_10m_grid():
    folder = BIGEARTHNET / "BigEarthNet-S2-Example" / BEN_PAIRS[0][1]
    source = open_modality("s2", [folder], S2_L1C_BANDS, resampling="nearest")
    assert source.band_names == list(S2_L2A_BANDS)  # 12 bands found by file name, in model order
    assert source.selection.missing == ("B10",)
    assert source.grid.width == source.grid.height == 120 and source.grid.pixel_size == (10.0, 10.0)
    warped = {p.path.name.rsplit("_", 1)[1][:-4]: p.warp for p in source.files}
    assert warped == {b: b not in ("B02", "B03", "B04", "B08") for b in S2_L2A_BANDS}
    data, valid = read_all(source)
    assert data.shape == (12, 120, 120) and valid.all()
    for name, factor in (("B04", 1), ("B05", 2), ("B01", 6)):
        with rasterio.open(folder / f"{BEN_PAIRS[0][1]}_{name}.tif") as src:
            native = src.read(1).astype(np.float32)
        # Nearest-neighbour upsampling of a nested grid repeats each coarse pixel factor x factor times.
        np.testing.assert_array_equal(data[source.band_names.index(name)], np.kron(native, np.ones((factor, factor))))


def test_bilinear_resampling_of_a_window_matches_the_full_read():
    folder = BIGEARTHNET / "BigEarthNet-S2-Example" / BEN_PAIRS[1][1]
    source = open_modality("s2", [folder], S2_L1C_BANDS)  # bilinear by default
    full, _ = read_all(source)
    part, valid = read_all(source, Window(37, 50, 41, 29))
    assert valid.all()
    np.testing.assert_allclose(part, full[:, 50:79, 37:78], rtol=1e-5, atol=0.05)
    b05 = full[source.band_names.index("B05")]
    assert len(np.unique(b05)) > len(np.unique(b05[::2, ::2])) / 2  # interpolated, not blocky


def test_bigearthnet_s1_per_band_files_and_terramesh_multiband(tmp_path):
    s1_folder = BIGEARTHNET / "BigEarthNet-S1-Example" / BEN_PAIRS[0][0]
    s1 = open_modality("s1", [s1_folder], S1_BANDS)
    assert s1.band_names == ["VV", "VH"]
    data, valid = read_all(s1)
    with rasterio.open(s1_folder / f"{BEN_PAIRS[0][0]}_VH.tif") as src:
        np.testing.assert_array_equal(data[1], src.read(1))
    # TerraMesh: descriptions are "bands" (not band names), so model order is assumed: 2 / 13 bands.
    tm = open_modality("s1", [TERRAMESH / "S1RTC" / "282D_485L_3_3.tif"], S1_BANDS)
    tm2 = open_modality("s2", [TERRAMESH / "S2L1C" / "282D_485L_3_3.tif"], S2_L1C_BANDS)
    assert tm.band_names == ["VV", "VH"] and tm2.band_names == list(S2_L1C_BANDS) and tm2.present is None


def test_band_descriptions_reorder_and_skip_bands(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.uniform(100, 3000, (14, 40, 50)).astype(np.float32)
    order = list(reversed(S2_L1C_BANDS)) + ["QA60"]  # reversed order plus a band the model does not use
    path = write_raster(tmp_path / "s2.tif", values, descriptions=order)
    source = open_modality("s2", [path], S2_L1C_BANDS)
    data, _ = read_all(source)
    np.testing.assert_array_equal(data, values[:13][::-1])
    assert source.ignored == ["s2.tif band 14"]
    # Flags override descriptions; '-' skips a band.
    flags = ["-"] + list(S2_L1C_BANDS)
    source = open_modality("s2", [path], S2_L1C_BANDS, bands=flags)
    np.testing.assert_array_equal(read_all(source)[0], values[1:])


def test_nodata_nan_masks_and_all_zero_s2_pixels_are_invalid(tmp_path):
    s1 = np.full((2, 20, 30), -12.0, np.float32)
    s1[:, :3] = -9999.0  # declared nodata
    s1[0, 5, 5] = np.nan
    s1_path = write_raster(tmp_path / "s1.tif", s1, nodata=-9999.0)
    data, valid = read_all(open_modality("s1", [s1_path], S1_BANDS))
    assert not valid[:3].any() and not valid[5, 5] and valid[3:].sum() == 17 * 30 - 1
    assert np.all(data[:, ~valid] == 0)  # invalid pixels never carry NaN / nodata values into the model
    s2 = np.full((13, 20, 30), 500, np.uint16)
    s2[:, :, :4] = 0  # the Sentinel-2 "no data" convention: 0 in every band
    s2[10, :, 10] = 0  # a single band at 0 is a value, not nodata
    s2_path = write_raster(tmp_path / "s2.tif", s2)
    _, valid = read_all(open_modality("s2", [s2_path], S2_L1C_BANDS))
    assert not valid[:, :4].any() and valid[:, 4:].all()


def test_s1_linear_power_is_converted_to_db(tmp_path):
    db = np.stack([np.full((8, 8), -10.0), np.full((8, 8), -20.0)]).astype(np.float32)
    linear = (10 ** (db / 10)).astype(np.float32)
    linear[0, 0, 0] = 0.0  # log of 0: no data
    path = write_raster(tmp_path / "lin.tif", linear)
    data, valid = read_all(open_modality("s1", [path], S1_BANDS, linear=True))
    assert not valid[0, 0] and valid.sum() == 63
    np.testing.assert_allclose(data[:, valid], db[:, valid], atol=1e-4)


def test_s2_offset_from_tags_and_safe_names(tmp_path):
    s2 = np.full((13, 8, 8), 1500, np.uint16)
    tagged = write_raster(tmp_path / "boa.tif", s2, band_tags={1: {"BOA_ADD_OFFSET": "-1000"}})
    assert s2_offset_from_metadata(open_modality("s2", [tagged], S2_L1C_BANDS)) == (1000.0, "boa.tif: BOA_ADD_OFFSET=-1000")
    old = write_raster(tmp_path / "old.tif", s2, tags={"PROCESSING_BASELINE": "02.09"})
    assert s2_offset_from_metadata(open_modality("s2", [old], S2_L1C_BANDS))[0] == 0.0
    safe = tmp_path / "S2B_MSIL1C_20230412T101559_N0509_R065_T32UNU_20230412T122154.SAFE"
    img, qi = safe / "GRANULE" / "L1C_T32UNU" / "IMG_DATA", safe / "GRANULE" / "L1C_T32UNU" / "QI_DATA"
    img.mkdir(parents=True)
    qi.mkdir(parents=True)
    for band in S2_L1C_BANDS:
        write_raster(img / f"T32UNU_20230412T101559_{band}.tif", s2[:1])
    write_raster(qi / "MSK_DETFOO_B01.tif", s2[:1])  # a quality mask named after a band: not a band
    source = open_modality("s2", [safe], S2_L1C_BANDS)  # the product folder itself
    assert [p.parent.name for p in source.paths] == ["IMG_DATA"] * 13
    offset, where = s2_offset_from_metadata(source)
    assert offset == 1000.0 and "N0509" in where
    assert s2_offset_from_metadata(open_modality("s2", [write_raster(tmp_path / "plain.tif", s2)], S2_L1C_BANDS)) == (None, "")


def test_a_band_at_several_resolutions_is_read_from_the_finest_file(tmp_path):
    # SAFE L2A keeps B02 at 10, 20 and 60 m (R10m, R20m, R60m folders).
    r10, r20 = tmp_path / "R10m", tmp_path / "R20m"
    r10.mkdir()
    r20.mkdir()
    fine = np.arange(16 * 16, dtype=np.uint16).reshape(1, 16, 16) + 100
    coarse = rasterio.transform.from_origin(404400.0, 5342400.0, 20.0, 20.0)
    write_raster(r10 / "T_B02_10m.tif", fine)
    write_raster(r20 / "T_B02_20m.tif", np.full((1, 8, 8), 7, np.uint16), transform=coarse)
    write_raster(r20 / "T_B05_20m.tif", np.full((1, 8, 8), 900, np.uint16), transform=coarse)
    source = open_modality("s2", [tmp_path], S2_L1C_BANDS, resampling="nearest")
    assert source.band_names == ["B02", "B05"] and source.grid.pixel_size == (10.0, 10.0)
    assert [p.path.name for p in source.files] == ["T_B02_10m.tif", "T_B05_20m.tif"]
    data, valid = read_all(source)
    np.testing.assert_array_equal(data[0], fine[0])
    assert np.all(data[1] == 900) and valid.all()


def test_missing_unreadable_and_wrong_band_count_errors(tmp_path):
    with pytest.raises(RasterReadError, match=r"Sentinel-2: no such file: .*nope\.tif"):
        open_modality("s2", [tmp_path / "nope.tif"], S2_L1C_BANDS)
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(RasterReadError, match=r"Sentinel-1: cannot read .*junk\.tif as a raster"):
        open_modality("s1", [junk], S1_BANDS)
    five = write_raster(tmp_path / "five.tif", np.ones((5, 8, 8), np.uint16))
    with pytest.raises(BandError, match=r"Sentinel-2 file .*five\.tif: Sentinel-2 input has 5 channels but the model expects 13"):
        open_modality("s2", [five], S2_L1C_BANDS)
    three = write_raster(tmp_path / "three.tif", -np.ones((3, 8, 8), np.float32))
    with pytest.raises(BandError, match=r"Sentinel-1 file .*three\.tif: Sentinel-1 input has 3 channels but the model expects 2"):
        open_modality("s1", [three], S1_BANDS)
    with pytest.raises(BandError, match=r"2 band names given \(VV, VH\) but the input has 3 band\(s\): three\.tif \(3\)"):
        open_modality("s1", [three], S1_BANDS, bands=["VV", "VH"])
    unnamed = [write_raster(tmp_path / f"band{i}.tif", np.ones((1, 8, 8), np.uint16)) for i in range(2)]
    with pytest.raises(RasterReadError, match=r"cannot tell which band .*band0\.tif holds"):
        open_modality("s2", unnamed, S2_L1C_BANDS)
    with pytest.raises(RasterReadError, match=r"the pattern '.*\*_B99\.tif' matches no file"):
        open_modality("s2", [str(tmp_path / "*_B99.tif")], S2_L1C_BANDS)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RasterReadError, match=r"the folder .*empty holds no raster file named after a band"):
        open_modality("s2", [empty], S2_L1C_BANDS)


def test_per_band_files_on_inconsistent_grids_are_refused(tmp_path):
    folder = tmp_path / "bands"
    shutil.copytree(BIGEARTHNET / "BigEarthNet-S2-Example" / BEN_PAIRS[0][1], folder)
    b05 = next(folder.glob("*_B05.tif"))
    with rasterio.open(b05) as src:
        data, profile = src.read(), src.profile
    profile["transform"] = profile["transform"] @ rasterio.Affine.translation(0, 5)  # shifted by 5 coarse pixels
    with rasterio.open(b05, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(GridMismatchError, match=r"B05\.tif does not cover the same area as .*B0[2348]\.tif"):
        open_modality("s2", [folder], S2_L1C_BANDS)


def test_grid_mismatch_message_shows_both_grids():
    a = Grid(UTM, UTM_TRANSFORM, 100, 90)
    b = Grid(WGS84, WGS84_TRANSFORM, 100, 80)
    with pytest.raises(GridMismatchError) as info:
        check_same_grid(("S1", "s1.tif", a), ("S2", "s2.tif", b), hint="Pass --align.")
    message = str(info.value)
    assert "differ in CRS, size, pixel size, origin" in message
    assert "s1.tif: EPSG:32633, 100 x 90 px, pixel 10 x 10 m, origin (404400.000000, 5342400.000000)" in message
    assert "s2.tif: EPSG:4326, 100 x 80 px, pixel 0.0001 x 0.0001 deg, origin (13.250000, 48.200000)" in message
    assert message.endswith("Pass --align.")
    # Floating-point noise far below a pixel is the same grid.
    noisy = Grid(UTM, UTM_TRANSFORM @ rasterio.Affine.translation(1e-6, 0), 100, 90)
    assert a.same_as(noisy) and not a.same_as(Grid(UTM, UTM_TRANSFORM @ rasterio.Affine.translation(0.5, 0), 100, 90))


def test_misaligned_pair_refused_and_align_warps_s1_onto_the_s2_grid(tmp_path):
    s2 = write_raster(tmp_path / "s2.tif", np.full((13, 64, 64), 800, np.uint16))
    # S1 at 20 m covering a larger area, shifted: a different grid.
    s1_transform = rasterio.transform.from_origin(404400.0 - 100, 5342400.0 + 60, 20.0, 20.0)
    ramp = np.tile(np.linspace(-20, -5, 50, dtype=np.float32), (50, 1))
    s1 = write_raster(tmp_path / "s1.tif", np.stack([ramp, ramp - 6]), transform=s1_transform)
    inputs = SceneInputs(s1=[s1], s2=[s2])
    with pytest.raises(GridMismatchError, match=r"(?s)S1 and S2 are not on the same pixel grid.*s1\.tif: EPSG:32633, 50 x 50 px, pixel 20 x 20 m.*s2\.tif: EPSG:32633, 64 x 64 px, pixel 10 x 10 m.*--align"):
        open_scene(inputs, ("s1", "s2"), S1_BANDS, S2_L1C_BANDS)
    inputs.align = True
    scene = open_scene(inputs, ("s1", "s2"), S1_BANDS, S2_L1C_BANDS)
    assert scene.grid.same_as(Grid(UTM, UTM_TRANSFORM, 64, 64))
    data, valid = read_all(scene.sources["s1"])
    assert data.shape == (2, 64, 64) and valid.all()
    # S2 pixel column j is at x = 404400 + 10 j + 5; S1 column = (x - 404300) / 20 - 0.5.
    expected = np.interp((100 + 10 * np.arange(64) + 5) / 20 - 0.5, np.arange(50), ramp[0])
    np.testing.assert_allclose(data[0, 10], expected, atol=1e-3)
    # Where S1 does not reach, S2 pixels get S1 nodata (here: S1 shifted so it covers only part).
    far = rasterio.transform.from_origin(404400.0 + 320, 5342400.0, 20.0, 20.0)
    partial = write_raster(tmp_path / "s1_partial.tif", np.stack([ramp, ramp]), transform=far)
    scene = open_scene(SceneInputs(s1=[partial], s2=[s2], align=True), ("s1", "s2"), S1_BANDS, S2_L1C_BANDS)
    _, valid = read_all(scene.sources["s1"])
    assert not valid[:, :32].any() and valid[:, 33:].all()
    assert math.isclose(valid.mean(), 31 / 64, abs_tol=1 / 64)
