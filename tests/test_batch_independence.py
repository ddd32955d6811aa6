"""A sample's outputs depend on that sample alone: not on the other samples of its batch, not on the
batch size, and not on nodata="mask" when the sample itself has no invalid pixel (issue 11, point 1)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_pair, tiny_config, tiny_model

from s1s2_encoders import S1S2Classifier, S1S2Segmenter, task_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZES = [(50, 77), (64, 96), (33, 40)]


def _batch_with_one_nan(h: int, w: int):
    s1, s2 = synthetic_pair((3,), h, w, seed=4)
    s1_nan, s2_nan = s1.copy(), s2.copy()
    s1_nan[2, 0, h - 1, w - 1] = np.nan  # one invalid pixel in sample 2, in a partly padded edge cell
    s2_nan[2, 3, 0, 0] = np.nan
    return s1, s2, s1_nan, s2_nan


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("arch", ["swin-t", "resnet18"])
def test_pooled_and_dense_outputs_do_not_depend_on_the_rest_of_the_batch(arch, size):
    model = tiny_model(arch)
    h, w = size
    s1, s2, s1_nan, s2_nan = _batch_with_one_nan(h, w)
    for dtype in ("float32", "auto"):
        alone = [model.embed(s1[j], s2[j], dtype=dtype) for j in (0, 1)]
        masked = model.embed(s1_nan, s2_nan, nodata="mask", dtype=dtype)
        clean = model.embed(s1, s2, dtype=dtype)
        one_by_one = model.embed(s1, s2, dtype=dtype, batch_size=1)
        for j in (0, 1):
            np.testing.assert_allclose(masked[j], alone[j][0], rtol=0, atol=1e-5)
            np.testing.assert_allclose(clean[j], alone[j][0], rtol=0, atol=1e-5)
            np.testing.assert_allclose(one_by_one[j], alone[j][0], rtol=0, atol=1e-5)
        assert np.isfinite(masked).all() and not np.allclose(masked[2], clean[2])  # sample 2 itself changed
        dense_masked = model.embed_dense(s1_nan, s2_nan, nodata="mask", dtype=dtype)
        dense_alone = model.embed_dense(s1[:2], s2[:2], dtype=dtype)
        for stride in (4, 8, 16, 32):
            np.testing.assert_allclose(dense_masked[stride][:2], dense_alone[stride], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["swin-t", "resnet18"])
def test_a_classifier_scores_a_sample_the_same_alone_and_in_any_batch(arch):
    classifier = S1S2Classifier(task_config(tiny_config(arch), "classification"))
    s1, s2, s1_nan, s2_nan = _batch_with_one_nan(50, 77)
    alone = classifier.predict(s1[:1], s2[:1], dtype="float32")
    batch = classifier.predict(s1_nan, s2_nan, nodata="mask", dtype="float32")
    np.testing.assert_allclose(batch[0], alone[0], rtol=0, atol=1e-5)
    # and the classifier's pooling is the backbone's: same towers, same pooled features
    backbone = tiny_model(arch)
    classifier.towers.load_state_dict({f"{m}.{k}": v for m in ("s1", "s2") for k, v in backbone.tower(m).state_dict().items()})
    import torch

    classifier.eval()  # timm Swin has stochastic depth in training mode
    normalized = {m: classifier.normalize(m, torch.from_numpy(x[:2])) for m, x in (("s1", s1), ("s2", s2))}
    with torch.no_grad():
        features = classifier.pooled_features(normalized).numpy()
    np.testing.assert_allclose(features, backbone.embed(s1[:2], s2[:2], dtype="float32"), rtol=1e-5, atol=1e-5)


def test_a_segmenter_maps_a_sample_the_same_alone_and_in_a_batch_with_nodata():
    segmenter = S1S2Segmenter(task_config(tiny_config("resnet18"), "segmentation", decoder={"channels": [16, 8, 8]}))
    s1, s2, s1_nan, s2_nan = _batch_with_one_nan(50, 77)
    alone = segmenter.predict(s1[:1], s2[:1], dtype="float32")
    batch = segmenter.predict(s1_nan, s2_nan, nodata="mask", dtype="float32")
    np.testing.assert_allclose(batch[0], alone[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["swin-t", "resnet18"])
def test_pooled_scene_cells_do_not_depend_on_the_batch_size(arch, tmp_path):
    """embed_scene(pooled=True) batches the tiles of a scene: partial edge tiles and a tile with
    invalid pixels share batches with full tiles (262 x 173 px in 64 px cells: edge tiles of 6 and 45 px),
    and every cell must come out the same at any batch size."""
    import rasterio
    from geo_helpers import synthetic_scene, write_raster
    from s1s2_encoders.geo import SceneInputs, embed_scene

    s1, s2 = synthetic_scene(70 + 64 * 3, 45 + 64 * 2, seed=9)
    s2[:, 10:20, 70:90] = 0  # S2 nodata (DN 0) inside one full tile
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    model = tiny_model(arch, "fixed")
    cells = {}
    for batch_size in (1, 3, 8):
        out = tmp_path / f"pooled_{batch_size}.tif"
        embed_scene(model, SceneInputs(s1=[p1], s2=[p2], s2_offset=0), out, pooled=True, tile=64,
                    batch_size=batch_size, dtype="float32", progress=False, stac=False, cog=False)
        with rasterio.open(out) as ds:
            cells[batch_size] = ds.read()
    assert cells[1].shape[1:] == (5, 3) and np.isfinite(cells[1]).all()  # edge tiles 6 and 45 px
    for batch_size in (3, 8):
        np.testing.assert_allclose(cells[batch_size], cells[1], rtol=0, atol=1e-5)
