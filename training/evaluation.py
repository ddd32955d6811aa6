"""Deterministic evaluation of a task model on a whole dataset, sharded over ranks.

Each rank evaluates the samples ``rank, rank + world, ...`` (no sample twice, none dropped, unlike a
padded DistributedSampler), counts a confusion matrix / multi-label table, and the counts are summed
over ranks before any metric is computed (:mod:`training.metrics`). Samples are read with a fixed
seed and the evaluation data must use ``crop: center`` or ``crop: none`` (full patches; the
segmenter takes any size), never random crops as the original did (reference_facts.md §3.2).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from s1s2_encoders.models.task import S1S2TaskModel

from .data import collate_samples
from .distributed import all_reduce_sum, rank, world_size
from .metrics import ConfusionMatrix, MultiLabelCounts
from .sampling import SampleKey
from .task_data import CLASS_READ_SEED, TaskDataset
from .trainer import autocast_context, move_to_device


class _ShardBatches(Sampler[list[SampleKey]]):
    """Batches of this rank's positions ``rank::world`` with a fixed sample seed."""

    def __init__(self, n: int, batch_size: int, rank_: int, world: int):
        self.positions = list(range(rank_, n, world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch_size)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        for start in range(0, len(self.positions), self.batch_size):
            yield [SampleKey(p, CLASS_READ_SEED) for p in self.positions[start:start + self.batch_size]]


def unwrap(model: nn.Module) -> S1S2TaskModel:
    """The task model inside a DistributedDataParallel wrapper (or the model itself)."""
    inner = getattr(model, "module", model)
    if not isinstance(inner, S1S2TaskModel):
        raise TypeError(f"expected a task model, got {type(inner).__name__}")
    return inner


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def evaluate_task_model(
    model: nn.Module,
    dataset: TaskDataset,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    threshold: float = 0.5,
    num_workers: int = 0,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on every sample of ``dataset`` (a collective call when distributed).

    Args:
        model: a task model (or its DDP wrapper).
        dataset: evaluation samples with targets.
        batch_size: samples per forward pass on each rank.
        device: where to compute.
        precision: ``fp32`` or ``bf16`` (autocast), as in training.
        threshold: multi-label decision threshold on the sigmoid probabilities (0.5 in the papers).
        num_workers: DataLoader workers.
        class_names: names for the summary (default: the model's).

    Returns:
        The summary of :class:`~training.metrics.ConfusionMatrix` (``"single_label"`` or
        ``"segmentation"``) or :class:`~training.metrics.MultiLabelCounts`, plus ``"task"`` and
        ``"n_nan_replaced"`` (evaluation samples the dataset had to replace because of missing data).
    """
    task_model = unwrap(model)
    device = torch.device(device)
    names = list(class_names or task_model.class_names)
    k = task_model.num_classes
    multi = dataset.task == "classification" and dataset.multi_label
    counts: ConfusionMatrix | MultiLabelCounts = MultiLabelCounts(k) if multi else ConfusionMatrix(k)
    loader = DataLoader(
        dataset, batch_sampler=_ShardBatches(len(dataset), batch_size, rank(), world_size()),
        num_workers=num_workers, collate_fn=collate_samples,
    )
    replaced = 0
    with _eval_mode(task_model), torch.no_grad():
        for batch in loader:
            replaced += int(batch["n_nan_replaced"].sum()) if "n_nan_replaced" in batch else 0
            batch = move_to_device(batch, device)
            with autocast_context(device, precision):
                logits = task_model(batch["s1"], batch["s2"], valid=batch.get("valid"))
            logits = logits.float()
            if multi:
                counts.update((torch.sigmoid(logits) >= threshold).long(), batch["target"].long(), batch["target_valid"])  # type: ignore[call-arg]
            else:
                counts.update(logits.argmax(dim=1), batch["target"])  # type: ignore[call-arg]
    counts.reduce()
    replaced = int(all_reduce_sum({"n": replaced}, torch.device("cpu") if device.type != "cuda" else device)["n"])
    if multi:
        summary = counts.summary(names)  # type: ignore[call-arg]
        task = "multi_label"
    else:
        task = "segmentation" if dataset.task == "segmentation" else "single_label"
        summary = counts.summary(task, names)  # type: ignore[call-arg]
    return {"task": task, **summary, "n_nan_replaced": replaced}


__all__ = ["evaluate_task_model", "unwrap"]
