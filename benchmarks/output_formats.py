"""What the output formats cost: the COG layout of a 10980 px scene's embedding file, and int8 vs float32.

    python benchmarks/output_formats.py                      # both parts at full size (a few minutes)
    python benchmarks/output_formats.py --quick              # a smaller grid (160 x 160 cells x 1536)
    python benchmarks/output_formats.py --cells 40 --channels 64 --tiny   # a smoke test (seconds)

(a) COG cost. A 10980 x 10980 px Sentinel-2 tile embedded densely at stride 32 gives 343 x 343 cells; dual
    Swin-T has 1536 channels (768 per tower). This writes such a grid through :class:`GeoTiffSink` exactly
    as a scene run does (32-row stripes of ``(C, 32, W)`` float32, tiled 256 x 32, DEFLATE with the
    floating-point predictor; for int8 the stripes go through ``quantize_int8`` with the two modality
    groups), then lays the finished tiled file out as a COG with :func:`write_cog` (the commit step of a
    scene run). Times: the tiled write (including compression and the final flush) and the COG layout,
    separately; sizes on disk of the tiled file and of the COG (whose overviews add to it); how much the
    process's resident memory grows while the COG is laid out (GDAL_CACHEMAX 128 MB, as the CLI sets it). The values are
    SYNTHETIC: smooth per-channel fields (products of sines with random frequencies and phases) plus 10 %
    white noise, so the compression ratios are only indicative (real embeddings compress less than smooth
    fields; see (b) for real-model values).
(b) int8 vs float32 on the bundled real pairs (examples/data/terramesh, three 224 px L1C pairs, and
    examples/data/bigearthnet, two 120 px per-band L2A patches): ``embed_scene`` at stride 32 and 16 with
    a real-size dual Swin-T built from the registry config (``swin-s1s2``) with RANDOM weights (no network
    here: the converted weights are not downloaded), float32 compute, once ``quantize="none"`` and once
    ``"int8"`` (COG files both). Reported: file-size ratio float32 / int8, and the cosine between each
    de-quantised int8 cell and the float cell, per modality part (min and mean over all cells), plus the
    largest error against the unit-normalised float value (bound: 0.5 / 127). The files hold few cells (7 x 7
    at stride 32), so their header (1536 band descriptions, per-band scale and offset) weighs much; the
    ratio of the compressed full-resolution tiles alone is reported too.

Prints the CPU class first (``avx512_bf16`` on Zen 4) and one JSON line per result; ``--json`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rasterio.crs import CRS  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from common import cpu_name  # noqa: E402

from s1s2_encoders import load_backbone  # noqa: E402
from s1s2_encoders.geo import SceneInputs, embed_scene  # noqa: E402
from s1s2_encoders.durable import fsync_file  # noqa: E402
from s1s2_encoders.geo.cog import Overviews, write_cog  # noqa: E402
from s1s2_encoders.geo.grid import Grid  # noqa: E402
from s1s2_encoders.geo.quantize import INT8_NODATA, INT8_SCALE, normalize_groups, quantize_int8  # noqa: E402
from s1s2_encoders.geo.writers import GeoTiffSink, cog_path  # noqa: E402
from s1s2_encoders.models.compute import cpu_flags  # noqa: E402
from s1s2_encoders.registry import get_entry  # noqa: E402

BIGEARTHNET = REPO / "examples" / "data" / "bigearthnet"
TERRAMESH = REPO / "examples" / "data" / "terramesh"
TINY = {"embed_dim": 16, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4)}


def cpu_class() -> str:
    """``avx512_bf16`` (e.g. Zen 4), ``amx_bf16``, or ``no native bf16``."""
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in cpu_flags()]
    return ", ".join(found) if found else "no native bf16"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class RssPeak:
    """The highest resident memory while a block runs (sampled every 20 ms in a thread)."""

    def __enter__(self) -> "RssPeak":
        import threading

        self.before = self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


# ---------------------------------------------------------------------------------------- (a) COG cost
def synthetic_stripe(rng_params: tuple[np.ndarray, ...], row0: int, rows: int, width: int, noise: np.random.Generator) -> np.ndarray:
    """``(C, rows, width)`` float32: a smooth field per channel plus 10 % noise."""
    fr, fc, pr, pc = rng_params
    r = np.arange(row0, row0 + rows, dtype=np.float32)
    c = np.arange(width, dtype=np.float32)
    field = np.sin(r[None, :, None] * fr[:, None, None] + pr[:, None, None]) * np.cos(c[None, None, :] * fc[:, None, None] + pc[:, None, None])
    return (field + 0.1 * noise.standard_normal(field.shape, dtype=np.float32)).astype(np.float32)


def cog_cost(folder: Path, cells: int, channels: int, quantize: str, compress: str) -> dict:
    """Write a ``cells`` x ``cells`` x ``channels`` embedding grid as a scene run does; time and size it."""
    grid = Grid(CRS.from_epsg(32633), from_origin(300000.0, 5000000.0, 320.0, 320.0), cells, cells)
    half = channels // 2
    groups = [(0, half), (half, channels)]
    int8 = quantize == "int8"
    final = folder / f"emb_{quantize}.tif"
    sink = GeoTiffSink(
        final, grid, channels, "int8" if int8 else "float32", INT8_NODATA if int8 else float("nan"),
        [f"b{i}" for i in range(channels)], {"S1S2_PRODUCT": "embedding (benchmark)"}, compress=compress,
        convert=(lambda v: quantize_int8(v, groups, axis=0)) if int8 else None,
        scales=[1 / INT8_SCALE] * channels if int8 else None, offsets=[0.0] * channels if int8 else None,
        overviews=Overviews("unit-int8", INT8_NODATA, tuple(groups)) if int8 else None,
    )
    rng = np.random.default_rng(0)
    params = (rng.uniform(0.01, 0.2, channels).astype(np.float32), rng.uniform(0.01, 0.2, channels).astype(np.float32),
              rng.uniform(0, 6.3, channels).astype(np.float32), rng.uniform(0, 6.3, channels).astype(np.float32))
    noise = np.random.default_rng(1)
    # Generated before the clock starts (a scene run gets its stripes from the model).
    stripes = [synthetic_stripe(params, row0, min(32, cells - row0), cells, noise) for row0 in range(0, cells, 32)]
    started = time.perf_counter()
    sink.open()
    for i, stripe in enumerate(stripes):
        sink.write_rows(32 * i, stripe)
    sink.prepare()  # cog=False: marks it complete and closes (the last blocks are compressed and written)
    fsync_file(sink.temp)  # as the commit does before anything is renamed
    tiled_s = time.perf_counter() - started
    tiled_bytes = sink.temp.stat().st_size
    del stripes
    started = time.perf_counter()
    with RssPeak() as memory:
        write_cog(sink.temp, cog_path(final), sink.overview_rule(), compress)  # what commit does with cog=True
    cog_s = time.perf_counter() - started
    cog_bytes = cog_path(final).stat().st_size
    raw_bytes = cells * cells * channels * (1 if int8 else 4)
    sink.temp.unlink()
    cog_path(final).unlink()
    return {"part": "cog", "cells": cells, "channels": channels, "quantize": quantize, "compress": compress,
            "tiled_write_s": round(tiled_s, 4), "cog_layout_s": round(cog_s, 4), "raw_mib": round(raw_bytes / 2**20, 3),
            "tiled_mib": round(tiled_bytes / 2**20, 3), "cog_mib": round(cog_bytes / 2**20, 3),
            "cog_over_tiled": round(cog_bytes / tiled_bytes, 3),
            "cog_layout_rss_growth_mib": round(memory.peak - memory.before), "peak_rss_mib": round(peak_rss_mib()),
            "gdal_cachemax": os.environ.get("GDAL_CACHEMAX"), "load_average": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------------------------- (b) int8 vs float32
def scenes() -> list[tuple[str, SceneInputs]]:
    out = []
    for sample in ("282D_485L_3_3", "38D_378R_2_3", "433D_629L_3_1"):
        out.append((f"terramesh/{sample}", SceneInputs(s1=[TERRAMESH / "S1RTC" / f"{sample}.tif"],
                                                       s2=[TERRAMESH / "S2L1C" / f"{sample}.tif"], s2_offset=1000)))
    for line in (BIGEARTHNET / "pairs.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            s1, s2 = line.split()
            out.append((f"bigearthnet/{Path(s2).name}", SceneInputs(s1=[BIGEARTHNET / s1], s2=[BIGEARTHNET / s2])))
    return out


def pixel_bytes(path: Path) -> int:
    """Compressed bytes of the full-resolution tiles (what is left once the header, the band descriptions and
    the per-band scale / offset metadata, which dominate files of a few cells, are set aside)."""
    import rasterio

    with rasterio.open(path) as ds:
        bands = ds.indexes if ds.tags(ns="IMAGE_STRUCTURE").get("INTERLEAVE") == "BAND" else [1]
        return sum(int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band))
                   for band in bands for (row, col), _ in ds.block_windows(band))


def part_cosines(a: np.ndarray, b: np.ndarray, groups) -> np.ndarray:
    values = []
    for start, end in groups:
        x = a[start:end].reshape(end - start, -1).astype(np.float64)
        y = b[start:end].reshape(end - start, -1).astype(np.float64)
        ok = ~np.isnan(x).any(axis=0) & ~np.isnan(y).any(axis=0)
        x, y = x[:, ok], y[:, ok]
        values.append((x * y).sum(axis=0) / (np.linalg.norm(x, axis=0) * np.linalg.norm(y, axis=0)))
    return np.concatenate(values)


def int8_vs_float(folder: Path, tiny: bool, strides: list[int]) -> list[dict]:
    import warnings

    import rasterio

    config = get_entry("swin-s1s2").config()
    if tiny:
        config = config.replace(tower_kwargs=dict(TINY), name="tiny-swin")
    torch.manual_seed(0)
    model = load_backbone(config)  # random weights: nothing is downloaded
    chosen = scenes()
    if tiny:  # a smoke test: one pair of each source
        chosen = [chosen[0], chosen[-1]]
    rows = []
    for stride in strides:
        sizes, data = {"none": 0, "int8": 0}, {"none": 0, "int8": 0}
        cosines, errors, cells = [], [], 0
        for name, inputs in chosen:
            files = {}
            for quantize in ("none", "int8"):
                out = folder / f"{name.replace('/', '_')}_{stride}_{quantize}.tif"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the L2A patches lack B10 (and say so)
                    result = embed_scene(model, inputs, out, stride=stride, tile=224, overlap=0, dtype="float32",
                                         quantize=quantize, progress=False, overwrite=True)
                sizes[quantize] += out.stat().st_size
                data[quantize] += pixel_bytes(out)
                files[quantize] = out
            with rasterio.open(files["none"]) as ds:
                floats = ds.read()
            with rasterio.open(files["int8"]) as ds:
                back = ds.read().astype(np.float32) * np.float32(ds.scales[0]) + np.float32(ds.offsets[0])
                back[ds.read() == INT8_NODATA] = np.nan
            widths = model.pyramid_channels
            level = (4, 8, 16, 32).index(stride)
            groups = [(0, widths["s1"][level]), (widths["s1"][level], widths["s1"][level] + widths["s2"][level])]
            cosines.append(part_cosines(back, floats, groups))
            errors.append(float(np.nanmax(np.abs(back - normalize_groups(floats, groups)))))
            cells += floats.shape[1] * floats.shape[2]
            assert result.grid.height == floats.shape[1]
        c = np.concatenate(cosines)
        rows.append({"part": "int8", "model": f"{config.name} ({'tiny towers' if tiny else 'real-size Swin-T'}, random weights)",
                     "stride": stride, "channels": groups[1][1], "scenes": len(chosen), "cells": cells,
                     "float32_kib": round(sizes["none"] / 1024, 1), "int8_kib": round(sizes["int8"] / 1024, 1),
                     "size_ratio": round(sizes["none"] / sizes["int8"], 2),
                     "pixel_data_ratio": round(data["none"] / data["int8"], 2), "cosine_min": round(float(c.min()), 5),
                     "cosine_mean": round(float(c.mean()), 6), "max_abs_error": round(max(errors), 5),
                     "error_bound": round(0.5 / 127, 5)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=343, help="grid side in cells (default 343: 10980 px at stride 32)")
    parser.add_argument("--channels", type=int, default=1536, help="channels (default 1536: dual Swin-T at stride 32)")
    parser.add_argument("--quick", action="store_true", help="a 160 x 160 grid for (a), stride 32 only for (b)")
    parser.add_argument("--tiny", action="store_true", help="(b) with tiny Swin towers on one pair of each source (a smoke test, not a measurement)")
    parser.add_argument("--parts", default="cog,int8", help="cog, int8 or both (default)")
    parser.add_argument("--compress", default="deflate", choices=("deflate", "zstd", "lzw", "none"))
    parser.add_argument("--workdir", type=Path, default=None, help="where the files are written (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("GDAL_CACHEMAX", "128")  # what s1s2 embed / predict set (MB), unless set already
    cells = 160 if args.quick and args.cells == 343 else args.cells
    print(f"# CPU class: {cpu_class()}; {cpu_name()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        if "cog" in args.parts:
            for quantize in ("none", "int8"):
                row = cog_cost(folder, cells, args.channels, quantize, args.compress)
                print(json.dumps(row), flush=True)
                results.append(row)
        if "int8" in args.parts:
            for row in int8_vs_float(folder, args.tiny, [32] if args.quick or args.tiny else [32, 16]):
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.json:
        args.json.write_text(json.dumps({"cpu_class": cpu_class(), "cpu": cpu_name(), "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
