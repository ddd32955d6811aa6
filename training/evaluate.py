"""Evaluation grids: model variants x label fractions x seeds -> paper-style tables (markdown + JSON).

::

    python -m training.evaluate --config training/configs/finetune/dfc2020_cls_resnet18.yaml \\
        --backbone runs/pretrain/export --variants scratch,frozen,finetuned \\
        --fractions 0.01,0.1,0.5,1 --seeds 0,1,2 --output-dir runs/grid

Every cell is one :func:`training.finetune.run_finetune` run in ``<output>/<variant>/fraction_<f>/seed_<s>``;
cells that already have a ``results.json`` from the same recipe are reused, so an interrupted grid
continues where it stopped. Variants:

``scratch``     the backbone's architecture (towers, normalisation) trained from random weights;
``frozen``      the pretrained backbone frozen (linear probe / frozen-encoder segmentation);
``finetuned``   the pretrained backbone fine-tuned (``model.backbone_lr`` if the recipe sets one);
``scratch-s1``, ``scratch-s2``, ``scratch-early``, ``scratch-late``
                the ISPRS supervised baselines (S1 only, S2 only, early fusion on 15 channels,
                late fusion = two towers from scratch).

The label fraction is drawn with the recipe's fixed ``split.fraction_seed`` (the same subset for
every seed); the seeds change the head initialisation (and the towers' for scratch variants), the
data order and the training randomness. Tables report mean ± sample standard deviation (ddof = 1)
over seeds in percent, in the form of the papers' tables (reference_facts.md §5):

* single-label: per-class accuracy, Average (AA), OA;
* multi-label: per-class F1, Average (macro F1), O-F1 (micro F1);
* segmentation: per-class pixel accuracy, mean class pixel accuracy (the CVPRW "average pixel-wise
  accuracy"), pixel accuracy, mIoU;

plus a label-fraction table of the headline metric. Every row says its protocol and data.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from s1s2_encoders.checkpoint import read_config
from s1s2_encoders.durable import atomic_write_text
from s1s2_encoders.errors import ConfigError, S1S2Error
from s1s2_encoders.hub import resolve_model

from .config import apply_overrides, from_dict, load_yaml, to_dict
from .distributed import init_distributed, shutdown_distributed
from .finetune import RESULTS_FILE, FinetuneConfig, run_finetune
from .metrics import json_safe

VARIANTS: dict[str, dict[str, Any]] = {
    "scratch": {"model.init": "scratch", "model.freeze_backbone": False},
    "frozen": {"model.init": "pretrained", "model.freeze_backbone": True, "model.backbone_lr": None},
    "finetuned": {"model.init": "pretrained", "model.freeze_backbone": False},
    "scratch-late": {"model.init": "scratch", "model.freeze_backbone": False, "model.fusion": "late"},
    "scratch-early": {"model.init": "scratch", "model.freeze_backbone": False, "model.fusion": "early"},
    "scratch-s1": {"model.init": "scratch", "model.freeze_backbone": False, "model.fusion": "s1"},
    "scratch-s2": {"model.init": "scratch", "model.freeze_backbone": False, "model.fusion": "s2"},
}
VARIANT_LABELS = {
    "scratch": "from scratch", "frozen": "SSL frozen", "finetuned": "SSL fine-tuned", "scratch-late": "LateFusion",
    "scratch-early": "EarlyFusion", "scratch-s1": "OnlySen-1", "scratch-s2": "OnlySen-2",
}
HEADLINE = {
    "single_label": ("average_accuracy", "Average accuracy (AA)"),
    "multi_label": ("average_f1", "Average F1"),
    "segmentation": ("mean_class_pixel_accuracy", "Mean class pixel accuracy"),
}
SUMMARY_COLUMNS = {
    "single_label": [("average_accuracy", "Average"), ("overall_accuracy", "OA")],
    "multi_label": [("average_f1", "Average"), ("micro_f1", "O-F1")],
    "segmentation": [("mean_class_pixel_accuracy", "Avg. pixel acc."), ("pixel_accuracy", "Pixel acc."), ("miou", "mIoU")],
}
PER_CLASS = {"single_label": "per_class_accuracy", "multi_label": "per_class_f1", "segmentation": "per_class_accuracy"}


def variant_overrides(variant: str, backbone: str | None) -> dict[str, Any]:
    """Recipe values a variant sets. Scratch variants copy the backbone's towers and normalisation
    (so that "scratch" is the same architecture), pretrained ones point at it."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    values = dict(VARIANTS[variant])
    if values["model.init"] == "pretrained":
        if not backbone:
            raise ConfigError(f"variant {variant!r} needs a pretrained backbone (--backbone or model.backbone)")
        values["model.backbone"] = backbone
    elif backbone:
        config = read_config(resolve_model(backbone).folder)
        values.update({
            "model.architecture": config.architecture, "model.tower_kwargs": dict(config.tower_kwargs),
            "model.normalization": config.normalization.to_dict(), "model.input_size": config.input_size,
            "model.backbone": None, "model.backbone_lr": None,
        })
    return values


def cell_config(base: dict[str, Any], variant: str, fraction: float, seed: int, backbone: str | None, run_dir: Path) -> FinetuneConfig:
    """The recipe of one grid cell."""
    data = json.loads(json.dumps(base))  # deep copy of plain data
    values = {**variant_overrides(variant, backbone), "split.label_fraction": fraction, "train.seed": seed,
              "train.output_dir": str(run_dir)}
    for key, value in values.items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    data.setdefault("recipe", {})["name"] = f"{data.get('recipe', {}).get('name', 'grid')}/{variant}/f{fraction:g}/s{seed}"
    return from_dict(FinetuneConfig, data, where="grid cell")


def _reusable(run_dir: Path, config: FinetuneConfig) -> dict[str, Any] | None:
    """The cell's earlier result if it was produced by exactly this recipe."""
    results = run_dir / RESULTS_FILE
    saved = run_dir / "config.yaml"
    if not (results.is_file() and saved.is_file()):
        return None
    import yaml

    if yaml.safe_load(saved.read_text(encoding="utf-8")) != json.loads(json.dumps(to_dict(config))):
        return None
    return json.loads(results.read_text(encoding="utf-8"))


def run_grid(
    base: dict[str, Any],
    *,
    variants: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
    output_dir: str | Path,
    backbone: str | None = None,
) -> dict[str, Any]:
    """Run (or reuse) every cell and write ``results.json`` and ``results.md`` into ``output_dir``.

    Args:
        base: the recipe as plain data (``--set`` overrides applied).
        variants / fractions / seeds: the grid.
        output_dir: grid folder.
        backbone: pretrained backbone (default: ``model.backbone`` of the recipe).

    Returns:
        The aggregated tables (what ``results.json`` holds).
    """
    output_dir = Path(output_dir)
    backbone = backbone or base.get("model", {}).get("backbone")
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ConfigError(f"label fractions must be in (0, 1], got {fraction}")
    cells = [(v, f, s) for v in variants for f in fractions for s in seeds]
    configs = {c: cell_config(base, c[0], c[1], c[2], backbone, output_dir / c[0] / f"fraction_{c[1]:g}" / f"seed_{c[2]}") for c in cells}
    dist = init_distributed(next(iter(configs.values())).train.device)
    records: dict[tuple[str, float, int], dict[str, Any]] = {}
    try:
        for cell, config in configs.items():
            run_dir = Path(config.train.output_dir)
            previous = _reusable(run_dir, config)
            if previous is not None:
                records[cell] = previous
                if dist.is_main:
                    print(f"[grid] reuse {run_dir}", flush=True)
                continue
            if dist.is_main:
                print(f"[grid] run {cell[0]} fraction {cell[1]:g} seed {cell[2]} -> {run_dir}", flush=True)
            result = run_finetune(config, overwrite=True, dist=dist)
            # the same plain data as a reused results.json (NaN -> null), so both aggregate alike
            records[cell] = json.loads(json.dumps(json_safe(result.results)))
    finally:
        shutdown_distributed()
    tables = aggregate(records, variants, fractions, seeds)
    if dist.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "results.json", json.dumps(json_safe(tables), indent=2, allow_nan=False) + "\n")
        atomic_write_text(output_dir / "results.md", render_markdown(tables))
    return tables


# ---------------------------------------------------------------------------------------- tables
def _stats(values: Sequence[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0, "values": list(values)}
    array = np.array(finite, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": len(array), "values": list(values)}


def _setting(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "protocol": record["protocol"], "train_data": record["train_data"], "eval_data": record["eval_data"],
        "eval_crop": record["eval_crop"], "fraction_seed": record["fraction_seed"],
        "balanced_oversampling": record["balanced_oversampling"],
    }


def _short_data(entries: Any) -> str:
    if isinstance(entries, str):
        return entries
    parts = []
    for e in entries:
        label = e.get("kind", "?")
        if e.get("split"):
            label += f" {e['split']}"
        if e.get("n_samples"):
            label += f" ({e['n_samples']})"
        parts.append(label)
    return " + ".join(parts)


def aggregate(records: dict[tuple[str, float, int], dict[str, Any]], variants: Sequence[str], fractions: Sequence[float],
              seeds: Sequence[int]) -> dict[str, Any]:
    """Mean ± std over seeds of every metric, per (variant, fraction)."""
    first = next(iter(records.values()))
    task = first["metrics"]["task"]
    class_names = list(first["metrics"][PER_CLASS[task]])
    rows = []
    for variant in variants:
        for fraction in fractions:
            cell = [records[(variant, fraction, s)] for s in seeds]
            metrics = {key: _stats([r["metrics"][key] for r in cell]) for key, _ in SUMMARY_COLUMNS[task]}
            per_class = {
                name: _stats([r["metrics"][PER_CLASS[task]][name] for r in cell]) for name in class_names
            }
            rows.append({
                "variant": variant, "label": VARIANT_LABELS.get(variant, variant), "label_fraction": fraction,
                "seeds": list(seeds), "setting": _setting(cell[0]), "model": cell[0]["model"],
                "n_labelled": cell[0]["n_labelled"], "n_eval_samples": cell[0]["n_eval_samples"],
                "metrics": metrics, "per_class": per_class,
            })
    return {"task": task, "class_names": class_names, "headline": HEADLINE[task][0], "std": "sample standard deviation (ddof=1) over seeds",
            "fractions": list(fractions), "variants": list(variants), "rows": rows}


def _pct(stat: dict[str, Any]) -> str:
    if stat["n"] == 0 or not math.isfinite(stat["mean"]):
        return "n/a"
    if stat["n"] == 1:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def render_markdown(tables: dict[str, Any]) -> str:
    """Paper-style tables: per-class at each label fraction, then the label-fraction table."""
    task = tables["task"]
    names = tables["class_names"]
    columns = SUMMARY_COLUMNS[task]
    per_class_label = {"single_label": "accuracy", "multi_label": "F1", "segmentation": "pixel accuracy"}[task]
    lines = [f"# {task.replace('_', '-')} results", "",
             f"Values in %, mean ± {tables['std']}; per-class columns are {per_class_label}. "
             "`n/a`: the class does not occur in the evaluation data.", ""]
    for fraction in tables["fractions"]:
        rows = [r for r in tables["rows"] if r["label_fraction"] == fraction]
        lines += [f"## {100 * fraction:g} % of the training labels", ""]
        header = ["model", *names, *(label for _, label in columns), "protocol / data"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            s = r["setting"]
            where = f"{s['protocol']}: {_short_data(s['train_data'])} -> {_short_data(s['eval_data'])}, {r['n_labelled']} labelled, {len(r['seeds'])} seeds"
            cells = [r["label"], *(_pct(r["per_class"][n]) for n in names), *(f"**{_pct(r['metrics'][k])}**" for k, _ in columns), where]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    key, title = HEADLINE[task]
    lines += [f"## {title} by label fraction", ""]
    header = ["model", *(f"{100 * f:g} %" for f in tables["fractions"]), "protocol / data"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in tables["variants"]:
        rows = [r for r in tables["rows"] if r["variant"] == variant]
        s = rows[0]["setting"]
        where = f"{s['protocol']}: {_short_data(s['train_data'])} -> {_short_data(s['eval_data'])}"
        lines.append("| " + " | ".join([rows[0]["label"], *(_pct(r["metrics"][key]) for r in rows), where]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- CLI
def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="fine-tuning recipe YAML (the grid's base)")
    p.add_argument("--backbone", help="pretrained backbone folder / name (default: model.backbone of the recipe)")
    p.add_argument("--variants", default="scratch,frozen,finetuned", help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--fractions", default="0.01,0.1,0.5,1", help="label fractions, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="run seeds, comma-separated")
    p.add_argument("--output-dir", required=True, help="grid folder (one run folder per cell, results.json, results.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a recipe value for every cell (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        base = apply_overrides(load_yaml(args.config), args.overrides)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        tables = run_grid(base, variants=variants, fractions=_floats(args.fractions), seeds=_ints(args.seeds),
                          output_dir=args.output_dir, backbone=args.backbone)
        print(render_markdown(tables))
    except (S1S2Error, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
