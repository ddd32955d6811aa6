"""Contrastive pretraining of S1 + S2 backbones (Dual-SimCLR, SimCLR, MMA), one CPU to many GPUs.

::

    python -m training.pretrain --config training/configs/tiny.yaml
    torchrun --nproc_per_node=8 -m training.pretrain --config training/configs/dual_simclr_swin_t.yaml
    python -m training.pretrain --config ... --resume            # continue the latest checkpoint
    python -m training.pretrain --config ... --set optimizer.lr=1e-4 --set train.max_steps=100

A run folder (``train.output_dir`` or ``--output-dir``) receives ``config.yaml`` (the resolved
recipe), ``log.jsonl`` and ``checkpoints/step_*.pt``. ``python -m training.export RUN -o FOLDER``
turns the latest checkpoint into a hub folder that ``s1s2_encoders.load_backbone`` loads.
"""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from s1s2_encoders import ModelConfig
from s1s2_encoders.errors import ConfigError, S1S2Error
from s1s2_encoders.models import create_backbone
from s1s2_encoders.preprocess import Normalization

from .checkpoints import seed_everything
from .config import dump_yaml, load_config, to_dict
from .contrastive import ContrastivePretrainModel, ObjectiveConfig, contrastive_step
from .data import DataConfig, ViewDataset, build_dataset, collate_samples
from .data.augment import AugmentConfig
from .distributed import barrier, init_distributed, shutdown_distributed
from .optim import OptimizerConfig, ScheduleConfig
from .recipe import RecipeInfo, add_run_arguments, build_normalization, run_overrides
from .trainer import FitResult, LoopConfig, Trainer, clear_run_dir

TRAINING_ONLY_TOWER_KWARGS = ("drop_path_rate", "drop_rate", "attn_drop_rate", "proj_drop_rate")
"""timm arguments that change training (regularisation) but not the weights' layout; export drops them."""
PRETRAIN_FIELDS = ("s1", "s2", "valid", "s1_view2", "s2_view2", "valid_view2", "index", "n_nan_replaced")
"""Sample fields pretraining uses (label maps of labelled datasets are dropped from its batches)."""


@dataclass
class ModelSection:
    """The ``model`` section.

    Attributes:
        architecture: ``swin-t``, ``resnet18`` or ``resnet50``.
        tower_kwargs: extra timm arguments (smaller towers for tests, ``drop_path_rate``).
        normalization: ``sslt_channel_max`` (published, per-sample max), ``fixed_clip_scale``
            (content-independent clip to [0, 1]) or a full mapping ``{kind: fixed, s1: {clip, mean,
            std}, s2: {...}}`` as in ``config.json``.
        input_size: crop size recorded in the exported config (default: the data crop size).
        name: exported model name (default: the recipe name).
        license: licence identifier of the exported weights.
    """

    architecture: str = "swin-t"
    tower_kwargs: dict[str, Any] = field(default_factory=dict)
    normalization: Any = "fixed_clip_scale"
    input_size: int | None = None
    name: str | None = None
    license: str | None = None

    def build_normalization(self) -> Normalization:
        return build_normalization(self.normalization)


@dataclass
class PretrainConfig:
    """A pretraining recipe (one YAML file)."""

    recipe: RecipeInfo
    model: ModelSection
    objective: ObjectiveConfig
    data: DataConfig
    optimizer: OptimizerConfig
    schedule: ScheduleConfig
    train: LoopConfig

    def __post_init__(self) -> None:
        uses_mask = self.data.nan_policy == "mask" or any(d.get("nan_policy") == "mask" for d in self.data.datasets)
        if self.objective.kind in ("mma", "dual_simclr_mma") and uses_mask:
            raise ConfigError(f"{self.objective.kind} needs complete dense maps: use data.nan_policy: skip")
        self.model.build_normalization()

    @property
    def crop_size(self) -> int | None:
        return self.data.crop_size or self.model.input_size

    def model_config(self) -> ModelConfig:
        """The exported model's config (normalisation, crop size, provenance)."""
        input_size = self.model.input_size or self.data.crop_size
        if input_size is None:
            raise ConfigError("set data.crop_size (or model.input_size)")
        return ModelConfig(
            architecture=self.model.architecture,
            tower_kwargs=dict(self.model.tower_kwargs),
            normalization=self.model.build_normalization(),
            input_size=input_size,
            name=self.model.name or self.recipe.name,
            license=self.model.license,
            provenance={"recipe": self.recipe.name, "objective": self.objective.kind},
        )


def load_pretrain_config(path: str | Path, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read a recipe with ``section.key=value`` overrides; strict (see :mod:`training.config`)."""
    return load_config(PretrainConfig, path, overrides)


def build_model(config: PretrainConfig) -> ContrastivePretrainModel:
    """Backbone (random init, seeded by the caller) + heads."""
    return ContrastivePretrainModel(create_backbone(config.model_config()), config.objective)


def build_training_dataset(config: PretrainConfig) -> torch.utils.data.Dataset:
    """The concatenated datasets, wrapped in augmented views where the objective needs them."""
    dataset = build_dataset(config.data, default_crop_size=config.crop_size)
    if config.objective.kind == "simclr":
        return ViewDataset(dataset, config.data.augment or AugmentConfig(), views=2)
    if config.data.augment is not None:
        return ViewDataset(dataset, config.data.augment, views=1)
    return dataset


def describe_data(config: PretrainConfig, dataset: torch.utils.data.Dataset) -> list[dict[str, Any]]:
    """Plain-data summary of the training data for checkpoints and model cards."""
    entries = []
    for entry in config.data.datasets:
        entries.append({k: v for k, v in entry.items() if k in ("kind", "root", "split", "split_csv", "repeat", "n_samples", "s2_offset", "seasons")})
    return entries + [{"total_samples": len(dataset), "crop_size": config.crop_size}]  # type: ignore[arg-type]


def run_pretraining(config: PretrainConfig, *, output_dir: str | Path | None = None, resume: str | None = None,
                    overwrite: bool = False, stop_after_steps: int | None = None) -> FitResult:
    """Pretrain as the recipe says; returns where the run ended (checkpoints in the run folder)."""
    dist = init_distributed(config.train.device)
    try:
        run_dir = Path(output_dir or config.train.output_dir)
        if overwrite and resume is None and dist.is_main:
            clear_run_dir(run_dir)
        barrier()
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(dump_yaml(config), encoding="utf-8")
        seed_everything(config.train.seed)  # identical initial weights on every rank
        model = build_model(config)
        dataset = build_training_dataset(config)
        model_config = config.model_config()
        trainer = Trainer(
            model=model, step_fn=contrastive_step(config.objective), dataset=dataset,
            loop=config.train, optimizer=config.optimizer, schedule=config.schedule, dist=dist, run_dir=run_dir,
            run_config=to_dict(config), collate_fn=functools.partial(collate_samples, keep=PRETRAIN_FIELDS),
            extra_state={"model_config": model_config.to_dict(), "data": describe_data(config, dataset), "kind": "pretrain"},
        )
        result = trainer.fit(resume=resume, stop_after_steps=stop_after_steps)
        if dist.is_main:
            state = "finished" if result.finished else "stopped"
            print(f"{state} at step {result.step}/{result.total_steps}; checkpoint {result.last_checkpoint}", flush=True)
            if result.finished:
                print(f"export it: python -m training.export {run_dir} -o {run_dir / 'export'}", flush=True)
        return result
    finally:
        shutdown_distributed()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="recipe YAML (training/configs/*.yaml)")
    add_run_arguments(p, overwrite_help="delete the run folder's checkpoints and log first", override_example="optimizer.lr=1e-4")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_pretrain_config(args.config, run_overrides(args))
        run_pretraining(config, output_dir=args.output_dir, resume=args.resume, overwrite=args.overwrite,
                        stop_after_steps=args.stop_after_steps)
    except (S1S2Error, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
