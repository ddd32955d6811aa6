"""A PNG quick-look of a land-cover map: the scene in true colour beside the map, and a legend.

Drawn with numpy and written with rasterio's PNG driver, so no imaging library is needed; the
legend's text uses the small bitmap font in :mod:`.font`. Both panels are read decimated (GDAL
averages the input, takes the most frequent class of the map), so memory stays small for any
scene size.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning

from ..durable import commit_file
from .font import draw_text, text_size
from .sources import ModalitySource
from .writers import partial_path

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
NODATA_COLOR = (210, 210, 210)
MARGIN, GAP, SWATCH, TEXT_SCALE = 16, 16, 16, 2


def panel_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """Size of a panel whose longer side is ``long_side`` pixels, keeping the aspect ratio."""
    factor = long_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def stretch(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(C, h, w)`` -> uint8 with one linear 2-98 % stretch for all channels (keeps colours)."""
    if not valid.any():
        return np.zeros(values.shape, dtype=np.uint8)
    sample = values[:, valid]
    low, high = np.percentile(sample, 2), np.percentile(sample, 98)
    scaled = (values - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def scene_quicklook(source: ModalitySource, shape: tuple[int, int], s2_offset: float = 0.0) -> tuple[np.ndarray, str]:
    """An RGB ``(3, h, w)`` uint8 picture of the input: S2 true colour (B04, B03, B02) when they
    are there, else S1 VV in grey."""
    wanted = ["B04", "B03", "B02"] if source.modality == "s2" else ["VV"]
    if not all(b in source.band_names for b in wanted):
        wanted = source.band_names[:1]
    values = source.read_decimated(wanted, shape).astype(np.float32)
    valid = np.isfinite(values).all(axis=0)
    if source.modality == "s2":
        valid &= np.any(values != 0, axis=0)
        values = values - np.float32(s2_offset)
    picture = stretch(np.where(valid, values, 0), valid)
    if picture.shape[0] == 1:
        picture = np.repeat(picture, 3, axis=0)
    picture[:, ~valid] = np.array(NODATA_COLOR, dtype=np.uint8)[:, None]
    if source.modality == "s2" and wanted == ["B04", "B03", "B02"]:
        title = "Sentinel-2 true colour"
    else:
        title = f"{'Sentinel-1' if source.modality == 's1' else 'Sentinel-2'} {wanted[0]}"
    return picture, title


def colour_map(classes: np.ndarray, colors: Sequence[Sequence[int]], nodata: int) -> np.ndarray:
    """``(h, w)`` class indices -> ``(3, h, w)`` uint8 colours (nodata in light grey)."""
    palette = np.array([*map(tuple, colors)] + [NODATA_COLOR] * (256 - len(colors)), dtype=np.uint8)
    rgb = palette[classes]
    rgb[classes == nodata] = NODATA_COLOR
    return np.moveaxis(rgb, -1, 0)


def _fit(text: str, width: int) -> str:
    while text and text_size(text, TEXT_SCALE)[1] > width:
        text = text[:-3] + ".." if len(text) > 3 else ""
    return text


def write_preview(
    path: str | Path,
    class_map: str | Path,
    source: ModalitySource,
    class_names: Sequence[str],
    class_colors: Sequence[Sequence[int]],
    *,
    s2_offset: float = 0.0,
    map_title: str = "Land cover",
    long_side: int = 512,
    nodata: int = 255,
) -> Path:
    """Write the quick-look PNG (under a temporary name, then renamed).

    Args:
        path: the PNG to write.
        class_map: the uint8 class-map GeoTIFF (read decimated with the most frequent class).
        source: the scene input shown on the left (S2 true colour, or S1 VV).
        class_names / class_colors: legend entries, ``[r, g, b]`` per class.
        s2_offset: offset removed from S2 before stretching.
        map_title: title over the map.
        long_side: pixels on the longer side of each panel.
    """
    path = Path(path)
    with rasterio.open(class_map) as src:
        shape = panel_shape(src.height, src.width, long_side)
        classes = src.read(1, out_shape=shape, resampling=Resampling.mode)
    picture, left_title = scene_quicklook(source, shape, s2_offset)
    mapped = colour_map(classes, class_colors, nodata)
    entries = [(name, tuple(color)) for name, color in zip(class_names, class_colors)]
    if (classes == nodata).any():
        entries.append(("no data", NODATA_COLOR))

    h, w = shape
    title_h = text_size("A", TEXT_SCALE)[0]
    width = 2 * MARGIN + 2 * w + GAP
    # Legend entries flow left to right and wrap at the canvas width.
    positions, x, y = [], MARGIN, 0
    for name, _ in entries:
        item = SWATCH + 6 + text_size(_fit(name, width - 2 * MARGIN - SWATCH - 6), TEXT_SCALE)[1]
        if x > MARGIN and x + item > width - MARGIN:
            x, y = MARGIN, y + SWATCH + 8
        positions.append((y, x))
        x += item + 18
    legend_h = (positions[-1][0] + SWATCH) if positions else 0
    top = MARGIN + title_h + 8
    height = top + h + GAP + legend_h + MARGIN
    canvas = np.empty((3, height, width), dtype=np.uint8)
    canvas[:] = np.array(BACKGROUND, dtype=np.uint8)[:, None, None]
    draw_text(canvas, _fit(left_title, w), MARGIN, MARGIN, INK, TEXT_SCALE)
    draw_text(canvas, _fit(map_title, w), MARGIN, MARGIN + w + GAP, INK, TEXT_SCALE)
    canvas[:, top: top + h, MARGIN: MARGIN + w] = picture
    canvas[:, top: top + h, MARGIN + w + GAP: MARGIN + 2 * w + GAP] = mapped
    legend_top = top + h + GAP
    for (name, color), (ly, lx) in zip(entries, positions):
        y0 = legend_top + ly
        canvas[:, y0: y0 + SWATCH, lx: lx + SWATCH] = np.array(INK, dtype=np.uint8)[:, None, None]
        canvas[:, y0 + 1: y0 + SWATCH - 1, lx + 1: lx + SWATCH - 1] = np.array(color, dtype=np.uint8)[:, None, None]
        draw_text(canvas, _fit(name, width - lx - SWATCH - 6 - MARGIN), y0 + (SWATCH - title_h) // 2, lx + SWATCH + 6,
                  INK, TEXT_SCALE)
    temp = partial_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a picture, not a map layer
            # The tags go into PNG text chunks: they mark the file as this package's (many-scene runs
            # replace only their own files) and say which map it shows.
            with rasterio.open(temp, "w", driver="PNG", width=width, height=height, count=3, dtype="uint8",
                               WRITE_METADATA_AS_TEXT="YES") as dst:
                dst.write(canvas)
                dst.update_tags(S1S2_PRODUCT="map preview", S1S2_MAP=Path(class_map).name)
        commit_file(temp, path)
    finally:
        temp.unlink(missing_ok=True)
        Path(str(temp) + ".aux.xml").unlink(missing_ok=True)
    return path
