"""Where the tiles of a scene go, and the smooth weights that blend their overlaps.

All tile origins are multiples of :data:`ALIGN` (32 pixels, the towers' total stride), so cell
``(i, j)`` of a tile's stride-``s`` feature map always lands on the same scene cell whichever tile
computed it, and the scene's output grid is simply the input grid scaled by ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError
from ..models.towers import TOTAL_STRIDE

ALIGN = TOTAL_STRIDE


def tile_starts(size: int, tile: int, step: int, align: int = ALIGN) -> list[int]:
    """Origins of tiles of length ``tile`` covering ``[0, size)``.

    Tiles start every ``step`` pixels; the last one is pulled back so that it ends at most
    ``align - 1`` pixels past the edge (its origin stays a multiple of ``align``). The part past
    the edge is read as nodata.
    """
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step))
    last = -(-(size - tile) // align) * align
    if last > starts[-1]:
        starts.append(last)
    return starts


@dataclass(frozen=True)
class Tile:
    """One tile: its row in the tile grid and its pixel origin in the scene."""

    row: int
    y: int
    x: int


@dataclass(frozen=True)
class TilePlan:
    """How a scene of ``height`` x ``width`` pixels is cut into tiles and mapped onto output cells.

    Attributes:
        tile_h / tile_w: tile size in pixels (the requested tile, shrunk to the scene rounded up
            to 32 when the scene is smaller).
        cell: input pixels per output cell: the pyramid stride (dense), or the tile size (one
            pooled vector per tile).
        ys / xs: tile origins along each axis.
        overlap: requested overlap in pixels (dense mode).
        pooled: one output cell per tile (tile grid) rather than a dense feature map.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    cell: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    overlap: int
    pooled: bool = False

    @classmethod
    def dense(cls, height: int, width: int, tile: int, overlap: int, stride: int) -> "TilePlan":
        """Overlapping tiles whose stride-``stride`` maps are blended into one map (``stride`` 1
        for per-pixel outputs such as segmentation probabilities, 4-32 for feature maps)."""
        if stride < 1 or ALIGN % stride:
            raise OptionError(f"stride must divide {ALIGN} (1, 2, 4, 8, 16 or 32), got {stride}")
        if tile < ALIGN or tile % ALIGN:
            raise OptionError(f"tile must be a positive multiple of {ALIGN} pixels, got {tile}")
        if overlap < 0 or overlap % ALIGN or overlap >= tile:
            raise OptionError(
                f"overlap must be a multiple of {ALIGN} pixels in [0, tile), got {overlap} (tile {tile})"
            )
        tile_h = min(tile, -(-height // ALIGN) * ALIGN)
        tile_w = min(tile, -(-width // ALIGN) * ALIGN)
        step = tile - overlap
        return cls(height, width, tile_h, tile_w, stride, tuple(tile_starts(height, tile_h, step)),
                   tuple(tile_starts(width, tile_w, step)), overlap, pooled=False)

    @classmethod
    def grid(cls, height: int, width: int, tile: int) -> "TilePlan":
        """Non-overlapping ``tile`` x ``tile`` tiles, one output cell each (pooled vectors,
        classification); edge tiles extend past the scene and only their valid pixels count."""
        if tile < 1:
            raise OptionError(f"tile must be positive, got {tile}")
        ys = tuple(range(0, height, tile))
        xs = tuple(range(0, width, tile))
        return cls(height, width, tile, tile, tile, ys, xs, 0, pooled=True)

    @property
    def out_height(self) -> int:
        return -(-self.height // self.cell)

    @property
    def out_width(self) -> int:
        return -(-self.width // self.cell)

    @property
    def tile_cells(self) -> tuple[int, int]:
        """Output cells per tile ``(rows, columns)``."""
        return -(-self.tile_h // self.cell), -(-self.tile_w // self.cell)

    @property
    def n_tiles(self) -> int:
        return len(self.ys) * len(self.xs)

    def tiles(self, first_row: int = 0) -> list[Tile]:
        """All tiles in row-major order, starting at tile row ``first_row``."""
        return [Tile(r, y, x) for r, y in enumerate(self.ys) if r >= first_row for x in self.xs]

    def row_end_cell(self, row: int) -> int:
        """Output rows below this are final once tile rows ``<= row`` are done."""
        if row + 1 >= len(self.ys):
            return self.out_height
        return self.ys[row + 1] // self.cell

    def first_row_touching(self, cell_row: int) -> int:
        """The first tile row whose cells reach output row ``cell_row`` or below (for resuming)."""
        rows_per_tile = self.tile_cells[0]
        for r, y in enumerate(self.ys):
            if y // self.cell + rows_per_tile > cell_row:
                return r
        return len(self.ys)


def blend_weights(n_cells: int, ramp_cells: int) -> np.ndarray:
    """1-D blending weights over a tile's ``n_cells``: a raised-cosine ramp over ``ramp_cells``
    at each end, 1 in between.

    Never exactly 0 (the first cell gets ``sin^2(pi/4/ramp)``), so a cell covered by one tile only
    (at the scene edge) keeps that tile's value; where tiles overlap, the weighted mean fades
    smoothly from one tile to the next, which hides the tiles' differing context at their borders.
    """
    w = np.ones(n_cells, dtype=np.float32)
    ramp = min(ramp_cells, n_cells // 2)
    if ramp > 0:
        t = (np.arange(ramp, dtype=np.float64) + 0.5) / ramp
        up = np.sin(0.5 * math.pi * t) ** 2
        w[:ramp] = up
        w[n_cells - ramp:] = np.minimum(w[n_cells - ramp:], up[::-1])
    return w


def tile_weights(plan: TilePlan) -> np.ndarray:
    """``(rows, cols)`` weights of one tile's output cells (all ones without overlap)."""
    rows, cols = plan.tile_cells
    ramp = 0 if plan.pooled else plan.overlap // plan.cell
    return np.outer(blend_weights(rows, ramp), blend_weights(cols, ramp))
