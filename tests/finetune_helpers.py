"""Small fine-tuning recipes for tests (tiny towers, synthetic or fake-DFC2020 data, a few steps),
and worker functions for the multi-process tests (importable by name for torch.multiprocessing)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


TINY_RESNET = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}
TINY_SWIN = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}


def recipe(output_dir: Path | str, **sections: Any) -> dict[str, Any]:
    """A tiny classification recipe on synthetic scenes (held-out protocol); ``sections`` are merged
    into the defaults one level deep (``model={"task": "segmentation"}`` keeps the other model keys)."""
    base: dict[str, Any] = {
        "recipe": {"name": "test-recipe"},
        "model": {"task": "classification", "init": "scratch", "architecture": "resnet18", "tower_kwargs": dict(TINY_RESNET)},
        "data": {"crop_size": 32, "datasets": [{"kind": "synthetic", "n_samples": 40, "size": 32}]},
        "labels": {"source": "label_map"},
        "split": {"protocol": "held_out", "held_out_fraction": 0.25},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "schedule": {"kind": "constant"},
        "train": {"batch_size": 8, "max_steps": 4, "log_every": 2, "checkpoint_every": 2, "num_workers": 0,
                  "progress_bar": False, "output_dir": str(output_dir), "device": "cpu"},
        "eval": {"batch_size": 16},
    }
    out = copy.deepcopy(base)
    for key, value in sections.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def config_from(data: dict[str, Any]):
    from training.config import from_dict
    from training.finetune import FinetuneConfig

    return from_dict(FinetuneConfig, copy.deepcopy(data))


def finetune_worker(rank: int, world: int, data: dict[str, Any]) -> None:
    """One process of a (possibly multi-process) fine-tuning run; the process group is already up."""
    from training.distributed import init_distributed
    from training.finetune import run_finetune

    run_finetune(config_from(data), dist=init_distributed("cpu"))
