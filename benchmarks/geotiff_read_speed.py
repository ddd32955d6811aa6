"""Is reading many small GeoTIFFs the bottleneck of pretraining? Read speed of SEN12MS-like patches.

Writes ``--patches`` SEN12MS-shaped triplets (S1: 2 x 256 x 256 float32, S2: 13 x 256 x 256 uint16, the
published dataset's shapes and dtypes) in the SEN12MS folder layout, then times the training
dataset (:class:`training.data.SEN12MSDataset`: open S1 and S2, windowed read of a random crop,
NaN check, tensors) against a baseline in the same run: the *same* crops taken from arrays already
in memory (what a pre-packed shard would give at best). Also times a DataLoader with workers.

    python benchmarks/geotiff_read_speed.py [--patches 200] [--compress none|deflate] [--workers 2]

Prints a table and a JSON object: samples/s per process, the GeoTIFF/in-memory time ratio, and how
many reader processes one GPU step rate would need (``--gpu-pairs-per-s``: pairs per second a GPU
trains at; default 400, an assumption about Swin-T x 2 at 224 px, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.data import SEN12MSDataset, SEN12MSOptions, collate_samples  # noqa: E402
from training.sampling import ResumableBatchSampler, SampleKey  # noqa: E402


def write_tree(root: Path, n: int, compress: str) -> None:
    rng = np.random.default_rng(0)
    transform = Affine.translation(375412.0, 8116742.0) @ Affine.scale(10.0, -10.0)
    extra = {} if compress == "none" else {"compress": compress}
    for i in range(n):
        for sensor, data in (
            ("s1", rng.normal(-12, 4, (2, 256, 256)).astype(np.float32)),
            ("s2", rng.integers(100, 4000, (13, 256, 256)).astype(np.uint16)),
        ):
            path = root / "ROIs1158_spring" / f"{sensor}_1" / f"ROIs1158_spring_{sensor}_1_p{i}.tif"
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=data.shape[0], dtype=data.dtype,
                               crs="EPSG:32737", transform=transform, **extra) as dst:
                dst.write(data)


def time_samples(get, n: int, repeat: int = 2) -> float:
    """Best-of-``repeat`` seconds per sample."""
    best = float("inf")
    for r in range(repeat):
        start = time.perf_counter()
        for i in range(n):
            get(SampleKey(i, 1000 * r + i))
        best = min(best, (time.perf_counter() - start) / n)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patches", type=int, default=200)
    p.add_argument("--compress", choices=["none", "deflate", "lzw"], default="none")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--gpu-pairs-per-s", type=float, default=400.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, object] = {"patches": args.patches, "compress": args.compress}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_tree(root, args.patches, args.compress)
        for crop in (128, 224):
            ds = SEN12MSDataset(SEN12MSOptions(root=str(root), seasons=("ROIs1158_spring",), crop_size=crop))
            cache = {i: ds.read(i, np.random.default_rng(0)) for i in range(len(ds))}  # full arrays in memory

            class InMemory(type(ds)):  # same __getitem__ (crop, NaN check, tensors), reads from memory
                def read(self, index, rng):
                    raw = cache[index]
                    r, c = (int(v) for v in rng.integers(0, 256 - crop + 1, 2))
                    return type(raw)(raw.s1[:, r:r + crop, c:c + crop], raw.s2[:, r:r + crop, c:c + crop], {})

            memory = InMemory.__new__(InMemory)
            memory.__dict__.update(ds.__dict__)
            memory.options = SEN12MSOptions(root=str(root), crop_size=crop)
            geotiff_s = time_samples(ds.__getitem__, len(ds))
            memory_s = time_samples(memory.__getitem__, len(ds))
            results[f"crop{crop}"] = {
                "geotiff_ms_per_pair": round(geotiff_s * 1e3, 3), "memory_ms_per_pair": round(memory_s * 1e3, 3),
                "geotiff_pairs_per_s_per_process": round(1 / geotiff_s, 1), "ratio_geotiff_over_memory": round(geotiff_s / memory_s, 2),
                "reader_processes_for_gpu_rate": round(args.gpu_pairs_per_s * geotiff_s, 2),
            }
        ds = SEN12MSDataset(SEN12MSOptions(root=str(root), seasons=("ROIs1158_spring",), crop_size=224))
        sampler = ResumableBatchSampler(len(ds), 20, seed=0)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=args.workers,
                                             collate_fn=collate_samples, persistent_workers=False)
        start = time.perf_counter()
        count = sum(batch["s1"].shape[0] for batch in loader)
        elapsed = time.perf_counter() - start
        results["dataloader_224"] = {"workers": args.workers, "pairs_per_s": round(count / elapsed, 1), "note": "includes worker start-up"}
    for crop in (128, 224):
        r = results[f"crop{crop}"]
        print(f"crop {crop}: GeoTIFF {r['geotiff_ms_per_pair']:.2f} ms/pair ({r['geotiff_pairs_per_s_per_process']:.0f} pairs/s per process), "
              f"in-memory {r['memory_ms_per_pair']:.2f} ms/pair, ratio {r['ratio_geotiff_over_memory']:.1f}x; "
              f"{r['reader_processes_for_gpu_rate']:.2f} reader processes keep up with {args.gpu_pairs_per_s:.0f} pairs/s")
    d = results["dataloader_224"]
    print(f"DataLoader, {d['workers']} workers, crop 224: {d['pairs_per_s']:.0f} pairs/s")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
