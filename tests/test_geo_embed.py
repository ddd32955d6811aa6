"""``embed_scene`` and ``s1s2 embed``: georeferencing, values, nodata, tiling consistency, errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from conftest import TERRAMESH, tiny_model
from geo_helpers import (
    BEN_PAIRS, BIGEARTHNET, UTM, UTM_TRANSFORM, WGS84, WGS84_TRANSFORM, fail_encoding_at, files_in, read, run_cli, save_tiny,
    synthetic_scene, write_raster,
)
from s1s2_encoders import UnitsError
from s1s2_encoders.cli import main
from s1s2_encoders.geo import SceneInputs, embed_scene

TM = "282D_485L_3_3"
TM_S1 = TERRAMESH / "S1RTC" / f"{TM}.tif"
TM_S2 = TERRAMESH / "S2L1C" / f"{TM}.tif"


@pytest.fixture(scope="module")
def swin_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-swin"
    return folder, save_tiny(folder, "swin-t", "sslt_channel_max")


def scaled(transform: Affine, factor: int) -> Affine:
    return transform @ Affine.scale(factor)


def test_cli_embed_real_terramesh_pair_keeps_crs_and_transform(tmp_path, swin_folder):
    folder, model = swin_folder
    out = tmp_path / "emb.tif"
    result = run_cli("embed", "--model", folder, "--s1", TM_S1, "--s2", TM_S2, "--s2-offset", "1000",
                     "--tile", "224", "--stride", "16", "-o", out)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out} (1 tiles" in result.stdout
    assert "1/1 tiles (100%)" in result.stderr and "tiles/s" in result.stderr and "ETA" in result.stderr
    values, meta = read(out)
    with rasterio.open(TM_S2) as src:
        crs, transform = src.crs, src.transform
        s2 = src.read()
    with rasterio.open(TM_S1) as src:
        s1 = src.read()
    assert meta["crs"] == crs and meta["transform"] == scaled(transform, 16)
    assert values.shape == (128, 14, 14) and meta["profile"]["dtype"] == "float32"
    assert meta["profile"]["tiled"] and meta["profile"]["compress"] == "deflate"
    assert meta["descriptions"][0] == "s1_0000" and meta["descriptions"][-1] == "s2_0063"
    assert meta["tags"]["S1S2_COMPLETE"] == "1" and meta["tags"]["S1S2_S2_OFFSET"] == "1000 (--s2-offset)"
    # One tile covers the whole pair: the file holds exactly the model's dense stride-16 map.
    expected = model.embed_dense(s1, s2, s2_offset=1000)[16][0]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-5)
    assert files_in(tmp_path) == ["emb.json", "emb.tif"]  # the STAC Item; no partial files left behind


def test_cli_embed_bigearthnet_per_band_scene_list(tmp_path, swin_folder, capsys):
    folder, _ = swin_folder
    args = ["embed", "--model", str(folder), "--scenes", str(BIGEARTHNET / "pairs.txt"), "-o", str(tmp_path),
            "--tile", "128", "--stride", "8", "--quiet"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "2 scene(s): 2 written, 0 skipped (complete), 0 failed" in captured.out
    assert "band(s) B10 missing" in captured.err  # L2A per-band files for an L1C model
    for _, s2_name in BEN_PAIRS:
        values, meta = read(tmp_path / f"{s2_name}.tif")
        with rasterio.open(BIGEARTHNET / "BigEarthNet-S2-Example" / s2_name / f"{s2_name}_B02.tif") as src:
            assert meta["crs"] == src.crs and meta["transform"] == scaled(src.transform, 8)
        assert values.shape == (2 * 32, 15, 15) and np.isfinite(values).all()
    # Restarting the job skips the finished scenes.
    assert main(args) == 0
    assert "2 scene(s): 0 written, 2 skipped (complete), 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("crs,transform", [(UTM, UTM_TRANSFORM), (WGS84, WGS84_TRANSFORM)], ids=["utm", "epsg4326"])
def test_sizes_not_multiples_of_tile_or_32_keep_georeferencing(tmp_path, crs, transform):
    s1, s2 = synthetic_scene(300, 270, seed=1)
    p1 = write_raster(tmp_path / "s1.tif", s1, crs, transform)
    p2 = write_raster(tmp_path / "s2.tif", s2, crs, transform)
    model = tiny_model()
    result = embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "dense.tif",
                         tile=128, overlap=32, stride=16, progress=False)
    values, meta = read(tmp_path / "dense.tif")
    assert values.shape == (128, 19, 17) and np.isfinite(values).all()
    assert meta["crs"] == crs and meta["transform"] == scaled(transform, 16)
    assert result.tiles == 9 and result.grid.transform == meta["transform"]
    embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "pooled.tif", pooled=True, tile=100,
                progress=False)
    values, meta = read(tmp_path / "pooled.tif")
    assert values.shape == (256, 3, 3) and np.isfinite(values).all()  # 128 + 128 pooled features per cell
    assert meta["transform"] == scaled(transform, 100) and meta["crs"] == crs


def test_nodata_in_either_input_becomes_nodata_in_the_output(tmp_path):
    s1, s2 = synthetic_scene(160, 192, seed=2)
    s1[:, :50] = np.nan  # S1: no data in the top 50 rows
    s2[:, :, :70] = 0  # S2: no data (0 in every band) in the left 70 columns
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_model()
    embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "out.tif", tile=128, overlap=32,
                stride=16, progress=False)
    values, meta = read(tmp_path / "out.tif")
    assert np.isnan(meta["nodata"])
    s1_part, s2_part = values[:64], values[64:]
    # A cell is nodata for a modality exactly when none of its 16 x 16 pixels had data.
    s1_nodata = np.isnan(s1_part).all(axis=0)
    s2_nodata = np.isnan(s2_part).all(axis=0)
    assert np.array_equal(np.isnan(s1_part).any(axis=0), s1_nodata)  # whole feature vectors, never partial
    expected_s1 = np.zeros((10, 12), bool)
    expected_s1[:3] = True  # rows 0-47; row 3 (48-63) has 14 valid rows
    expected_s2 = np.zeros((10, 12), bool)
    expected_s2[:, :4] = True  # columns 0-63; column 4 (64-79) has 10 valid columns
    assert np.array_equal(s1_nodata, expected_s1) and np.array_equal(s2_nodata, expected_s2)


def _cells_far_from_borders(plan, crop, margin):
    """Cells of a stride-8 map inside ``crop`` (y0, x0, y1, x1 px) at least ``margin`` cells from the
    crop's border and from every border of every tile that covers them."""
    cell = plan.cell
    y0, x0, y1, x1 = (v // cell for v in crop)
    th, tw = plan.tile_h // cell, plan.tile_w // cell
    keep = []
    for i in range(y0 + margin, y1 - margin):
        for j in range(x0 + margin, x1 - margin):
            ok = True
            for ty in plan.ys:
                for tx in plan.xs:
                    cy, cx = ty // cell, tx // cell
                    if cy <= i < cy + th and cx <= j < cx + tw:
                        ok &= min(i - cy, cy + th - 1 - i, j - cx, cx + tw - 1 - j) >= margin
            if ok:
                keep.append((i, j))
    return keep


def test_fixed_normalisation_window_equals_the_crop_embedded_alone(tmp_path):
    """With a content-independent normalisation, tiling does not change features away from borders:
    the scene output equals embedding the crop on its own. With per-tile max normalisation it does not."""
    from s1s2_encoders.geo.tiling import TilePlan

    s1, s2 = synthetic_scene(320, 288, seed=3)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    crop = (64, 96, 224, 256)  # rows 64-224, columns 96-256: not a tile of the tiling
    plan = TilePlan.dense(320, 288, 256, 64, stride=8)
    cells = _cells_far_from_borders(plan, crop, margin=4)  # 32 px: beyond the stride-8 receptive field
    assert len(cells) >= 30
    rows, cols = np.array(cells).T
    diffs = {}
    for normalization in ("fixed", "sslt_channel_max"):
        model = tiny_model("resnet18", normalization)
        out = tmp_path / f"{normalization}.tif"
        embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), out, tile=256, overlap=64, stride=8,
                    progress=False)
        scene_values, _ = read(out)
        alone = model.embed_dense(s1[:, 64:224, 96:256], s2[:, 64:224, 96:256])[8][0]
        diffs[normalization] = np.abs(scene_values[:, rows, cols] - alone[:, rows - 8, cols - 12]).max()
        scale = np.abs(alone).max()
    assert diffs["fixed"] < 1e-4 * scale
    assert diffs["sslt_channel_max"] > 1e-2 * scale  # per-tile maxima differ from the crop's: seams


def test_tile_core_equals_that_tile_embedded_alone(tmp_path):
    s1, s2 = synthetic_scene(320, 320, seed=4)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_model()
    with pytest.warns(UserWarning, match="seams between tiles are unavoidable"):
        embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "out.tif", tile=128, overlap=32,
                    stride=16, progress=False)
    values, _ = read(tmp_path / "out.tif")
    alone = model.embed_dense(s1[:, 96:224, 96:224], s2[:, 96:224, 96:224])[16][0]
    # Tiles start at 0, 96, 192: pixels 128-192 are covered by the tile at 96 only.
    np.testing.assert_allclose(values[:, 8:12, 8:12], alone[:, 2:6, 2:6], rtol=1e-5, atol=1e-5)
    assert np.abs(values[:, 6:8, 6:8] - alone[:, 0:2, 0:2]).max() > 1e-3  # blended with neighbours there


def test_pooled_cells_are_the_embeddings_of_each_tile(tmp_path):
    s1, s2 = synthetic_scene(256, 192, seed=5)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_model("resnet18")
    embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "pooled.tif", pooled=True, tile=64,
                modality="s2", progress=False)
    values, meta = read(tmp_path / "pooled.tif")
    assert values.shape == (512, 4, 3) and meta["descriptions"][0] == "s2_0000"
    assert meta["tags"]["S1S2_LAYOUT"] == "pooled per tile" and meta["transform"] == scaled(UTM_TRANSFORM, 64)
    tiles = np.stack([s2[:, 64 * i: 64 * i + 64, 64 * j: 64 * j + 64] for i in range(4) for j in range(3)])
    expected = model.embed(s2=tiles)
    np.testing.assert_allclose(values.reshape(512, 12).T, expected, rtol=1e-4, atol=1e-5)


def test_npy_output_matches_the_geotiff(tmp_path):
    s1, s2 = synthetic_scene(100, 140, seed=6)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_model()
    inputs = SceneInputs(s1=[p1], s2=[p2], s2_offset=0)
    embed_scene(model, inputs, tmp_path / "e.tif", tile=96, overlap=32, stride=16, progress=False, stac=False)
    result = embed_scene(model, inputs, tmp_path / "e.npy", tile=96, overlap=32, stride=16, fmt="npy", progress=False)
    assert result.outputs == [tmp_path / "e.npy", tmp_path / "e.npy.json", tmp_path / "e.json"]
    array = np.load(tmp_path / "e.npy")
    values, meta = read(tmp_path / "e.tif")
    assert array.shape == (7, 9, 128) and array.dtype == np.float32
    np.testing.assert_array_equal(np.moveaxis(array, -1, 0), values)
    side = json.loads((tmp_path / "e.npy.json").read_text())
    assert side["layout"] == "HWC" and side["crs_string"] == "EPSG:32633"
    assert Affine(*side["transform"]) == meta["transform"] and side["bands"][64] == "s2_0000"


def test_s2_offset_option_and_unit_errors(tmp_path):
    model = tiny_model()
    with rasterio.open(TM_S1) as src:
        s1, crs, transform = src.read(), src.crs, src.transform
    with rasterio.open(TM_S2) as src:
        s2 = src.read()
    with pytest.warns(UserWarning, match=r"carry the \+1000 offset .* --s2-offset 1000"):
        embed_scene(model, SceneInputs(s1=[TM_S1], s2=[TM_S2]), tmp_path / "raw.tif", tile=224, progress=False)
    embed_scene(model, SceneInputs(s1=[TM_S1], s2=[TM_S2], s2_offset=1000), tmp_path / "off.tif", tile=224,
                progress=False)
    np.testing.assert_allclose(read(tmp_path / "off.tif")[0], model.embed_dense(s1, s2, s2_offset=1000)[32][0],
                               rtol=1e-5, atol=1e-5)
    # S1 in linear power: refused with a hint, nothing written; converted with s1_linear.
    linear = write_raster(tmp_path / "linear.tif", (10 ** (s1 / 10)).astype(np.float32), crs, transform)
    with pytest.raises(UnitsError, match=r"linear\.tif: Sentinel-1 values are all >= 0 .*--s1-linear"):
        embed_scene(model, SceneInputs(s1=[linear], s2=[TM_S2], s2_offset=1000), tmp_path / "bad.tif", tile=224,
                    progress=False)
    assert not (tmp_path / "bad.tif").exists() and not list(tmp_path.glob(".bad*"))
    embed_scene(model, SceneInputs(s1=[linear], s2=[TM_S2], s2_offset=1000, s1_linear=True), tmp_path / "lin.tif",
                tile=224, progress=False)
    np.testing.assert_allclose(read(tmp_path / "lin.tif")[0], read(tmp_path / "off.tif")[0], rtol=1e-3, atol=1e-3)


def test_cli_misaligned_pair_is_refused_with_both_grids_and_no_output(tmp_path, swin_folder):
    folder, _ = swin_folder
    s1, s2 = synthetic_scene(96, 96)
    p1 = write_raster(tmp_path / "s1.tif", s1, transform=rasterio.transform.from_origin(404410.0, 5342400.0, 10, 10))
    p2 = write_raster(tmp_path / "s2.tif", s2)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("embed", "--model", folder, "--s1", p1, "--s2", p2, "-o", out / "emb.tif")
    assert result.returncode == 2
    assert "s1s2 embed: error: S1 and S2 are not on the same pixel grid (they differ in origin):" in result.stderr
    assert f"S1  {p1}: EPSG:32633, 96 x 96 px, pixel 10 x 10 m, origin (404410.000000, 5342400.000000)" in result.stderr
    assert f"S2  {p2}: EPSG:32633, 96 x 96 px, pixel 10 x 10 m, origin (404400.000000, 5342400.000000)" in result.stderr
    assert "--align" in result.stderr and "Traceback" not in result.stderr
    assert files_in(out) == []


@pytest.mark.parametrize("case", ["missing", "unreadable", "band_count", "exists"])
def test_bad_inputs_give_clear_errors_and_no_output(tmp_path, swin_folder, capsys, case):
    folder, _ = swin_folder
    s1, s2 = synthetic_scene(64, 64)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    expected = {
        "missing": (f"Sentinel-2: no such file: {tmp_path / 'nope.tif'}", ["--s2", str(tmp_path / "nope.tif")]),
        "unreadable": ("Sentinel-2: cannot read", ["--s2", str(tmp_path / "s2.txt")]),
        "band_count": ("Sentinel-2 input has 5 channels but the model expects 13", ["--s2", str(tmp_path / "five.tif")]),
        "exists": ("exists already; pass --overwrite", ["--s2", str(p2)]),
    }[case]
    (tmp_path / "s2.txt").write_text("hello")
    write_raster(tmp_path / "five.tif", s2[:5])
    if case == "exists":
        (out_dir / "emb.tif").write_bytes(b"precious")
    code = main(["embed", "--model", str(folder), "--s1", str(p1), *expected[1], "-o", str(out_dir / "emb.tif"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "s1s2 embed: error: " in err and expected[0] in err
    assert files_in(out_dir) == (["emb.tif"] if case == "exists" else [])
    if case == "exists":
        assert (out_dir / "emb.tif").read_bytes() == b"precious"


def test_many_scenes_from_globs_pair_by_wildcard(tmp_path, swin_folder, capsys):
    folder, _ = swin_folder
    for name in ("alpha", "beta", "gamma"):
        s1, s2 = synthetic_scene(64, 96, seed=len(name))
        (tmp_path / name).mkdir()
        write_raster(tmp_path / name / "s1.tif", s1)
        write_raster(tmp_path / name / "s2.tif", s2)
    out = tmp_path / "out"
    out.mkdir()
    args = ["embed", "--model", str(folder), "--s1", str(tmp_path / "*" / "s1.tif"), "--s2", str(tmp_path / "*" / "s2.tif"),
            "-o", f"{out}/", "--tile", "64", "--overlap", "0", "--quiet", "--s2-offset", "0"]
    assert main(args) == 0
    assert "3 scene(s): 3 written" in capsys.readouterr().out
    assert files_in(out) == ["alpha.json", "alpha.tif", "beta.json", "beta.tif", "gamma.json", "gamma.tif"]
    (tmp_path / "gamma" / "s1.tif").unlink()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "do not pair up" in err and f"S2 without S1: {tmp_path / 'gamma' / 's2.tif'}" in err


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupt_or_crash_midway_leaves_no_file_under_any_name(tmp_path, monkeypatch, error):
    """Ctrl-C (KeyboardInterrupt in the main thread) or a crash after rows reached the partial file."""
    from s1s2_encoders.geo.writers import GeoTiffSink
    from s1s2_encoders.models.engine import InferenceEngine

    s1, s2 = synthetic_scene(512, 96, seed=8)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    model = tiny_model()
    calls, written = [], []
    encode, write_rows = InferenceEngine.encode_batch, GeoTiffSink.write_rows

    def failing_encode(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the 5th batch, after rows were written
            raise error("stop")
        return encode(self, *args, **kwargs)

    def spy(self, row0, values):
        written.append(row0)
        return write_rows(self, row0, values)

    monkeypatch.setattr(InferenceEngine, "encode_batch", failing_encode)
    monkeypatch.setattr(GeoTiffSink, "write_rows", spy)
    with pytest.raises(error, match="stop"):
        embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), out_dir / "emb.tif", tile=96, overlap=0,
                    stride=4, batch_size=1, progress=False)
    assert written and written[0] == 0  # rows had reached the partial file before the failure
    assert files_in(out_dir) == []


def test_single_modality_needs_only_its_own_input(tmp_path):
    s1, _ = synthetic_scene(96, 64, seed=9)
    p1 = write_raster(tmp_path / "s1.tif", s1, WGS84, WGS84_TRANSFORM)
    model = tiny_model("resnet18")
    embed_scene(model, SceneInputs(s1=[p1]), tmp_path / "s1only.tif", modality="s1", tile=64, overlap=0, stride=32,
                progress=False)
    values, meta = read(tmp_path / "s1only.tif")
    assert values.shape == (512, 3, 2) and meta["descriptions"][-1] == "s1_0511"
    # ResNet cells are centred on pixel 32 * i (tests/test_alignment.py): the grid starts 15.5 px earlier
    assert meta["crs"] == WGS84 and meta["transform"] == WGS84_TRANSFORM * Affine.translation(-15.5, -15.5) * Affine.scale(32)
    from s1s2_encoders import InputShapeError

    with pytest.raises(InputShapeError, match=r"Sentinel-2 tower is used \(modality both\) but no Sentinel-2 input was given \(--s2\)"):
        embed_scene(model, SceneInputs(s1=[p1]), tmp_path / "both.tif", tile=64, progress=False)
    assert not (tmp_path / "both.tif").exists()


def test_invalid_tiling_options_are_reported_not_raised(tmp_path, swin_folder, capsys):
    folder, _ = swin_folder
    s1, s2 = synthetic_scene(64, 64)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    for options, message in ((["--tile", "100"], "tile must be a positive multiple of 32 pixels, got 100"),
                             (["--tile", "128", "--overlap", "128"], "overlap must be a multiple of 32 pixels in [0, tile)")):
        code = main(["embed", "--model", str(folder), "--s1", str(p1), "--s2", str(p2), "-o", str(tmp_path / "e.tif"),
                     "--quiet", *options])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "e.tif").exists()


def test_bfloat16_output_is_float32_and_close(tmp_path):
    s1, s2 = synthetic_scene(96, 96, seed=10)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_model("resnet18", "fixed")
    inputs = SceneInputs(s1=[p1], s2=[p2], s2_offset=0)
    embed_scene(model, inputs, tmp_path / "f32.tif", tile=96, stride=16, dtype="float32", progress=False)
    embed_scene(model, inputs, tmp_path / "bf16.tif", tile=96, stride=16, dtype="bfloat16", progress=False)
    full, _ = read(tmp_path / "f32.tif")
    half, meta = read(tmp_path / "bf16.tif")
    assert meta["profile"]["dtype"] == "float32" and not np.array_equal(full, half)
    assert np.abs(half - full).max() < 0.05 * np.abs(full).max()


def test_resume_with_another_precision_is_refused_naming_both(tmp_path, monkeypatch):
    """The resume record keeps the compute dtype and device: rows of bfloat16 and float32 are never stitched."""
    from s1s2_encoders.errors import OptionError

    s1, s2 = synthetic_scene(512, 96, seed=8)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    out = tmp_path / "emb.tif"
    model = tiny_model(normalization="fixed")
    inputs = SceneInputs(s1=[p1], s2=[p2], s2_offset=0)
    options = dict(tile=96, overlap=0, stride=8, batch_size=1, progress=False, resume=True, checkpoint_every=0)
    fail_encoding_at(monkeypatch, 4, RuntimeError("stop"))
    with pytest.raises(RuntimeError, match="stop"):
        embed_scene(model, inputs, out, dtype="float32", **options)
    monkeypatch.undo()
    record = json.loads((tmp_path / ".emb.tif.s1s2-partial.json").read_text())
    assert record["rows_done"] > 0 and record["params"]["compute"] == {"dtype": "float32", "device": "cpu", "mode": "plain"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bfloat16 is emulated on CPUs without it (and says so)
        with pytest.raises(OptionError, match=r"computed in float32 on cpu, this run computes in bfloat16 on cpu; "
                                              r"resuming would stitch the two. Resume with the same --dtype"):
            embed_scene(model, inputs, out, dtype="bfloat16", **options)
    assert (tmp_path / ".emb.tif.s1s2-partial").is_file() and not out.exists()  # nothing lost
    result = embed_scene(model, inputs, out, dtype="float32", **options)
    assert result.resumed_from_row == record["rows_done"] and out.is_file()



@pytest.mark.parametrize("offset", [-1000.0, float("nan"), float("inf")])
def test_a_bad_s2_offset_of_a_scene_is_refused_before_reading(tmp_path, offset):
    from s1s2_encoders.errors import OptionError

    s1, s2 = synthetic_scene(64, 64, seed=1)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    with pytest.raises(OptionError, match=r"s2_offset must be None or a finite number of digital numbers >= 0"):
        embed_scene(tiny_model(), SceneInputs(s1=[p1], s2=[p2], s2_offset=offset), tmp_path / "e.tif", progress=False)
    assert not (tmp_path / "e.tif").exists()
