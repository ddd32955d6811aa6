"""Turn a training checkpoint into the hub folder that ``s1s2_encoders.load_backbone`` loads strictly
(fine-tuning checkpoints: the folder that ``load_model`` loads, via :func:`training.finetune.export_finetuned`).

::

    python -m training.export runs/tiny -o exported/tiny                 # latest checkpoint of a run
    python -m training.export runs/x/checkpoints/step_00001000.pt -o out --evidence report.json

The folder gets ``config.json`` (architecture, bands, the normalisation used in training, crop
size, provenance: recipe, objective, steps, data, source checkpoint sha256), ``model.safetensors``
(the backbone only: projection heads and optimizer state stay behind) and ``README.md``, a model
card stating the data, the recipe and how it differs from the published one, the steps trained
and the evidence (final training metrics, and a benchmark report given with ``--evidence``).
The written folder is loaded back with ``load_backbone`` before the command reports success.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from s1s2_encoders import ModelConfig, load_backbone
from s1s2_encoders.checkpoint import load_state_dict_strict, sha256_file, write_checkpoint
from s1s2_encoders.errors import CheckpointError, S1S2Error
from s1s2_encoders.model_card import render_model_card
from s1s2_encoders.models import create_backbone

from .checkpoints import load_training_checkpoint
from .recipe import card_header
from .pretrain import TRAINING_ONLY_TOWER_KWARGS

BACKBONE_PREFIX = "backbone."


def backbone_state_dict(model_state: dict[str, Any]) -> dict[str, Any]:
    """The ``backbone.*`` tensors of a training model's state dict, prefix removed."""
    out = {k[len(BACKBONE_PREFIX):]: v for k, v in model_state.items() if k.startswith(BACKBONE_PREFIX)}
    if not out:
        raise CheckpointError("the training checkpoint's model has no 'backbone.*' weights; is it a pretraining checkpoint?")
    return out


def exported_config(state: dict[str, Any], checkpoint_path: Path, name: str | None = None, license: str | None = None) -> ModelConfig:
    """The model config of the exported folder, with provenance filled in."""
    extra = state.get("extra", {})
    if "model_config" not in extra:
        raise CheckpointError(f"{checkpoint_path} does not record a model config (extra.model_config); cannot export it")
    config = ModelConfig.from_dict(dict(extra["model_config"]))
    tower_kwargs = {k: v for k, v in config.tower_kwargs.items() if k not in TRAINING_ONLY_TOWER_KWARGS}
    run = state.get("config", {})
    recipe = run.get("recipe", {})
    provenance = {
        **config.provenance,
        "trained_with": "s1s2-encoders training/ (python -m training.pretrain)",
        "recipe": recipe.get("name"),
        "faithful_to": recipe.get("faithful_to"),
        "objective": run.get("objective", {}).get("kind"),
        "steps": int(state["step"]),
        "total_steps": int(state.get("total_steps", state["step"])),
        "global_batch_size": state.get("data", {}).get("global_batch_size"),
        "world_size": state.get("world_size"),
        "data": extra.get("data"),
        "final_metrics": state.get("metrics", {}),
        "training_checkpoint": checkpoint_path.name,
        "training_checkpoint_sha256": sha256_file(checkpoint_path),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    return config.replace(
        tower_kwargs=tower_kwargs, provenance=provenance, name=name or config.name,
        license=license or config.license,
    )


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def training_card_section(state: dict[str, Any], evidence: dict[str, Any] | None) -> str:
    """Markdown: data, recipe (and differences), steps, final metrics, evidence."""
    run = state.get("config", {})
    recipe = run.get("recipe", {})
    objective = run.get("objective", {})
    optimizer = run.get("optimizer", {})
    schedule = run.get("schedule", {})
    data = state.get("extra", {}).get("data", [])
    steps, total = int(state["step"]), int(state.get("total_steps", state["step"]))
    lines = card_header("Training", recipe, steps, total, follows="Reproduces")
    projection = objective.get("projection", {})
    rows = [
        ("objective", f"{objective.get('kind')} (temperature {objective.get('temperature')}, projection head {projection.get('kind')}, negatives from the global batch: {objective.get('gather')})"),
        ("optimizer", f"{optimizer.get('name')} lr {optimizer.get('lr')} weight decay {optimizer.get('weight_decay')}, gradient clipping {optimizer.get('grad_clip_norm')}"),
        ("schedule", json.dumps(schedule)),
        ("steps", f"{steps} of {total}, global batch {state.get('data', {}).get('global_batch_size')}, {state.get('world_size')} process(es)"),
        ("data", "; ".join(json.dumps(d) for d in data)),
        ("final training metrics", json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in state.get("metrics", {}).items()})),
    ]
    lines += [_table(rows), ""]
    lines += ["## Evidence", ""]
    if evidence:
        lines += ["Benchmark report supplied at export (`--evidence`):", "", "```json", json.dumps(evidence, indent=2), "```", ""]
    else:
        lines += [
            "Only the training metrics above (contrastive loss and in-batch cross-modal top-1). No downstream "
            "evaluation was attached to this export; see `benchmarks/pretrain_learning.py` for the project's "
            "evidence that the training code learns.", "",
        ]
    return "\n".join(lines)


def export_checkpoint(checkpoint: str | Path, folder: str | Path, *, name: str | None = None, license: str | None = None,
                      evidence: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Export a training checkpoint (file or run folder) to a hub checkpoint folder; returns it.

    Raises:
        ModelNotFoundError / CheckpointError: unreadable or unsuitable checkpoint.
        FileExistsError: ``folder`` exists and ``overwrite`` is False.
    """
    state = load_training_checkpoint(checkpoint)
    if state.get("extra", {}).get("kind") == "finetune":  # a task model: training.finetune exports it
        from .finetune import export_finetuned

        return export_finetuned(checkpoint, folder, name=name, license=license, overwrite=overwrite)
    path = Path(state["path"])
    config = exported_config(state, path, name=name, license=license)
    weights = backbone_state_dict(state["model"])
    load_state_dict_strict(create_backbone(config), weights, f"{path} (backbone.*)")  # fails before writing anything
    card = render_model_card(config) + training_card_section(state, evidence)
    written = write_checkpoint(folder, config, weights, model_card=card, overwrite=overwrite)
    load_backbone(written)  # the folder must load strictly, exactly as users will load it
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="training checkpoint file, or a run folder (its latest checkpoint)")
    p.add_argument("-o", "--output", required=True, help="checkpoint folder to write")
    p.add_argument("--name", help="model name recorded in config.json (default: the recipe's)")
    p.add_argument("--license", help="licence identifier of the weights (default: the recipe's)")
    p.add_argument("--evidence", type=Path, help="JSON report (e.g. from benchmarks/pretrain_learning.py) to put in the model card")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)
    try:
        evidence = json.loads(args.evidence.read_text(encoding="utf-8")) if args.evidence else None
        folder = export_checkpoint(args.checkpoint, args.output, name=args.name, license=args.license,
                                   evidence=evidence, overwrite=args.overwrite)
    except (S1S2Error, FileNotFoundError, FileExistsError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = ModelConfig.load(folder / "config.json")
    loader = "load_backbone" if config.task == "backbone" else "load_model"
    print(f"exported {config.name} ({config.architecture} {config.task}, normalisation {config.normalization.kind}, "
          f"step {config.provenance['steps']}/{config.provenance['total_steps']}) to {folder}; {loader}({str(folder)!r}) verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
