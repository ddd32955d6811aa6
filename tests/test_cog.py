"""Cloud-Optimized GeoTIFF outputs (geo/cog.py): the layout through rasterio, overview values, --no-cog,
interrupts during the layout, resume, and the CLI."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from conftest import TERRAMESH, tiny_config, tiny_model
from geo_helpers import files_in, save_tiny, synthetic_scene, write_raster
from s1s2_encoders import create_model, task_config
from s1s2_encoders.cli import main
from s1s2_encoders.errors import OptionError
from s1s2_encoders.geo import SceneInputs, cog, embed_scene
from s1s2_encoders.geo.cog import Overviews, cog_block_size, overview_shapes, reduce_2x2, write_cog
from s1s2_encoders.geo.predict import predict_scene

TM_S1 = TERRAMESH / "S1RTC" / "282D_485L_3_3.tif"
TM_S2 = TERRAMESH / "S2L1C" / "282D_485L_3_3.tif"
REAL = SceneInputs(s1=[TM_S1], s2=[TM_S2], s2_offset=1000)
ONE_TILE = dict(tile=224, overlap=0, stride=4, batch_size=1, progress=False, dtype="float32")


def nan_mean_2x2(values: np.ndarray) -> np.ndarray:
    """The reference: NaN-ignoring mean of each 2 x 2 block (odd edges padded with NaN)."""
    c, h, w = values.shape
    padded = np.full((c, h + h % 2, w + w % 2), np.nan, dtype=np.float64)
    padded[:, :h, :w] = values
    blocks = padded.reshape(c, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": an all-NaN block -> NaN
        return np.nanmean(blocks, axis=(2, 4))


def read_level(path: Path, level: int | None = None) -> np.ndarray:
    with rasterio.open(path, overview_level=level) if level is not None else rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def model():
    return tiny_model(normalization="fixed")


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory, model):
    """The real TerraMesh pair embedded once as a COG and once with cog=False (stride 4: 56 x 56 cells)."""
    folder = tmp_path_factory.mktemp("cog-runs")
    embed_scene(model, REAL, folder / "cog.tif", **ONE_TILE)
    embed_scene(model, REAL, folder / "plain.tif", cog=False, **ONE_TILE)
    return folder


def test_embedding_cog_layout_tags_and_values_through_rasterio(real_runs):
    with rasterio.open(real_runs / "cog.tif") as ds, rasterio.open(real_runs / "plain.tif") as plain:
        structure = ds.tags(ns="IMAGE_STRUCTURE")
        assert structure["LAYOUT"] == "COG" and structure["COMPRESSION"] == "DEFLATE"
        assert structure["PREDICTOR"] == "3"  # floating-point predictor
        assert ds.count == 32 and ds.dtypes[0] == "float32" and (ds.height, ds.width) == (56, 56)
        assert all(ds.overviews(band) == [2] for band in ds.indexes)  # 56 -> 28 fits one block
        assert ds.block_shapes[0] == (cog_block_size(32, "float32", 56, 56),) * 2 == (64, 64)  # fits the raster
        assert cog_block_size(32, "float32") == 512 and cog_block_size(1536, "float32") == 64
        assert cog_block_size(1536, "int8") == 128 and cog_block_size(1536, "int8", 343, 343) == 128
        assert ds.crs == plain.crs and ds.transform == plain.transform and np.isnan(ds.nodata)
        assert ds.descriptions == plain.descriptions and ds.descriptions[0] == "s1_0000"
        tags = ds.tags()
        assert tags["S1S2_COMPLETE"] == "1" and tags["S1S2_LAYOUT"] == "dense, stride 4"
        assert tags["S1S2_QUANTIZATION"] == "none"
        assert tags["S1S2_OVERVIEWS"].startswith("mean of the valid cells of each 2 x 2 block")
        assert {k: v for k, v in tags.items() if k != "S1S2_OVERVIEWS"} == plain.tags()
        # --no-cog: the plain streamed file, tiled 64 x 32 (band-interleaved), no overviews.
        assert "LAYOUT" not in plain.tags(ns="IMAGE_STRUCTURE") and plain.overviews(1) == []
        assert plain.block_shapes[0] == (32, 64) and plain.tags(ns="IMAGE_STRUCTURE")["INTERLEAVE"] == "BAND"
        full = ds.read()
        assert np.array_equal(full, plain.read(), equal_nan=True)  # the layout changes no value
    np.testing.assert_allclose(read_level(real_runs / "cog.tif", 0), nan_mean_2x2(full), rtol=1e-6, atol=1e-6)
    assert files_in(real_runs) == ["cog.json", "cog.tif", "plain.json", "plain.tif"]  # each with its STAC Item


def test_overview_levels_aggregate_the_level_above_and_metadata_survives(tmp_path, monkeypatch):
    """Several levels (small blocks forced), NaN left out of the means, tags / descriptions / nodata /
    scale / offset kept by the COG copy, no temporary file left."""
    monkeypatch.setattr(cog, "MAX_TILE_BYTES", 16 * 16 * 3 * 4)  # -> 16 x 16 blocks for 3 float32 bands
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 70, 45)).astype(np.float32)
    values[:, :3, :3] = np.nan  # a whole 2 x 2 block and parts of its neighbours
    values[1, 10:13, 20] = np.nan
    source = write_raster(tmp_path / "src.tif", values, nodata=float("nan"), descriptions=["a", "b", "c"],
                          tags={"S1S2_X": "kept"}, band_tags={2: {"UNIT": "none"}}, tiled=True, blockxsize=48,
                          blockysize=32)
    with rasterio.open(source, "r+") as ds:
        ds.scales, ds.offsets = [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]
    assert overview_shapes(70, 45, 16) == [(35, 23), (18, 12), (9, 6)]
    write_cog(source, tmp_path / "out.tif", Overviews("average", float("nan")), compress="zstd")
    assert files_in(tmp_path) == ["out.tif", "src.tif"]
    with rasterio.open(tmp_path / "out.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.tags(ns="IMAGE_STRUCTURE")["COMPRESSION"] == "ZSTD"
        assert [ds.overviews(b) for b in ds.indexes] == [[2, 4, 8]] * 3 and ds.block_shapes[0] == (16, 16)
        assert ds.tags()["S1S2_X"] == "kept" and ds.tags(2)["UNIT"] == "none" and ds.descriptions == ("a", "b", "c")
        assert ds.scales == (0.5, 0.5, 0.5) and ds.offsets == (1.0, 1.0, 1.0) and np.isnan(ds.nodata)
        assert np.array_equal(ds.read(), values, equal_nan=True)
    above = values
    for level in range(3):
        got = read_level(tmp_path / "out.tif", level)
        expected = nan_mean_2x2(above)
        assert got.shape == expected.shape and np.array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        above = got
    assert np.isnan(read_level(tmp_path / "out.tif", 0)[:, 0, 0]).all()  # the all-NaN block stays NaN
    assert not np.isnan(read_level(tmp_path / "out.tif", 0)[:, 1, 1]).any()  # partly NaN: the valid cells' mean


def mode_2x2(classes: np.ndarray, nodata: int) -> np.ndarray:
    """The reference: the most frequent valid class of each 2 x 2 block, ties to the smallest."""
    h, w = classes.shape
    out = np.full(((h + 1) // 2, (w + 1) // 2), nodata, dtype=classes.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            counts = Counter(int(v) for v in classes[2 * i:2 * i + 2, 2 * j:2 * j + 2].ravel() if v != nodata)
            if counts:
                out[i, j] = min(counts, key=lambda c: (-counts[c], c))
    return out


def test_reduce_2x2_mode_and_nearest_on_a_small_case():
    classes = np.array([[[1, 1, 2, 3, 7], [2, 2, 255, 255, 7], [0, 4, 4, 255, 255]]], dtype=np.uint8)
    mode = reduce_2x2(classes, Overviews("mode", 255))
    assert mode.dtype == np.uint8 and mode.tolist() == [[[1, 2, 7], [0, 4, 255]]]
    assert reduce_2x2(classes, Overviews("nearest")).tolist() == [[[1, 2, 7], [0, 4, 255]]]
    with pytest.raises(OptionError, match="overview method must be one of average, unit-int8, mode, nearest"):
        Overviews("bilinear")


def tiny_segmenter(seed: int = 0):
    torch.manual_seed(seed)
    config = task_config(tiny_config("resnet18", "fixed"), "segmentation", class_names=["water", "forest", "crops"],
                         class_colors=[[0, 0, 255], [0, 128, 0], [250, 200, 0]], decoder={"channels": [16, 16, 16]})
    return create_model(config).eval()


def test_predict_cogs_map_overviews_take_the_mode_and_probabilities_the_mean(tmp_path):
    s1, s2 = synthetic_scene(200, 150, seed=11)
    s2[:, :, :30] = 0  # S2 nodata on the left: 255 in the map, NaN in the probabilities
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    out = tmp_path / "out"
    out.mkdir()
    predict_scene(tiny_segmenter(), SceneInputs(s1=[p1], s2=[p2], s2_offset=0), out / "map.tif",
                  probabilities=out / "probs.tif", tile=128, overlap=32, progress=False)
    assert files_in(out) == ["map.json", "map.tif", "probs.json", "probs.tif"]  # each with its STAC Item
    with rasterio.open(out / "map.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2]
        assert ds.nodata == 255 and ds.colormap(1)[0] == (0, 0, 255, 255) and ds.colormap(1)[255] == (0, 0, 0, 0)
        assert json.loads(ds.tags(1)["CLASS_NAMES"]) == ["water", "forest", "crops"]
        assert ds.tags()["S1S2_OVERVIEWS"].startswith("most frequent valid class")
        classes = ds.read(1)
    assert (classes[:, :30] == 255).all() and len(np.unique(classes[:, 30:])) > 1
    assert np.array_equal(read_level(out / "map.tif", 0)[0], mode_2x2(classes, 255))
    with rasterio.open(out / "probs.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and [ds.overviews(b) for b in ds.indexes] == [[2]] * 3
        probs = ds.read()
    overview = read_level(out / "probs.tif", 0)
    np.testing.assert_allclose(overview, nan_mean_2x2(probs), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(overview[:, :, 15:].sum(axis=0), 1.0, atol=1e-5)  # means of distributions


@pytest.mark.parametrize("resume", [False, True], ids=["plain", "resume"])
def test_an_interrupt_during_the_cog_layout_leaves_no_final_file(tmp_path, monkeypatch, model, real_runs, resume):
    """Ctrl-C while GDAL lays the COG out (after a half-written layout file): nothing under the final name;
    with resume the tiled partial file is kept, and the next run only lays it out."""
    real_copy = cog.rasterio.shutil.copy

    def interrupted(src, dst, driver=None, **options):
        if driver == "COG":
            Path(dst).write_bytes(b"II*\0 half a file")
            raise KeyboardInterrupt("stop")
        return real_copy(src, dst, driver=driver, **options)

    monkeypatch.setattr(cog.rasterio.shutil, "copy", interrupted)
    out = tmp_path / "emb.tif"
    with pytest.raises(KeyboardInterrupt, match="stop"):
        embed_scene(model, REAL, out, resume=resume, **ONE_TILE)
    if not resume:
        assert files_in(tmp_path) == []
        return
    assert files_in(tmp_path) == [".emb.tif.s1s2-partial", ".emb.tif.s1s2-partial.json"]
    monkeypatch.setattr(cog.rasterio.shutil, "copy", real_copy)
    result = embed_scene(model, REAL, out, resume=True, **ONE_TILE)
    assert result.resumed_from_row == 56 and result.tiles == 0  # every row was on disk: only the layout ran
    assert files_in(tmp_path) == ["emb.json", "emb.tif"]
    assert np.array_equal(read_level(out), read_level(real_runs / "cog.tif"), equal_nan=True)
    with rasterio.open(out) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"


def test_a_crash_in_the_writer_leaves_no_file(tmp_path, monkeypatch, model):
    from s1s2_encoders.geo.writers import GeoTiffSink

    def broken(self, row0, values):
        raise RuntimeError("disk full")

    monkeypatch.setattr(GeoTiffSink, "write_rows", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        embed_scene(model, REAL, tmp_path / "emb.tif", quantize="int8", **ONE_TILE)
    assert files_in(tmp_path) == []


def test_cli_cog_by_default_and_no_cog_for_embed_and_predict(tmp_path, capsys):
    backbone, segmenter = tmp_path / "backbone", tmp_path / "segmenter"
    save_tiny(backbone, "swin-t", "fixed")
    tiny_segmenter().save_pretrained(segmenter)
    base = ["--s1", str(TM_S1), "--s2", str(TM_S2), "--s2-offset", "1000", "--tile", "224", "--quiet"]
    assert main(["embed", "--model", str(backbone), *base, "--stride", "8", "-o", str(tmp_path / "cog.tif")]) == 0
    assert main(["embed", "--model", str(backbone), *base, "--stride", "8", "--no-cog", "-o", str(tmp_path / "plain.tif")]) == 0
    assert main(["predict", "--model", str(segmenter), *base, "--no-cog", "--probabilities", "-o", str(tmp_path / "map.tif")]) == 0
    capsys.readouterr()
    with rasterio.open(tmp_path / "cog.tif") as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2] and ds.shape == (28, 28)
    for name in ("plain.tif", "map.tif", "map_probabilities.tif"):
        with rasterio.open(tmp_path / name) as ds:
            assert "LAYOUT" not in ds.tags(ns="IMAGE_STRUCTURE") and ds.overviews(1) == [] and ds.block_shapes[0][0] == 32
    assert not [name for name in files_in(tmp_path) if name.startswith(".")]


def test_an_interrupt_in_the_second_layout_of_predict_leaves_neither_output(tmp_path, monkeypatch):
    """All layouts are made before any rename: the map's finished COG does not appear while the
    probabilities' layout is interrupted, and no temporary file is left."""
    s1, s2 = synthetic_scene(96, 96, seed=2)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    out = tmp_path / "out"
    out.mkdir()
    real_copy, layouts = cog.rasterio.shutil.copy, []

    def second_interrupted(src, dst, driver=None, **options):
        if driver == "COG":
            layouts.append(Path(dst).name)
            if len(layouts) == 2:
                raise KeyboardInterrupt("stop")
        return real_copy(src, dst, driver=driver, **options)

    monkeypatch.setattr(cog.rasterio.shutil, "copy", second_interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_scene(tiny_segmenter(), SceneInputs(s1=[p1], s2=[p2], s2_offset=0), out / "map.tif",
                      probabilities=out / "probs.tif", tile=96, overlap=0, progress=False)
    assert layouts == [".map.tif.s1s2-cog", ".probs.tif.s1s2-cog"]
    assert files_in(out) == []
