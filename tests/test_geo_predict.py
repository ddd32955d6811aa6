"""``predict_scene`` and ``s1s2 predict``: class maps with names and colours, probabilities, previews."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from conftest import TERRAMESH, tiny_config
from geo_helpers import files_in, read, run_cli, save_tiny, synthetic_scene, write_raster
from s1s2_encoders import create_model, task_config
from s1s2_encoders.cli import main
from s1s2_encoders.geo import SceneInputs
from s1s2_encoders.geo.font import GLYPH_H, GLYPH_W, draw_text, glyph, render_text
from s1s2_encoders.geo.predict import class_map_from_probabilities, predict_scene, read_class_names
from s1s2_encoders.geo.preview import MARGIN, panel_shape

TM_S1 = TERRAMESH / "S1RTC" / "282D_485L_3_3.tif"
TM_S2 = TERRAMESH / "S2L1C" / "282D_485L_3_3.tif"
NAMES = ["water", "forest", "crops"]
COLORS = [[0, 0, 255], [0, 128, 0], [250, 200, 0]]


def tiny_task(task: str, architecture: str = "resnet18", seed: int = 0, **head):
    """A tiny fine-tuned-model stand-in with 3 classes (ResNet-18 towers; a small UNet decoder)."""
    torch.manual_seed(seed)
    if task == "segmentation" and architecture == "resnet18":
        head.setdefault("decoder", {"channels": [16, 16, 16]})
    config = task_config(tiny_config(architecture, "fixed"), task, class_names=NAMES, class_colors=COLORS, **head)
    return create_model(config).eval()


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-segmenter"
    model = tiny_task("segmentation")
    model.save_pretrained(folder)
    return folder, model


def read_png(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            assert src.driver == "PNG"
            return src.read()


def test_cli_predict_real_pair_writes_a_georeferenced_map_probabilities_and_preview(tmp_path, segmenter_folder):
    folder, model = segmenter_folder
    out = tmp_path / "map.tif"
    result = run_cli("predict", "--model", folder, "--s1", TM_S1, "--s2", TM_S2, "--s2-offset", "1000", "-o", out,
                     "--tile", "224", "--probabilities", "--preview")
    assert result.returncode == 0, result.stderr
    assert files_in(tmp_path) == ["map.json", "map.png", "map.tif", "map_probabilities.json", "map_probabilities.tif"]
    classes, meta = read(out)
    with rasterio.open(TM_S2) as src:
        crs, transform, s2 = src.crs, src.transform, src.read()
    with rasterio.open(TM_S1) as src:
        s1 = src.read()
    assert meta["crs"] == crs and meta["transform"] == transform
    assert classes.shape == (1, 224, 224) and classes.dtype == np.uint8 and meta["nodata"] == 255
    assert meta["descriptions"] == ("class",) and read_class_names(out) == NAMES
    with rasterio.open(out) as src:
        colormap = src.colormap(1)
        assert src.tags(1)["CLASS_2"] == "crops" and json.loads(src.tags(1)["CLASS_NAMES"]) == NAMES
    assert [list(colormap[i][:3]) for i in range(3)] == COLORS and colormap[255] == (0, 0, 0, 0)
    probabilities, pmeta = read(tmp_path / "map_probabilities.tif")
    assert pmeta["descriptions"] == tuple(NAMES) and pmeta["transform"] == transform
    # One tile covers the pair: the file holds the model's own probabilities, and the map their argmax.
    expected = model.predict(s1, s2, s2_offset=1000, dtype="auto")[0]  # the CLI default
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_array_equal(classes[0], expected.argmax(axis=0))
    picture = read_png(tmp_path / "map.png")
    h, w = panel_shape(224, 224, 512)
    assert picture.shape[0] == 3 and picture.shape[2] == 2 * MARGIN + 2 * w + 16
    left = picture[:, MARGIN + 14 + 8: MARGIN + 14 + 8 + h, MARGIN: MARGIN + w]
    assert not np.array_equal(left[0], left[2]) and left.std() > 10  # a colour picture of the scene
    map_panel = picture[:, MARGIN + 14 + 8: MARGIN + 14 + 8 + h, MARGIN + w + 16: MARGIN + 2 * w + 16]
    colours = {tuple(c) for c in map_panel.reshape(3, -1).T}
    assert colours <= {tuple(c) for c in COLORS}  # the map panel shows class colours only
    shares = [np.mean(classes == k) for k in range(3)]
    panel_shares = [np.mean(np.all(map_panel == np.array(c)[:, None, None], axis=0)) for c in COLORS]
    np.testing.assert_allclose(panel_shares, shares, atol=0.05)


def test_blended_probabilities_stay_distributions_and_nodata_becomes_255(tmp_path):
    s1, s2 = synthetic_scene(300, 260, seed=11)
    s2[:, :, :40] = 0  # S2 nodata: the left 40 columns
    s1[:, 280:] = np.nan  # S1 nodata: the bottom 20 rows
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_task("segmentation")
    predict_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "map.tif",
                  probabilities=tmp_path / "probs.tif", tile=128, overlap=32, progress=False)
    classes, _ = read(tmp_path / "map.tif")
    probs, _ = read(tmp_path / "probs.tif")
    nodata = np.zeros((300, 260), bool)
    nodata[:, :40] = True
    nodata[280:] = True
    assert np.array_equal(classes[0] == 255, nodata) and np.isnan(probs[:, nodata]).all()
    data = probs[:, ~nodata]
    np.testing.assert_allclose(data.sum(axis=0), 1.0, atol=1e-5)  # a weighted mean of distributions
    np.testing.assert_array_equal(classes[0][~nodata], data.argmax(axis=0))
    # Where only one tile contributes (tiles at rows 0, 96, 192 and columns 0, 96, 160), the values are
    # that tile's own.
    alone = model.predict(s1[:, 96:224, 96:224], s2[:, 96:224, 96:224], s2_offset=0)[0]
    np.testing.assert_allclose(probs[:, 128:192, 128:160], alone[:, 32:96, 32:64], atol=1e-5)
    assert np.abs(probs[:, 128:192, 160:192] - alone[:, 32:96, 64:96]).max() > 1e-3  # blended there


def test_classification_maps_one_class_per_tile(tmp_path):
    s1, s2 = synthetic_scene(200, 150, seed=12)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_task("classification")
    predict_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), tmp_path / "cls.tif", tile=64,
                  probabilities=tmp_path / "p.tif", progress=False)
    classes, meta = read(tmp_path / "cls.tif")
    assert classes.shape == (1, 4, 3)
    with rasterio.open(p1) as src:
        assert meta["transform"] == src.transform @ Affine.scale(64)
    full = [(i, j) for i in range(3) for j in range(2)]  # tiles entirely inside the scene
    crops1 = np.stack([s1[:, 64 * i: 64 * i + 64, 64 * j: 64 * j + 64] for i, j in full])
    crops2 = np.stack([s2[:, 64 * i: 64 * i + 64, 64 * j: 64 * j + 64] for i, j in full])
    expected = model.predict(crops1, crops2, s2_offset=0)
    probs, _ = read(tmp_path / "p.tif")
    got = np.stack([probs[:, i, j] for i, j in full])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_array_equal([classes[0, i, j] for i, j in full], expected.argmax(axis=1))
    assert (classes[0, 3] < 3).all() and (classes[0, :, 2] < 3).all()  # partial edge tiles are classified too


def test_predict_refuses_a_backbone_and_leaves_nothing(tmp_path, capsys):
    backbone = tmp_path / "backbone"
    save_tiny(backbone)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["predict", "--model", str(backbone), "--s1", str(TM_S1), "--s2", str(TM_S2), "-o", str(out / "m.tif"),
                 "--preview"])
    err = capsys.readouterr().err
    assert code == 2 and "is a backbone (task 'backbone'), not a fine-tuned model" in err
    assert files_in(out) == []


def test_many_scenes_get_derived_probability_and_preview_names(tmp_path, segmenter_folder, capsys):
    folder, _ = segmenter_folder
    lines = []
    for name in ("a", "b"):
        s1, s2 = synthetic_scene(64, 64, seed=len(name))
        write_raster(tmp_path / f"{name}_s1.tif", s1)
        write_raster(tmp_path / f"{name}_s2.tif", s2)
        lines.append(f"{name}_s1.tif {name}_s2.tif")
    (tmp_path / "list.txt").write_text("\n".join(lines))
    out = tmp_path / "out"
    out.mkdir()
    args = ["predict", "--model", str(folder), "--scenes", str(tmp_path / "list.txt"), "-o", str(out), "--tile", "64",
            "--overlap", "0", "--probabilities", "--preview", "--quiet", "--s2-offset", "0"]
    assert main(args) == 0
    assert files_in(out) == ["a_s2.json", "a_s2.png", "a_s2.tif", "a_s2_probabilities.json", "a_s2_probabilities.tif",
                             "b_s2.json", "b_s2.png", "b_s2.tif", "b_s2_probabilities.json", "b_s2_probabilities.tif"]
    (out / "b_s2.png").unlink()  # an incomplete scene (its preview is missing) is done again
    assert main(args) == 0
    assert "2 scene(s): 1 written, 1 skipped (complete), 0 failed" in capsys.readouterr().out
    assert main([*args[:-3], "--preview", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert "give --probabilities / --preview without a file name" in capsys.readouterr().err


def test_class_map_from_probabilities():
    values = np.array([[[0.2, np.nan]], [[0.7, np.nan]], [[0.1, np.nan]]], np.float32)
    assert class_map_from_probabilities(values).tolist() == [[[1, 255]]]


def test_bitmap_font_renders_known_glyphs():
    a = glyph("A")
    assert a.shape == (GLYPH_H, GLYPH_W)
    assert a[0].tolist() == [False, True, True, True, False] and a[3].all()  # the apex and the crossbar
    assert np.array_equal(glyph("\u00e9"), glyph("?"))  # no glyph: a question mark
    mask = render_text("AB", scale=2)
    assert mask.shape == (14, 22) and np.array_equal(mask[:, :10], np.kron(a, np.ones((2, 2), bool)))
    assert not mask[:, 10:12].any()  # one (scaled) pixel of space between characters
    canvas = np.full((3, 20, 20), 255, np.uint8)
    draw_text(canvas, "I", 2, 3, (10, 20, 30))
    ink = np.all(canvas == np.array([10, 20, 30])[:, None, None], axis=0)
    assert np.array_equal(ink[2:9, 3:8], glyph("I")) and ink.sum() == glyph("I").sum()


def test_s1_only_model_reads_only_s1_and_previews_it_in_grey(tmp_path):
    s1, _ = synthetic_scene(96, 128, seed=13)
    p1 = write_raster(tmp_path / "s1.tif", s1)
    model = tiny_task("segmentation", fusion="s1")
    assert model.modalities == ("s1",)
    predict_scene(model, SceneInputs(s1=[p1]), tmp_path / "map.tif", preview=tmp_path / "map.png", tile=96,
                  overlap=0, progress=False)
    classes, meta = read(tmp_path / "map.tif")
    assert classes.shape == (1, 96, 128) and (classes < 3).all()
    picture = read_png(tmp_path / "map.png")
    h, w = panel_shape(96, 128, 512)
    left = picture[:, MARGIN + 14 + 8: MARGIN + 14 + 8 + h, MARGIN: MARGIN + w]
    assert np.array_equal(left[0], left[1]) and np.array_equal(left[1], left[2])  # S1 VV in grey
    assert left.std() > 10  # a stretched picture, not a flat fill
