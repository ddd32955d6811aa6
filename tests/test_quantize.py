"""int8 quantisation of embeddings (geo/quantize.py): per-modality unit length, round(127 x), -128 nodata;
int8 outputs of embed_scene / s1s2 embed (GeoTIFF and .npy) against the float ones."""

import json

import numpy as np
import pytest
import rasterio

from conftest import TERRAMESH, tiny_model
from geo_helpers import fail_encoding_at, files_in, save_tiny, synthetic_scene, write_raster
from s1s2_encoders.cli import main
from s1s2_encoders.errors import OptionError
from s1s2_encoders.geo import SceneInputs, embed_scene
from s1s2_encoders.geo.cog import Overviews, reduce_2x2
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


# ------------------------------------------------------------------ int8 outputs of embed_scene
TM_S1 = TERRAMESH / "S1RTC" / "282D_485L_3_3.tif"
TM_S2 = TERRAMESH / "S2L1C" / "282D_485L_3_3.tif"
OPTIONS = dict(tile=224, overlap=0, stride=4, batch_size=1, progress=False, dtype="float32")
TINY_GROUPS = [(0, 16), (16, 32)]  # tiny Swin at stride 4: 16 S1 then 16 S2 channels


def cell_cosines(a: np.ndarray, b: np.ndarray, groups) -> np.ndarray:
    """Cosine of each cell's modality parts, ``(C, H, W)`` -> every (group, cell) value where both are valid."""
    out = []
    for start, end in groups:
        x, y = a[start:end].reshape(end - start, -1), b[start:end].reshape(end - start, -1)
        ok = ~np.isnan(x).any(axis=0) & ~np.isnan(y).any(axis=0)
        x, y = x[:, ok].astype(np.float64), y[:, ok].astype(np.float64)
        out.append((x * y).sum(axis=0) / (np.linalg.norm(x, axis=0) * np.linalg.norm(y, axis=0)))
    return np.concatenate(out)


def test_unit_int8_overview_averages_dequantised_cells_and_renormalises():
    rng = np.random.default_rng(1)
    q = quantize_int8(rng.normal(size=(10, 4, 3)).astype(np.float32), GROUPS)
    q[6:, 0:2, 0:2] = INT8_NODATA  # S2 part missing in the whole first block
    q[6:, 2, 0] = INT8_NODATA  # ... and in one cell of the block below
    out = reduce_2x2(q, Overviews("unit-int8", INT8_NODATA, tuple(GROUPS)))
    assert out.dtype == np.int8 and out.shape == (10, 2, 2)
    assert (out[6:, 0, 0] == INT8_NODATA).all() and (out[:6, 0, 0] != INT8_NODATA).all()
    x = dequantize_int8(q)
    for i, j in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        cells = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(10, -1)
        for a, b in GROUPS:
            part = cells[a:b][:, ~np.isnan(cells[a:b]).any(axis=0)]
            if part.shape[1] == 0:
                continue
            mean = part.mean(axis=1)
            expected = np.rint(127 * mean / np.linalg.norm(mean))
            assert np.abs(out[a:b, i, j] - expected).max() <= 1, (i, j, a)  # float32 vs float64 rounding
            assert np.linalg.norm(out[a:b, i, j] / 127.0) == pytest.approx(1.0, abs=0.02)


@pytest.fixture(scope="module")
def model():
    return tiny_model(normalization="fixed")


def test_int8_cog_dequantises_to_the_unit_normalised_float_cells_of_the_real_pair(tmp_path, model):
    inputs = SceneInputs(s1=[TM_S1], s2=[TM_S2], s2_offset=1000)
    embed_scene(model, inputs, tmp_path / "f32.tif", **OPTIONS)
    embed_scene(model, inputs, tmp_path / "i8.tif", quantize="int8", **OPTIONS)
    with rasterio.open(tmp_path / "f32.tif") as ds:
        floats = ds.read()
    with rasterio.open(tmp_path / "i8.tif") as ds:
        assert ds.dtypes[0] == "int8" and ds.nodata == -128 and ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.scales == (1 / 127,) * 32 and ds.offsets == (0.0,) * 32  # GDAL-aware readers de-quantise
        tags = ds.tags()
        assert tags["S1S2_QUANTIZATION"] == "int8" and tags["S1S2_DEQUANTIZATION"].startswith("value = int8 / 127; -128")
        assert tags["S1S2_OVERVIEWS"].startswith("de-quantised valid cells")
        q = ds.read()
        back = q * np.float32(ds.scales[0]) + np.float32(ds.offsets[0])
    with rasterio.open(tmp_path / "i8.tif", overview_level=0) as ds:
        overview = ds.read()
    unit = normalize_groups(floats, TINY_GROUPS)
    assert np.abs(back - unit).max() <= 0.5 / 127 + 1e-6
    cosines = cell_cosines(back, floats, TINY_GROUPS)
    assert cosines.size == 2 * 56 * 56 and cosines.min() >= 0.995
    assert np.array_equal(overview, reduce_2x2(q, Overviews("unit-int8", INT8_NODATA, tuple(TINY_GROUPS))))
    assert (tmp_path / "i8.tif").stat().st_size < (tmp_path / "f32.tif").stat().st_size / 3


def test_nan_cells_are_nodata_in_every_band_of_their_modality_in_tif_and_npy(tmp_path, model):
    s1, s2 = synthetic_scene(128, 128, seed=3)
    s2[:, :, :48] = 0  # S2 nodata in the left 48 columns (the Sentinel-2 convention)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    inputs = SceneInputs(s1=[p1], s2=[p2], s2_offset=0)
    out = tmp_path / "out"
    out.mkdir()
    options = dict(OPTIONS, tile=128, stride=8)
    embed_scene(model, inputs, out / "f32.tif", cog=False, **options)
    embed_scene(model, inputs, out / "i8.tif", quantize="int8", **options)
    embed_scene(model, inputs, out / "i8n.npy", fmt="npy", quantize="int8", **options)
    with rasterio.open(out / "f32.tif") as ds:
        floats = ds.read()
    with rasterio.open(out / "i8.tif") as ds:
        q = ds.read()
    groups = [(0, 32), (32, 64)]
    missing = np.isnan(floats)
    assert missing[32:, :, :6].all() and not missing[:32].any()  # the float file: S2 part NaN on the left
    assert np.array_equal(q == INT8_NODATA, missing)  # -128 exactly where the float file has NaN
    array = np.load(out / "i8n.npy")
    assert array.dtype == np.int8 and array.shape == (16, 16, 64)
    assert np.array_equal(np.moveaxis(array, -1, 0), q)
    sidecar = json.loads((out / "i8n.npy.json").read_text())
    assert sidecar["dtype"] == "int8" and sidecar["nodata"] == -128
    assert sidecar["quantization"] == quantization_metadata("int8", groups, ["s1", "s2"])
    assert sidecar["tags"]["S1S2_QUANTIZATION"] == "int8"
    assert files_in(out) == ["f32.json", "f32.tif", "i8.json", "i8.tif", "i8n.json", "i8n.npy", "i8n.npy.json"]


def test_resume_with_another_quantisation_starts_over(tmp_path, monkeypatch, model):

    s1, s2 = synthetic_scene(512, 96, seed=8)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    inputs, out = SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "emb.tif"
    options = dict(OPTIONS, tile=96, stride=8, resume=True, checkpoint_every=0)
    fail_encoding_at(monkeypatch, 4, RuntimeError("stop"))
    with pytest.raises(RuntimeError, match="stop"):
        embed_scene(model, inputs, out, quantize="int8", **options)
    monkeypatch.undo()
    record = json.loads((tmp_path / ".emb.tif.s1s2-partial.json").read_text())
    assert record["rows_done"] > 0 and record["params"]["quantize"] == "int8"
    result = embed_scene(model, inputs, out, **options)  # float32 now: the int8 rows are not reused
    assert result.resumed_from_row == 0
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "float32" and ds.tags()["S1S2_QUANTIZATION"] == "none"
    with pytest.raises(OptionError, match="quantize must be one of none, int8, got 'int4'"):
        embed_scene(model, inputs, tmp_path / "x.tif", quantize="int4", **OPTIONS)
    assert not (tmp_path / "x.tif").exists()


def test_cli_quantize_int8_npy(tmp_path, capsys):
    folder = tmp_path / "model"
    save_tiny(folder, "swin-t", "fixed")
    out = tmp_path / "e.npy"
    assert main(["embed", "--model", str(folder), "--s1", str(TM_S1), "--s2", str(TM_S2), "--s2-offset", "1000",
                 "--tile", "224", "--stride", "16", "--quantize", "int8", "--format", "npy", "--quiet", "-o", str(out)]) == 0
    array = np.load(out)
    assert array.dtype == np.int8 and array.shape == (14, 14, 128) and array.min() >= -127
    assert json.loads((tmp_path / "e.npy.json").read_text())["quantization"]["scale"] == pytest.approx(1 / 127)
    with pytest.raises(SystemExit):
        main(["embed", "--model", str(folder), "--s1", str(TM_S1), "--quantize", "int4", "-o", str(tmp_path / "x.tif")])
    assert "invalid choice: 'int4'" in capsys.readouterr().err
