"""One code path from a laptop to many GPUs: torchrun set-up, gathers with gradients, reductions.

``torchrun --nproc_per_node=N -m training.pretrain ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them and starts
the process group (NCCL on GPUs, gloo on CPU). Without them it returns a single-process
:class:`DistInfo` and every helper here degrades to the identity, so the same training code runs
with ``python -m`` on one CPU.

Contrastive losses need the *global* batch as negatives: :func:`all_gather_with_grad` concatenates
every rank's embeddings and routes gradients back to the rank that produced them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 .. world_size-1).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process computes on.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs and writes checkpoints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU; otherwise as given."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is None:
        return torch.device(f"cuda:{local_rank}")
    return parsed


def init_distributed(device: str = "auto", backend: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Initialise from the torchrun environment (or return single-process info).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``).
        backend: process-group backend; default NCCL for CUDA devices, gloo otherwise.
        timeout_minutes: collective timeout.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    target = resolve_device(device, local_rank)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world_size <= 1:
        return DistInfo(0, 1, 0, target, None)
    chosen = backend or ("nccl" if target.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {
            "backend": chosen, "rank": rank, "world_size": world_size,
            "timeout": datetime.timedelta(minutes=timeout_minutes),
        }
        if chosen == "nccl":
            kwargs["device_id"] = target
        dist.init_process_group(**kwargs)
    return DistInfo(rank, world_size, local_rank, target, chosen)


def shutdown_distributed() -> None:
    """Destroy the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    return dist.get_rank() if _active() else 0


def barrier() -> None:
    if _active():
        dist.barrier()


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    sizes = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(sizes) for _ in range(dist.get_world_size())]
    dist.all_gather(out, sizes)
    return [int(s.item()) for s in out]


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's tensor along dim 0; backward returns this rank's slice of the
    *sum* of all ranks' gradients (each rank's loss may depend on every rank's rows)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        sizes = _gather_sizes(x.shape[0], x.device)
        largest = max(sizes)
        padded = x
        if x.shape[0] < largest:  # all_gather needs equal shapes
            padded = torch.cat([x, x.new_zeros((largest - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(n_r, ...)`` on each rank -> ``(sum n_r, ...)`` in rank order, differentiable.

    The gradient that reaches rank r's input is the sum over all ranks of d(loss_k)/d(rows of r),
    so with each rank's loss being the mean over its *local* anchors, DistributedDataParallel's
    gradient averaging yields exactly the gradient of the global-batch loss. Ranks may hold
    different numbers of rows. Identity when not distributed.
    """
    if not _active():
        return x
    return _AllGatherWithGrad.apply(x)


def all_gather_tensor(x: torch.Tensor) -> torch.Tensor:
    """Like :func:`all_gather_with_grad` but detached (for metrics and evaluation)."""
    if not _active():
        return x
    with torch.no_grad():
        return _AllGatherWithGrad.apply(x.detach())


def gather_offset(n_local: int, device: torch.device | None = None) -> int:
    """Index of this rank's first row in the gathered tensor (0 when not distributed)."""
    if not _active():
        return 0
    sizes = _gather_sizes(n_local, device or torch.device("cpu"))
    return sum(sizes[: dist.get_rank()])


def all_reduce_mean(values: Mapping[str, float | torch.Tensor], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (one collective for all of them)."""
    keys = sorted(values)
    if not keys:
        return {}
    tensor = torch.tensor(
        [float(values[k].detach().float().item()) if isinstance(values[k], torch.Tensor) else float(values[k]) for k in keys],
        dtype=torch.float64, device=device,
    )
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist()))


def all_reduce_sum(values: Mapping[str, float | int], device: torch.device) -> dict[str, float]:
    """Sum scalar counters over ranks."""
    keys = sorted(values)
    if not keys:
        return {}
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return dict(zip(keys, tensor.tolist()))


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable object, in rank order (``[obj]`` when not distributed)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
