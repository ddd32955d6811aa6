"""Embedding throughput of the dual Swin-T and dual ResNet-50: pairs/s of every compute path as a ratio
to the naive float32 forward of the two timm towers, and each path's agreement with float32.

    python benchmarks/embed.py                  # default grid, a few minutes on 2 CPU cores
    python benchmarks/embed.py --full           # sizes 120/224/256, batches 1..64, torch.compile paths
    python benchmarks/embed.py --archs swin-t --sizes 224 --batches 16 --paths naive-fp32,embed-auto
    python benchmarks/embed.py --device cuda    # the same on a GPU

Real model sizes with random weights (speed does not depend on the weights; agreement is measured on
the real TerraMesh example pairs, which exercise realistic value ranges). Within one (architecture,
size, batch) cell the paths are timed in round-robin, ``--repeats`` times each after one warm-up
call, and the median is reported: the machine may be shared, ratios measured this way are fair,
absolute numbers are not. Results go to stdout as a table and to ``--json``.

Paths (a path that does not apply to an architecture is skipped):

``naive-fp32``          baseline: ``tower(x)`` of the two timm towers on pre-normalised float32 tensors.
``embed-fp32``          ``model.embed(s1, s2, dtype="float32")`` from numpy: validation, normalisation, pooling.
``autocast-bf16``       ``model(s1, s2)`` under ``torch.autocast(bfloat16)`` (weights stay float32).
``bf16-weights``        the timm towers with their weights cast to bfloat16 (nothing else changed).
``embed-auto-serial``   ``model.embed(s1, s2)`` with ``S1S2_PARALLEL_TOWERS=0``: the inference copies
                        (bfloat16 where native, BN folded, Swin windows cached, fc1+GELU fused), towers
                        one after the other with all threads.
``embed-auto``          ``model.embed(s1, s2)``: the default, ``dtype="auto"``; as above, and on CPU the
                        two towers run concurrently with half of the threads each. Includes the per-call
                        refresh of the copies from the model's weights.
``engine-auto``         ``engine.embed(s1, s2)`` with ``engine = model.inference_engine()``: the same
                        computation from an engine the caller owns (no per-call refresh).
``bf16-sdpa``           (Swin) bfloat16 tower copy with timm's fused ``scaled_dot_product_attention``.
``channels-last-fp32``  (ResNet) float32 towers and inputs in channels-last memory format.
``channels-last-bf16``  (ResNet) bfloat16 towers and inputs in channels-last memory format.
``compile-bf16``        ``torch.compile`` of the bfloat16 backbone forward (dynamic batch); its compile
                        time is reported as warm-up (--full or --paths only).
``compile-bf16-frozen`` the same with inductor ``freezing`` (weights folded and pre-packed).

Paths that compute in bfloat16 by construction (``autocast-bf16``, ``bf16-*``, ``channels-last-bf16``,
``compile-*``) are reported as "not applicable" on a CPU without native bfloat16 (no ``avx512_bf16`` /
``amx_bf16``: oneDNN only emulates it there, minutes per cell); ``--emulated-bf16`` times them anyway.
The GEMM peak of the "% peak" column is then the float32 one. The CPU class is printed first.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import gemm_peak_gflops, machine_info, median, real_pairs, round_robin, tile_batch  # noqa: E402

from s1s2_encoders import load_backbone  # noqa: E402
from s1s2_encoders.models.compute import PARALLEL_ENV, choose_compute, cpu_has_native_bf16  # noqa: E402
from s1s2_encoders.models.towers import is_swin, tower_output  # noqa: E402

REGISTRY_NAMES = {"swin-t": "swin-s1s2", "resnet50": "resnet50-s1s2", "resnet18": "resnet18-s1s2"}
S2_OFFSET = 1000.0  # the TerraMesh L1C pairs carry the processing-baseline offset

DEFAULT = dict(archs="swin-t,resnet50", sizes="224", batches="1,16",
               paths="naive-fp32,embed-fp32,autocast-bf16,bf16-weights,channels-last-bf16,embed-auto-serial,embed-auto,engine-auto")
FULL = dict(archs="swin-t,resnet50", sizes="120,224,256", batches="1,4,16,64",
            paths=DEFAULT["paths"] + ",bf16-sdpa,channels-last-fp32,compile-bf16,compile-bf16-frozen")

Runner = Callable[[], torch.Tensor | np.ndarray]


@dataclass
class Cell:
    """One measured path in one (architecture, size, batch) cell."""

    arch: str
    size: int
    batch: int
    path: str
    pairs_per_s: float
    ratio: float
    seconds: list[float]
    gflop_per_pair: float
    gflops: float
    peak_fraction: float
    peak_gflops: float
    cosine_min: float
    max_abs_diff: float
    warmup_s: float
    load_before: float
    load_after: float
    note: str = ""


@dataclass
class Context:
    model: torch.nn.Module
    arch: str
    device: torch.device
    cache: dict = field(default_factory=dict)  # per-architecture state shared across cells (compiled graphs)


# ---------------------------------------------------------------------------------------------- paths
def _tensors(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw inputs as the model's forward takes them: S1 dB, S2 DN with the offset removed."""
    t1 = torch.from_numpy(s1).to(ctx.device)
    t2 = torch.from_numpy(s2).to(ctx.device) - S2_OFFSET
    return t1, t2


def _bf16_copy(ctx: Context, key: str, convert: Callable[[torch.nn.Module], torch.nn.Module]) -> torch.nn.Module:
    if key not in ctx.cache:
        ctx.cache[key] = convert(copy.deepcopy(ctx.model)).eval()
    return ctx.cache[key]


def path_naive_fp32(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
    model = ctx.model
    t1, t2 = _tensors(ctx, s1, s2)
    with torch.inference_mode():
        n1, n2 = model.s1_normalizer(t1), model.s2_normalizer(t2)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model.s1(n1), model.s2(n2)], dim=1)

    return run


def path_embed(dtype: str, parallel: bool = True) -> Callable[[Context, np.ndarray, np.ndarray], Runner]:
    def make(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
        device = None if ctx.device.type == "cpu" else ctx.device

        def run() -> np.ndarray:
            before = os.environ.get(PARALLEL_ENV)
            os.environ[PARALLEL_ENV] = "1" if parallel else "0"
            try:
                return ctx.model.embed(s1, s2, s2_offset=S2_OFFSET, batch_size=s1.shape[0], dtype=dtype, device=device)
            finally:
                if before is None:
                    del os.environ[PARALLEL_ENV]
                else:
                    os.environ[PARALLEL_ENV] = before

        return run

    return make


def path_engine_auto(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
    if "engine-auto" not in ctx.cache:
        ctx.cache["engine-auto"] = ctx.model.inference_engine("auto", ctx.device)
    engine = ctx.cache["engine-auto"]
    return lambda: engine.embed(s1, s2, s2_offset=S2_OFFSET, batch_size=s1.shape[0])


def path_autocast_bf16(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
    t1, t2 = _tensors(ctx, s1, s2)

    def run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=torch.bfloat16):
            return ctx.model(t1, t2)

    return run


def _encode_with(ctx: Context, towers: dict[str, torch.nn.Module], s1: np.ndarray, s2: np.ndarray) -> Runner:
    t1, t2 = _tensors(ctx, s1, s2)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            parts = [tower_output(towers[m], ctx.arch, ctx.model.normalizer(m)(x)).pooled for m, x in (("s1", t1), ("s2", t2))]
            return torch.cat(parts, dim=1)

    return run


def _tower_copies(ctx: Context, key: str, dtype: torch.dtype, channels_last: bool = False, fused_attn: bool = False):
    if key not in ctx.cache:
        towers = {}
        for modality in ("s1", "s2"):
            tower = copy.deepcopy(ctx.model.tower(modality)).to(ctx.device, dtype).eval()
            if channels_last:
                tower = tower.to(memory_format=torch.channels_last)
            if fused_attn:
                for module in tower.modules():
                    if hasattr(module, "fused_attn"):
                        module.fused_attn = True
            towers[modality] = tower
        ctx.cache[key] = towers
    return ctx.cache[key]


def path_bf16_weights(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
    towers = _tower_copies(ctx, "bf16-weights", torch.bfloat16)
    t1, t2 = _tensors(ctx, s1, s2)
    with torch.inference_mode():
        n1, n2 = ctx.model.s1_normalizer(t1).bfloat16(), ctx.model.s2_normalizer(t2).bfloat16()

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([towers["s1"](n1), towers["s2"](n2)], dim=1)

    return run


def path_bf16_sdpa(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
    return _encode_with(ctx, _tower_copies(ctx, "bf16-sdpa", torch.bfloat16, fused_attn=True), s1, s2)


def path_channels_last(dtype: torch.dtype) -> Callable[[Context, np.ndarray, np.ndarray], Runner]:
    def make(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
        return _encode_with(ctx, _tower_copies(ctx, f"cl-{dtype}", dtype, channels_last=True), s1, s2)

    return make


def path_compile(freezing: bool) -> Callable[[Context, np.ndarray, np.ndarray], Runner]:
    def make(ctx: Context, s1: np.ndarray, s2: np.ndarray) -> Runner:
        key = f"compiled-{freezing}"
        if key not in ctx.cache:
            backbone = copy.deepcopy(ctx.model).eval()
            backbone.s1.to(torch.bfloat16)
            backbone.s2.to(torch.bfloat16)
            options = {"freezing": freezing} if freezing else None
            ctx.cache[key] = torch.compile(backbone, options=options)
        compiled = ctx.cache[key]
        t1, t2 = _tensors(ctx, s1, s2)
        torch._dynamo.mark_dynamic(t1, 0)
        torch._dynamo.mark_dynamic(t2, 0)

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return compiled(t1, t2)

        return run

    return make


@dataclass(frozen=True)
class PathSpec:
    make: Callable[[Context, np.ndarray, np.ndarray], Runner]
    applies: Callable[[str], bool] = lambda arch: True
    bf16: bool = False  # computes in bfloat16 whatever the hardware: not applicable where it is emulated


PATHS: dict[str, PathSpec] = {
    "naive-fp32": PathSpec(path_naive_fp32),
    "embed-fp32": PathSpec(path_embed("float32")),
    "autocast-bf16": PathSpec(path_autocast_bf16, bf16=True),
    "bf16-weights": PathSpec(path_bf16_weights, bf16=True),
    "embed-auto-serial": PathSpec(path_embed("auto", parallel=False)),
    "embed-auto": PathSpec(path_embed("auto")),
    "engine-auto": PathSpec(path_engine_auto),
    "bf16-sdpa": PathSpec(path_bf16_sdpa, is_swin, bf16=True),
    "channels-last-fp32": PathSpec(path_channels_last(torch.float32), lambda a: not is_swin(a)),
    "channels-last-bf16": PathSpec(path_channels_last(torch.bfloat16), lambda a: not is_swin(a), bf16=True),
    "compile-bf16": PathSpec(path_compile(False), bf16=True),
    "compile-bf16-frozen": PathSpec(path_compile(True), bf16=True),
}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively (else the bf16-only paths are not applicable)."""
    if device.type == "cuda":
        return choose_compute("auto", device).dtype == torch.bfloat16
    return device.type == "cpu" and cpu_has_native_bf16()


def cpu_class() -> str:
    """``avx512_bf16`` (e.g. Zen 4), ``amx_bf16``, or ``no native bf16`` (e.g. Zen 3, AVX2 only)."""
    from s1s2_encoders.models.compute import cpu_flags

    found = [f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()]
    extra = "avx512f" if "avx512f" in cpu_flags() else ("avx2" if "avx2" in cpu_flags() else "")
    return (", ".join(found) if found else "no native bf16") + (f" ({extra})" if extra else "")
BASELINE = "naive-fp32"


# ---------------------------------------------------------------------------------------------- measuring
def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(x) if isinstance(x, np.ndarray) else x).detach().float().cpu()


def agreement(reference: torch.Tensor, other: torch.Tensor, split: int) -> tuple[float, float]:
    """Smallest cosine similarity over samples and modalities (S1 part, S2 part), and max |difference|."""
    cosines = []
    for part in (slice(0, split), slice(split, None)):
        cosines.append(torch.nn.functional.cosine_similarity(reference[:, part], other[:, part], dim=1))
    return float(torch.cat(cosines).min()), float((reference - other).abs().max())


def flops_per_pair(model: torch.nn.Module, size: int, device: torch.device) -> float:
    """FLOPs of one S1 + S2 pair through the two towers (torch.utils.flop_counter: GEMMs, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x1 = torch.zeros(1, len(model.config.s1_bands), size, size, device=device)
    x2 = torch.zeros(1, len(model.config.s2_bands), size, size, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x1, x2)
    return float(counter.get_total_flops())


def not_applicable(ctx: Context, size: int, batch: int, name: str) -> Cell:
    nan = float("nan")
    return Cell(arch=ctx.arch, size=size, batch=batch, path=name, pairs_per_s=nan, ratio=nan, seconds=[],
                gflop_per_pair=nan, gflops=nan, peak_fraction=nan, peak_gflops=nan, cosine_min=nan, max_abs_diff=nan,
                warmup_s=nan, load_before=nan, load_after=nan,
                note="not applicable: no native bfloat16 here (emulated; --emulated-bf16 times it)")


def measure_cell(ctx: Context, size: int, batch: int, paths: list[str], repeats: int,
                 flops: float, reference: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray],
                 skip_bf16: bool = False) -> list[Cell]:
    s1 = tile_batch(pairs[0], batch)
    s2 = tile_batch(pairs[1], batch)
    runs: dict[str, Runner] = {}
    warmup: dict[str, float] = {}
    agree: dict[str, tuple[float, float]] = {}
    split = ctx.model.embed_dims["s1"]
    skipped = []
    for name in paths:
        spec = PATHS[name]
        if not spec.applies(ctx.arch):
            continue
        if spec.bf16 and skip_bf16:
            skipped.append(not_applicable(ctx, size, batch, name))
            continue
        # First call on the real pairs: agreement, and the warm-up cost (compilation, tower copies).
        start = time.perf_counter()
        out = as_tensor(spec.make(ctx, *pairs)())
        warmup[name] = time.perf_counter() - start
        agree[name] = agreement(reference, out, split)
        runs[name] = spec.make(ctx, s1, s2)
    # A GEMM in the same round-robin: the peak is measured under the same load as the paths (bfloat16
    # where the hardware has it; float32 elsewhere, where an emulated bf16 GEMM would take minutes).
    a = torch.randn(2048, 2048, device=ctx.device, dtype=torch.float32 if skip_bf16 else torch.bfloat16)
    runs["_gemm"] = lambda: a @ a
    load_before = os.getloadavg()[0]
    times = round_robin(runs, repeats, ctx.device)
    load_after = os.getloadavg()[0]
    peak = 2 * 2048**3 / median(times.pop("_gemm")) / 1e9
    base = batch / median(times[BASELINE]) if BASELINE in times else float("nan")
    cells = []
    for name, seconds in times.items():
        rate = batch / median(seconds)
        cos, diff = agree[name]
        note = ""
        if name.startswith(("embed-auto", "engine-auto")):
            note = str(choose_compute("auto", ctx.device).dtype).replace("torch.", "")
        cells.append(Cell(
            arch=ctx.arch, size=size, batch=batch, path=name, pairs_per_s=rate, ratio=rate / base,
            seconds=seconds, gflop_per_pair=flops / 1e9, gflops=rate * flops / 1e9,
            peak_fraction=rate * flops / 1e9 / peak, peak_gflops=peak, cosine_min=cos, max_abs_diff=diff, warmup_s=warmup[name],
            load_before=load_before, load_after=load_after, note=note,
        ))
    return cells + skipped


HEADER = (f"{'arch':<9} {'size':>4} {'batch':>5}  {'path':<29} {'pairs/s':>8} {'x base':>7} "
          f"{'GFLOP/s':>8} {'%peak':>6} {'cos min':>9} {'max|diff|':>9} {'warm-up s':>9} {'load':>9}")


def format_row(c: Cell) -> str:
    if c.note.startswith("not applicable"):
        return f"{c.arch:<9} {c.size:>4} {c.batch:>5}  {c.path:<29} {c.note}"
    label = c.path + (f" ({c.note})" if c.note else "")
    return (f"{c.arch:<9} {c.size:>4} {c.batch:>5}  {label:<29} {c.pairs_per_s:>8.2f} {c.ratio:>7.2f} "
            f"{c.gflops:>8.0f} {100 * c.peak_fraction:>5.0f}% {c.cosine_min:>9.6f} {c.max_abs_diff:>9.2e} {c.warmup_s:>9.2f}"
            f" {c.load_before:>4.1f}-{c.load_after:<4.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="whole grid: sizes 120,224,256; batches 1,4,16,64; compile paths")
    parser.add_argument("--archs", help=f"comma-separated (default {DEFAULT['archs']})")
    parser.add_argument("--sizes", help=f"input side lengths in pixels (default {DEFAULT['sizes']})")
    parser.add_argument("--batches", help=f"batch sizes (default {DEFAULT['batches']})")
    parser.add_argument("--paths", help=f"paths to time; the baseline is always added (default {DEFAULT['paths']})")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path and cell (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="also time the bfloat16-only paths where bfloat16 is not native (slow: emulated)")
    parser.add_argument("--tiny", action="store_true", help="tiny towers (smoke test of this script, not a benchmark)")
    parser.add_argument("--json", default="benchmarks/results/embed.json", help="where to write the results")
    args = parser.parse_args(argv)

    grid = FULL if args.full else DEFAULT
    archs = (args.archs or grid["archs"]).split(",")
    sizes = [int(s) for s in (args.sizes or grid["sizes"]).split(",")]
    batches = [int(b) for b in (args.batches or grid["batches"]).split(",")]
    paths = [p for p in (args.paths or grid["paths"]).split(",") if p]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown path(s) {unknown}; known: {', '.join(PATHS)}")
    if BASELINE not in paths:
        paths.insert(0, BASELINE)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    info = machine_info(device)
    native = native_bf16(device)
    skip_bf16 = not native and not args.emulated_bf16
    info["cpu_class"] = cpu_class()
    info["native_bf16"] = native
    peak = gemm_peak_gflops(torch.bfloat16, device) if not skip_bf16 else float("nan")
    peak32 = gemm_peak_gflops(torch.float32, device)
    print(f"# CPU class: {info['cpu_class']}; {info['cpu']} ({info['logical_cpus']} logical CPUs, "
          f"{info['torch_threads']} torch threads), torch {info['torch']}, device {device}")
    print(f"# measured GEMM peak (2048^3): bfloat16 {'not applicable' if skip_bf16 else f'{peak:.0f} GFLOP/s'}, "
          f"float32 {peak32:.0f} GFLOP/s; % peak below is against the {'float32' if skip_bf16 else 'bfloat16'} one\n")
    print(HEADER)
    print("-" * len(HEADER))

    cells: list[Cell] = []
    for arch in archs:
        torch.manual_seed(0)
        if args.tiny:
            from s1s2_encoders import ModelConfig

            tiny = {"swin-t": {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)},
                    "resnet50": {"layers": (1, 1, 1, 1)}, "resnet18": {"layers": (1, 1, 1, 1)}}
            model = load_backbone(ModelConfig(architecture=arch, tower_kwargs=tiny[arch]))
        else:
            model = load_backbone(REGISTRY_NAMES[arch], pretrained=False)
        model.to(device).eval()
        ctx = Context(model=model, arch=arch, device=device)
        for size in sizes:
            pairs = real_pairs(size)
            ref = as_tensor(path_naive_fp32(ctx, *pairs)())
            flops = flops_per_pair(model, size, device)
            for batch in batches:
                new = measure_cell(ctx, size, batch, paths, args.repeats, flops, ref, pairs, skip_bf16=skip_bf16)
                for c in new:
                    print(format_row(c), flush=True)
                cells.extend(new)
    print("\n%peak: achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter) / GEMM peak measured "
          "in the same round-robin (2048^3 matrix product; 'peak_gflops' in the JSON). cos min / max|diff|: against naive-fp32 on the 3 real TerraMesh pairs, smallest "
          "cosine over samples and over the S1 and S2 halves. warm-up s: first call (tower copies, compilation). "
          "load: 1-minute load average before-after the cell (other processes on the machine).")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({
        "machine": info, "peak_gflops": {"bfloat16": peak, "float32": peak32},
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])]),
        "results": [asdict(c) for c in cells],
    }, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
