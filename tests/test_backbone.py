"""The embed API: shapes, dimensions, determinism, batch invariance, dense alignment, masking, dtypes."""

import numpy as np
import pytest
import torch
from conftest import synthetic_pair, terramesh_pair, tiny_model

from s1s2_encoders import S2_L2A_BANDS, load_backbone
from s1s2_encoders.bands import S2_L1C_BANDS


@pytest.mark.parametrize(
    "name, total, per_modality",
    [("swin-s1s2", 1536, 768), ("resnet18-s1s2", 1024, 512), ("resnet50-s1s2", 4096, 2048)],
)
def test_real_size_models_on_a_real_pair(name, total, per_modality, real_pair):
    """The issue's acceptance check: real architectures, real 224 x 224 TerraMesh pair."""
    s1, s2 = real_pair
    model = load_backbone(name, pretrained=False)
    emb = model.embed(s1, s2, s2_offset=1000)
    assert emb.shape == (1, total) and emb.dtype == np.float32 and np.isfinite(emb).all()
    s1_only = model.embed(s1=s1)
    assert s1_only.shape == (1, per_modality)
    np.testing.assert_allclose(s1_only, emb[:, :per_modality], rtol=1e-5, atol=1e-5)
    s2_only = model.embed(s2=s2, s2_offset=1000)
    np.testing.assert_allclose(s2_only, emb[:, per_modality:], rtol=1e-5, atol=1e-5)


def test_per_modality_output(any_tiny_model, real_pair):
    s1, s2 = real_pair
    out = any_tiny_model.embed(s1, s2, s2_offset=1000, per_modality=True)
    dims = any_tiny_model.embed_dims
    assert set(out) == {"s1", "s2"}
    assert out["s1"].shape == (1, dims["s1"]) and out["s2"].shape == (1, dims["s2"])
    np.testing.assert_array_equal(np.concatenate([out["s1"], out["s2"]], 1), any_tiny_model.embed(s1, s2, s2_offset=1000))


def test_determinism_and_batch_invariance(any_tiny_model, real_batch):
    s1, s2 = real_batch
    batch = any_tiny_model.embed(s1, s2, s2_offset=1000)
    again = any_tiny_model.embed(s1, s2, s2_offset=1000)
    np.testing.assert_array_equal(batch, again)
    for i in range(3):
        alone = any_tiny_model.embed(s1[i], s2[i], s2_offset=1000)
        np.testing.assert_allclose(alone[0], batch[i], rtol=1e-5, atol=1e-5)
    chunked = any_tiny_model.embed(s1, s2, s2_offset=1000, batch_size=2)
    np.testing.assert_allclose(chunked, batch, rtol=1e-5, atol=1e-5)


def test_embedding_matches_the_plain_timm_forward(any_tiny_model, real_pair):
    """At 224 px (a multiple of 32) embed == normalise + timm tower forward, no padding involved
    (float32 asked for explicitly: the default "auto" may compute in bfloat16)."""
    s1, s2 = real_pair
    model = any_tiny_model
    x1 = torch.from_numpy(s1.astype(np.float32))[None]
    x2 = torch.from_numpy(s2.astype(np.float32))[None] - 1000
    with torch.no_grad():
        expected = torch.cat([model.s1(model.s1_normalizer(x1)), model.s2(model.s2_normalizer(x2))], 1)
        forward = model(x1, x2)
    torch.testing.assert_close(forward, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.embed(s1, s2, s2_offset=1000, dtype="float32"), expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [(64, 64), (50, 77), (33, 100)])
def test_dense_pyramid_shapes_and_alignment(any_tiny_model, size):
    h, w = size
    s1, s2 = synthetic_pair((2,), h, w)
    dense = any_tiny_model.embed_dense(s1, s2)
    channels = any_tiny_model.pyramid_channels
    assert sorted(dense) == [4, 8, 16, 32]
    for level, stride in enumerate((4, 8, 16, 32)):
        expected = (2, channels["s1"][level] + channels["s2"][level], -(-h // stride), -(-w // stride))
        assert dense[stride].shape == expected
    # The pooled embedding is the stride-32 map averaged with each cell weighted by the input pixels
    # it covers (edge cells of a size that is not a multiple of 32 cover fewer).
    pooled = any_tiny_model.embed(s1, s2)
    rows = np.minimum(32, h - 32 * np.arange(-(-h // 32)))
    cols = np.minimum(32, w - 32 * np.arange(-(-w // 32)))
    weights = rows[:, None] * cols[None, :]
    expected = (dense[32] * weights).sum(axis=(2, 3)) / weights.sum()
    np.testing.assert_allclose(expected, pooled, rtol=1e-5, atol=1e-5)


def test_dense_features_are_local(real_pair):
    """Changing pixels in the bottom-right corner leaves far-away stride-4 cells of a ResNet unchanged
    (fixed normalisation, so no per-tile statistics couple the pixels)."""
    model = tiny_model("resnet18", normalization="fixed")
    s1, s2 = real_pair
    s2 = s2.astype(np.float32) - 1000
    base = model.embed_dense(s1, s2, per_modality=True)["s2"][4]
    changed = s2.copy()
    changed[:, 192:, 192:] += 500
    after = model.embed_dense(s1, changed, per_modality=True)["s2"][4]
    np.testing.assert_allclose(after[..., :32, :32], base[..., :32, :32], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[..., -4:, -4:], base[..., -4:, -4:])


def test_odd_sizes_work_for_pooled(any_tiny_model):
    out = any_tiny_model.embed(*synthetic_pair(h=45, w=61, seed=3))
    assert out.shape == (1, sum(any_tiny_model.embed_dims.values())) and np.isfinite(out).all()


def test_numpy_in_numpy_out_tensor_in_tensor_out(any_tiny_model, real_pair):
    s1, s2 = real_pair
    as_numpy = any_tiny_model.embed(s1, s2, s2_offset=1000)
    as_tensor = any_tiny_model.embed(torch.from_numpy(s1), torch.from_numpy(s2), s2_offset=1000)
    assert isinstance(as_numpy, np.ndarray) and isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), as_numpy, rtol=1e-6, atol=1e-6)


def test_band_reordering_by_name_gives_the_same_embedding(any_tiny_model, real_pair):
    s1, s2 = real_pair
    order = np.random.default_rng(0).permutation(13)
    shuffled_names = [S2_L1C_BANDS[i] for i in order]
    a = any_tiny_model.embed(s1, s2, s2_offset=1000)
    b = any_tiny_model.embed(s1[::-1], s2[order], s1_bands=["VH", "VV"], s2_bands=shuffled_names, s2_offset=1000)
    np.testing.assert_array_equal(a, b)


def test_l2a_subset_equals_a_tower_without_those_first_layer_weights(real_pair):
    """Dropping B10 from the input == a 12-channel conv1 holding the other bands' weights."""
    model = tiny_model("resnet18", normalization="fixed")
    s1, s2 = real_pair
    keep = [i for i in range(13) if i != 10]
    l2a_stack = s2[keep]
    with pytest.warns(UserWarning, match=r"band\(s\) B10 missing from the input; the model's first-layer weights for them are dropped"):
        got = model.embed(s2=l2a_stack, s2_bands=S2_L2A_BANDS, s2_offset=1000, dtype="float32")
    # Build the reduced tower by hand.
    import timm

    reduced = timm.create_model("resnet18", in_chans=12, num_classes=0, layers=(1, 1, 1, 1)).eval()
    state = model.s2.state_dict()
    state["conv1.weight"] = state["conv1.weight"][:, keep]
    reduced.load_state_dict(state)
    x = torch.from_numpy(l2a_stack.astype(np.float32))[None] - 1000
    mean, std = model.s2_normalizer.mean[:, keep], model.s2_normalizer.std[:, keep]
    with torch.no_grad():
        expected = reduced((x.clamp(0, 10000) - mean) / std)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_nodata_mask_excludes_invalid_pixels(real_pair):
    model = tiny_model("resnet18", normalization="fixed")
    s1, s2 = real_pair
    s1 = s1.astype(np.float32).copy()
    s1[:, :, 160:] = np.nan  # right part without S1 data
    out = model.embed(s1, s2, s2_offset=1000, nodata="mask", per_modality=True)
    assert np.isfinite(out["s1"]).all() and np.isfinite(out["s2"]).all()
    dense = model.embed_dense(s1, s2, s2_offset=1000, nodata="mask", per_modality=True)
    s1_32 = dense["s1"][32]
    assert np.isnan(s1_32[..., 5:]).all()  # cells 5, 6 cover pixels 160..223: no valid data
    assert np.isfinite(s1_32[..., :5]).all()
    assert np.isfinite(dense["s2"][32]).all()
    # a sample with no valid S1 pixel at all is NaN for S1, explicitly
    empty = np.full_like(s1, np.nan)
    out = model.embed(empty, s2, s2_offset=1000, nodata="mask", per_modality=True)
    assert np.isnan(out["s1"]).all() and np.isfinite(out["s2"]).all()


def test_bfloat16_agrees_with_float32(any_tiny_model, real_pair):
    s1, s2 = real_pair
    fp32 = any_tiny_model.embed(s1, s2, s2_offset=1000, dtype="float32")
    bf16 = any_tiny_model.embed(s1, s2, s2_offset=1000, dtype="bfloat16")
    assert bf16.dtype == np.float32
    cosine = (fp32 * bf16).sum() / np.linalg.norm(fp32) / np.linalg.norm(bf16)
    assert cosine > 0.99


def test_embed_restores_training_mode_and_uses_eval_semantics():
    model = tiny_model("swin-t", tower_kwargs={"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "drop_path_rate": 0.5})
    model.train()
    rng = np.random.default_rng(0)
    s1 = rng.uniform(-25, 0, (2, 32, 32))
    a, b = model.embed(s1=s1), model.embed(s1=s1)
    np.testing.assert_array_equal(a, b)  # no stochastic depth during embed
    assert model.training


def test_all_three_real_pairs_give_distinct_finite_embeddings(any_tiny_model):
    embeddings = [any_tiny_model.embed(*terramesh_pair(s), s2_offset=1000)[0] for s in ("282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1")]
    assert all(np.isfinite(e).all() for e in embeddings)
    assert not np.allclose(embeddings[0], embeddings[1])


def test_invalid_arguments(any_tiny_model, real_pair):
    s1, _ = real_pair
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        any_tiny_model.embed(s1=s1, batch_size=0)
    with pytest.raises(ValueError, match=r"dtype must be 'float32', 'bfloat16' or 'float16', got 'int8'"):
        any_tiny_model.embed(s1=s1, dtype="int8")
