import numpy as np
import pytest
import torch

from s1s2_encoders.errors import ConfigError
from s1s2_encoders.preprocess import (
    InputNormalizer,
    Normalization,
    fixed_clip_scale,
    fixed_standardize,
    looks_like_s2_offset,
    sslt_channel_max,
)


def naive_sslt(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """reference_facts.md §3.2 written out per channel with numpy, float64."""
    out = np.empty_like(x, dtype=np.float64)
    for b in range(x.shape[0]):
        for c in range(x.shape[1]):
            channel = np.clip(x[b, c].astype(np.float64), lo, hi) - lo
            out[b, c] = channel / (channel.max() + 1e-5)
    return out


def test_sslt_s1_matches_the_original_recipe():
    rng = np.random.default_rng(1)
    x = rng.uniform(-40, 5, size=(3, 2, 17, 23)).astype(np.float32)  # values beyond both clip bounds
    norm = sslt_channel_max()
    module = InputNormalizer(norm.kind, norm.s1, 2, norm.eps)
    got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, naive_sslt(x, -25, 0), rtol=1e-6, atol=1e-7)
    assert got.max() <= 1.0 and got.min() == 0.0


def test_sslt_s2_matches_the_original_recipe():
    rng = np.random.default_rng(2)
    x = rng.uniform(-50, 12000, size=(2, 13, 8, 8)).astype(np.float32)
    norm = sslt_channel_max()
    got = InputNormalizer(norm.kind, norm.s2, 13, norm.eps)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, naive_sslt(x, 0, 10000), rtol=1e-6, atol=1e-7)


def test_sslt_values_depend_on_the_tile_content():
    x = torch.tensor([[[[-20.0, -10.0], [-15.0, -5.0]]]]).repeat(1, 2, 1, 1)
    norm = sslt_channel_max()
    module = InputNormalizer(norm.kind, norm.s1, 2, norm.eps)
    whole = module(x)
    crop = module(x[..., :1, :])  # the same pixels in a different crop get different values
    assert not torch.allclose(whole[..., :1, :], crop)


def test_fixed_clip_scale_is_content_independent():
    norm = fixed_clip_scale()
    module = InputNormalizer(norm.kind, norm.s2, 13)
    x = torch.full((1, 13, 4, 4), 2500.0)
    x[..., 0, 0] = 20000.0
    y = module(x)
    assert torch.allclose(y[..., 1, 1], torch.full((1, 13), 0.25))
    assert torch.allclose(y[..., 0, 0], torch.ones(1, 13))  # clipped at 10000
    assert torch.equal(module(x[..., 1:, 1:]), y[..., 1:, 1:])


def test_fixed_standardize_per_band():
    norm = fixed_standardize([-12.0, -19.0], [5.0, 6.0], [1000.0] * 13, [500.0] * 13)
    module = InputNormalizer(norm.kind, norm.s1, 2)
    x = torch.tensor([-2.0, -31.0]).view(1, 2, 1, 1)
    y = module(x).flatten().tolist()
    assert y == pytest.approx([(-2 + 12) / 5, (-25 + 19) / 6])  # VH clipped at -25 first


def test_missing_bands_are_zero_after_normalisation():
    norm = fixed_clip_scale()
    module = InputNormalizer(norm.kind, norm.s2, 13)
    present = [i for i in range(13) if i != 10]
    x = torch.full((1, 12, 2, 2), 5000.0)
    y = module(x, present=present)
    assert y.shape == (1, 13, 2, 2)
    assert torch.equal(y[:, 10], torch.zeros(1, 2, 2))
    assert torch.allclose(y[:, present], torch.full((1, 12, 2, 2), 0.5))


def test_invalid_pixels_do_not_enter_the_channel_max():
    norm = sslt_channel_max()
    module = InputNormalizer(norm.kind, norm.s2, 1)
    x = torch.tensor([[[[1000.0, 9000.0]]]])
    valid = torch.tensor([[[[True, False]]]])
    y = module(x, valid=valid)
    assert y[0, 0, 0, 0].item() == pytest.approx(1000 / (1000 + 1e-5))
    assert y[0, 0, 0, 1].item() == 0.0


def test_normalisation_stays_float32_under_bf16_autocast():
    norm = sslt_channel_max()
    module = InputNormalizer(norm.kind, norm.s2, 13)
    x = torch.rand(1, 13, 8, 8) * 10000
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, module(x))


def test_normalization_config_round_trip_and_validation():
    for norm in (sslt_channel_max(), fixed_clip_scale()):
        assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ConfigError, match=r"kind must be 'sslt_channel_max' or 'fixed', got 'zscore'"):
        Normalization.from_dict({"kind": "zscore", "s1": {"clip": [0, 1]}, "s2": {"clip": [0, 1]}})
    with pytest.raises(ConfigError, match=r"'fixed' needs per-band 'mean' and 'std'"):
        Normalization.from_dict({"kind": "fixed", "s1": {"clip": [0, 1]}, "s2": {"clip": [0, 1]}})
    with pytest.raises(ConfigError, match=r"lo < hi"):
        Normalization.from_dict({"kind": "sslt_channel_max", "s1": {"clip": [0, -1]}, "s2": {"clip": [0, 1]}})


def test_offset_heuristic_on_real_and_shifted_data(real_pair):
    _, s2 = real_pair
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    x = torch.from_numpy(s2.astype(np.float32))[None]
    assert looks_like_s2_offset(x, bands)  # TerraMesh L1C carries the offset (B10 ~ 1004-1020)
    assert not looks_like_s2_offset(x - 1000, bands)
    no_b10 = [b for b in bands if b != "B10"]
    keep = [i for i, b in enumerate(bands) if b != "B10"]
    assert looks_like_s2_offset(x[:, keep], no_b10)
    assert not looks_like_s2_offset(x[:, keep] - 1000, no_b10)


def test_offset_heuristic_on_a_batch_too_large_to_sort(real_pair):
    """Above 100k values per band the heuristic subsamples evenly; it must decide as on one tile."""
    _, s2 = real_pair
    bands = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    x = torch.from_numpy(s2.astype(np.float32))[None].repeat(3, 1, 1, 1)  # 3 x 224 x 224 = 150k per band
    assert x[:, 10].numel() > 100_000
    assert looks_like_s2_offset(x, bands) and not looks_like_s2_offset(x - 1000, bands)
    keep = [i for i, b in enumerate(bands) if b != "B10"]
    no_b10 = [bands[i] for i in keep]
    assert looks_like_s2_offset(x[:, keep], no_b10) and not looks_like_s2_offset(x[:, keep] - 1000, no_b10)


@pytest.mark.parametrize("kind", ["sslt_channel_max", "fixed"])
def test_normalisation_leaves_its_input_alone_and_keeps_gradients(kind):
    """Without autograd the normaliser shifts and scales its own clamp output in place: the caller's
    tensor is never written. With a tensor that requires grad it stays out of place and differentiable."""
    norm = sslt_channel_max() if kind == "sslt_channel_max" else fixed_clip_scale()
    module = InputNormalizer(norm.kind, norm.s1, 2, norm.eps)
    x = torch.linspace(-30, 3, 2 * 2 * 5 * 6).view(2, 2, 5, 6)
    before = x.clone()
    plain = module(x)
    assert torch.equal(x, before)
    leaf = x.clone().requires_grad_(True)
    tracked = module(leaf)
    assert torch.allclose(tracked, plain, rtol=0, atol=0)
    tracked.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
