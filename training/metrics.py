"""Evaluation metrics accumulated over a whole dataset, never averaged over batches.

The original ``PixelwiseMetrics`` averaged per-batch class recalls, which gives NaN (0/0) whenever
a class is absent from a batch and weights batches instead of pixels (reference_facts.md §3.5).
Here every metric comes from counts summed over the whole evaluation set (and over ranks with
:meth:`reduce`), and is computed once at the end:

* :class:`ConfusionMatrix` (single-label classification and segmentation): rows are the true
  class, columns the predicted class; targets equal to ``ignore_index`` (255) are not counted.

  - per-class accuracy (recall) ``TP / (TP + FN)``; **NaN for a class absent from the targets**
    (no sample of it to be right or wrong about);
  - average accuracy (AA) = mean class pixel accuracy = mean of the per-class accuracies over the
    classes *present in the targets*;
  - overall accuracy (OA) = pixel accuracy = ``trace / total``;
  - per-class F1 ``2 TP / (2 TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)``: NaN for a class absent
    from both the targets and the predictions (nothing to score); a class that is predicted but
    never true scores 0 (its false positives count against it), and is included in the averages;
  - average F1 and mIoU: means over the classes with a non-NaN value.

* :class:`MultiLabelCounts` (multi-label classification): TP / FP / FN / TN per class over all
  samples; per-class F1 (NaN for a class never in a target nor a prediction), average F1 (mean
  over non-NaN classes, the paper's "Average") and micro F1 ``2 sum TP / (2 sum TP + sum FP +
  sum FN)`` (the paper's "O-F1"); samples flagged invalid (no valid pixel) are skipped.

Every summary reports which classes were absent, how many items were counted and how many were
ignored, so a reader can tell a 0 from "not measured". NaN values become ``null`` in JSON.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist

from s1s2_encoders.classes import IGNORE_INDEX


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum_(tensor: torch.Tensor) -> None:
    if _distributed():
        # gloo reduces CPU tensors; NCCL needs them on this rank's GPU.
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        moved = tensor.to(device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved.cpu())


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator`` with NaN where the denominator is 0 (no warning)."""
    numerator = numerator.astype(np.float64)
    denominator = denominator.astype(np.float64)
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _named(values: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values)}


class ConfusionMatrix:
    """A K x K confusion matrix (rows: true class, columns: predicted class), int64, on CPU.

    Args:
        num_classes: K.
        ignore_index: target value that is not counted (255).
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.ignored = torch.zeros((), dtype=torch.int64)

    def update(self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count one batch.

        Args:
            prediction: predicted class indices, any shape (e.g. ``(B,)`` or ``(B, H, W)``).
            target: true class indices (``ignore_index`` skipped), same shape.

        Raises:
            ValueError: shapes differ, or a value is outside ``0..K-1`` (targets: or ignore_index).
        """
        prediction = torch.as_tensor(prediction).detach().to("cpu", torch.int64).reshape(-1)
        target = torch.as_tensor(target).detach().to("cpu", torch.int64).reshape(-1)
        if prediction.shape != target.shape:
            raise ValueError(f"prediction has {prediction.numel()} values, target {target.numel()}; they must match")
        keep = target != self.ignore_index
        self.ignored += (~keep).sum()
        prediction, target = prediction[keep], target[keep]
        k = self.num_classes
        for name, values in (("target", target), ("prediction", prediction)):
            if values.numel() and (values.min() < 0 or values.max() >= k):
                raise ValueError(f"{name} class indices must be in 0..{k - 1}, got min {int(values.min())}, max {int(values.max())}")
        self.matrix += torch.bincount(target * k + prediction, minlength=k * k).reshape(k, k)

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (e.g. from another shard)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge a {other.num_classes}-class matrix into a {self.num_classes}-class one")
        self.matrix += other.matrix
        self.ignored += other.ignored
        return self

    def reduce(self) -> "ConfusionMatrix":
        """Sum the counts over all ranks, in place (no-op in a single process)."""
        _all_reduce_sum_(self.matrix)
        _all_reduce_sum_(self.ignored)
        return self

    # ------------------------------------------------------------------ metrics
    @property
    def counts(self) -> np.ndarray:
        return self.matrix.numpy()

    @property
    def total(self) -> int:
        return int(self.matrix.sum())

    def support(self) -> np.ndarray:
        """Number of true items per class."""
        return self.counts.sum(axis=1)

    def per_class_accuracy(self) -> np.ndarray:
        """Recall per class, ``(K,)``; NaN for classes absent from the targets."""
        return _ratio(np.diag(self.counts), self.support())

    def average_accuracy(self) -> float:
        """AA / mean class (pixel) accuracy over the classes present in the targets."""
        return _mean(self.per_class_accuracy())

    def overall_accuracy(self) -> float:
        """OA / pixel accuracy; NaN when nothing was counted."""
        return float(_ratio(np.array(np.trace(self.counts)), np.array(self.total)))

    def per_class_f1(self) -> np.ndarray:
        tp = np.diag(self.counts)
        fp = self.counts.sum(axis=0) - tp
        fn = self.counts.sum(axis=1) - tp
        return _ratio(2 * tp, 2 * tp + fp + fn)

    def per_class_iou(self) -> np.ndarray:
        tp = np.diag(self.counts)
        fp = self.counts.sum(axis=0) - tp
        fn = self.counts.sum(axis=1) - tp
        return _ratio(tp, tp + fp + fn)

    def mean_iou(self) -> float:
        return _mean(self.per_class_iou())

    def average_f1(self) -> float:
        return _mean(self.per_class_f1())

    def absent_classes(self) -> list[int]:
        """Classes with no true item."""
        return [int(i) for i in np.flatnonzero(self.support() == 0)]

    def summary(self, task: str, class_names: Sequence[str]) -> dict[str, Any]:
        """The metrics of a ``"single_label"`` classification or a ``"segmentation"`` evaluation."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        common = {
            "per_class_accuracy": _named(self.per_class_accuracy(), class_names),
            "absent_classes": [class_names[i] for i in self.absent_classes()],
            "confusion_matrix": self.counts.tolist(),
        }
        if task == "single_label":
            return {
                "average_accuracy": self.average_accuracy(),
                "overall_accuracy": self.overall_accuracy(),
                **common,
                "per_class_f1": _named(self.per_class_f1(), class_names),
                "average_f1": self.average_f1(),
                "n_samples": self.total,
                "n_ignored_samples": int(self.ignored),
            }
        if task == "segmentation":
            return {
                "mean_class_pixel_accuracy": self.average_accuracy(),
                "pixel_accuracy": self.overall_accuracy(),
                "miou": self.mean_iou(),
                **common,
                "per_class_iou": _named(self.per_class_iou(), class_names),
                "n_pixels": self.total,
                "n_ignored_pixels": int(self.ignored),
            }
        raise ValueError(f"task must be 'single_label' or 'segmentation', got {task!r}")


class MultiLabelCounts:
    """Per-class TP / FP / FN / TN of multi-label predictions, accumulated over a dataset."""

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        # rows: tp, fp, fn, tn
        self.table = torch.zeros(4, num_classes, dtype=torch.int64)
        self.samples = torch.zeros((), dtype=torch.int64)
        self.ignored = torch.zeros((), dtype=torch.int64)

    def update(
        self,
        prediction: torch.Tensor | np.ndarray,
        target: torch.Tensor | np.ndarray,
        valid: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Count one batch.

        Args:
            prediction: ``(B, K)`` 0/1 (or bool) predicted labels (threshold the probabilities first).
            target: ``(B, K)`` 0/1 true labels.
            valid: ``(B,)`` bool; False rows (samples without valid pixels) are skipped.
        """
        prediction = torch.as_tensor(prediction).detach().cpu()
        target = torch.as_tensor(target).detach().cpu()
        if prediction.shape != target.shape or prediction.dim() != 2 or prediction.shape[1] != self.num_classes:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must both be (B, {self.num_classes})"
            )
        for name, values in (("prediction", prediction), ("target", target)):
            if not torch.isin(values.to(torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)).all():
                raise ValueError(f"multi-label {name} must hold only 0 and 1 (threshold probabilities first)")
        p, t = prediction.bool(), target.bool()
        if valid is not None:
            keep = torch.as_tensor(valid).detach().cpu().bool().reshape(-1)
            self.ignored += (~keep).sum()
            p, t = p[keep], t[keep]
        self.table[0] += (p & t).sum(0)
        self.table[1] += (p & ~t).sum(0)
        self.table[2] += (~p & t).sum(0)
        self.table[3] += (~p & ~t).sum(0)
        self.samples += p.shape[0]

    def reduce(self) -> "MultiLabelCounts":
        _all_reduce_sum_(self.table)
        _all_reduce_sum_(self.samples)
        _all_reduce_sum_(self.ignored)
        return self

    def per_class_f1(self) -> np.ndarray:
        tp, fp, fn, _ = self.table.numpy()
        return _ratio(2 * tp, 2 * tp + fp + fn)

    def average_f1(self) -> float:
        return _mean(self.per_class_f1())

    def micro_f1(self) -> float:
        tp, fp, fn, _ = self.table.numpy().sum(axis=1)
        return float(_ratio(np.array(2 * tp), np.array(2 * tp + fp + fn)))

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        tp, fp, fn, _ = self.table.numpy()
        return {
            "average_f1": self.average_f1(),
            "micro_f1": self.micro_f1(),
            "per_class_f1": _named(self.per_class_f1(), class_names),
            "absent_classes": [class_names[i] for i in np.flatnonzero(tp + fn == 0)],
            "n_samples": int(self.samples),
            "n_ignored_samples": int(self.ignored),
        }


def json_safe(value: Any) -> Any:
    """NaN / inf -> None recursively, so summaries serialise as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


__all__ = ["ConfusionMatrix", "MultiLabelCounts", "json_safe"]
