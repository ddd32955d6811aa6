"""Evidence that pretraining learns: contrastive pretraining on synthetic co-located scenes vs random init.

A small dual encoder is pretrained with the real training code (``training.pretrain`` recipe
machinery, Trainer, the objective's loss) on synthetic S1/S2 scenes (``training.data.synthetic``)
for a few minutes of CPU. The objective is Dual-SimCLR on the pooled embeddings (default), MMA on
the dense maps at ``--mma-strides`` (per-pixel alignment, for segmentation), or both added.
Then, on *held-out* scenes, its frozen backbone features and those of the *same encoder randomly
initialised* are compared on:

* linear-probe accuracy of the scene's majority land-cover class (pooled S1+S2 embedding, and S1 alone),
* a per-cell linear probe on the stride-8 maps (S1+S2 concatenated; the class of every cell that
  holds a single class), i.e. what a segmentation decoder gets from the encoder,
* cross-modal retrieval: each S1 embedding queries the S2 embeddings of all held-out scenes;
  top-1 = fraction that retrieves its own partner (chance = 1 / gallery size). Retrieval uses the
  space the image-level loss aligns (the projection head's output when the recipe has one, else
  the pooled backbone embedding); the probes use the backbone features, which are what is exported.

    python benchmarks/pretrain_learning.py                      # a few minutes on 2 CPU cores
    python benchmarks/pretrain_learning.py --steps 60 --json out.json
    python benchmarks/pretrain_learning.py --objective mma --mma-strides 8,16 --steps 300

Prints a table and one JSON object (also written with ``--json``).
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
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.checkpoints import seed_everything  # noqa: E402
from training.config import from_dict  # noqa: E402
from training.data.synthetic import SyntheticOptions, SyntheticPairsDataset  # noqa: E402
from training.embedding_eval import cross_modal_retrieval, linear_probe_accuracy  # noqa: E402
from training.pretrain import PretrainConfig, build_model, run_pretraining  # noqa: E402
from training.sampling import SampleKey  # noqa: E402

TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16}
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 2, 4], "drop_path_rate": 0.0}


def scene_variability(args: argparse.Namespace) -> dict[str, float]:
    """The synthetic generator's per-scene variability options (``training.data.synthetic``)."""
    return {"phenology": args.phenology, "moisture": args.moisture, "mixing_px": args.mixing_px}


def add_scene_variability_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phenology", type=float, default=0.0, help="synthetic scenes: spread of the vegetation state (0: off)")
    p.add_argument("--moisture", type=float, default=0.0, help="synthetic scenes: per-scene soil moisture strength (0: off)")
    p.add_argument("--mixing-px", type=float, default=0.0, help="synthetic scenes: boundary mixing footprint, px (0: off)")


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The pretraining recipe of the benchmark (our Dual-SimCLR recipe, scaled down)."""
    return {
        "recipe": {"name": f"benchmark-{args.objective.replace('_', '-')}", "description": "learning benchmark on synthetic scenes"},
        "model": {
            "architecture": args.arch,
            "tower_kwargs": TINY_RESNET if args.arch == "resnet18" else TINY_SWIN,
            "normalization": "fixed_clip_scale",
        },
        "objective": {
            "kind": args.objective, "temperature": args.temperature,
            "mma_strides": [int(s) for s in args.mma_strides.split(",")],
            "projection": {"kind": args.projection, "out_dim": 64, "batch_norm": args.projection == "mlp"},
        },
        "data": {
            "crop_size": args.crop,
            "datasets": [{"kind": "synthetic", "n_samples": args.train_scenes, "size": args.scene_size, "seed": 1, "n_classes": args.classes,
                          **scene_variability(args)}],
        },
        "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": 0.05, "grad_clip_norm": 1.0},
        "schedule": {"kind": "warmup_cosine", "warmup_steps": max(1, args.steps // 20), "min_factor": 0.05},
        "train": {
            "batch_size": args.batch_size, "max_steps": args.steps, "seed": args.seed, "device": "cpu", "precision": "fp32",
            "log_every": max(1, args.steps // 10), "checkpoint_every": args.steps, "num_workers": args.workers,
            "progress_bar": False, "output_dir": "unused",
        },
    }


@torch.no_grad()
def dense_cells(model, dataset: SyntheticPairsDataset, stride: int = 8, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell features of the stride-``stride`` pyramid level (S1 and S2 maps concatenated,
    ``(N, C_s1 + C_s2)``) and the class of each cell ``(N,)``, for the *pure* cells of every scene
    (one class in all ``stride x stride`` pixels), which is what a segmentation decoder reads."""
    from s1s2_encoders.models.towers import PYRAMID_STRIDES

    model.eval()
    level = PYRAMID_STRIDES.index(stride)
    features, classes = [], []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[SampleKey(i, 0)] for i in range(start, min(start + batch_size, len(dataset)))]
        maps = torch.cat([model.backbone.encode(m, torch.stack([s[m] for s in samples]), dense=True).pyramid[level]
                          for m in ("s1", "s2")], dim=1)
        labels = torch.stack([s["label_map"] for s in samples])
        b, h, w = labels.shape
        blocks = labels.reshape(b, h // stride, stride, w // stride, stride).permute(0, 1, 3, 2, 4).flatten(3)
        pure = (blocks == blocks[..., :1]).all(-1)
        features.append(maps.permute(0, 2, 3, 1)[pure])
        classes.append(blocks[..., 0][pure])
    return torch.cat(features), torch.cat(classes)


@torch.no_grad()
def embed_scenes(model, dataset: SyntheticPairsDataset, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per scene (full scene, no crop): pooled backbone embeddings ``s1``, ``s2`` (what is exported),
    their projections ``z_s1``, ``z_s2`` (the space the loss aligned; = pooled without a head) and
    the majority ``label``."""
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"s1": [], "s2": [], "z_s1": [], "z_s2": [], "label": []}
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[SampleKey(i, 0)] for i in range(start, min(start + batch_size, len(dataset)))]
        for m in ("s1", "s2"):
            pooled = model.backbone.encode(m, torch.stack([s[m] for s in samples])).pooled
            out[m].append(pooled)
            out[f"z_{m}"].append(model._project(m, pooled))
        out["label"].append(torch.stack([s["label"] for s in samples]))
    return {k: torch.cat(v) for k, v in out.items()}


def evaluate(model, probe_train: SyntheticPairsDataset, probe_test: SyntheticPairsDataset) -> dict[str, float]:
    train, test = embed_scenes(model, probe_train), embed_scenes(model, probe_test)
    both = lambda e: torch.cat([e["s1"], e["s2"]], 1)  # noqa: E731
    retrieval = cross_modal_retrieval(test["z_s1"], test["z_s2"])
    dense_train, dense_test = dense_cells(model, probe_train), dense_cells(model, probe_test)
    return {
        "probe_accuracy_s1_s2": linear_probe_accuracy(both(train), train["label"], both(test), test["label"]),
        "dense_probe_accuracy_stride8": linear_probe_accuracy(*dense_train, *dense_test),
        "probe_accuracy_s1_only": linear_probe_accuracy(train["s1"], train["label"], test["s1"], test["label"]),
        "retrieval_top1_s1_to_s2": retrieval.top1,
        "retrieval_top5_s1_to_s2": retrieval.top5,
        "retrieval_chance_top1": retrieval.chance_top1,
        "gallery_size": retrieval.gallery_size,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    config = from_dict(PretrainConfig, recipe(args), where="benchmark")
    held_out = dict(size=args.scene_size, n_classes=args.classes, crop="none", crop_size=None, **scene_variability(args))
    probe_train = SyntheticPairsDataset(SyntheticOptions(n_samples=args.probe_scenes, seed=2, **held_out))
    probe_test = SyntheticPairsDataset(SyntheticOptions(n_samples=args.probe_scenes, seed=3, **held_out))

    seed_everything(args.seed)
    random_model = build_model(config)  # the same initialisation the pretraining run starts from
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = run_pretraining(config, output_dir=run_dir)
        from training.checkpoints import load_training_checkpoint

        state = load_training_checkpoint(run_dir)
        pretrained = build_model(config)
        pretrained.load_state_dict(state["model"])
    train_seconds = time.perf_counter() - started
    before, after = evaluate(random_model, probe_train, probe_test), evaluate(pretrained, probe_train, probe_test)
    return {
        "setup": {
            "objective": args.objective, "mma_strides": args.mma_strides, "architecture": args.arch,
            "tower_kwargs": config.model.tower_kwargs, "scene_variability": scene_variability(args),
            "parameters": sum(p.numel() for p in pretrained.backbone.parameters()),
            "steps": result.step, "batch_size": args.batch_size, "crop": args.crop, "train_scenes": args.train_scenes,
            "probe_scenes_train": args.probe_scenes, "probe_scenes_test": args.probe_scenes, "classes": args.classes,
            "pretrain_seconds": round(train_seconds, 1), "final_loss": result.metrics.get("loss"),
            "final_batch_top1": result.metrics.get("top1"), "threads": args.threads,
        },
        "random_init": before,
        "pretrained": after,
    }


def print_table(report: dict[str, Any]) -> None:
    s, r, p = report["setup"], report["random_init"], report["pretrained"]
    print(f"{s['objective']} on synthetic scenes: {s['architecture']} ({s['parameters'] / 1e6:.2f} M params), "
          f"{s['steps']} steps x batch {s['batch_size']} ({s['crop']} px crops), {s['pretrain_seconds']:.0f} s on {s['threads']} threads")
    print(f"{'metric (held-out scenes)':<40} {'random init':>12} {'pretrained':>12}")
    for key, label in [
        ("probe_accuracy_s1_s2", f"linear probe, majority class ({s['classes']}), S1+S2"),
        ("probe_accuracy_s1_only", "linear probe, S1 only"),
        ("dense_probe_accuracy_stride8", "per-cell probe, stride-8 maps, S1+S2"),
        ("retrieval_top1_s1_to_s2", f"retrieval S1->S2 top-1 (chance {r['retrieval_chance_top1']:.4f})"),
        ("retrieval_top5_s1_to_s2", "retrieval S1->S2 top-5"),
    ]:
        print(f"{label:<40} {r[key]:>12.3f} {p[key]:>12.3f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["resnet18", "swin-t"], default="resnet18")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--scene-size", type=int, default=48)
    p.add_argument("--train-scenes", type=int, default=2048)
    p.add_argument("--probe-scenes", type=int, default=512)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--objective", choices=["dual_simclr", "mma", "dual_simclr_mma"], default="dual_simclr",
                   help="dual_simclr: pooled embeddings; mma: dense maps at --mma-strides; dual_simclr_mma: both losses added")
    p.add_argument("--mma-strides", default="8,16", help="pyramid strides aligned by the dense (MMA) loss, comma-separated")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--projection", choices=["none", "mlp"], default="none",
                   help="none: the loss on the pooled backbone embedding (evaluated as exported); mlp: Linear-BatchNorm-ReLU-Linear head")
    add_scene_variability_arguments(p)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    print_table(report)
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
