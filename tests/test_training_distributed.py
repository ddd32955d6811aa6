"""Real multi-process torch.distributed (gloo on CPU): gathered losses and DDP training equal one
process holding the whole batch."""

from __future__ import annotations

import torch
import pytest

from dist_helpers import ToyDualEncoder, global_embeddings, global_maps, loss_grad_worker, spawn, toy_trainer_worker
from training.losses import mma_loss, nt_xent_dual


def _single(kind: str):
    a, b = global_maps() if kind == "mma" else global_embeddings()
    a.requires_grad_(True)
    b.requires_grad_(True)
    loss = mma_loss(a, b, 0.1) if kind == "mma" else nt_xent_dual(a, b, 0.2)
    loss.backward()
    return loss.detach(), a.grad, b.grad


CASES = [("nt_xent", None), ("mma", None), ("nt_xent", [2, 4])]


def test_gathered_loss_and_gradients_equal_single_process(tmp_path):
    world = 2
    spawn(loss_grad_worker, world, str(tmp_path), CASES)
    for index, (kind, sizes) in enumerate(CASES):
        ranks = [torch.load(tmp_path / f"case{index}_rank{r}.pt") for r in range(world)]
        loss, grad_a, grad_b = _single(kind)
        counts = sizes or [3, 3]
        # Each rank's loss is the mean over its own anchors: the sample-weighted mean is the global loss.
        weighted = sum(r["loss"] * n for r, n in zip(ranks, counts)) / sum(counts)
        assert float(weighted) == pytest.approx(float(loss), abs=1e-6), (kind, sizes)
        if sizes is not None:
            continue  # ranks of unequal size (evaluation tails): values only, training uses equal shards
        assert float(sum(r["loss"] for r in ranks) / world) == pytest.approx(float(loss), abs=1e-6)
        for r, n in zip(ranks, counts):
            rows = slice(r["start"], r["start"] + n)
            # A rank's input gradient carries every rank's loss (the backward of the gather sums
            # them); DDP's average over ranks then gives the global-batch gradient.
            assert torch.allclose(r["grad_a"] / world, grad_a[rows], atol=1e-6), kind
            assert torch.allclose(r["grad_b"] / world, grad_b[rows], atol=1e-6), kind


def test_ddp_trainer_two_processes_equal_one_process(tmp_path):
    steps, optimizers = 2, ["sgd", "adamw"]
    toy_trainer_worker(0, 1, str(tmp_path), steps, optimizers)  # in this process, no process group
    spawn(toy_trainer_worker, 2, str(tmp_path), steps, optimizers)
    torch.manual_seed(0)
    start = ToyDualEncoder().state_dict()
    for optimizer in optimizers:
        one = torch.load(tmp_path / f"toy_{optimizer}_world1.pt")
        two = torch.load(tmp_path / f"toy_{optimizer}_world2.pt")
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
        moved = 0
        for name, value in one["state"].items():
            assert torch.allclose(two["state"][name], value, atol=1e-5), (optimizer, name)
            moved += int(not torch.equal(value, start[name]))
        assert moved == len(start)  # trained parameters are compared, not two initialisations
