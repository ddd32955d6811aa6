"""Write small fake SEN12MS / DFC2020 trees with rasterio, in the exact published layout and naming.

SEN12MS cannot be downloaded here; the readers are tested on trees that have its folder structure,
file names, band counts, dtypes and georeferencing (UTM, 10 m). The real SEN12MS S1 patch bundled
in ``examples/data/sen12ms`` is copied in as one of the S1 files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

REPO = Path(__file__).resolve().parents[1]
REAL_S1 = REPO / "examples" / "data" / "sen12ms" / "ROIs1158_spring_s1_1_p30.tif"
REAL_LC = REPO / "examples" / "data" / "sen12ms" / "ROIs1158_spring_lc_1_p30.tif"


def write_tif(path: Path, data: np.ndarray, crs: str = "EPSG:32737", origin=(375412.339, 8116742.836)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = data.shape
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=count, dtype=data.dtype,
        crs=crs, transform=Affine.translation(origin[0], origin[1]) @ Affine.scale(10.0, -10.0),
    ) as dst:
        dst.write(data)
    return path


def fake_s1(rng: np.random.Generator, size: int = 256, nan_rows: slice | None = None) -> np.ndarray:
    s1 = np.stack([rng.normal(-10, 3, (size, size)), rng.normal(-16, 3, (size, size))]).astype(np.float32)
    if nan_rows is not None:
        s1[:, nan_rows, :] = np.nan
    return s1


def fake_s2(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    s2 = rng.integers(200, 4000, size=(13, size, size)).astype(np.uint16)
    s2[10] = rng.integers(5, 30, size=(size, size))  # B10 cirrus
    return s2


def sen12ms_path(root: Path, season: str, sensor: str, scene: int, patch: int) -> Path:
    return root / season / f"{sensor}_{scene}" / f"{season}_{sensor}_{scene}_p{patch}.tif"


def make_sen12ms_tree(root: Path, size: int = 256, nan_patch: tuple[str, int, int] | None = None) -> list[tuple[str, int, int]]:
    """Patches: spring scene 1 (p30 = the real S1 patch, p31), summer scene 5 (p7); returns the
    (season, scene, id) triplets. ``nan_patch`` gets a NaN stripe in S1."""
    rng = np.random.default_rng(0)
    triplets = [("ROIs1158_spring", 1, 30), ("ROIs1158_spring", 1, 31), ("ROIs1868_summer", 5, 7)]
    for season, scene, patch in triplets:
        s1_path = sen12ms_path(root, season, "s1", scene, patch)
        if (season, scene, patch) == ("ROIs1158_spring", 1, 30) and size == 256:
            s1_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REAL_S1, s1_path)
            shutil.copyfile(REAL_LC, sen12ms_path(root, season, "lc", scene, patch).parent.mkdir(parents=True, exist_ok=True) or sen12ms_path(root, season, "lc", scene, patch))
        else:
            nan_rows = slice(100, 140) if nan_patch == (season, scene, patch) else None
            write_tif(s1_path, fake_s1(rng, size, nan_rows))
            lc = rng.integers(1, 18, size=(4, size, size)).astype(np.uint8)
            write_tif(sen12ms_path(root, season, "lc", scene, patch), lc)
        write_tif(sen12ms_path(root, season, "s2", scene, patch), fake_s2(rng, size))
    return triplets


def make_dfc2020_tree(root: Path, split: str, ids: list[int], with_dfc: bool = True, size: int = 256) -> None:
    season = f"ROIs0000_{split}"
    rng = np.random.default_rng(1)
    for patch in ids:
        write_tif(sen12ms_path(root, season, "s1", 0, patch), fake_s1(rng, size))
        write_tif(sen12ms_path(root, season, "s2", 0, patch), fake_s2(rng, size))
        write_tif(sen12ms_path(root, season, "lc", 0, patch), rng.integers(1, 18, size=(4, size, size)).astype(np.uint8))
        if with_dfc:
            write_tif(sen12ms_path(root, season, "dfc", 0, patch), rng.integers(0, 11, size=(1, size, size)).astype(np.uint8))
