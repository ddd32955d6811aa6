"""Accumulate overlapping tile outputs into a stripe of output rows, and hand back finished rows.

Tiles arrive in row-major order. Output rows above the next tile row's first cell can receive no
more contributions once a tile row is done, so they are final: they leave the buffer and go to the
writer. The buffer holds at most one tile row of cells plus one block of rows, across the scene's
width, whatever the scene's height.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .tiling import Tile, TilePlan, tile_weights


class RowBlender:
    """Weighted sums of tile outputs over a rolling band of output rows.

    Args:
        plan: the tiling.
        channels: output channels.
        groups: channel ranges ``(start, stop)`` that are valid or not together (the S1 and the
            S2 features of a cell have their own nodata); default one group of all channels.
        start_row: first output row to keep (rows above are dropped: resuming).
        block_rows: rows are handed out in multiples of this (the output's block height).
    """

    def __init__(self, plan: TilePlan, channels: int, groups: Sequence[tuple[int, int]] | None = None,
                 start_row: int = 0, block_rows: int = 32):
        self.plan = plan
        self.channels = channels
        self.groups = list(groups) if groups else [(0, channels)]
        self.block_rows = block_rows
        self.width = plan.out_width
        self.height = plan.out_height
        self.capacity = plan.tile_cells[0] + block_rows
        self.row0 = start_row
        self.sums = np.zeros((channels, self.capacity, self.width), dtype=np.float32)
        self.weights = np.zeros((len(self.groups), self.capacity, self.width), dtype=np.float32)
        self.tile_weights = tile_weights(plan)

    def add(self, tile: Tile, values: np.ndarray) -> None:
        """Add one tile's output ``(C, rows, cols)`` (NaN where the tile had no data)."""
        cell = self.plan.cell
        cy, cx = tile.y // cell, tile.x // cell
        top = max(cy, self.row0)
        bottom = min(cy + values.shape[1], self.height)
        right = min(cx + values.shape[2], self.width)
        if bottom <= top or right <= cx:
            return
        if bottom - self.row0 > self.capacity:
            raise RuntimeError(f"tile at row {tile.y} reaches past the blending buffer (rows {self.row0}+{self.capacity})")
        src = values[:, top - cy: bottom - cy, : right - cx]
        weight = self.tile_weights[top - cy: bottom - cy, : right - cx]
        rows = slice(top - self.row0, bottom - self.row0)
        cols = slice(cx, right)
        for g, (start, stop) in enumerate(self.groups):
            part = src[start:stop]
            finite = np.isfinite(part).all(axis=0)
            w = np.where(finite, weight, np.float32(0))
            self.sums[start:stop, rows, cols] += np.where(finite, part, np.float32(0)) * w
            self.weights[g, rows, cols] += w

    def pop(self, until: int) -> tuple[int, np.ndarray] | None:
        """Finished rows ``[row0, until)`` as ``(row0, (C, n, W) float32)``, NaN where no tile
        had data; ``until`` is rounded down to a whole block unless it is the last row."""
        if until < self.height:
            until = (until // self.block_rows) * self.block_rows
        n = until - self.row0
        if n <= 0:
            return None
        out = np.empty((self.channels, n, self.width), dtype=np.float32)
        for g, (start, stop) in enumerate(self.groups):
            w = self.weights[g, :n]
            with np.errstate(invalid="ignore", divide="ignore"):
                np.divide(self.sums[start:stop, :n], w, out=out[start:stop])
            out[start:stop, w == 0] = np.nan
        row0 = self.row0
        keep = self.capacity - n
        self.sums[:, :keep] = self.sums[:, n:]
        self.sums[:, keep:] = 0
        self.weights[:, :keep] = self.weights[:, n:]
        self.weights[:, keep:] = 0
        self.row0 = until
        return row0, out
