"""The generic training loop: one optimizer step per batch, resumable exactly, 1 to N processes.

:class:`Trainer` knows nothing about contrastive learning or classification. It is given

* a model (wrapped in DistributedDataParallel when there are several processes),
* a *step function* ``step_fn(model, batch) -> StepOutput`` that runs the forward pass through
  ``model(...)`` (so DDP's gradient hooks fire) and returns the loss and metrics,
* a dataset whose ``__getitem__`` accepts :class:`~training.sampling.SampleKey`,
* the ``train``, ``optimizer`` and ``schedule`` sections of a recipe,

and does the rest: parameter groups, optimizer and per-iteration LR schedule, autocast (bf16),
gradient clipping, metric reduction over ranks, logging (stdout + JSONL + progress bar), atomic
checkpoints every K steps and at the end, and ``resume`` from the exact batch, RNG state and
schedule position where a run stopped.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from s1s2_encoders.errors import ConfigError

from .checkpoints import (
    CHECKPOINT_DIR,
    capture_rng_state,
    latest_checkpoint,
    load_training_checkpoint,
    restore_rng_state,
    save_training_checkpoint,
    seed_everything,
)
from .distributed import DistInfo, all_gather_object, all_reduce_mean, all_reduce_sum, barrier
from .optim import LRSchedule, OptimizerConfig, ScheduleConfig, build_optimizer, param_groups
from .run_log import RunLogger
from .sampling import ResumableBatchSampler, sample_seed


@dataclass
class LoopConfig:
    """The ``train`` section of a recipe.

    Attributes:
        batch_size: *global* batch size (all processes together); divisible by the process count.
        epochs / max_steps: run length; give exactly one (``epochs`` may be fractional).
        seed: model initialisation and training randomness (dropout, drop-path).
        data_seed: data order and per-sample crops/augmentations (default: ``seed``).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16`` (also on CPU).
        device: ``auto``, ``cpu`` or ``cuda``.
        log_every: steps between log lines (metrics are averaged over them).
        checkpoint_every: steps between checkpoints (one is always written at the end).
        keep_checkpoints: how many recent checkpoints to keep (``null``: all).
        num_workers, pin_memory, prefetch_factor, persistent_workers: DataLoader settings
            (``pin_memory`` only matters on CUDA).
        progress_bar: show a tqdm bar on terminals.
        output_dir: run folder (checkpoints, log.jsonl, config.yaml).
        sync_batchnorm: convert BatchNorm to SyncBatchNorm when training on several GPUs (the
            statistics then come from the global batch, as with one process).
        find_unused_parameters: DistributedDataParallel option, needed only when some trainable
            parameters get no gradient (e.g. an objective that reads only early pyramid levels).
    """

    batch_size: int = 32
    epochs: float | None = None
    max_steps: int | None = None
    seed: int = 0
    data_seed: int | None = None
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int | None = 3
    num_workers: int = 4
    pin_memory: bool = True
    prefetch_factor: int = 2
    persistent_workers: bool = True
    progress_bar: bool = True
    output_dir: str = "runs/default"
    sync_batchnorm: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if (self.epochs is None) == (self.max_steps is None):
            raise ConfigError("train: give exactly one of epochs and max_steps")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"train.epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1, got {self.max_steps}")
        for name in ("batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class StepOutput:
    """What a step function returns.

    Attributes:
        loss: scalar tensor to minimise (this rank's share; DDP averages gradients over ranks).
        metrics: scalars averaged over ranks and over the log window (tensors are fine; they are
            synchronised only when logging).
        counts: numbers (or scalar tensors) summed over ranks and over the whole run (e.g. samples
            replaced because of NaN).
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor | float] = field(default_factory=dict)
    counts: dict[str, int | float | torch.Tensor] = field(default_factory=dict)


StepFn = Callable[[nn.Module, Any], StepOutput]


@dataclass
class FitResult:
    """Where a :meth:`Trainer.fit` call ended."""

    step: int
    total_steps: int
    finished: bool
    last_checkpoint: Path | None
    metrics: dict[str, float]
    totals: dict[str, float]


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors (nested in dicts/lists) to ``device``, asynchronously from pinned memory."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _worker_init(worker_id: int) -> None:
    # Datasets draw randomness from each SampleKey's seed; seeding the worker's global RNGs anyway
    # keeps third-party code in workers from repeating the same numbers in every worker.
    info = torch.utils.data.get_worker_info()
    seed = (info.seed if info is not None else worker_id) % (2**32)
    np.random.seed(seed)
    import random

    random.seed(seed)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision="bf16"`` (or ``"auto"`` on CUDA), else a no-op."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class Trainer:
    """Runs a step function over a dataset with checkpoints and exact resume.

    Args:
        model: the module to train (on CPU or already on its device); it is moved to
            ``dist.device`` and wrapped in DDP when ``dist.world_size > 1``.
        step_fn: ``step_fn(model, batch) -> StepOutput``.
        dataset: map-style dataset taking :class:`~training.sampling.SampleKey` indices.
        loop, optimizer, schedule: recipe sections.
        dist: from :func:`training.distributed.init_distributed`.
        run_dir: where checkpoints and logs go.
        run_config: the full recipe as plain data (stored in checkpoints for export/resume checks).
        extra_state: plain data stored in every checkpoint under ``"extra"`` (e.g. the model config).
        collate_fn: DataLoader collate function.
        groups_fn: ``model -> parameter groups`` (default: :func:`training.optim.param_groups`
            with the optimizer section's weight decay).
        logger: a :class:`~training.run_log.RunLogger` (default: one in ``run_dir``).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        step_fn: StepFn,
        dataset: Dataset,
        loop: LoopConfig,
        optimizer: OptimizerConfig,
        schedule: ScheduleConfig,
        dist: DistInfo,
        run_dir: str | Path,
        run_config: Mapping[str, Any] | None = None,
        extra_state: Mapping[str, Any] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        groups_fn: Callable[[nn.Module], list[dict[str, Any]]] | None = None,
        logger: RunLogger | None = None,
    ):
        self.loop = loop
        self.optimizer_config = optimizer
        self.schedule_config = schedule
        self.dist = dist
        self.run_dir = Path(run_dir)
        self.run_config = dict(run_config or {})
        self.extra_state = dict(extra_state or {})
        self.step_fn = step_fn
        self.dataset = dataset
        self.logger = logger or RunLogger(self.run_dir, enabled=dist.is_main, progress=loop.progress_bar)
        self.data_seed = loop.seed if loop.data_seed is None else loop.data_seed

        self.module = model.to(dist.device)
        if dist.is_distributed and dist.device.type == "cuda" and loop.sync_batchnorm:
            self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        groups = groups_fn(self.module) if groups_fn else param_groups(
            self.module, optimizer.weight_decay, decay_norm_and_bias=optimizer.decay_norm_and_bias
        )
        self.param_names = [n for g in groups for n in g["param_names"]]
        self.optimizer = build_optimizer(groups, optimizer)
        self.model: nn.Module = self.module
        if dist.is_distributed:
            self.model = DistributedDataParallel(
                self.module,
                device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                find_unused_parameters=loop.find_unused_parameters,
            )

        self.sampler = ResumableBatchSampler(
            len(dataset), loop.batch_size, dist.rank, dist.world_size, seed=self.data_seed, shuffle=True
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch
        if loop.max_steps is not None:
            self.total_steps = loop.max_steps
        else:
            self.total_steps = max(1, int(math.ceil(loop.epochs * self.steps_per_epoch)))  # type: ignore[operator]
        self.schedule = LRSchedule(self.optimizer, schedule, self.total_steps, self.steps_per_epoch)
        self.loader = self._make_loader(collate_fn)
        self.step = 0
        self.totals: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ data
    def _make_loader(self, collate_fn: Callable[[list[Any]], Any] | None) -> DataLoader:
        workers = self.loop.num_workers
        kwargs: dict[str, Any] = {
            "batch_sampler": self.sampler,
            "num_workers": workers,
            "pin_memory": self.loop.pin_memory and self.dist.device.type == "cuda",
            "worker_init_fn": _worker_init if workers > 0 else None,
            # A private generator: creating an iterator must not consume the global torch RNG,
            # or a resumed run would see different dropout masks than an uninterrupted one.
            "generator": torch.Generator().manual_seed(self.data_seed),
        }
        if collate_fn is not None:
            kwargs["collate_fn"] = collate_fn
        if workers > 0:
            kwargs["prefetch_factor"] = self.loop.prefetch_factor
            kwargs["persistent_workers"] = self.loop.persistent_workers
        return DataLoader(self.dataset, **kwargs)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (RNG of *every* rank; collective call)."""
        rng = all_gather_object(capture_rng_state())
        epoch, batch = divmod(self.step, self.steps_per_epoch)
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "data": {
                "epoch": epoch, "batch_in_epoch": batch, "seed": self.data_seed,
                "global_batch_size": self.loop.batch_size, "steps_per_epoch": self.steps_per_epoch,
                "dataset_size": len(self.dataset),
            },
            "rng": rng,
            "world_size": self.dist.world_size,
            "total_steps": self.total_steps,
            "totals": dict(self.totals),
            "metrics": dict(self.last_metrics),
            "config": self.run_config,
            "extra": self.extra_state,
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; all ranks must call)."""
        state = self.state_dict()
        path = None
        if self.dist.is_main:
            path = save_training_checkpoint(self.run_dir, self.step, state, keep_last=self.loop.keep_checkpoints)
        barrier()
        return path

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint produced by :meth:`state_dict`."""
        data = state["data"]
        if data["dataset_size"] != len(self.dataset) or data["global_batch_size"] != self.loop.batch_size:
            raise ConfigError(
                f"cannot resume {state.get('path', 'checkpoint')}: it was trained with {data['dataset_size']} samples "
                f"and global batch {data['global_batch_size']}, this run has {len(self.dataset)} and {self.loop.batch_size}"
            )
        if data["seed"] != self.data_seed:
            raise ConfigError(f"cannot resume: data seed {data['seed']} in the checkpoint, {self.data_seed} in the config")
        self.module.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        self.totals = {k: float(v) for k, v in state.get("totals", {}).items()}
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:
            warnings.warn(
                f"the checkpoint was written by {len(rng)} process(es), this run has {self.dist.world_size}: "
                "data order and per-sample randomness continue exactly, but dropout/drop-path RNG is reseeded",
                stacklevel=2,
            )
            seed_everything(self.loop.seed + 1000 * self.step + self.dist.rank)

    def _resume_from(self, resume: str | Path | None) -> Path | None:
        existing = latest_checkpoint(self.run_dir)
        if resume is None:
            if existing is not None:
                raise ConfigError(
                    f"{self.run_dir} already has checkpoints (latest: {existing.name}); resume it "
                    "(--resume) or start a new run in another output folder (or pass --overwrite)"
                )
            return None
        path = existing if str(resume) == "auto" else Path(resume)
        if path is None:
            return None
        state = load_training_checkpoint(path)
        self.load_state(state)
        return Path(state["path"])

    # ------------------------------------------------------------------ loop
    def _train_step(self, batch: Any) -> StepOutput:
        batch = move_to_device(batch, self.dist.device)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.dist.device, self.loop.precision):
            out = self.step_fn(self.model, batch)
        out.loss.backward()
        if self.optimizer_config.grad_clip_norm is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.optimizer_config.grad_clip_norm)
            out.metrics["grad_norm"] = norm.detach()
        self.optimizer.step()
        return out

    def fit(self, resume: str | Path | None = None, stop_after_steps: int | None = None) -> FitResult:
        """Train until the configured length (or ``stop_after_steps`` more steps).

        Args:
            resume: ``None`` (fresh run; refuses a run folder that has checkpoints), ``"auto"``
                (latest checkpoint in the run folder if any) or a checkpoint path.
            stop_after_steps: stop after this many steps *in this call*, writing a checkpoint;
                the schedule still spans the whole run (for time-limited job slots).
        """
        seed_everything(self.loop.seed + self.dist.rank)
        resumed_from = self._resume_from(resume)
        start = self.step
        self.module.train()
        if resumed_from is not None:
            self.logger.log("resume", checkpoint=str(resumed_from), step=self.step)
        self.logger.log(
            "start", step=self.step, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
            world_size=self.dist.world_size, device=str(self.dist.device), global_batch_size=self.loop.batch_size,
            dataset_size=len(self.dataset), parameters=sum(p.numel() for p in self.module.parameters()),
            trainable=sum(p.numel() for g in self.optimizer.param_groups for p in g["params"]),
        )
        self.logger.start_progress(self.total_steps, self.step)
        window: dict[str, list[torch.Tensor | float]] = {}
        window_counts: dict[str, Any] = {}
        last_saved: Path | None = resumed_from
        saved_at = self.step if resumed_from is not None else -1
        data_time = compute_time = 0.0
        window_steps = 0
        stopped_early = False
        try:
            while self.step < self.total_steps and not stopped_early:
                epoch, batch_index = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_position(epoch, batch_index)
                if self.loader.generator is not None:
                    self.loader.generator.manual_seed(sample_seed(self.data_seed, epoch, -1 - batch_index) & 0xFFFFFFFF)
                tick = time.perf_counter()
                for batch in self.loader:
                    fetched = time.perf_counter()
                    lr_factor = self.schedule.apply(self.step)
                    out = self._train_step(batch)
                    self.step += 1
                    window_steps += 1
                    done = time.perf_counter()
                    data_time += fetched - tick
                    compute_time += done - fetched
                    window.setdefault("loss", []).append(out.loss.detach())
                    for key, value in out.metrics.items():
                        window.setdefault(key, []).append(value.detach() if isinstance(value, torch.Tensor) else value)
                    for key, value in out.counts.items():  # tensors stay on device until logging
                        window_counts[key] = window_counts.get(key, 0.0) + (value.detach() if isinstance(value, torch.Tensor) else float(value))
                    stop_now = stop_after_steps is not None and self.step - start >= stop_after_steps
                    save_now = (self.step % self.loop.checkpoint_every == 0 or self.step >= self.total_steps or stop_now)
                    # Flush the log window at checkpoints too, so the checkpoint's totals are exact.
                    if self.step % self.loop.log_every == 0 or save_now:
                        self._log_window(window, window_counts, window_steps, data_time, compute_time, lr_factor, epoch)
                        window, window_counts, window_steps = {}, {}, 0
                        data_time = compute_time = 0.0
                    self.logger.advance(1, {"loss": self.last_metrics.get("loss", float("nan"))})
                    if save_now:
                        last_saved, saved_at = self.save_checkpoint(), self.step
                    if stop_now:
                        stopped_early = self.step < self.total_steps
                        break
                    if self.step >= self.total_steps:
                        break
                    tick = time.perf_counter()
            if saved_at != self.step:
                last_saved = self.save_checkpoint()
        finally:
            self.logger.close_progress()
        finished = self.step >= self.total_steps
        self.logger.log("end" if finished else "stop", step=self.step, total_steps=self.total_steps,
                        checkpoint=str(last_saved) if last_saved else None, **{f"total_{k}": v for k, v in self.totals.items()})
        return FitResult(self.step, self.total_steps, finished, last_saved, dict(self.last_metrics), dict(self.totals))

    def _log_window(self, window: dict[str, list[Any]], counts: dict[str, Any], steps: int,
                    data_time: float, compute_time: float, lr_factor: float, epoch: int) -> None:
        local: dict[str, float] = {}
        for key, values in window.items():
            tensors = [v.float().mean() if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in values]
            local[key] = float(torch.stack([t.cpu() for t in tensors]).mean())
        metrics = all_reduce_mean(local, self.dist.device)
        summed = all_reduce_sum({k: float(v) for k, v in counts.items()}, self.dist.device)
        for key, value in summed.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise FloatingPointError(
                f"the loss is {metrics['loss']} at step {self.step}; last finite checkpoint: "
                f"{latest_checkpoint(self.run_dir)} (lower the learning rate, check the data for NaN/inf)"
            )
        self.last_metrics = metrics
        samples = steps * self.loop.batch_size
        elapsed = data_time + compute_time
        self.logger.log(
            "train", step=self.step, epoch=epoch, lr=self.optimizer.param_groups[0]["lr"], lr_factor=lr_factor,
            **metrics, **{f"total_{k}": v for k, v in self.totals.items()},
            samples_per_s=samples / elapsed if elapsed > 0 else float("nan"),
            data_wait_fraction=data_time / elapsed if elapsed > 0 else float("nan"),
        )


def clear_run_dir(run_dir: str | Path) -> None:
    """Remove a run's checkpoints and log (``--overwrite``); other files stay."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    for name in ("log.jsonl",):
        (run_dir / name).unlink(missing_ok=True)
