"""Embedding evaluation helpers, and (slow) a short version of the learning benchmark: pretraining
on synthetic co-located scenes must beat the same encoder randomly initialised."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from training.embedding_eval import cross_modal_retrieval, linear_probe_accuracy

REPO = Path(__file__).resolve().parents[1]


def test_linear_probe_separates_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 16, generator=g)
    assert linear_probe_accuracy(x[:200], y[:200], x[200:], y[200:]) > 0.95
    noise = torch.randn(400, 16, generator=g)
    assert linear_probe_accuracy(noise[:200], y[:200], noise[200:], y[200:]) < 0.45  # chance is 0.25


def test_cross_modal_retrieval_counts_partners():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 8, generator=g)
    perfect = cross_modal_retrieval(a, a * 2.0)  # cosine ignores scale
    assert (perfect.top1, perfect.top5, perfect.chance_top1, perfect.gallery_size) == (1.0, 1.0, 0.02, 50)
    shuffled = cross_modal_retrieval(a, a.roll(1, dims=0))
    assert shuffled.top1 == 0.0
    with pytest.raises(ValueError, match="pair up row by row"):
        cross_modal_retrieval(a, a[:10])


@pytest.mark.slow
def test_short_learning_benchmark_pretraining_beats_random_init():
    spec = importlib.util.spec_from_file_location("pretrain_learning", REPO / "benchmarks" / "pretrain_learning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.build_parser().parse_args(["--steps", "80", "--probe-scenes", "128", "--train-scenes", "1024", "--workers", "0"])
    report = bench.run(args)
    before, after = report["random_init"], report["pretrained"]
    assert after["probe_accuracy_s1_only"] > before["probe_accuracy_s1_only"] + 0.05
    assert after["retrieval_top5_s1_to_s2"] > before["retrieval_top5_s1_to_s2"] + 0.05
    assert report["setup"]["final_loss"] < 4.1  # log(2 * 32 - 1) = 4.14 is the loss of indistinguishable embeddings
