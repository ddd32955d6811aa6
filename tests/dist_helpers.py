"""Helpers for real multi-process torch.distributed tests (gloo on CPU, 127.0.0.1).

Worker functions live here (an importable module) so that ``torch.multiprocessing.spawn`` can
pickle them by name; each worker sets the torchrun environment variables and calls the same
:func:`training.distributed.init_distributed` that ``torchrun`` runs use.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., None], world: int, port: int, args: tuple[Any, ...]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    from training.distributed import init_distributed, shutdown_distributed

    init_distributed("cpu")
    try:
        fn(rank, world, *args)
    finally:
        shutdown_distributed()


def spawn(fn: Callable[..., None], world: int, *args: Any) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes joined by a gloo process group."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(fn, world, free_port(), args), nprocs=world, join=True)


# ----------------------------------------------------------------------------- workers
def global_embeddings(n: int = 6, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


def global_maps(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(12)
    return torch.randn(n, 3, 2, 2, generator=g), torch.randn(n, 3, 2, 2, generator=g)


def loss_grad_worker(rank: int, world: int, out: str, cases: list[tuple[str, list[int] | None]]) -> None:
    """For each (kind, sizes) case: take this rank's slice of the global batch, compute the
    gathered loss, backpropagate, save loss and input gradients."""
    from training.losses import mma_loss, nt_xent_dual

    for index, (kind, sizes) in enumerate(cases):
        a, b = global_maps() if kind == "mma" else global_embeddings()
        sizes = sizes or [a.shape[0] // world] * world
        start = sum(sizes[:rank])
        la = a[start : start + sizes[rank]].clone().requires_grad_(True)
        lb = b[start : start + sizes[rank]].clone().requires_grad_(True)
        loss = mma_loss(la, lb, 0.1) if kind == "mma" else nt_xent_dual(la, lb, 0.2)
        loss.backward()
        torch.save({"loss": loss.detach(), "grad_a": la.grad, "grad_b": lb.grad, "start": start},
                   Path(out) / f"case{index}_rank{rank}.pt")


class ToyDualEncoder(nn.Module):
    """Two small encoders, as in Dual-SimCLR, for a quick DDP check."""

    def __init__(self):
        super().__init__()
        self.s1 = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 8))
        self.s2 = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 8))

    def forward(self, batch):
        return self.s1(batch["s1"]), self.s2(batch["s2"])


class ToyPairs(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        rng = np.random.default_rng(0)
        self.latent = rng.normal(size=(n, 3)).astype(np.float32)
        self.m1 = rng.normal(size=(3, 4)).astype(np.float32)
        self.m2 = rng.normal(size=(3, 6)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.latent)

    def __getitem__(self, key):
        from training.sampling import unpack_key

        index, seed = unpack_key(key)
        noise = np.random.default_rng(seed)
        z = self.latent[index]
        return {
            "s1": torch.from_numpy(z @ self.m1 + noise.normal(0, 0.1, 4).astype(np.float32)),
            "s2": torch.from_numpy(z @ self.m2 + noise.normal(0, 0.1, 6).astype(np.float32)),
        }


def toy_step(model, batch):
    from training.losses import nt_xent_dual
    from training.trainer import StepOutput

    z1, z2 = model(batch)
    return StepOutput(nt_xent_dual(z1, z2, 0.2))


def toy_trainer_worker(rank: int, world: int, out: str, steps: int, optimizers: list[str]) -> None:
    """Train the toy dual encoder with the real Trainer (DDP when world > 1), save the results."""
    from training.distributed import init_distributed
    from training.optim import OptimizerConfig, ScheduleConfig
    from training.trainer import LoopConfig, Trainer

    for optimizer in optimizers:
        torch.manual_seed(0)
        trainer = Trainer(
            model=ToyDualEncoder(), step_fn=toy_step, dataset=ToyPairs(),
            loop=LoopConfig(batch_size=8, max_steps=steps, log_every=1, checkpoint_every=100, num_workers=0, progress_bar=False),
            optimizer=OptimizerConfig(name=optimizer, lr=0.05, weight_decay=0.01),
            schedule=ScheduleConfig(kind="constant"), dist=init_distributed("cpu"),
            run_dir=Path(out) / f"run_{optimizer}_{world}",
        )
        result = trainer.fit()
        if rank == 0:
            torch.save({"state": trainer.module.state_dict(), "loss": result.metrics["loss"]},
                       Path(out) / f"toy_{optimizer}_world{world}.pt")
