"""Quick quality checks of frozen embeddings: linear-probe accuracy and cross-modal retrieval.

Used by the pretraining learning benchmark (``benchmarks/pretrain_learning.py``) and its short
version in the tests; small enough to run on a CPU in seconds.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F


@torch.no_grad()
def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Z-score every feature with the training set's mean and std."""
    mean, std = train.mean(0, keepdim=True), train.std(0, keepdim=True).clamp_min(1e-6)
    return [(x - mean) / std for x in (train, *others)]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # The probe is hundreds of tiny matrix products: intra-op threads only add synchronisation
    # (50x slower on a busy 2-core machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def linear_probe_accuracy(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    *, weight_decay: float = 1e-3, steps: int = 300, lr: float = 0.05, seed: int = 0,
) -> float:
    """Accuracy of a multinomial logistic regression trained on frozen features.

    Args:
        train_x, test_x: ``(N, D)`` features (standardised here with the training statistics).
        train_y, test_y: ``(N,)`` int64 class labels.
        weight_decay: L2 penalty on the weights.
        steps, lr: full-batch Adam iterations and step size.

    Returns:
        Test accuracy in [0, 1].
    """
    train_x, test_x = standardize(train_x.float(), test_x.float())
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(train_x.shape[1], n_classes, generator=generator) * 0.01).requires_grad_(True)
    bias = torch.zeros(n_classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad(), _one_thread():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.cross_entropy(train_x @ weight + bias, train_y) + weight_decay * weight.pow(2).sum()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(1) == test_y).float().mean())


@dataclass
class RetrievalResult:
    """Cross-modal retrieval of each query's own partner among ``gallery_size`` candidates."""

    top1: float
    top5: float
    chance_top1: float
    gallery_size: int


@torch.no_grad()
def cross_modal_retrieval(queries: torch.Tensor, gallery: torch.Tensor) -> RetrievalResult:
    """Row i of ``queries`` (e.g. S1 embeddings) should retrieve row i of ``gallery`` (S2) by cosine.

    Returns:
        top-1 / top-5 accuracy and the chance level ``1 / N``.
    """
    if queries.shape[0] != gallery.shape[0]:
        raise ValueError(f"queries and gallery must pair up row by row, got {queries.shape[0]} and {gallery.shape[0]} rows")
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(gallery.float(), dim=1).T
    target = torch.arange(sim.shape[0])
    ranks = (sim > sim[target, target][:, None]).sum(1)  # how many candidates beat the partner
    n = sim.shape[0]
    return RetrievalResult(float((ranks < 1).float().mean()), float((ranks < 5).float().mean()), 1.0 / n, n)
