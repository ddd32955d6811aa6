"""The export-only Swin forward (models/swin_graph.py) computes what the timm tower computes.

It is compared in eager mode with ``S1S2Backbone.encode``'s pooled feature (timm's own blocks) on
sizes that are and are not multiples of 32 and of the 7-token windows, on one and several windows
per stage, on a batch > 1, and on a config whose last stage has shifted windows too.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model
from torch import nn

from s1s2_encoders.models.swin_graph import check_swin_structure, swin_pooled

SIZES = [(33, 33), (64, 64), (50, 77), (224, 224), (100, 300), (481, 250)]


def raw_s2(batch: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 13, h, w, generator=torch.Generator().manual_seed(seed)) * 10000


@pytest.fixture(scope="module")
def swin():
    return tiny_model("swin-t").eval()


@pytest.mark.parametrize("h, w", SIZES)
def test_matches_timm_tower(swin, h, w):
    x = raw_s2(2, h, w, seed=h * w)
    with torch.no_grad():
        expected = swin.encode("s2", x).pooled
        got = swin_pooled(swin.s2, swin.normalizer("s2")(x))
    assert got.shape == expected.shape == (2, swin.embed_dims["s2"])
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), float((got - expected).abs().max())


def test_samples_of_a_batch_are_independent(swin):
    """Padding tokens must not leak between samples or into real tokens."""
    x = raw_s2(3, 50, 77, seed=1)
    with torch.no_grad():
        together = swin_pooled(swin.s2, swin.normalizer("s2")(x))
        alone = swin_pooled(swin.s2, swin.normalizer("s2")(x[1:2]))
    assert torch.allclose(together[1:2], alone, rtol=0, atol=1e-6)


def _nan_from(rows: int):
    """A patch_embed hook that writes NaN into every token at row >= ``rows`` or column >= ``rows``."""

    def hook(module, args, output):
        h = torch.arange(output.shape[1])[None, :, None, None]
        w = torch.arange(output.shape[2])[None, None, :, None]
        return torch.where((h < rows) & (w < rows), output, torch.full((), float("nan")))

    return hook


def test_padding_tokens_never_reach_real_ones(swin):
    """Tokens beyond the real map are replaced with where(), so even NaN there changes nothing.

    A 40 px input has a real stage-1 map of 8 * ceil(40 / 32) = 16 tokens a side; the padded map
    is 21 (three windows). NaN from token 16 on must leave the result unchanged; NaN from token
    15 on (a real token) must not, which shows the hook takes effect.
    """
    normalized = swin.normalizer("s2")(raw_s2(1, 40, 40, seed=2))
    with torch.no_grad():
        clean = swin_pooled(swin.s2, normalized)
        results = {}
        for rows in (16, 15):
            handle = swin.s2.patch_embed.register_forward_hook(_nan_from(rows))
            try:
                results[rows] = swin_pooled(swin.s2, normalized)
            finally:
                handle.remove()
    assert torch.isfinite(results[16]).all()
    assert torch.allclose(results[16], clean, rtol=0, atol=1e-6)
    assert torch.isnan(results[15]).all()


def test_shifted_windows_in_every_stage():
    """A 448 px tower has 14 x 14 cells at stride 32, so timm shifts the windows of stage 4 too."""
    model = tiny_model("swin-t", tower_kwargs={"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4),
                                              "img_size": 448}).eval()
    assert any(model.s2.layers[3].blocks[1].shift_size)
    for h, w in [(100, 300), (448, 448)]:
        x = raw_s2(1, h, w, seed=h)
        with torch.no_grad():
            expected = model.encode("s2", x).pooled
            got = swin_pooled(model.s2, model.normalizer("s2")(x))
        assert torch.allclose(got, expected, rtol=0, atol=1e-5)


def test_structure_check_names_the_problem(swin):
    check_swin_structure(swin.s2)
    with pytest.raises(ValueError, match=r"expected a timm SwinTransformer with 4 stages and 4 x 4 patches"):
        check_swin_structure(nn.Linear(2, 2))
