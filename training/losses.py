"""Contrastive objectives: Dual-SimCLR / SimCLR NT-Xent and Multi-Modal Alignment (MMA).

All three take this process's rows and, when running on several processes with ``gather=True``,
use the *global* batch as negatives: keys are all-gathered with gradients
(:func:`training.distributed.all_gather_with_grad`) while anchors stay local, and each rank returns
the mean over its own anchors. With DistributedDataParallel averaging gradients, this gives the
same loss value (averaged over ranks) and the same gradients as one process holding the whole
batch (``tests/test_training_distributed.py``).

Definitions (reference_facts.md §2.3, §2.4):

* :func:`nt_xent` (SimCLR's NT-Xent): the 2N embeddings ``[a_1..a_N, b_1..b_N]`` are
  L2-normalised; the anchor ``a_i`` has one positive ``b_i`` (and ``b_i`` has ``a_i``); every other
  of the 2N-2 embeddings, same view included, is a negative; the loss is the cross-entropy over
  ``[sim(pos), sim(negs)] / T``, averaged over the 2N anchors.
* :func:`nt_xent_dual` (Dual-SimCLR) is :func:`nt_xent` with the co-located S1 and S2 embeddings
  as the two views; :func:`simclr_loss` is the same with two augmented views of one modality.
* :func:`mma_loss` (Windsor et al. 2021 as used by the ISPRS paper): the similarity of two dense
  maps is the mean over pixels of the cosine similarity of their L2-normalised feature vectors;
  the loss is the symmetric InfoNCE over the B x B similarity matrix (mean of the row-wise and
  column-wise cross-entropies with the diagonal as targets), at temperature ``T``.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .distributed import all_gather_with_grad, gather_offset, world_size


class ContrastiveLogits(NamedTuple):
    """Logits of this rank's anchors against all keys, with the index of each anchor's positive."""

    logits: torch.Tensor
    targets: torch.Tensor


def _no_autocast(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Similarities and softmax in float32 even inside a bf16 autocast region."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _gathered(x: torch.Tensor, gather: bool) -> tuple[torch.Tensor, int]:
    if gather and world_size() > 1:
        return all_gather_with_grad(x), gather_offset(x.shape[0], x.device)
    return x, 0


def nt_xent_logits(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float, gather: bool = True) -> ContrastiveLogits:
    """Logits for NT-Xent.

    Args:
        view_a, view_b: ``(n, D)`` embeddings of this rank's samples in the two views (row i of
            each is the same sample). Computed in float32 whatever autocast says.
        temperature: softmax temperature T.
        gather: use every rank's samples as keys.

    Returns:
        ``logits`` ``(2n, 2N)``: cosine similarities / T of the anchors ``[a_local, b_local]`` to the
        keys ``[a_1..a_N, b_1..b_N]`` (N = global batch), with each anchor's own column set to
        -inf; ``targets`` ``(2n,)``: the column of each anchor's positive.
    """
    if view_a.shape != view_b.shape or view_a.ndim != 2:
        raise ValueError(f"views must both be (n, D); got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
    with _no_autocast(view_a):
        return _nt_xent_logits(view_a, view_b, temperature, gather)


def _nt_xent_logits(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float, gather: bool) -> ContrastiveLogits:
    a = F.normalize(view_a.float(), dim=1)
    b = F.normalize(view_b.float(), dim=1)
    all_a, offset = _gathered(a, gather)
    all_b, _ = _gathered(b, gather)
    n, total = a.shape[0], all_a.shape[0]
    anchors = torch.cat([a, b])
    keys = torch.cat([all_a, all_b])
    logits = anchors @ keys.T / temperature
    local = torch.arange(n, device=a.device) + offset
    self_columns = torch.cat([local, local + total])
    logits = logits.index_put((torch.arange(2 * n, device=a.device), self_columns), torch.tensor(float("-inf"), device=a.device))
    targets = torch.cat([local + total, local])
    return ContrastiveLogits(logits, targets)


def nt_xent(view_a: torch.Tensor, view_b: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """NT-Xent loss (mean over this rank's 2n anchors); see :func:`nt_xent_logits`."""
    logits, targets = nt_xent_logits(view_a, view_b, temperature, gather)
    with _no_autocast(view_a):
        return F.cross_entropy(logits, targets)


def nt_xent_dual(z_s1: torch.Tensor, z_s2: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """Dual-SimCLR: NT-Xent with co-located S1 and S2 embeddings ``(n, D)`` as the two views."""
    return nt_xent(z_s1, z_s2, temperature, gather)


def simclr_loss(z_view1: torch.Tensor, z_view2: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """SimCLR: NT-Xent with two augmented views ``(n, D)`` of the same samples of one modality."""
    return nt_xent(z_view1, z_view2, temperature, gather)


def top1_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of anchors whose positive has the highest logit (a cheap training signal)."""
    return (logits.argmax(dim=1) == targets).float().mean()


def dense_similarity(maps_x: torch.Tensor, maps_y: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel cosine similarity between every pair of dense maps.

    Args:
        maps_x: ``(Bx, C, H, W)``; maps_y: ``(By, C, H, W)`` (same C, H, W).

    Returns:
        ``(Bx, By)``: entry (i, j) is the mean over the H*W pixels of cos(x_i[:, p], y_j[:, p]).
    """
    if maps_x.shape[1:] != maps_y.shape[1:]:
        raise ValueError(f"dense maps differ in (C, H, W): {tuple(maps_x.shape[1:])} vs {tuple(maps_y.shape[1:])}")
    with _no_autocast(maps_x):
        x = F.normalize(maps_x.float(), dim=1).flatten(2)
        y = F.normalize(maps_y.float(), dim=1).flatten(2)
        return torch.einsum("icp,jcp->ij", x, y) / x.shape[-1]


def mma_logits(dense_s1: torch.Tensor, dense_s2: torch.Tensor, temperature: float, gather: bool = True) -> tuple[ContrastiveLogits, ContrastiveLogits]:
    """Row (S1 -> S2) and column (S2 -> S1) logits of the MMA loss for this rank's samples."""
    all_s1, offset = _gathered(dense_s1, gather)
    all_s2, _ = _gathered(dense_s2, gather)
    targets = torch.arange(dense_s1.shape[0], device=dense_s1.device) + offset
    rows = dense_similarity(dense_s1, all_s2) / temperature
    cols = dense_similarity(dense_s2, all_s1) / temperature
    return ContrastiveLogits(rows, targets), ContrastiveLogits(cols, targets)


def mma_loss(dense_s1: torch.Tensor, dense_s2: torch.Tensor, temperature: float, gather: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE over dense-map similarities.

    Args:
        dense_s1, dense_s2: ``(n, C, H, W)`` co-located dense maps (row i of each is the same place).
        temperature: T (the HSG copy of the MMA code defaults to 0.1).
        gather: use every rank's samples as negatives.

    Returns:
        ``0.5 * (mean_i CE(S[i, :] / T, i) + mean_j CE(S[:, j] / T, j))`` with
        ``S = dense_similarity(dense_s1, dense_s2)`` over the global batch.
    """
    rows, cols = mma_logits(dense_s1, dense_s2, temperature, gather)
    with _no_autocast(dense_s1):
        return 0.5 * (F.cross_entropy(rows.logits, rows.targets) + F.cross_entropy(cols.logits, cols.targets))
