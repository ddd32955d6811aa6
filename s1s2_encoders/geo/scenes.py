"""Many scenes: lists of pairs, skipping finished outputs, and sharding across processes.

A job is a list of scenes, from a text file (one ``S1 S2 [OUTPUT]`` line per scene) or from two
glob patterns whose wildcards name the scene (``--s1 'data/*/s1.tif' --s2 'data/*/s2.tif'`` pairs
files whose ``*`` matched the same text). Under ``torchrun --nproc_per_node=N`` (any number of
nodes) process ``RANK`` of ``WORLD_SIZE`` takes scenes ``RANK, RANK + WORLD_SIZE, ...`` of the
whole list, the same split whatever is already done, so no two processes ever write the same file.
Finished outputs are skipped, which makes a job restartable.
"""

from __future__ import annotations

import glob as globlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import InputShapeError, RasterReadError
from ..stac import is_url


@dataclass(frozen=True)
class SceneJob:
    """One scene to process.

    Attributes:
        name: short name (for progress lines and default output names).
        s1 / s2: input paths (``None`` when the modality is not given).
        output: the primary output file.
    """

    name: str
    s1: tuple[str, ...] | None
    s2: tuple[str, ...] | None
    output: Path


def _glob_regex(pattern: str) -> re.Pattern:
    """A regex that matches what ``pattern`` matches and captures each wildcard's text."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append("(.*)")
            i += 2
        elif c == "*":
            out.append("([^/]*)")
            i += 1
        elif c == "?":
            out.append("([^/])")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1: end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"([{body}])")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"/?\Z")


def has_glob(text: str) -> bool:
    """Whether ``text`` holds glob wildcards (``*``, ``?``, ``[``)."""
    return bool(re.search(r"[*?\[]", text))


def _key_name(key: tuple[str, ...]) -> str:
    name = "_".join(k.strip("/").replace("/", "_") for k in key if k.strip("/"))
    return re.sub(r"[^\w.-]+", "_", name) or "scene"


def scenes_from_globs(s1_pattern: str | None, s2_pattern: str | None, out_dir: Path, suffix: str) -> list[SceneJob]:
    """Pair the files of two glob patterns by what their wildcards matched.

    Raises:
        RasterReadError: a pattern matches nothing, or some files have no partner (they are listed).
    """
    matched: dict[str, dict[tuple[str, ...], str]] = {}
    for modality, pattern in (("s1", s1_pattern), ("s2", s2_pattern)):
        if pattern is None:
            continue
        regex = _glob_regex(pattern)
        found = sorted(globlib.glob(pattern, recursive=True))
        if not found:
            raise RasterReadError(f"{modality.upper()}: the pattern {pattern!r} matches no file")
        keys: dict[tuple[str, ...], str] = {}
        for path in found:
            m = regex.match(path)
            key = m.groups() if m else (Path(path).stem,)
            keys[key] = path
        matched[modality] = keys
    if len(matched) == 2:
        only1 = sorted(set(matched["s1"]) - set(matched["s2"]))
        only2 = sorted(set(matched["s2"]) - set(matched["s1"]))
        if only1 or only2:
            lines = [f"  S1 without S2: {matched['s1'][k]}" for k in only1] + [
                f"  S2 without S1: {matched['s2'][k]}" for k in only2]
            raise RasterReadError(
                "the S1 and S2 patterns do not pair up (files are paired by the text their wildcards "
                "match):\n" + "\n".join(lines[:20]) + ("\n  ..." if len(lines) > 20 else "")
            )
    keys = sorted(next(iter(matched.values())))
    jobs = []
    for key in keys:
        name = _key_name(key)
        s1 = (matched["s1"][key],) if "s1" in matched else None
        s2 = (matched["s2"][key],) if "s2" in matched else None
        jobs.append(SceneJob(name, s1, s2, out_dir / f"{name}{suffix}"))
    return _check_unique(jobs)


def scenes_from_file(path: Path, out_dir: Path, suffix: str) -> list[SceneJob]:
    """Read a scene list: one scene per line, ``S1 S2 [OUTPUT]`` separated by white space.

    ``-`` stands for a modality that is not given; S2 may be a folder of per-band files or a
    quoted glob pattern; either may be a STAC item (``.json`` file or URL); paths are relative to
    the list's folder (URLs are taken as they are); ``#`` starts a comment.
    Outputs default to ``OUT_DIR/<name of the S2 input (else S1)><suffix>``.

    Raises:
        RasterReadError: the list cannot be read; InputShapeError: a malformed line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RasterReadError(f"cannot read the scene list {path}: {exc}") from exc
    base = Path(path).resolve().parent
    jobs = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            fields = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InputShapeError(f"{path}:{number}: {exc}") from None
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise InputShapeError(
                f"{path}:{number}: expected 'S1 S2 [OUTPUT]' (use - for a missing modality), got {len(fields)} field(s)"
            )

        def resolve(p: str) -> str:
            return p if os.path.isabs(p) or is_url(p) else str(base / p)

        s1 = None if fields[0] == "-" else (resolve(fields[0]),)
        s2 = None if fields[1] == "-" else (resolve(fields[1]),)
        if s1 is None and s2 is None:
            raise InputShapeError(f"{path}:{number}: both S1 and S2 are '-'")
        named = s2[0] if s2 else s1[0]  # type: ignore[index]
        name = _key_name((Path(named.rstrip("/")).stem if not has_glob(named) else Path(named).parent.name,))
        output = Path(resolve(fields[2])) if len(fields) == 3 else out_dir / f"{name}{suffix}"
        jobs.append(SceneJob(name, s1, s2, output))
    if not jobs:
        raise InputShapeError(f"the scene list {path} holds no scene")
    return _check_unique(jobs)


def _check_unique(jobs: list[SceneJob]) -> list[SceneJob]:
    seen: dict[Path, SceneJob] = {}
    for job in jobs:
        key = job.output.resolve()
        if key in seen:
            raise InputShapeError(
                f"two scenes would write the same output {job.output}: {seen[key].name} and {job.name}; "
                "give outputs explicitly in the scene list"
            )
        seen[key] = job
    return jobs


@dataclass(frozen=True)
class Shard:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Shard":
        def read(name: str, default: int) -> int:
            value = os.environ.get(name)
            try:
                return int(value) if value is not None else default
            except ValueError:
                raise InputShapeError(f"environment variable {name}={value!r} is not an integer") from None

        world = read("WORLD_SIZE", 1)
        rank = read("RANK", 0)
        if world < 1 or not 0 <= rank < world:
            raise InputShapeError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent")
        return cls(rank, world, read("LOCAL_RANK", 0))

    def take(self, jobs: Sequence[SceneJob]) -> list[SceneJob]:
        """This process's scenes: every ``world``-th one starting at ``rank``."""
        return list(jobs[self.rank:: self.world])

    @property
    def label(self) -> str:
        return f"rank {self.rank}/{self.world}" if self.world > 1 else ""
