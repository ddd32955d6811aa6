"""Fine-tuning and linear probing of S1 + S2 task models (classification, segmentation), 1 CPU to N GPUs.

::

    python -m training.finetune --config training/configs/finetune/dfc2020_cls_resnet18.yaml
    torchrun --nproc_per_node=4 -m training.finetune --config ...
    python -m training.finetune --config ... --resume                  # continue the latest checkpoint
    python -m training.finetune --config ... --set split.label_fraction=0.1 --set model.freeze_backbone=true

A run folder receives ``config.yaml`` (the resolved recipe), ``log.jsonl``, ``checkpoints/step_*.pt``
(atomic, exact resume: :mod:`training.trainer`), and when training is finished ``results.json`` (the
evaluation, with the protocol, the data and the selected samples) and ``model/`` (the exported
checkpoint folder that :func:`s1s2_encoders.load_model` loads). :func:`export_finetuned` exports
any training checkpoint of a fine-tuning run the same way.

Differences from the published fine-tuning code (reference_facts.md §3.2-§3.5, §4.1), on purpose:

* a frozen backbone really is frozen for segmentation too (the original never froze the segmenter);
  frozen towers also stay in eval mode (no BatchNorm statistics updates, no drop-path);
* backbone and head have separate learning rates (``optimizer.lr`` for the head, ``model.backbone_lr``
  for the towers);
* the label fraction is drawn before oversampling (:mod:`training.task_data`);
* evaluation uses the centre crop or the full patch, never random crops, is run once at the end
  (no checkpoint selection on the test split) and counts metrics over the whole test set;
* single-label targets are the majority among valid pixels (:mod:`training.labels`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F

from s1s2_encoders import ModelConfig, load_backbone
from s1s2_encoders.checkpoint import load_state_dict_strict
from s1s2_encoders.classes import DFC2020_CLASS_NAMES, IGNORE_INDEX
from s1s2_encoders.durable import atomic_write_text
from s1s2_encoders.errors import ConfigError, S1S2Error
from s1s2_encoders.models.task import TASK_MODELS, S1S2TaskModel, create_model, task_config
from s1s2_encoders.preprocess import Normalization

from .checkpoints import load_training_checkpoint, seed_everything
from .config import dump_yaml, load_config, to_dict
from .data import DataConfig, build_dataset
from .distributed import DistInfo, barrier, init_distributed, shutdown_distributed
from .evaluation import evaluate_task_model
from .metrics import json_safe
from .optim import OptimizerConfig, ScheduleConfig, param_groups
from .recipe import RecipeInfo, add_run_arguments, build_normalization, card_header, run_overrides
from .task_data import (
    LabelConfig,
    TaskDataset,
    balanced_oversampling,
    class_counts,
    fill_one_batch,
    held_out_split,
    label_fraction_subset,
    sample_classes,
)
from .trainer import FitResult, LoopConfig, StepOutput, Trainer, clear_run_dir

RESULTS_FILE = "results.json"
EXPORT_DIR = "model"


# ---------------------------------------------------------------------------------------- config
@dataclass
class FinetuneModelSection:
    """The ``model`` section.

    Attributes:
        task: ``classification`` or ``segmentation``.
        init: ``pretrained`` (towers from ``backbone``) or ``scratch`` (random towers).
        backbone: pretrained backbone: a checkpoint folder, a registry name or ``hf-hub:ORG/REPO``.
        architecture / tower_kwargs / normalization / input_size: the towers when ``init: scratch``
            (``normalization``: ``fixed_clip_scale``, ``sslt_channel_max`` or a ``config.json`` mapping).
        fusion: ``late`` (two towers, concatenated), ``early`` (one tower on 15 stacked channels,
            scratch only), ``s1`` or ``s2`` (one modality).
        multi_label: classification only: sigmoid per class, BCE loss.
        decoder: segmentation decoder overrides (``{channels: [...]}`` for UNet,
            ``{drop_path_rate: ...}`` etc. for SwinUNet).
        class_names / class_colors: output classes (default: the 8 DFC2020 classes and colours).
        freeze_backbone: linear probe (classification) / frozen-encoder segmentation.
        backbone_lr: learning rate of the towers (``null``: ``optimizer.lr``, like the head).
        name / license: of the exported model.
    """

    task: Literal["classification", "segmentation"] = "classification"
    init: Literal["pretrained", "scratch"] = "pretrained"
    backbone: str | None = None
    architecture: str = "resnet18"
    tower_kwargs: dict[str, Any] = field(default_factory=dict)
    normalization: Any = "fixed_clip_scale"
    input_size: int | None = None
    fusion: Literal["late", "early", "s1", "s2"] = "late"
    multi_label: bool = False
    decoder: dict[str, Any] | None = None
    class_names: list[str] | None = None
    class_colors: list[list[int]] | None = None
    freeze_backbone: bool = False
    backbone_lr: float | None = None
    name: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        if self.init == "pretrained" and not self.backbone:
            raise ConfigError("model.init 'pretrained' needs model.backbone (a folder, registry name or hf-hub: id)")
        if self.init == "pretrained" and self.fusion == "early":
            raise ConfigError("model.fusion 'early' has no pretrained counterpart (one tower on 15 channels): use init: scratch")
        if self.backbone_lr is not None and not self.backbone_lr > 0:
            raise ConfigError(f"model.backbone_lr must be > 0, got {self.backbone_lr}")
        if self.freeze_backbone and self.backbone_lr is not None:
            raise ConfigError("model.backbone_lr has no effect with freeze_backbone: true; remove one of them")
        if self.multi_label and self.task != "classification":
            raise ConfigError("model.multi_label applies to classification only")

    def build_normalization(self) -> Normalization:
        return build_normalization(self.normalization)


@dataclass
class SplitSection:
    """The ``split`` section: which samples train and which evaluate.

    Attributes:
        protocol: ``train_test``: train on ``data``, evaluate on ``eval_data`` (the papers: DFC2020
            validation -> test); ``held_out``: evaluate on a held-out part of ``data``.
        held_out_fraction / split_seed: size and seed of the held-out part.
        label_fraction: fraction of the training samples whose labels are used (1 %, 10 %, 50 %, 100 %).
        fraction_seed: fixed seed of the label-fraction draw (42 in the papers; the same subset for
            every run seed).
        balanced_oversampling: repeat samples of rare classes up to the largest class.
        oversampling_seed: seed of the oversampling remainder draw.
    """

    protocol: Literal["train_test", "held_out"] = "train_test"
    held_out_fraction: float = 0.2
    split_seed: int = 0
    label_fraction: float = 1.0
    fraction_seed: int = 42
    balanced_oversampling: bool = False
    oversampling_seed: int = 0


@dataclass
class EvalSection:
    """The ``eval`` section.

    Attributes:
        crop: ``none`` (full patches; default) or ``center`` (a centre crop of ``crop_size``);
            random crops are refused.
        crop_size: centre-crop size (``crop: center``).
        batch_size: samples per forward pass per process.
        threshold: multi-label decision threshold.
        num_workers: DataLoader workers.
    """

    crop: Literal["none", "center"] = "none"
    crop_size: int | None = None
    batch_size: int = 32
    threshold: float = 0.5
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.crop == "center" and not self.crop_size:
            raise ConfigError("eval.crop 'center' needs eval.crop_size")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"eval.threshold must be in (0, 1), got {self.threshold}")


@dataclass
class FinetuneConfig:
    """A fine-tuning recipe (one YAML file)."""

    recipe: RecipeInfo
    model: FinetuneModelSection
    data: DataConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    train: LoopConfig
    labels: LabelConfig = field(default_factory=LabelConfig)
    split: SplitSection = field(default_factory=SplitSection)
    eval_data: DataConfig | None = None
    eval: EvalSection = field(default_factory=EvalSection)

    def __post_init__(self) -> None:
        if self.split.protocol == "train_test" and self.eval_data is None:
            raise ConfigError("split.protocol 'train_test' needs an eval_data section (e.g. the DFC2020 test split)")
        if self.split.protocol == "held_out" and self.eval_data is not None:
            raise ConfigError("split.protocol 'held_out' evaluates on part of data; remove eval_data or use train_test")
        if self.eval_data is not None:
            for i, entry in enumerate(self.eval_data.datasets):
                crop = entry.get("crop", self.eval_data.crop)
                if crop == "random":
                    raise ConfigError(
                        f"eval_data.datasets[{i}] uses random crops; evaluation must be deterministic "
                        "(crop: none or center; the original evaluated on random crops, reference_facts §3.2)"
                    )

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names or DFC2020_CLASS_NAMES)


def load_finetune_config(path: str | Path, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Read a recipe with ``section.key=value`` overrides; strict (see :mod:`training.config`)."""
    return load_config(FinetuneConfig, path, overrides)


# ---------------------------------------------------------------------------------------- model
def build_task_model(config: FinetuneConfig) -> S1S2TaskModel:
    """The task model: towers from the pretrained backbone or random; head random (seed first)."""
    m = config.model
    head: dict[str, Any] = {"multi_label": m.multi_label} if m.task == "classification" else {"decoder": m.decoder}
    cls = TASK_MODELS[m.task]
    if m.init == "pretrained":
        backbone = load_backbone(m.backbone)  # type: ignore[arg-type]
        model = cls.from_backbone(
            backbone, class_names=config.class_names, class_colors=m.class_colors, fusion=m.fusion,
            name=m.name or config.recipe.name, **head,
        )
    else:
        input_size = m.input_size or config.data.crop_size
        if input_size is None:
            raise ConfigError("set data.crop_size or model.input_size for a model trained from scratch")
        base = ModelConfig(
            architecture=m.architecture, tower_kwargs=dict(m.tower_kwargs), normalization=m.build_normalization(),
            input_size=input_size, name=m.name or config.recipe.name,
        )
        model = create_model(task_config(
            base, m.task, class_names=config.class_names, class_colors=m.class_colors, fusion=m.fusion, **head,
        ))
    model.config = model.config.replace(license=m.license if m.license is not None else model.config.license)
    if m.freeze_backbone:
        model.freeze_backbone()
    return model


def parameter_groups(model: torch.nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimizer groups: ``optimizer.lr`` for the head, ``model.backbone_lr`` for the towers."""
    scales = {}
    if config.model.backbone_lr is not None:
        scales["towers."] = config.model.backbone_lr / config.optimizer.lr
    return param_groups(
        model, config.optimizer.weight_decay, decay_norm_and_bias=config.optimizer.decay_norm_and_bias, lr_scales=scales,
    )


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean CE over targets != 255 (0 with a valid graph when all are ignored); returns (loss, count)."""
    count = (target != IGNORE_INDEX).sum()
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / count.clamp_min(1), count


def finetune_step(task: str, multi_label: bool):
    """The step function for :class:`~training.trainer.Trainer`."""

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        logits = model(batch["s1"], batch["s2"], valid=batch.get("valid"))
        target = batch["target"]
        counts: dict[str, Any] = {}
        if "n_nan_replaced" in batch:
            counts["nan_replaced"] = batch["n_nan_replaced"].sum()
        if multi_label:
            valid = batch["target_valid"].float()
            per_sample = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none").mean(dim=1)
            loss = (per_sample * valid).sum() / valid.sum().clamp_min(1)
            with torch.no_grad():
                exact = (((logits > 0).float() == target).all(dim=1).float() * valid).sum() / valid.sum().clamp_min(1)
            return StepOutput(loss, metrics={"exact_match": exact}, counts=counts)
        loss, count = masked_cross_entropy(logits, target)
        with torch.no_grad():
            correct = ((logits.argmax(dim=1) == target) & (target != IGNORE_INDEX)).sum()
            accuracy = correct.float() / count.clamp_min(1)
        counts["ignored_targets"] = (target == IGNORE_INDEX).sum()
        return StepOutput(loss, metrics={"accuracy": accuracy}, counts=counts)

    return step


# ---------------------------------------------------------------------------------------- data
EVAL_MIN_VALID_FRACTION = 1e-6
"""Evaluation keeps every sample with at least one valid pixel (the datasets replace only empty ones)."""


def deterministic_data(data: DataConfig, crop: str, crop_size: int | None) -> DataConfig:
    """A copy of ``data`` for evaluation: every entry cropped ``none`` (full patch) or ``center``,
    NaN/inf pixels masked (ignored in labels and pooling) instead of samples being replaced."""
    out = copy.deepcopy(data)
    out.crop, out.crop_size = crop, (crop_size if crop == "center" else None)
    out.nan_policy, out.min_valid_fraction = "mask", EVAL_MIN_VALID_FRACTION
    for entry in out.datasets:
        entry["crop"] = crop
        entry.pop("crop_size", None)
        if crop == "center":
            entry["crop_size"] = crop_size
        entry["nan_policy"] = "mask"
        entry["min_valid_fraction"] = EVAL_MIN_VALID_FRACTION
    return out


def describe_data(data: DataConfig) -> list[dict[str, Any]]:
    """The dataset entries, as plain data, for result rows and provenance."""
    keep = ("kind", "root", "split", "split_csv", "labels", "n_samples", "seed", "size", "crop", "crop_size", "repeat", "s2_offset")
    return [{k: v for k, v in entry.items() if k in keep} for entry in data.datasets]


@dataclass
class Selection:
    """The samples a run trains and evaluates on (recorded in results and checkpoints)."""

    train: TaskDataset
    evaluation: TaskDataset
    n_train_pool: int
    n_labelled: int
    class_counts: dict[str, int]

    def describe(self) -> dict[str, Any]:
        return {
            "n_train_pool": self.n_train_pool, "n_labelled": self.n_labelled, "n_train_samples": len(self.train),
            "n_eval_samples": len(self.evaluation), "train_class_counts": self.class_counts,
        }


def select_data(config: FinetuneConfig, global_batch_size: int) -> Selection:
    """Build the training and evaluation datasets with the split, label fraction and oversampling."""
    m, s = config.model, config.split
    names = config.class_names
    crop_size = config.data.crop_size or m.input_size
    train_base = build_dataset(config.data, default_crop_size=crop_size, where="data")
    n = len(train_base)  # type: ignore[arg-type]
    if s.protocol == "held_out":
        pool, eval_indices = held_out_split(n, s.held_out_fraction, s.split_seed)
        eval_base = build_dataset(deterministic_data(config.data, config.eval.crop, config.eval.crop_size), where="data (held out)")
    else:
        pool = list(range(n))
        eval_config = deterministic_data(config.eval_data, config.eval.crop, config.eval.crop_size)  # type: ignore[arg-type]
        eval_base = build_dataset(eval_config, where="eval_data")
        eval_indices = list(range(len(eval_base)))  # type: ignore[arg-type]
    labelled = label_fraction_subset(pool, s.label_fraction, s.fraction_seed)
    classes = sample_classes(train_base, labelled, config.labels, len(names))
    counts = class_counts(classes, names)
    chosen = balanced_oversampling(labelled, classes, s.oversampling_seed) if s.balanced_oversampling else labelled
    chosen = fill_one_batch(chosen, global_batch_size)
    train = TaskDataset(train_base, chosen, m.task, len(names), config.labels, m.multi_label)
    evaluation = TaskDataset(eval_base, eval_indices, m.task, len(names), config.labels, m.multi_label)
    return Selection(train, evaluation, len(pool), len(labelled), counts)


# ---------------------------------------------------------------------------------------- run
@dataclass
class FinetuneResult:
    """Where a fine-tuning call ended."""

    fit: FitResult
    results: dict[str, Any] | None
    export: Path | None


def _write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def result_record(config: FinetuneConfig, selection: Selection, metrics: dict[str, Any], step: int, architecture: str) -> dict[str, Any]:
    """One evaluation, with everything needed to say what produced it."""
    m, s = config.model, config.split
    return {
        "recipe": config.recipe.name,
        "task": metrics["task"],
        "model": {
            "architecture": architecture, "init": m.init, "backbone": m.backbone if m.init == "pretrained" else None,
            "frozen_backbone": m.freeze_backbone, "fusion": m.fusion,
        },
        "protocol": s.protocol,
        "train_data": describe_data(config.data),
        "eval_data": describe_data(config.eval_data) if config.eval_data is not None else "held-out part of train_data",
        "eval_crop": config.eval.crop,
        "label_fraction": s.label_fraction,
        "fraction_seed": s.fraction_seed,
        "balanced_oversampling": s.balanced_oversampling,
        "seed": config.train.seed,
        "steps": step,
        **selection.describe(),
        "metrics": metrics,
    }


def run_finetune(
    config: FinetuneConfig,
    *,
    output_dir: str | Path | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    stop_after_steps: int | None = None,
    dist: DistInfo | None = None,
) -> FinetuneResult:
    """Fine-tune as the recipe says; evaluate and export when the run is finished.

    Args:
        config: the recipe.
        output_dir: run folder (default ``train.output_dir``).
        resume: ``None``, ``"auto"`` (latest checkpoint of the run folder) or a checkpoint path.
        overwrite: delete the run folder's checkpoints and log first.
        stop_after_steps: stop after this many steps in this call (checkpoint written; no evaluation).
        dist: an initialised :class:`DistInfo` (the caller owns the process group); ``None``:
            initialise from the torchrun environment here and shut it down at the end.
    """
    owns_dist = dist is None
    dist = dist or init_distributed(config.train.device)
    try:
        run_dir = Path(output_dir or config.train.output_dir)
        if overwrite and resume is None and dist.is_main:
            clear_run_dir(run_dir)
            (run_dir / RESULTS_FILE).unlink(missing_ok=True)
        barrier()
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
        seed_everything(config.train.seed)  # identical initial head weights on every rank
        model = build_task_model(config)
        selection = select_data(config, config.train.batch_size)
        model.config = model.config.replace(provenance={
            **model.config.provenance,
            "finetune": {
                "recipe": config.recipe.name, "protocol": config.split.protocol, "label_fraction": config.split.label_fraction,
                "init": config.model.init, "frozen_backbone": config.model.freeze_backbone,
                "train_data": describe_data(config.data), **selection.describe(),
            },
        })
        if dist.is_main:
            print(f"fine-tuning {config.recipe.name}: {json.dumps(selection.describe())}", flush=True)
        trainer = Trainer(
            model=model, step_fn=finetune_step(config.model.task, config.model.multi_label), dataset=selection.train,
            loop=config.train, optimizer=config.optimizer, schedule=config.schedule, dist=dist, run_dir=run_dir,
            run_config=to_dict(config), groups_fn=lambda module: parameter_groups(module, config),
            extra_state={"model_config": model.config.to_dict(), "kind": "finetune", "selection": selection.describe()},
        )
        fit = trainer.fit(resume=resume, stop_after_steps=stop_after_steps)
        if not fit.finished:
            if dist.is_main:
                print(f"stopped at step {fit.step}/{fit.total_steps}; resume with --resume", flush=True)
            return FinetuneResult(fit, None, None)
        metrics = evaluate_task_model(
            trainer.model, selection.evaluation, batch_size=config.eval.batch_size, device=dist.device,
            precision="bf16" if config.train.precision == "bf16" or (config.train.precision == "auto" and dist.device.type == "cuda") else "fp32",
            threshold=config.eval.threshold, num_workers=config.eval.num_workers, class_names=config.class_names,
        )
        record = result_record(config, selection, metrics, fit.step, model.config.architecture)
        export = None
        if dist.is_main:
            _write_json_atomic(run_dir / RESULTS_FILE, record)
            export = export_finetuned(fit.last_checkpoint, run_dir / EXPORT_DIR, results=json_safe(record), overwrite=True)  # type: ignore[arg-type]
            print(f"evaluation ({metrics['task']}): {headline(record)}; results {run_dir / RESULTS_FILE}; model {export}", flush=True)
        barrier()
        return FinetuneResult(fit, record, export)
    finally:
        if owns_dist:
            shutdown_distributed()


def headline(record: dict[str, Any]) -> str:
    """The headline numbers of a result, as text."""
    m = record["metrics"]
    if m["task"] == "single_label":
        return f"AA {m['average_accuracy']:.4f}, OA {m['overall_accuracy']:.4f}"
    if m["task"] == "multi_label":
        return f"average F1 {m['average_f1']:.4f}, micro F1 {m['micro_f1']:.4f}"
    return f"mean class pixel accuracy {m['mean_class_pixel_accuracy']:.4f}, pixel accuracy {m['pixel_accuracy']:.4f}, mIoU {m['miou']:.4f}"


def finetune_card_section(state: dict[str, Any], results: dict[str, Any] | None) -> str:
    """Markdown for the model card: recipe and differences, selection, steps, and the evaluation."""
    run = state.get("config", {})
    recipe = run.get("recipe", {})
    extra = state.get("extra", {})
    steps, total = int(state["step"]), int(state.get("total_steps", state["step"]))
    lines = card_header("Fine-tuning", recipe, steps, total, follows="Follows")
    rows = [
        ("model", json.dumps(run.get("model", {}))),
        ("split", json.dumps(run.get("split", {}))),
        ("samples", json.dumps(extra.get("selection", {}))),
        ("optimizer", json.dumps(run.get("optimizer", {}))),
        ("steps", f"{steps} of {total}, global batch {state.get('data', {}).get('global_batch_size')}, {state.get('world_size')} process(es)"),
        ("training data", json.dumps(run.get("data", {}).get("datasets", []))),
    ]
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "", "## Evaluation", ""]
    if results is not None:
        lines += [f"{headline(results)} ({results['protocol']}; evaluated on {json.dumps(results['eval_data'])}, "
                  f"{results['n_eval_samples']} samples, crop {results['eval_crop']}).", "",
                  "```json", json.dumps(json_safe(results["metrics"]), indent=2), "```", ""]
    else:
        lines += ["No evaluation was attached to this export.", ""]
    return "\n".join(lines)


def export_finetuned(
    checkpoint: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    license: str | None = None,
    results: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a fine-tuning training checkpoint (file or run folder) into a ``load_model`` folder,
    as :func:`training.export.export_checkpoint` does for pretraining (which calls this for
    fine-tuning checkpoints): provenance, a model card with the recipe and the evaluation, and a
    strict reload before returning.

    Args:
        checkpoint: a checkpoint file or a run folder (its latest checkpoint).
        output: folder to write.
        name / license: override the model's.
        results: the evaluation to put in the card; default: the run folder's ``results.json`` when
            it belongs to this checkpoint's step.
        overwrite: replace an existing folder.

    Raises:
        CheckpointError: not a fine-tuning checkpoint, or weights that do not match its config.
    """
    from s1s2_encoders import load_model
    from s1s2_encoders.checkpoint import sha256_file, write_checkpoint
    from s1s2_encoders.errors import CheckpointError
    from s1s2_encoders.model_card import render_model_card

    from .pretrain import TRAINING_ONLY_TOWER_KWARGS

    state = load_training_checkpoint(checkpoint)
    path = Path(state["path"])
    extra = state.get("extra") or {}
    if extra.get("kind") != "finetune" or "model_config" not in extra:
        raise CheckpointError(f"{path} is not a fine-tuning checkpoint (kind {extra.get('kind')!r})")
    config = ModelConfig.from_dict(dict(extra["model_config"]))
    if results is None:
        candidate = path.parent.parent / RESULTS_FILE
        if candidate.is_file():
            loaded = json.loads(candidate.read_text(encoding="utf-8"))
            results = loaded if loaded.get("steps") == int(state["step"]) else None
    config = config.replace(
        tower_kwargs={k: v for k, v in config.tower_kwargs.items() if k not in TRAINING_ONLY_TOWER_KWARGS},
        name=name or config.name, license=license or config.license,
        provenance={
            **config.provenance,
            "trained_with": "s1s2-encoders training/ (python -m training.finetune)",
            "steps": int(state["step"]), "total_steps": int(state.get("total_steps", state["step"])),
            "training_checkpoint": path.name, "training_checkpoint_sha256": sha256_file(path),
            "final_metrics": state.get("metrics", {}),
            "evaluation": None if results is None else {"protocol": results["protocol"], "metrics": results["metrics"]},
        },
    )
    model = create_model(config)
    load_state_dict_strict(model, state["model"], str(path))  # fails before anything is written
    card = render_model_card(config) + finetune_card_section(state, results)
    written = write_checkpoint(output, config, model.state_dict(), model_card=card, overwrite=overwrite)
    load_model(written)  # the folder must load strictly, exactly as users will load it
    return written


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="recipe YAML (training/configs/finetune/*.yaml)")
    add_run_arguments(p, overwrite_help="delete the run folder's checkpoints, log and results first",
                      override_example="split.label_fraction=0.1")
    p.add_argument("--export", metavar="RUN_OR_CHECKPOINT", help="only export this run's latest (or this) checkpoint to -o")
    p.add_argument("-o", "--export-to", help="output folder of --export")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.export:
            if not args.export_to:
                raise ConfigError("--export needs -o FOLDER")
            print(export_finetuned(args.export, args.export_to, overwrite=args.overwrite))
            return 0
        if not args.config:
            raise ConfigError("--config is required (or --export RUN -o FOLDER)")
        config = load_finetune_config(args.config, run_overrides(args))
        run_finetune(config, output_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite,
                     stop_after_steps=args.stop_after_steps)
    except (S1S2Error, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
