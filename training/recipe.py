"""What every recipe shares: the ``recipe`` section, the normalisation names of the ``model``
section, the run options of the command lines that train a recipe, and the head of the model
card's training section."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from s1s2_encoders.errors import ConfigError
from s1s2_encoders.preprocess import Normalization, fixed_clip_scale, sslt_channel_max

NORMALIZATIONS: dict[str, Callable[[], Normalization]] = {
    "sslt_channel_max": sslt_channel_max,
    "fixed_clip_scale": fixed_clip_scale,
}


@dataclass
class RecipeInfo:
    """The ``recipe`` section: what this file is, for people and for the model card.

    Attributes:
        name: short identifier (also the default model name).
        description: one paragraph.
        faithful_to: the published code/paper the recipe reproduces (``null`` for our own recipes).
        differences: how and why it differs (from the published recipe, or for faithful recipes,
            the unavoidable deviations).
    """

    name: str
    description: str = ""
    faithful_to: str | None = None
    differences: list[str] = field(default_factory=list)


def build_normalization(spec: Any) -> Normalization:
    """The ``model.normalization`` entry: a name of :data:`NORMALIZATIONS` or a ``config.json`` mapping.

    Raises:
        ConfigError: an unknown name, or neither a name nor a mapping.
    """
    if isinstance(spec, str):
        if spec not in NORMALIZATIONS:
            raise ConfigError(f"model.normalization {spec!r} unknown; use {', '.join(NORMALIZATIONS)} or a mapping")
        return NORMALIZATIONS[spec]()
    if isinstance(spec, dict):
        return Normalization.from_dict(spec)
    raise ConfigError(f"model.normalization must be a name or a mapping, got {spec!r}")


def card_header(title: str, recipe: dict[str, Any], steps: int, total: int, follows: str) -> list[str]:
    """Markdown lines that open a model card's training section: the title, a warning for an
    unfinished run, the recipe, what it ``follows`` (e.g. ``"Reproduces"``) and its differences."""
    lines = ["", f"## {title}", ""]
    if steps < total:
        lines += [f"**Unfinished run: exported at step {steps} of {total}.**", ""]
    lines += [f"Recipe `{recipe.get('name')}`: {str(recipe.get('description', '')).strip()}", ""]
    if recipe.get("faithful_to"):
        lines += [f"{follows}: {recipe['faithful_to']}.", ""]
    if recipe.get("differences"):
        lines += ["Differences and why:", "", *[f"- {d}" for d in recipe["differences"]], ""]
    return lines


def add_run_arguments(p: argparse.ArgumentParser, overwrite_help: str, override_example: str) -> None:
    """The options of a training command line that say where and how long a recipe runs."""
    p.add_argument("--output-dir", help="run folder (default: train.output_dir of the recipe)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from the latest checkpoint of the run folder, or from the given checkpoint file")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help=f"override a recipe value (repeatable), e.g. --set {override_example}")
    p.add_argument("--max-steps", type=int, help="run length in steps (replaces train.epochs)")
    p.add_argument("--stop-after-steps", type=int,
                   help="stop (with a checkpoint) after this many steps in this invocation; the schedule still spans the whole run")
    p.add_argument("--device", help="auto, cpu or cuda (default: train.device)")
    p.add_argument("--num-workers", type=int, help="DataLoader workers per process (default: train.num_workers)")


def run_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` values plus those that :func:`add_run_arguments`' shortcuts stand for.

    Raises:
        ConfigError: ``--resume`` together with ``--overwrite``.
    """
    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other")
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides += [f"train.max_steps={args.max_steps}", "train.epochs=null"]
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.num_workers is not None:
        overrides.append(f"train.num_workers={args.num_workers}")
    return overrides
