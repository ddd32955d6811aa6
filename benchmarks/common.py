"""Helpers shared by the benchmarks: machine description, GEMM peak, round-robin timing, real pairs.

Benchmarks on a shared machine report *ratios* measured in one run: every candidate is timed in
round-robin with its baseline (baseline, A, B, baseline, A, B, ...) and the medians are compared,
so that a burst of load from another process hits all of them alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))

TERRAMESH = REPO / "examples" / "data" / "terramesh"
TERRAMESH_IDS = ("282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on."""
    from s1s2_encoders.models.compute import cpu_flags

    flags = cpu_flags()
    info = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx") or f == "avx512_vnni"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak_gflops(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an ``n x n x n`` matrix product: the practical peak of this machine for ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def round_robin(
    runs: dict[str, Callable[[], object]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of every run, measured in turn ``repeats`` times (after ``warmup`` calls each)."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def real_pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The three TerraMesh pairs at ``size`` x ``size`` (top-left crop, or reflect-padded when larger).

    Returns S1 ``(3, 2, size, size)`` float32 dB and S2 ``(3, 13, size, size)`` float32 L1C DN
    *with* the +1000 offset of processing baseline 04.00 (pass ``s2_offset=1000``).
    """
    import rasterio

    s1s, s2s = [], []
    for sample in TERRAMESH_IDS:
        with rasterio.open(TERRAMESH / "S1RTC" / f"{sample}.tif") as src:
            s1s.append(src.read().astype(np.float32))
        with rasterio.open(TERRAMESH / "S2L1C" / f"{sample}.tif") as src:
            s2s.append(src.read().astype(np.float32))
    s1, s2 = np.stack(s1s), np.stack(s2s)
    side = s1.shape[-1]
    if size <= side:
        return np.ascontiguousarray(s1[..., :size, :size]), np.ascontiguousarray(s2[..., :size, :size])
    pad = ((0, 0), (0, 0), (0, size - side), (0, size - side))
    return np.pad(s1, pad, mode="reflect"), np.pad(s2, pad, mode="reflect")


def tile_batch(x: np.ndarray, batch: int) -> np.ndarray:
    """Repeat samples along the batch axis to ``batch`` samples."""
    reps = -(-batch // x.shape[0])
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch])
