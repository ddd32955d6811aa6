"""``embed_xarray`` / ``predict_xarray``: rioxarray / odc-stac style inputs give what ``s1s2 embed`` /
``s1s2 predict`` write (values, CRS, transform), dask inputs are computed tile by tile."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import rasterio
import rioxarray
import xarray as xr

from conftest import TERRAMESH, tiny_model
from geo_helpers import read, synthetic_scene, write_raster
from s1s2_encoders import BandError, GridMismatchError, InputShapeError, S2_L1C_BANDS, UnitsError
from s1s2_encoders.cli import main
from s1s2_encoders.geo import SceneInputs
from s1s2_encoders.geo.predict import predict_scene
from s1s2_encoders.stac import S2_COMMON_NAMES
from s1s2_encoders.xarray import embed_xarray, predict_xarray
from stac_helpers import tiny_segmenter

TM_S1 = TERRAMESH / "S1RTC" / "282D_485L_3_3.tif"
TM_S2 = TERRAMESH / "S2L1C" / "282D_485L_3_3.tif"
ES_KEYS = {band: key for key, band in S2_COMMON_NAMES.items()}
OPTIONS = {"tile": 128, "overlap": 32, "dtype": "float32"}


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-swin"
    model = tiny_model("swin-t", "fixed")
    model.save_pretrained(folder)
    return folder, model


def cli_embed(folder, out, *extra):
    assert main(["embed", "--model", str(folder), "--s1", str(TM_S1), "--s2", str(TM_S2), "--s2-offset", "1000",
                 "--tile", "128", "--overlap", "32", "--dtype", "float32", "--quiet", "-o", str(out), *extra]) == 0
    return read(out)


def as_dataset(path, names, chunks=None):
    """An odc-stac style Dataset: one (y, x) variable per band, named ``names``."""
    da = rioxarray.open_rasterio(path, chunks=chunks)
    return xr.Dataset({name: da.isel(band=k, drop=True) for k, name in enumerate(names)}).rio.write_crs(da.rio.crs)


@pytest.mark.parametrize("stride", [32, 8])
def test_embed_xarray_of_open_rasterio_equals_s1s2_embed(tmp_path, model_folder, stride):
    folder, model = model_folder
    out = embed_xarray(model, rioxarray.open_rasterio(TM_S1), rioxarray.open_rasterio(TM_S2), stride=stride,
                       s2_offset=1000, **OPTIONS)
    values, meta = cli_embed(folder, tmp_path / "emb.tif", "--stride", str(stride))
    assert out.dims == ("band", "y", "x") and out.dtype == np.float32
    assert out.shape == values.shape == (2 * model.pyramid_channels["s1"][[4, 8, 16, 32].index(stride)], 224 // stride, 224 // stride)
    np.testing.assert_array_equal(out.values, values)  # the same code path: bit for bit
    assert out.rio.crs == meta["crs"] and out.rio.transform() == meta["transform"]
    assert list(out.band.values) == list(meta["descriptions"])
    # Coordinates are cell centres of the output grid, as rioxarray reads the GeoTIFF.
    reopened = rioxarray.open_rasterio(tmp_path / "emb.tif")
    np.testing.assert_allclose(out.x.values, reopened.x.values)
    np.testing.assert_allclose(out.y.values, reopened.y.values)
    assert np.isnan(out.rio.nodata) and out.attrs["S1S2_S2_OFFSET"] == "1000 (--s2-offset)"


def test_pooled_embedding_and_a_single_modality(tmp_path, model_folder):
    folder, model = model_folder
    out = embed_xarray(model, s2=rioxarray.open_rasterio(TM_S2), pooled=True, tile=112, s2_offset=1000, dtype="float32")
    assert main(["embed", "--model", str(folder), "--s2", str(TM_S2), "--modality", "s2", "--pooled", "--tile", "112",
                 "--s2-offset", "1000", "--dtype", "float32", "--quiet", "-o", str(tmp_path / "p.tif")]) == 0
    values, meta = read(tmp_path / "p.tif")
    assert out.shape == values.shape == (model.embed_dims["s2"], 2, 2) and str(out.band.values[0]) == "s2_0000"
    np.testing.assert_array_equal(out.values, values)
    assert out.rio.transform() == meta["transform"]


def test_dataset_with_common_names_and_dask_chunks_is_read_tile_by_tile(model_folder):
    """odc-stac's layout: one variable per band named by Earth Search common names, shuffled, dask-backed;
    no dask computation ever covers the whole scene, and the result equals the in-memory run."""
    from dask.callbacks import Callback

    _, model = model_folder
    reference = embed_xarray(model, rioxarray.open_rasterio(TM_S1), rioxarray.open_rasterio(TM_S2), stride=16,
                             s2_offset=1000, **OPTIONS)
    order = np.random.default_rng(0).permutation(len(S2_L1C_BANDS))
    s2 = as_dataset(TM_S2, [ES_KEYS[b] for b in S2_L1C_BANDS], chunks={"x": 32, "y": 32})
    s2 = s2[[ES_KEYS[S2_L1C_BANDS[i]] for i in order]]
    s2["scl"] = s2["red"] * 0  # a variable that is not a band: left out
    s1 = rioxarray.open_rasterio(TM_S1, chunks={"x": 32, "y": 32}).assign_coords(band=["VV", "VH"])
    assert s1.chunks is not None and s2["red"].chunks is not None

    computed: list[int] = []

    class CountChunks(Callback):
        def _start(self, dsk):
            # Chunk-reading tasks in this graph (keys of open_rasterio's arrays).
            computed.append(sum(1 for key in dsk if isinstance(key, tuple) and str(key[0]).startswith("open_rasterio")))

    with CountChunks():
        out = embed_xarray(model, s1, s2, stride=16, s2_offset=1000, **OPTIONS)
    np.testing.assert_array_equal(out.values, reference.values)
    assert out.rio.transform() == reference.rio.transform()
    # 2 x 2 tiles of 128 px (origins 0 and 96) and 2 modalities: 8 computations, each of the 4 x 4 chunks
    # of 32 px under its tile (culled from the 7 x 7 of the scene), never the whole scene.
    assert computed == [16] * 8


def test_nodata_becomes_nan_and_bands_come_from_names(tmp_path):
    s1, s2 = synthetic_scene(96, 96, seed=3)
    s1[:, :40, :40] = np.nan
    model = tiny_model("swin-t", "fixed")
    transform = rasterio.transform.from_origin(500000.0, 4600000.0, 10.0, 10.0)
    da1 = xr.DataArray(s1, dims=("band", "y", "x"), coords={"band": ["VV", "VH"]}).rio.write_crs("EPSG:32633")
    da1 = da1.rio.write_transform(transform)
    bands = list(S2_L1C_BANDS)[::-1]  # named, reversed: re-ordered by name
    da2 = xr.DataArray(s2[::-1], dims=("band", "y", "x"), coords={"band": bands}).rio.write_crs("EPSG:32633")
    da2 = da2.rio.write_transform(transform)
    out = embed_xarray(model, da1, da2, stride=32, s2_offset=0, **OPTIONS)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1, transform=transform), write_raster(tmp_path / "s2.tif", s2, transform=transform)
    from s1s2_encoders.geo import embed_scene

    embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "ref.tif", stride=32, progress=False, **OPTIONS)
    reference, meta = read(tmp_path / "ref.tif")
    np.testing.assert_array_equal(out.values, reference)
    s1_part = out.values[: model.embed_dims["s1"]]
    assert np.isnan(s1_part[:, 0, 0]).all() and np.isfinite(s1_part[:, 2, 2]).all()  # the NaN block is S1 nodata
    assert np.isfinite(out.values[model.embed_dims["s1"]:]).all()  # S2 features are there everywhere
    assert out.rio.transform() == meta["transform"] and out.rio.crs == meta["crs"]


def test_predict_xarray_equals_predict_scene(tmp_path):
    segmenter = tiny_segmenter()
    out = predict_xarray(segmenter, rioxarray.open_rasterio(TM_S1), rioxarray.open_rasterio(TM_S2), s2_offset=1000,
                         probabilities=True, tile=128, dtype="float32")
    predict_scene(segmenter, SceneInputs(s1=[TM_S1], s2=[TM_S2], s2_offset=1000), tmp_path / "map.tif",
                  probabilities=tmp_path / "p.tif", tile=128, dtype="float32", progress=False)
    classes, meta = read(tmp_path / "map.tif")
    probabilities = read(tmp_path / "p.tif")[0]
    assert out["classes"].dims == ("y", "x") and out["classes"].dtype == np.uint8
    np.testing.assert_array_equal(out["classes"].values, classes[0])
    np.testing.assert_array_equal(out["probabilities"].values, probabilities)
    assert list(out["probabilities"]["class"].values) == ["water", "forest", "crops"]
    assert out.rio.crs == meta["crs"] and out.rio.transform() == meta["transform"]
    assert out["classes"].rio.nodata == 255


def test_errors_name_the_problem(model_folder):
    _, model = model_folder
    s1, s2 = rioxarray.open_rasterio(TM_S1), rioxarray.open_rasterio(TM_S2)
    shifted = s2.assign_coords(x=s2.x + 10.0)
    with pytest.raises(GridMismatchError, match=r"(?s)differ in origin.*s1\.rio\.reproject_match\(s2\)"):
        embed_xarray(model, s1, shifted.rio.write_transform(shifted.rio.transform(recalc=True)), s2_offset=1000)
    series = xr.concat([s2, s2], dim="time")
    with pytest.raises(InputShapeError, match=r"2 time steps \('time' dimension\); embed one at a time, e.g. x.isel\(time=0\)"):
        embed_xarray(model, s2=series)
    with pytest.raises(BandError, match="Sentinel-2 input has 12 channels but the model expects 13"):
        embed_xarray(model, s2=s2.isel(band=slice(0, 12)))
    with pytest.raises(BandError, match="no variable of the Dataset is named after a Sentinel-2 band"):
        embed_xarray(model, s2=xr.Dataset({"scl": s2.isel(band=0, drop=True)}))
    with pytest.raises(InputShapeError, match="must be an xarray DataArray or Dataset, got ndarray"):
        embed_xarray(model, s2=s2.values)
    linear = 10 ** (s1 / 10)
    with pytest.raises(UnitsError, match="linear power"):
        embed_xarray(model, s1=linear)
    out = embed_xarray(model, s1=linear, s1_linear=True, **OPTIONS)
    np.testing.assert_allclose(out.values, embed_xarray(model, s1=s1, **OPTIONS).values, atol=1e-3, rtol=0)


def test_missing_extra_names_it(monkeypatch, model_folder):
    monkeypatch.setitem(sys.modules, "rioxarray", None)
    with pytest.raises(ImportError, match=r"need xarray and rioxarray \(the 'xarray' extra\): pip install 's1s2-encoders\[xarray\]'"):
        embed_xarray(model_folder[1], s2=object())
