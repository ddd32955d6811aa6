"""Training checkpoints: written atomically, read back without unpickling code, resumed exactly.

A training checkpoint is one ``torch.save`` file ``<run>/checkpoints/step_<N>.pt`` holding plain
tensors, numbers, strings, lists and dicts (so ``torch.load(weights_only=True)`` reads it):
the model and optimizer state, the schedule position, every rank's RNG states, the data position
(epoch, batches done in it, sampler seed) and the run config. ``<run>/checkpoints/latest`` names
the newest complete file. Files are written to a temporary name, fsynced and renamed, so a run
killed while saving leaves the previous checkpoint intact and ``latest`` never points to a
half-written file.

These are *training* checkpoints (they include optimizer state and projection heads);
``python -m training.export`` turns one into the hub folder that ``load_backbone`` reads.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s1s2_encoders.durable import atomic_write_text, fsync_path
from s1s2_encoders.errors import CheckpointError, ModelNotFoundError

CHECKPOINT_FORMAT = "s1s2-encoders/training-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary sibling, fsync, rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(obj, tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_training_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep_last: int | None = None) -> Path:
    """Write ``state`` as the checkpoint of ``step`` and point ``latest`` at it.

    Args:
        run_dir: the run folder.
        step: number of optimizer steps done.
        state: picklable-as-plain-data dict (see :func:`load_training_checkpoint`).
        keep_last: delete older ``step_*.pt`` files beyond this many (``None``: keep all).
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step), **state}
    path = atomic_torch_save(payload, checkpoint_path(run_dir, step))
    atomic_write_text(path.parent / LATEST_FILE, path.name + "\n")
    if keep_last is not None and keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint files of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``latest`` names (falling back to the highest step), or ``None``."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    pointer = folder / LATEST_FILE
    if pointer.is_file():
        candidate = folder / pointer.read_text(encoding="utf-8").strip()
        if candidate.is_file():
            return candidate
    files = list_checkpoints(run_dir)
    return files[-1] if files else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its latest checkpoint).

    Raises:
        ModelNotFoundError: nothing there, or a run folder without checkpoints.
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ModelNotFoundError(f"{path} has no training checkpoints (expected {path / CHECKPOINT_DIR}/step_*.pt)")
        return found
    raise ModelNotFoundError(f"training checkpoint {path} does not exist")


def load_training_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint (file or run folder) with ``weights_only=True``.

    Raises:
        ModelNotFoundError: missing file / no checkpoint in the folder.
        CheckpointError: unreadable, or not a training checkpoint of this format.
    """
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle refused, ...
        raise CheckpointError(f"{path} is not a readable training checkpoint: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an s1s2-encoders training checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state['version']}; this code reads up to {CHECKPOINT_VERSION}")
    state["path"] = str(path)
    return state


# --------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy global, torch CPU, every CUDA device) as plain data."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "numpy": {
            "name": np_name, "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)), "pos": int(np_pos),
            "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
