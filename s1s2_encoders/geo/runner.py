"""Run a product (embed, predict) over one scene or a sharded list of scenes."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from ..errors import InputShapeError, S1S2Error
from .scenes import SceneJob, Shard, has_glob, scenes_from_file, scenes_from_globs
from .writers import refuse_foreign_outputs


def is_multi_scene(output: str, scenes_file: str | None) -> bool:
    """Many scenes when a scene list is given or the output is a folder (exists, or ends in /)."""
    return scenes_file is not None or output.endswith(("/", os.sep)) or Path(output).is_dir()


def build_jobs(s1: Sequence[str] | None, s2: Sequence[str] | None, scenes_file: str | None, output: str,
               suffix: str) -> tuple[list[SceneJob], bool]:
    """The scenes a command line names, and whether it is a many-scene job.

    * ``--scenes LIST -o DIR``: the list's scenes;
    * ``--s1 'PATTERN' --s2 'PATTERN' -o DIR/``: scenes paired by their wildcards' text;
    * otherwise one scene with all ``--s1`` / ``--s2`` paths, written to ``-o FILE``.
    """
    if not is_multi_scene(output, scenes_file):
        if not s1 and not s2:
            raise InputShapeError("give the inputs: --s1 and/or --s2, or --scenes LIST with -o FOLDER")
        name = Path(output).stem
        return [SceneJob(name, tuple(s1) if s1 else None, tuple(s2) if s2 else None, Path(output))], False
    out_dir = Path(output)
    if not out_dir.is_dir():
        raise InputShapeError(f"the output folder {out_dir} does not exist (create it first)")
    if scenes_file is not None:
        if s1 or s2:
            raise InputShapeError("--scenes names the inputs; do not also pass --s1 / --s2")
        return scenes_from_file(Path(scenes_file), out_dir, suffix), True
    for label, paths in (("--s1", s1), ("--s2", s2)):
        if paths and (len(paths) != 1 or not has_glob(paths[0])):
            raise InputShapeError(
                f"with an output folder, {label} must be one quoted glob pattern (e.g. 'data/*/s1.tif') "
                "whose wildcards name the scene; use --scenes LIST for anything else"
            )
    if not s1 and not s2:
        raise InputShapeError("give --scenes LIST, or glob patterns for --s1 and/or --s2")
    return scenes_from_globs(s1[0] if s1 else None, s2[0] if s2 else None, out_dir, suffix), True


@dataclass
class JobSummary:
    """Scenes written, skipped (already complete) and failed by this process."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    tiles: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 2 if self.failed else 0


def default_device(shard: Shard, device: str | None) -> str:
    """``--device`` as given; else ``cuda:LOCAL_RANK`` under torchrun with GPUs, ``cuda`` with one
    GPU, ``cpu`` without."""
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return f"cuda:{shard.local_rank}" if shard.world > 1 else "cuda"
    return "cpu"


@contextlib.contextmanager
def distributed(shard: Shard, device: str) -> Iterator[Callable[[JobSummary], list[JobSummary]]]:
    """Join the ``torchrun`` process group (gloo on CPU, nccl on GPUs) for the duration of a job.

    Yields a function that gathers every process's :class:`JobSummary` (on all ranks) at the end.
    Nothing is exchanged during the job: the split of the scene list is fixed by the ranks.
    """
    if shard.world == 1:
        yield lambda summary: [summary]
        return
    import datetime

    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        import torch

        torch.cuda.set_device(torch.device(device))  # NCCL collectives use the current device
    owns = not dist.is_initialized()
    if owns:
        # Scenes can take long; the only collective is the gather at the end.
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=24))

    def gather(summary: JobSummary) -> list[JobSummary]:
        everyone: list = [None] * shard.world
        dist.all_gather_object(everyone, summary)
        return everyone

    try:
        yield gather
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


def run_jobs(
    jobs: list[SceneJob],
    work: Callable[[SceneJob, str], object],
    *,
    shard: Shard,
    multi: bool,
    is_complete: Callable[[SceneJob], bool],
    overwrite: bool,
    outputs: Callable[[SceneJob], Sequence[Path]] | None = None,
    out: TextIO | None = None,
) -> JobSummary:
    """Process this rank's share of ``jobs`` with ``work(job, label)``.

    One scene: errors propagate. Many scenes: complete outputs are skipped (unless ``overwrite``);
    a scene that fails is reported and the others go on; the summary says which. Without
    ``overwrite``, ``work`` may replace only files the package wrote itself (its unfinished
    leftovers): a scene with another file at one of its ``outputs(job)`` paths (default: the job's
    output) fails with an error naming that file, before ``work`` runs, and the file is left alone.
    """
    outputs_of = outputs if outputs is not None else (lambda job: [job.output])
    out = out if out is not None else sys.stdout
    summary = JobSummary()
    started = time.perf_counter()
    mine = shard.take(jobs)
    prefix = f"[{shard.label}] " if shard.label else ""
    for number, job in enumerate(mine, start=1):
        label = f"{prefix}{job.name} ({number}/{len(mine)})" if multi else f"{prefix}{job.name}"
        if multi and not overwrite and is_complete(job):
            summary.skipped.append(str(job.output))
            print(f"{prefix}skipped {job.output} (complete)", file=out, flush=True)
            continue
        try:
            if multi and not overwrite:
                refuse_foreign_outputs(outputs_of(job))
            result = work(job, label)
        except S1S2Error as exc:
            if not multi:
                raise
            summary.failed.append(str(job.output))
            print(f"{prefix}FAILED {job.name}: {exc}", file=sys.stderr, flush=True)
            continue
        summary.written.append(str(job.output))
        summary.tiles += getattr(result, "tiles", 0)
        seconds = getattr(result, "seconds", 0.0)
        resumed = getattr(result, "resumed_from_row", 0)
        extra = f", resumed at output row {resumed}" if resumed else ""
        print(f"{prefix}wrote {job.output} ({getattr(result, 'tiles', 0)} tiles, {seconds:.1f} s{extra})",
              file=out, flush=True)
        for note in getattr(result, "notes", []):
            print(f"{prefix}  note: {note}", file=out, flush=True)
    summary.seconds = time.perf_counter() - started
    return summary
