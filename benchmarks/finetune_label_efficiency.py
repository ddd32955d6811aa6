"""Label efficiency on synthetic data: does a pretrained encoder fine-tuned on 10 % of the labels
beat the same architecture trained from scratch on 10 % (and how close does it get to 100 %)?

Everything runs on CPU with the real code paths, on **synthetic** co-located S1/S2 scenes
(``training.data.synthetic``), so the numbers say that the pipeline transfers what pretraining
learned, not how the published models do on DFC2020:

1. pretraining: the encoder of the pretraining benchmark (``benchmarks/pretrain_learning.py``:
   a small two-tower ResNet-18 on synthetic scenes, :func:`training.pretrain.run_pretraining`),
   by default with the dense MMA objective at strides 8 and 16 (``--objective``), saved as a
   backbone folder (skipped with ``--backbone FOLDER``); the same encoder serves both tasks;
2. fine-tuning grid (:func:`training.evaluate.run_grid`, i.e. :func:`training.finetune.run_finetune`
   per cell): variants *from scratch* (same towers, random init), *SSL frozen* and *SSL fine-tuned*,
   label fractions 10 % and 100 %, several seeds, for single-label classification and for
   segmentation; training scenes and evaluation scenes are different synthetic scenes
   (``train_test`` protocol), evaluation on full scenes. Every run has the same recipe (steps,
   batch, learning rate, warmup + cosine); the arms differ only in the towers' initialisation
   (and frozen towers do not train). ``--backbone-lr`` gives pretrained towers their own rate.

``--phenology``, ``--moisture`` and ``--mixing-px`` switch on the generator's per-scene
variability (``training.data.synthetic``) for the pretraining and the fine-tuning scenes alike.

    python benchmarks/finetune_label_efficiency.py --threads 1       # ~30 min on 2 shared CPU cores
    python benchmarks/finetune_label_efficiency.py --json out.json --seeds 0,1,2
    python benchmarks/finetune_label_efficiency.py --phenology 0.35 --moisture 1 --mixing-px 0.7

Prints the label-efficiency table and one JSON object (also written with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from training.evaluate import run_grid  # noqa: E402

ROWS = [("finetuned", 0.1, "SSL fine-tuned, 10 %"), ("frozen", 0.1, "SSL frozen, 10 %"),
        ("scratch", 0.1, "from scratch, 10 %"), ("scratch", 1.0, "from scratch, 100 %"),
        ("finetuned", 1.0, "SSL fine-tuned, 100 %")]
METRICS = {
    "classification": [("average_accuracy", "AA"), ("overall_accuracy", "OA")],
    "segmentation": [("mean_class_pixel_accuracy", "mean class pixel acc."), ("miou", "mIoU")],
}


def pretraining_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The pretraining benchmark's recipe with this benchmark's objective, steps and scenes."""
    import pretrain_learning  # benchmarks/pretrain_learning.py

    pretrain_args = pretrain_learning.build_parser().parse_args(
        ["--arch", args.arch, "--steps", str(args.pretrain_steps), "--threads", str(args.threads), "--workers", "0",
         "--objective", args.objective, "--mma-strides", args.mma_strides, "--phenology", str(args.phenology),
         "--moisture", str(args.moisture), "--mixing-px", str(args.mixing_px)]
    )
    return pretrain_learning.recipe(pretrain_args)


def pretrain_backbone(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Pretrain with the pretraining benchmark's recipe and save the backbone folder."""
    from training.checkpoints import load_training_checkpoint, seed_everything
    from training.config import from_dict
    from training.pretrain import PretrainConfig, build_model, run_pretraining

    config = from_dict(PretrainConfig, pretraining_recipe(args), where="pretraining benchmark recipe")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = run_pretraining(config, output_dir=run_dir)
        seed_everything(0)
        model = build_model(config)
        model.load_state_dict(load_training_checkpoint(run_dir)["model"])
    backbone = model.backbone
    backbone.config = config.model_config()
    backbone.save_pretrained(folder, overwrite=True)
    return {"steps": result.step, "seconds": round(time.perf_counter() - started, 1), "final_loss": result.metrics.get("loss"),
            "objective": config.objective.kind, "mma_strides": list(config.objective.mma_strides),
            "architecture": args.arch, "tower_kwargs": config.model.tower_kwargs,
            "parameters": sum(p.numel() for p in backbone.parameters())}


def finetune_recipe(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The base fine-tuning recipe of a grid (the grid sets init, freezing, fraction and seed)."""
    model: dict[str, Any] = {"task": task, "init": "pretrained", "backbone": None, "backbone_lr": args.backbone_lr}
    if task == "segmentation":
        model["decoder"] = {"channels": [32, 16, 16]}
    import pretrain_learning  # benchmarks/pretrain_learning.py

    scenes = {"size": args.scene_size, "n_classes": 8, **pretrain_learning.scene_variability(args)}
    return {
        "recipe": {"name": f"label-efficiency-{task}", "description": "synthetic label-efficiency benchmark"},
        "model": model,
        "labels": {"source": "label_map"},
        "split": {"protocol": "train_test", "fraction_seed": 42},
        "data": {"crop_size": args.crop, "datasets": [{"kind": "synthetic", "n_samples": args.train_scenes, "seed": 11, **scenes}]},
        "eval_data": {"datasets": [{"kind": "synthetic", "n_samples": args.eval_scenes, "seed": 12, **scenes}]},
        "eval": {"crop": "none", "batch_size": 64},
        "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": 0.01},
        "schedule": {"kind": "warmup_cosine", "warmup_steps": max(1, args.finetune_steps // 20), "min_factor": 0.05},
        "train": {"batch_size": args.batch_size, "max_steps": args.finetune_steps, "device": "cpu", "precision": "fp32",
                  "log_every": max(1, args.finetune_steps // 4), "checkpoint_every": args.finetune_steps,
                  "keep_checkpoints": 1, "num_workers": 0, "progress_bar": False, "output_dir": "unused"},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="label-efficiency-"))
    backbone = Path(args.backbone) if args.backbone else work / f"backbone-{args.objective}"
    pretraining = None if args.backbone else pretrain_backbone(args, backbone)
    report: dict[str, Any] = {"data": "synthetic co-located S1/S2 scenes (training.data.synthetic), not DFC2020",
                              "pretraining": pretraining, "backbone": str(backbone), "seeds": seeds, "tasks": {}}
    for task in args.tasks.split(","):
        started = time.perf_counter()
        tables = run_grid(finetune_recipe(args, task), variants=["scratch", "frozen", "finetuned"], fractions=[0.1, 1.0],
                          seeds=seeds, output_dir=work / task, backbone=str(backbone))
        rows = []
        for variant, fraction, label in ROWS:
            row = next(r for r in tables["rows"] if r["variant"] == variant and r["label_fraction"] == fraction)
            rows.append({"row": label, "variant": variant, "label_fraction": fraction, "n_labelled": row["n_labelled"],
                         **{key: row["metrics"][key] for key, _ in METRICS[task]}})
        report["tasks"][task] = {"rows": rows, "grid": str(work / task), "seconds": round(time.perf_counter() - started, 1)}
    report["setup"] = {k: getattr(args, k) for k in ("objective", "mma_strides", "pretrain_steps", "finetune_steps", "batch_size", "lr",
                                                     "backbone_lr", "crop", "scene_size", "train_scenes", "eval_scenes",
                                                     "phenology", "moisture", "mixing_px", "threads")}
    report["claims"] = claims(report)
    return report


def claims(report: dict[str, Any]) -> dict[str, Any]:
    """SSL fine-tuned 10 % vs scratch 10 % (and vs scratch 100 %) on the headline metric."""
    out = {}
    for task, entry in report["tasks"].items():
        key = METRICS[task][0][0]
        by = {r["row"]: r[key]["mean"] for r in entry["rows"]}
        out[task] = {
            "metric": key,
            "ssl_10_beats_scratch_10": by["SSL fine-tuned, 10 %"] > by["from scratch, 10 %"],
            "ssl_10_minus_scratch_10": by["SSL fine-tuned, 10 %"] - by["from scratch, 10 %"],
            "ssl_10_minus_scratch_100": by["SSL fine-tuned, 10 %"] - by["from scratch, 100 %"],
        }
    return out


def _fmt(stat: dict[str, Any]) -> str:
    return f"{100 * stat['mean']:5.1f} ± {100 * stat['std']:4.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    lines = []
    for task, entry in report["tasks"].items():
        (k1, l1), (k2, l2) = METRICS[task]
        lines += [f"**{task}** (synthetic scenes, {len(report['seeds'])} seeds, % mean ± std)", "",
                  f"| model | labels | {l1} | {l2} |", "|---|---|---|---|"]
        for r in entry["rows"]:
            lines.append(f"| {r['row'].split(',')[0]} | {100 * r['label_fraction']:g} % ({r['n_labelled']}) | {_fmt(r[k1])} | {_fmt(r[k2])} |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["resnet18", "swin-t"], default="resnet18")
    p.add_argument("--backbone", help="use this pretrained backbone folder instead of pretraining one")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--objective", choices=["dual_simclr", "mma", "dual_simclr_mma"], default="mma",
                   help="pretraining objective (benchmarks/pretrain_learning.py --objective)")
    p.add_argument("--mma-strides", default="8,16", help="strides of the dense loss (mma, dual_simclr_mma)")
    p.add_argument("--finetune-steps", type=int, default=400,
                   help="steps of every fine-tuning run (120 left segmentation models at ~76 %% training accuracy)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="head / from-scratch learning rate")
    p.add_argument("--backbone-lr", type=float, default=None,
                   help="pretrained towers' learning rate when fine-tuned (default: --lr, the recipe of the from-scratch runs)")
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--scene-size", type=int, default=64, help="synthetic scene side; a multiple of 32, so evaluation on full scenes needs no padding")
    p.add_argument("--train-scenes", type=int, default=400)
    p.add_argument("--eval-scenes", type=int, default=200)
    import pretrain_learning  # benchmarks/pretrain_learning.py

    pretrain_learning.add_scene_variability_arguments(p)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tasks", default="classification,segmentation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work-dir", help="keep the backbone and run folders here (default: a temporary folder)")
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    print(markdown_table(report))
    print(json.dumps(report["claims"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
