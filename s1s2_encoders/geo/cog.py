"""A finished tiled GeoTIFF -> a Cloud-Optimized GeoTIFF (GDAL's COG layout) with internal overviews.

Scene outputs are streamed into a tiled partial file (:mod:`.writers`); this module's one job is the
step at the end: compute the overview levels, then let GDAL's COG driver lay the file out (IFDs first,
overviews before the full resolution, ``LAYOUT=COG`` in the ``IMAGE_STRUCTURE`` metadata).

The overview levels are computed here with numpy, not by GDAL's resampling, because the rules the
outputs need are not GDAL's:

* ``"average"`` (float embeddings, probabilities): the mean of each 2 x 2 block over its valid cells;
  NaN cells are left out, a block with no valid cell is NaN.
* ``"unit-int8"`` (int8 embeddings, :mod:`.quantize`): de-quantise, average the valid cells, scale each
  modality part back to unit length and re-quantise (GDAL could only average the int8 codes).
* ``"mode"`` (class maps): the most frequent valid class of each 2 x 2 block (ties: the smallest class
  number), nodata where the block has none.
* ``"nearest"``: the top-left cell of each block.

Each level is 2 x 2 blocks of the level above it (as GDAL itself builds levels), read in row stripes
and band chunks of about :data:`STRIPE_BYTES` and written in row stripes, so memory stays bounded. The levels go to temporary tiled files,
a VRT (written by GDAL from the full-resolution file, so it carries every tag, band description, nodata,
colour table, scale and offset) names them as its overviews, and the COG driver copies that VRT with
``OVERVIEWS=FORCE_USE_EXISTING``. Levels are added until the smallest fits in one COG block (at least one
level for any raster larger than one cell).

GDAL 3.10's COG driver writes pixel-interleaved tiles (one tile holds every band of its cells), so the
block size shrinks with the band count to keep one uncompressed tile at most :data:`MAX_TILE_BYTES`
(1536 float32 bands: 64 x 64 blocks; int8: 128 x 128; a class map: 512 x 512), and to the raster's size
for small rasters.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import Affine
from rasterio.windows import Window

from ..durable import fsync_file
from ..errors import OptionError
from .quantize import dequantize_int8, quantize_int8

OVERVIEW_METHODS = ("average", "unit-int8", "mode", "nearest")
MAX_TILE_BYTES = 32 * 2**20
"""The largest uncompressed COG tile (all bands of a block): bounds what a reader decodes per tile."""
BLOCK_SIZES = (512, 256, 128, 64, 32, 16)
STRIPE_BYTES = 16 * 2**20
"""How much (as float32) one overview step reads at a time: row stripes of all bands, read in band chunks."""
LEVEL_BLOCK_H = 16


@dataclass(frozen=True)
class Overviews:
    """How overview cells aggregate the cells below them.

    Attributes:
        method: one of :data:`OVERVIEW_METHODS`.
        nodata: the no-data value of the file (NaN for float files); ``mode`` leaves it out.
        groups: ``(start, end)`` channel range of each modality part (``unit-int8`` only).
    """

    method: str
    nodata: float | int | None = None
    groups: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.method not in OVERVIEW_METHODS:
            raise OptionError(f"overview method must be one of {', '.join(OVERVIEW_METHODS)}, got {self.method!r}")
        if self.method == "unit-int8" and not self.groups:
            raise OptionError("unit-int8 overviews need the channel groups of the modality parts")

    def describe(self) -> str:
        """The rule in words (written to the file as a tag)."""
        return {
            "average": "mean of the valid cells of each 2 x 2 block of the level above (NaN left out)",
            "unit-int8": "de-quantised valid cells of each 2 x 2 block of the level above averaged, each modality "
                         "part scaled back to unit length, re-quantised (round(127 x), -128 nodata)",
            "mode": "most frequent valid class of each 2 x 2 block of the level above (ties: smallest class)",
            "nearest": "top-left cell of each 2 x 2 block of the level above",
        }[self.method]


def cog_block_size(count: int, dtype: str, height: int | None = None, width: int | None = None) -> int:
    """The COG block size (pixels, square): the largest whose tile of ``count`` bands fits
    :data:`MAX_TILE_BYTES`, and no larger than needed to hold a ``height`` x ``width`` raster in one block
    (TIFF tiles are padded to full size: a 512 px tile of a 7 x 7 raster would be mostly padding)."""
    per_cell = count * np.dtype(dtype).itemsize
    fits = [size for size in BLOCK_SIZES if size * size * per_cell <= MAX_TILE_BYTES] or [BLOCK_SIZES[-1]]
    if height is not None and width is not None:
        enough = [size for size in fits if size >= max(height, width)]
        if enough:
            return enough[-1]
    return fits[0]


def overview_shapes(height: int, width: int, block: int) -> list[tuple[int, int]]:
    """``(height, width)`` of each overview level (factor 2, 4, ...): until one block holds the level,
    at least one level unless the raster is a single cell."""
    shapes: list[tuple[int, int]] = []
    h, w = height, width
    while (h > 1 or w > 1) and (not shapes or max(h, w) > block):
        h, w = -(-h // 2), -(-w // 2)
        shapes.append((h, w))
    return shapes


def _blocks(values: np.ndarray, fill) -> np.ndarray:
    """``(C, h, w)`` -> ``(C, ceil(h/2), ceil(w/2), 4)``: the 2 x 2 block of each output cell, padded with ``fill``."""
    c, h, w = values.shape
    h2, w2 = -(-h // 2), -(-w // 2)
    if (h2 * 2, w2 * 2) != (h, w):
        padded = np.full((c, h2 * 2, w2 * 2), fill, dtype=values.dtype)
        padded[:, :h, :w] = values
        values = padded
    return values.reshape(c, h2, 2, w2, 2).transpose(0, 1, 3, 2, 4).reshape(c, h2, w2, 4)


def _mean_valid(values: np.ndarray) -> np.ndarray:
    """Float ``(C, h, w)`` with NaN for no data -> the NaN-ignoring 2 x 2 mean (NaN where a block has no value)."""
    blocks = _blocks(values.astype(np.float32, copy=False), np.nan)
    valid = ~np.isnan(blocks)
    total = np.where(valid, blocks, 0).sum(axis=-1, dtype=np.float64)
    count = valid.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _mode(values: np.ndarray, nodata) -> np.ndarray:
    """Integer classes ``(C, h, w)`` -> the most frequent valid class of each 2 x 2 block (ties: smallest)."""
    blocks = _blocks(values, nodata if nodata is not None else 0)
    valid = blocks != nodata if nodata is not None else np.ones(blocks.shape, dtype=bool)
    # votes[..., k]: how many valid cells of the block hold candidate k's class
    votes = ((blocks[..., :, None] == blocks[..., None, :]) & valid[..., None, :]).sum(axis=-1)
    score = np.where(valid, votes.astype(np.int64) * 1024 - blocks.astype(np.int64), np.iinfo(np.int64).min)
    pick = np.take_along_axis(blocks, np.argmax(score, axis=-1)[..., None], axis=-1)[..., 0]
    if nodata is not None:
        pick = np.where(valid.any(axis=-1), pick, nodata)
    return pick.astype(values.dtype)


def reduce_2x2(values: np.ndarray, overviews: Overviews) -> np.ndarray:
    """One overview step: ``(C, h, w)`` -> ``(C, ceil(h/2), ceil(w/2))`` of the same dtype, by ``overviews.method``.

    ``h`` must be even unless this is the last stripe of the level.
    """
    method = overviews.method
    if method == "average":
        if np.issubdtype(values.dtype, np.floating):
            return _mean_valid(values).astype(values.dtype)
        as_float = values.astype(np.float32)
        if overviews.nodata is not None:
            as_float[values == overviews.nodata] = np.nan
        mean = _mean_valid(as_float)
        out = np.rint(np.where(np.isnan(mean), overviews.nodata if overviews.nodata is not None else 0, mean))
        return out.astype(values.dtype)
    if method == "unit-int8":
        return quantize_int8(_per_band_step(values, overviews), overviews.groups, axis=0)
    if method == "mode":
        return _mode(values, overviews.nodata)
    return np.ascontiguousarray(values[:, ::2, ::2])  # nearest


def _per_band_step(values: np.ndarray, overviews: Overviews) -> np.ndarray:
    """The part of :func:`reduce_2x2` that each band does on its own (for ``unit-int8``: the float mean of the
    de-quantised cells, which is re-normalised across the bands of each group afterwards)."""
    if overviews.method == "unit-int8":
        return _mean_valid(dequantize_int8(values))
    return reduce_2x2(values, overviews)


def _stripe_rows(count: int, width: int) -> int:
    """Input rows per overview step: a multiple of 2 x LEVEL_BLOCK_H (so output stripes fill whole blocks
    of the level file), about STRIPE_BYTES of float32 over all bands, at least one block row."""
    step = 2 * LEVEL_BLOCK_H
    rows = STRIPE_BYTES // max(1, count * width * 4)
    return max(step, rows // step * step)


def _write_level(source: Path, target: Path, shape: tuple[int, int], overviews: Overviews) -> None:
    """Overview level ``shape`` of the raster ``source`` into the tiled file ``target``."""
    with rasterio.open(source) as src:
        height, width = shape
        profile = {
            "driver": "GTiff", "width": width, "height": height, "count": src.count, "dtype": src.dtypes[0],
            "nodata": src.nodata, "crs": src.crs,
            "transform": src.transform @ Affine.scale(src.width / width, src.height / height),
            "tiled": True, "blockxsize": min(256, -(-width // 16) * 16), "blockysize": LEVEL_BLOCK_H,
            "interleave": "band" if src.count > 1 else "pixel", "bigtiff": "IF_SAFER",
            "compress": "zstd", "zstd_level": 1,  # a temporary file: fast, still much smaller than raw
        }
        rows = _stripe_rows(src.count, src.width)
        bands = max(1, STRIPE_BYTES // (rows * src.width * 4))  # per read: memory stays ~STRIPE_BYTES x a few
        with rasterio.open(target, "w", **profile) as dst:
            for row0 in range(0, src.height, rows):
                n = min(rows, src.height - row0)
                window = Window(0, row0, src.width, n)
                parts = [_per_band_step(src.read(list(range(b + 1, min(b + bands, src.count) + 1)), window=window),
                         overviews) for b in range(0, src.count, bands)]
                out = np.concatenate(parts) if len(parts) > 1 else parts[0]
                if overviews.method == "unit-int8":  # the norm needs every band of a group
                    out = quantize_int8(out, overviews.groups, axis=0)
                dst.write(out, window=Window(0, row0 // 2, width, -(-n // 2)))


def _vrt_with_overviews(source: Path, vrt: Path, levels: Sequence[Path]) -> None:
    """A VRT of ``source`` (GDAL writes it: every tag, description, nodata, colour table, scale, offset)
    whose bands name the files ``levels`` as their overviews."""
    rasterio.shutil.copy(source, vrt, driver="VRT")
    tree = ET.parse(vrt)
    for band in tree.getroot().iter("VRTRasterBand"):
        for level in levels:
            overview = ET.SubElement(band, "Overview")
            ET.SubElement(overview, "SourceFilename", relativeToVRT="1").text = level.name
            ET.SubElement(overview, "SourceBand").text = band.get("band")
    tree.write(vrt, encoding="UTF-8")


def write_cog(source: str | os.PathLike[str], target: str | os.PathLike[str], overviews: Overviews,
              compress: str = "deflate") -> Path:
    """Turn the finished tiled GeoTIFF ``source`` into the COG ``target`` (flushed to disk), with overviews.

    Args:
        source: the full-resolution file (left as it is).
        target: the COG to write; temporary level files and a VRT are written beside it, named after it,
            and removed whatever happens. On any failure or interrupt ``target`` is removed too.
        overviews: how overview cells aggregate.
        compress: ``deflate``, ``zstd``, ``lzw`` or ``none`` (with a predictor: floating-point for float
            data, horizontal differencing for integers).

    Returns:
        ``target``.
    """
    source, target = Path(source), Path(target)
    with rasterio.open(source) as src:
        height, width, count, dtype = src.height, src.width, src.count, src.dtypes[0]
    block = cog_block_size(count, dtype, height, width)
    shapes = overview_shapes(height, width, block)
    levels = [target.with_name(f"{target.name}-ovr{k}") for k in range(1, len(shapes) + 1)]
    vrt = target.with_name(f"{target.name}.vrt")
    options = {"BLOCKSIZE": block, "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",
               "COMPRESS": compress.upper(), "OVERVIEWS": "FORCE_USE_EXISTING" if shapes else "NONE"}
    if compress != "none":
        options["PREDICTOR"] = "YES"
    try:
        previous = source
        for shape, level in zip(shapes, levels):
            _write_level(previous, level, shape, overviews)
            previous = level
        _vrt_with_overviews(source, vrt, levels)
        rasterio.shutil.copy(vrt, target, driver="COG", **options)
        fsync_file(target)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    finally:
        vrt.unlink(missing_ok=True)
        for level in levels:
            level.unlink(missing_ok=True)
    return target
