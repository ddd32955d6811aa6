"""Whole-scene streaming: peak memory vs scene size, and end-to-end throughput vs pure forward.

    python benchmarks/scene_memory.py                        # 2048^2 and 10980^2, tiny Swin towers
    python benchmarks/scene_memory.py --sizes 2048 --real-size   # throughput with real Swin-T towers

For each scene size this writes a synthetic co-located S1 (2 x float32 dB) / S2 (13 x uint16 DN)
pair as tiled, DEFLATE-compressed GeoTIFFs (cached in --workdir), then runs ``s1s2 embed`` on it
in a fresh subprocess and reads that process's peak resident memory from ``wait4`` (so every run
is measured on its own). It then runs the model's pure forward pass (``model.encode`` of both
towers, dense, the same tile size, batch size and number of batches, random data already in
memory) in another fresh subprocess (by default on the smallest scene only). It prints:

* peak RSS per scene size and the ratio largest / smallest (goal: within ~10 %);
* end-to-end tiles/s of ``s1s2 embed`` (reading, nodata masks, inference, blending, compressed
  writing) divided by pure-forward tiles/s (goal: >= 0.85).

Both timings include the first (cold) batch, so they are comparable. Numbers are ratios within one
run on one machine; absolute times depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402

TINY = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}


def write_scene(folder: Path, size: int) -> tuple[Path, Path]:
    """A synthetic pair of ``size`` x ``size`` pixels, written stripe by stripe (bounded memory)."""
    s1_path, s2_path = folder / f"s1_{size}.tif", folder / f"s2_{size}.tif"
    if s1_path.exists() and s2_path.exists():
        return s1_path, s2_path
    transform = from_origin(300000.0, 5000000.0 + 10 * size, 10.0, 10.0)
    common = dict(driver="GTiff", width=size, height=size, crs="EPSG:32633", transform=transform, tiled=True,
                  blockxsize=512, blockysize=512, compress="deflate", bigtiff="IF_SAFER")
    rng = np.random.default_rng(0)
    cols = np.arange(size, dtype=np.float32)
    tmp1, tmp2 = s1_path.with_suffix(".partial"), s2_path.with_suffix(".partial")
    with rasterio.open(tmp1, "w", count=2, dtype="float32", predictor=3, **common) as s1, \
            rasterio.open(tmp2, "w", count=13, dtype="uint16", predictor=2, **common) as s2:
        for row in range(0, size, 512):
            h = min(512, size - row)
            rows = np.arange(row, row + h, dtype=np.float32)[:, None]
            field = 0.5 + 0.25 * np.sin(rows / 97.0) * np.cos(cols / 61.0) + 0.25 * np.sin((rows + cols) / 233.0)
            noise = rng.random((h, size), dtype=np.float32) * 0.1
            vv = -20 + 15 * field + noise
            s1.write(np.stack([vv, vv - 6]).astype(np.float32), window=Window(0, row, size, h))
            bands = [200 + 3000 * (field * (0.6 + 0.03 * b)) + 200 * noise for b in range(13)]
            bands[10] = 5 + 20 * noise  # cirrus band near 0, as in clear-sky L1C without the offset
            s2.write(np.stack(bands).astype(np.uint16), window=Window(0, row, size, h))
    os.replace(tmp1, s1_path)
    os.replace(tmp2, s2_path)
    return s1_path, s2_path


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, str, str]:
    """Run a command; return (wall seconds, peak RSS in MiB of that process, stdout, stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss // 1024, stdout, stderr


PURE_FORWARD = r"""
import json, sys, time, torch
from s1s2_encoders import load_backbone
from s1s2_encoders.models.engine import ModalityBatch
model = load_backbone(sys.argv[1]).eval()
tile, batch, batches = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
level = (4, 8, 16, 32).index(int(sys.argv[5]))
# The compute path s1s2 embed takes by default (dtype "auto": bf16 inference copies where the CPU runs
# bf16 natively, both towers concurrently), so the ratio measures only what streaming adds.
engine = model.inference_engine(sys.argv[6])
g = torch.Generator().manual_seed(0)
data = {"s1": -25 + 20 * torch.rand(batch, 2, tile, tile, generator=g), "s2": 3000 * torch.rand(batch, 13, tile, tile, generator=g)}
start = time.perf_counter()
for _ in range(batches):
    out = engine.encode_batch({m: ModalityBatch(x) for m, x in data.items()}, dense=True)
    torch.cat([out["s1"].pyramid[level], out["s2"].pyramid[level]], dim=1).cpu().numpy()
print(json.dumps({"seconds": time.perf_counter() - start, "tiles": batch * batches, "compute": str(engine.compute)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 10980])
    parser.add_argument("--arch", default="swin-t", choices=("swin-t", "resnet18", "resnet50"))
    parser.add_argument("--real-size", action="store_true", help="real tower sizes (default: tiny towers, embed_dim 16)")
    parser.add_argument("--tile", type=int, default=448)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="compute precision of both the end-to-end run and the pure forward pass (default auto)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "s1s2-scene-benchmark")
    parser.add_argument("--forward-sizes", type=int, nargs="*", default=None,
                        help="scene sizes on which to also time the pure forward pass (default: the smallest)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="on those sizes, alternate end-to-end and pure-forward runs this many times and keep "
                        "the fastest of each (a shared machine's load comes and goes)")
    args = parser.parse_args()

    from s1s2_encoders import ModelConfig, fixed_clip_scale, load_backbone
    from s1s2_encoders.geo.tiling import TilePlan

    args.workdir.mkdir(parents=True, exist_ok=True)
    kwargs = {} if args.real_size else (TINY if args.arch == "swin-t" else {"layers": [1, 1, 1, 1]})
    label = f"{args.arch} ({'real size' if args.real_size else 'tiny towers ' + json.dumps(kwargs)})"
    model_dir = args.workdir / f"model-{args.arch}-{'real' if args.real_size else 'tiny'}"
    if not model_dir.exists():
        import torch

        torch.manual_seed(0)
        config = ModelConfig(architecture=args.arch, tower_kwargs=kwargs, normalization=fixed_clip_scale(), name=label)
        load_backbone(config).save_pretrained(model_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"model: {label}; tile {args.tile}, overlap {args.overlap}, stride {args.stride}, batch {args.batch_size}; "
          f"{os.cpu_count()} CPU(s), torch threads default")
    rows = []
    for size in args.sizes:
        s1, s2 = write_scene(args.workdir, size)
        out = args.workdir / f"emb_{size}.tif"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "s1s2_encoders", "embed", "--model", str(model_dir), "--s1", str(s1), "--s2", str(s2),
               "-o", str(out), "--tile", str(args.tile), "--overlap", str(args.overlap), "--stride", str(args.stride),
               "--batch-size", str(args.batch_size), "--s2-offset", "0", "--dtype", args.dtype, "--quiet"]
        forward_sizes = args.forward_sizes if args.forward_sizes is not None else [min(args.sizes)]
        timed = size in forward_sizes
        plan = TilePlan.dense(size, size, args.tile, args.overlap, args.stride)
        batches = -(-plan.n_tiles // args.batch_size)
        forward_cmd = [sys.executable, "-c", PURE_FORWARD, str(model_dir), str(args.tile), str(args.batch_size),
                       str(batches), str(args.stride), args.dtype]
        runs, forward_runs = [], []
        for _ in range(args.repeats if timed else 1):
            out.unlink(missing_ok=True)
            wall, rss, stdout, _ = run_measured(cmd, env)
            match = re.search(r"\((\d+) tiles, ([\d.]+) s\)", stdout)
            tiles, seconds = int(match.group(1)), float(match.group(2))
            assert tiles == plan.n_tiles, (tiles, plan.n_tiles)
            runs.append((seconds, rss, wall))
            if timed:
                _, fwd_rss, fwd_out, _ = run_measured(forward_cmd, env)
                result = json.loads(fwd_out.strip().splitlines()[-1])
                forward_runs.append((result["seconds"], fwd_rss))
                compute = result["compute"]
        seconds = min(r[0] for r in runs)
        row = {"size": size, "tiles": plan.n_tiles, "embed_s": seconds, "embed_s_all": [r[0] for r in runs],
               "peak_rss_mib": max(r[1] for r in runs), "tiles_per_s": plan.n_tiles / seconds,
               "output_mib": round(out.stat().st_size / 2**20, 1)}
        if forward_runs:
            best = min(f[0] for f in forward_runs)
            row.update(forward_s=best, forward_s_all=[f[0] for f in forward_runs],
                       forward_tiles_per_s=batches * args.batch_size / best,
                       forward_rss_mib=max(f[1] for f in forward_runs))
            row["throughput_ratio"] = row["tiles_per_s"] / row["forward_tiles_per_s"]
            row["compute"] = compute
        rows.append(row)
        out.unlink(missing_ok=True)
        print(json.dumps(row))
    print()
    print(f"{'scene':>13}  {'tiles':>6}  {'embed s':>8}  {'tiles/s':>8}  {'fwd tiles/s':>11}  {'e2e/fwd':>7}  {'peak RSS MiB':>12}")
    for r in rows:
        fwd = f"{r['forward_tiles_per_s']:11.2f}  {r['throughput_ratio']:7.2f}" if "forward_tiles_per_s" in r else f"{'-':>11}  {'-':>7}"
        print(f"{r['size']:>6} x {r['size']:<6} {r['tiles']:>6}  {r['embed_s']:8.1f}  {r['tiles_per_s']:8.2f}  {fwd}  {r['peak_rss_mib']:12d}")
    if len(rows) > 1:
        small, large = rows[0], rows[-1]
        print(f"\npeak RSS {large['size']}^2 / {small['size']}^2 = {large['peak_rss_mib'] / small['peak_rss_mib']:.3f} "
              f"({large['peak_rss_mib']} / {small['peak_rss_mib']} MiB; scene area x{(large['size'] / small['size']) ** 2:.1f})")


if __name__ == "__main__":
    main()
