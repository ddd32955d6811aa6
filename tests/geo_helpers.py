"""Helpers for the whole-scene tests: real GeoTIFFs written with rasterio, tiny saved models, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from conftest import REPO, TERRAMESH, tiny_config
from s1s2_encoders import load_backbone
from s1s2_encoders.geo import SceneInputs

UTM = CRS.from_epsg(32633)
WGS84 = CRS.from_epsg(4326)
UTM_TRANSFORM = from_origin(404400.0, 5342400.0, 10.0, 10.0)
WGS84_TRANSFORM = from_origin(13.25, 48.2, 0.0001, 0.0001)
BIGEARTHNET = REPO / "examples" / "data" / "bigearthnet"
TM = "282D_485L_3_3"  # one bundled TerraMesh pair (224 px, S2 L1C with the +1000 offset)
TM_S1 = TERRAMESH / "S1RTC" / f"{TM}.tif"
TM_S2 = TERRAMESH / "S2L1C" / f"{TM}.tif"
TM_INPUTS = SceneInputs(s1=[TM_S1], s2=[TM_S2], s2_offset=1000)
BEN_PAIRS = (
    ("S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48", "S2A_MSIL2A_20170613T101031_87_48"),
    ("S1A_IW_GRDH_1SDV_20170617T064724_29UPU_36_85", "S2A_MSIL2A_20170617T113321_36_85"),
)


def write_raster(path: Path, data: np.ndarray, crs=UTM, transform: Affine = UTM_TRANSFORM, nodata=None,
                 descriptions: Sequence[str] | None = None, tags: dict | None = None, band_tags: dict | None = None,
                 **profile) -> Path:
    """Write ``(C, H, W)`` as a GeoTIFF."""
    data = np.asarray(data)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata, **profile) as dst:
        dst.write(data)
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
        if tags:
            dst.update_tags(**tags)
        for band, values in (band_tags or {}).items():
            dst.update_tags(band, **values)
    return path


def smooth_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random field in [0, 1] (looks more like land cover than white noise)."""
    coarse = rng.random((h // 16 + 2, w // 16 + 2))
    up = np.kron(coarse, np.ones((16, 16)))[:h, :w]
    return (up + 0.2 * rng.random((h, w))) / 1.2


def synthetic_scene(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """S1 (2, h, w) float32 dB in about [-25, -3] and S2 (13, h, w) uint16 L1C DN (B10 small)."""
    rng = np.random.default_rng(seed)
    base = smooth_field(rng, h, w)
    s1 = np.stack([-22 + 18 * base, -26 + 16 * smooth_field(rng, h, w)]).astype(np.float32)
    s2 = np.stack([200 + 3500 * (0.5 * base + 0.5 * smooth_field(rng, h, w)) for _ in range(13)])
    s2[10] = 5 + 20 * rng.random((h, w))
    return s1, s2.astype(np.uint16)


def write_scene(folder: Path, h: int, w: int, seed: int = 0, crs=UTM, transform: Affine = UTM_TRANSFORM,
                name: str = "scene") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    s1, s2 = synthetic_scene(h, w, seed)
    return (write_raster(folder / f"{name}_s1.tif", s1, crs, transform),
            write_raster(folder / f"{name}_s2.tif", s2, crs, transform))


def save_tiny(folder: Path, architecture: str = "swin-t", normalization: str = "sslt_channel_max", seed: int = 0):
    """A tiny backbone saved as a checkpoint folder (what ``--model FOLDER`` loads)."""
    torch.manual_seed(seed)
    model = load_backbone(tiny_config(architecture, normalization))
    model.save_pretrained(folder, overwrite=True)
    return model


def read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {"crs": src.crs, "transform": src.transform, "nodata": src.nodata,
                            "descriptions": src.descriptions, "tags": src.tags(), "profile": src.profile}


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m s1s2_encoders ARGS`` in a subprocess (the worktree's package, not an installed one)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "s1s2_encoders", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def files_in(folder: Path) -> list[str]:
    """Every entry of a folder, hidden ones included (to see leftover partial files)."""
    return sorted(p.name for p in folder.iterdir())


def fail_encoding_at(monkeypatch, call: int, exc: BaseException) -> None:
    """Make the ``call``-th ``InferenceEngine.encode_batch`` of the test raise ``exc`` (an interrupted
    scene); ``monkeypatch.undo()`` or the end of the test restores it."""
    from s1s2_encoders.models.engine import InferenceEngine

    encode, calls = InferenceEngine.encode_batch, []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise exc
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(InferenceEngine, "encode_batch", failing)
