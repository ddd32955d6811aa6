"""Optimisers, parameter groups and learning-rate schedules stepped per iteration.

Parameter groups: weight decay only on weight matrices/kernels. Norm weights, biases (every 1-D
parameter) and position tables (Swin's ``relative_position_bias_table`` is 2-D, so it is matched by
name) get none, as in the Swin recipe. Groups can also carry an LR multiplier per parameter-name
prefix (e.g. a classifier head trained 10x faster than its backbone).

Schedules (:class:`ScheduleConfig`) are functions of the *iteration*, evaluated every step:

``warmup_cosine``
    linear warmup then cosine decay to ``min_factor * lr`` at the last step: what our recipes use.
``constant``
    ``factor * lr`` throughout. The published Swin recipe actually ran this way: its timm
    CosineLRScheduler was only ever stepped per epoch with ``t_in_epochs=False``, so the LR stayed
    at the warmup start value 5e-7 = 1e-3 x 5e-4 for all 300 epochs (reference_facts.md §2.4).
``epoch_cosine``
    the published ResNet recipe: ``CosineAnnealingLR(T_max=t_max_epochs)`` stepped once per epoch
    after ``delay_epochs`` epochs, piecewise constant within an epoch. With T_max = 903 (the number
    of batches per epoch, passed where epochs were meant) the LR only falls to ~0.89 x lr by epoch 200.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from s1s2_encoders.errors import ConfigError

NO_DECAY_NAME_PATTERNS: tuple[str, ...] = (
    r"relative_position_bias_table",
    r"absolute_pos_embed",
    r"(^|\.)pos_embed",
    r"(^|\.)cls_token",
)
"""Parameter names (regex, searched) that never get weight decay, whatever their rank."""


@dataclass
class OptimizerConfig:
    """The ``optimizer`` section.

    Attributes:
        name: ``adam`` (L2 penalty added to the gradient, as torch.optim.Adam), ``adamw`` (decoupled
            decay) or ``sgd`` (with momentum).
        lr: peak learning rate for the *global* batch (no automatic scaling with world size).
        weight_decay: decay coefficient for the parameters that get decay.
        decay_norm_and_bias: give norms, biases and position tables weight decay too (what the
            published ResNet recipe did: ``Adam(model.parameters(), weight_decay=1e-4)``).
        betas, eps: Adam/AdamW parameters.
        momentum, nesterov: SGD parameters.
        grad_clip_norm: clip the global gradient norm to this value (``null``: no clipping).
    """

    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    decay_norm_and_bias: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    grad_clip_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError(f"optimizer.grad_clip_norm must be > 0 or null, got {self.grad_clip_norm}")


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or any(re.search(p, name) for p in NO_DECAY_NAME_PATTERNS)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    decay_norm_and_bias: bool = False,
    lr_scales: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters into optimizer groups.

    Args:
        model: the module (unwrapped or DDP-wrapped: a leading ``module.`` is ignored for matching).
        weight_decay: decay for weight matrices / kernels.
        decay_norm_and_bias: also decay 1-D parameters and position tables.
        lr_scales: ``{name prefix: LR multiplier}``; the longest matching prefix wins, unmatched
            parameters get 1.0. E.g. ``{"backbone.": 0.1, "head.": 1.0}``.

    Returns:
        Groups with keys ``params``, ``param_names``, ``weight_decay``, ``lr_scale`` and ``name``
        (``"<prefix or all>/decay"`` or ``".../no_decay"``); empty groups are dropped. Frozen
        parameters (``requires_grad=False``) are left out.
    """
    scales = dict(lr_scales or {})
    prefixes = sorted(scales, key=len, reverse=True)
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        clean = name.removeprefix("module.")
        prefix = next((p for p in prefixes if clean.startswith(p)), "")
        decay = decay_norm_and_bias or not _no_decay(clean, param)
        key = (prefix, decay)
        if key not in groups:
            groups[key] = {
                "params": [], "param_names": [], "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scales.get(prefix, 1.0),
                "name": f"{prefix.rstrip('.') or 'all'}/{'decay' if decay else 'no_decay'}",
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(clean)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return list(groups.values())


def build_optimizer(groups: Sequence[dict[str, Any]], config: OptimizerConfig) -> torch.optim.Optimizer:
    """Create the optimizer; each group's initial LR is ``config.lr * group["lr_scale"]``."""
    torch_groups = []
    for group in groups:
        g = {k: v for k, v in group.items() if k != "param_names"}
        g["lr"] = config.lr * g.get("lr_scale", 1.0)
        g["initial_lr"] = g["lr"]
        torch_groups.append(g)
    if config.name == "adam":
        return torch.optim.Adam(torch_groups, lr=config.lr, betas=config.betas, eps=config.eps)
    if config.name == "adamw":
        return torch.optim.AdamW(torch_groups, lr=config.lr, betas=config.betas, eps=config.eps)
    return torch.optim.SGD(torch_groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


@dataclass
class ScheduleConfig:
    """The ``schedule`` section (see the module docstring for the kinds).

    Attributes:
        kind: ``warmup_cosine``, ``constant`` or ``epoch_cosine``.
        warmup_steps / warmup_epochs: warmup length (``warmup_cosine``; give at most one).
        warmup_start_factor: LR at the first warmup step as a fraction of the peak.
        min_factor: final LR as a fraction of the peak (``warmup_cosine``, ``epoch_cosine``).
        factor: the constant multiplier (``constant``).
        delay_epochs, t_max_epochs: ``epoch_cosine`` parameters.
    """

    kind: Literal["warmup_cosine", "constant", "epoch_cosine"] = "warmup_cosine"
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    warmup_start_factor: float = 0.0
    min_factor: float = 0.0
    factor: float = 1.0
    delay_epochs: int = 0
    t_max_epochs: float | None = None

    def __post_init__(self) -> None:
        if self.warmup_steps is not None and self.warmup_epochs is not None:
            raise ConfigError("schedule: give warmup_steps or warmup_epochs, not both")
        if self.kind == "epoch_cosine" and not (self.t_max_epochs and self.t_max_epochs > 0):
            raise ConfigError("schedule.kind 'epoch_cosine' needs t_max_epochs > 0")
        for name in ("warmup_start_factor", "min_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"schedule.{name} must be in [0, 1], got {getattr(self, name)}")


class LRSchedule:
    """Sets every group's LR to ``initial_lr * factor(step)``; ``step`` counts finished iterations.

    Call :meth:`apply` before each optimizer step (with the index of the iteration about to run);
    the state is just that index, so it resumes exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int, steps_per_epoch: int):
        if total_steps < 1:
            raise ConfigError(f"the run has {total_steps} steps; it needs at least 1")
        self.optimizer = optimizer
        self.config = config
        self.total_steps = int(total_steps)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        if config.warmup_epochs is not None:
            self.warmup_steps = int(round(config.warmup_epochs * self.steps_per_epoch))
        else:
            self.warmup_steps = int(config.warmup_steps or 0)
        self.step_index = 0

    def factor(self, step: int) -> float:
        """LR multiplier for iteration ``step`` (0-based)."""
        c = self.config
        if c.kind == "constant":
            return c.factor
        if c.kind == "epoch_cosine":
            epoch = step // self.steps_per_epoch
            k = max(0, epoch - c.delay_epochs)
            return c.min_factor + (1 - c.min_factor) * 0.5 * (1 + math.cos(math.pi * k / float(c.t_max_epochs)))
        if step < self.warmup_steps:
            return c.warmup_start_factor + (1 - c.warmup_start_factor) * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return c.min_factor + (1 - c.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        """Set the LRs for iteration ``step``; returns the factor."""
        self.step_index = step
        f = self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f
        return f

    def state_dict(self) -> dict[str, Any]:
        return {"step_index": self.step_index, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.step_index = int(state["step_index"])
