"""Ordered parallel reading of tile batches: N reader threads, one fixed batch order.

Reading a 448 px tile of a DEFLATE-compressed S1/S2 pair (decode, nodata masks, S2 offset, edge
padding) costs about 10-15 ms of CPU; one reader thread therefore caps a scene at ~70-100 tiles/s
whatever runs the model. A :class:`ReaderPool` spreads the reading over ``N`` threads:

* the scene is split into ``N`` **column bands** of tiles; reader ``j`` reads, for every batch, the
  tiles of its band, with **its own** dataset handles (rasterio handles stay in the thread that
  opened them; GDAL releases the GIL while it decodes, so the readers run in parallel). Bands keep
  each reader on its own GeoTIFF blocks: neighbouring tiles (left/right and the next tile row)
  share blocks, and GDAL caches blocks per dataset handle, so handing whole batches to readers in
  turn made every reader decode most blocks again (measured: 2x the decoding CPU per tile with 2
  readers; with bands, 1.1-1.4x: the blocks at band edges);
* batch ``k`` (tiles ``k*B .. k*B+B-1`` in the plan's row-major order, as with one reader) lives in
  buffer ``k % W``; the last reader to finish its part of batch ``k`` marks it ready, and the
  consumer takes batches in order ``0, 1, 2 ...``, so the output is bit-identical for every ``N``;
* readers may start batch ``k`` only once batch ``k - W`` has been released by the consumer, with
  ``W`` batch buffers in all: ``queued + 2`` with one reader (one being filled, ``queued`` waiting,
  one in compute) and ``queued + 3`` with more (one more for readers that run ahead of the
  others): memory is bounded and does not grow with ``N``.

The first error of any reader stops all of them and is raised by :meth:`ReaderPool.get` (the
original exception object); :meth:`ReaderPool.close` stops and joins every thread.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from rasterio.windows import Window

from ..models.engine import ModalityBatch
from .sources import ModalitySource
from .tiling import Tile, TilePlan

_POLL_S = 0.1  # how often blocked threads look at the stop flag


class PoolStopped(RuntimeError):
    """The pool was stopped from outside (e.g. the writer failed) before delivering a batch."""


@dataclass
class Batch:
    """Tiles read together.

    Attributes:
        tiles: the tiles, in order.
        data: per modality ``(B, C, tile_h, tile_w)`` float32 raw values (S1 dB, S2 DN with the
            offset removed), 0 where invalid.
        valid: per modality ``(B, tile_h, tile_w)`` bool.
        empty: per tile, True when no modality has a single valid pixel (not worth a forward pass).
        release: hands the arrays back to the readers for reuse (call when done with them; calling
            it again does nothing).
        full: per modality, True when every pixel of the non-empty tiles is valid (no mask needed);
            computed by the reader so that the compute thread does not scan the masks.
        index: the batch's number in the plan.
        staged: per modality ``(data, valid or None)`` tensors already on the compute device (set
            by :class:`~.feed.DeviceFeed`), or ``None``.
        valid_pixels: per modality, and ``"any"`` for the union of the modalities, ``(B,)`` counts of
            valid pixels in each tile.
    """

    tiles: list[Tile]
    data: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    empty: np.ndarray
    release: Callable[[], None] = lambda: None
    full: dict[str, bool] = field(default_factory=dict)
    index: int = 0
    staged: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None
    event: Any = None  # CUDA event recorded after the staging copies
    valid_pixels: dict[str, np.ndarray] = field(default_factory=dict)

    def modality(self, modality: str, present: Sequence[int] | None) -> ModalityBatch:
        """The non-empty tiles of one modality, ready for an engine: the staged device tensors when
        there are any, else views of the host arrays (copied only when some tiles are empty)."""
        keep = ~self.empty
        everything = bool(keep.all())  # the usual case: no copy
        full = self.full.get(modality)
        if self.staged is not None:
            data, valid = self.staged[modality]
            if not everything:
                rows = torch.from_numpy(np.flatnonzero(keep)).to(data.device)
                data = data.index_select(0, rows)
                valid = valid.index_select(0, rows) if valid is not None else None
            return ModalityBatch(data, None if full else valid, present)
        data = self.data[modality] if everything else self.data[modality][keep]
        valid_np = self.valid[modality] if everything else self.valid[modality][keep]
        if full is None:  # not computed by a reader: the engine's own rule
            return ModalityBatch.from_numpy(data, valid_np, present)
        return ModalityBatch(torch.from_numpy(data), None if full else torch.from_numpy(valid_np[:, None]), present)


def read_tile(readers: dict, plan: TilePlan, tile: Tile, s2_offset: float, data: dict[str, np.ndarray],
              valid: dict[str, np.ndarray], slot: int) -> None:
    """Read one tile of every modality into ``data[m][slot]`` / ``valid[m][slot]`` (tile-sized);
    the part past the scene's edge is zero and invalid."""
    h = min(plan.tile_h, plan.height - tile.y)
    w = min(plan.tile_w, plan.width - tile.x)
    window = Window(tile.x, tile.y, w, h)
    for modality, reader in readers.items():
        if (h, w) != (plan.tile_h, plan.tile_w):
            data[modality][slot] = 0.0
            valid[modality][slot] = False
        values, ok = reader.read(window, out=data[modality][slot, :, :h, :w], valid=valid[modality][slot, :h, :w])
        if modality == "s2" and s2_offset:
            values -= np.float32(s2_offset)
            np.copyto(values, np.float32(0), where=~ok[None])


def batch_buffer_bytes(sources: dict[str, ModalitySource], plan: TilePlan, batch_size: int) -> int:
    """Bytes of one batch buffer: ``B x tile_h x tile_w x (4 x sum(C_m) + n_modalities)``."""
    channels = sum(src.n_channels for src in sources.values())
    return batch_size * plan.tile_h * plan.tile_w * (4 * channels + len(sources))


class BatchBuffers:
    """A fixed set of batch arrays that readers fill and the consumer hands back when done.

    Reusing them keeps memory flat (no allocator churn tile after tile) and bounds it: at most
    ``count`` batches exist at any time, whatever the scene size. ``pin``: page-locked host memory
    (for non-blocking copies to a CUDA device; only when CUDA is available).

    ``in_use`` / ``peak_in_use`` count the buffers holding a batch (for tests and benchmarks).
    """

    def __init__(self, sources: dict[str, ModalitySource], plan: TilePlan, batch_size: int, count: int,
                 pin: bool = False):
        self.count = count
        self.pinned = bool(pin and torch.cuda.is_available())
        self._lock = threading.Lock()
        self.in_use = 0
        self.peak_in_use = 0
        self.arrays = []
        for _ in range(count):
            data = {m: self._zeros((batch_size, src.n_channels, plan.tile_h, plan.tile_w), torch.float32)
                    for m, src in sources.items()}
            valid = {m: self._zeros((batch_size, plan.tile_h, plan.tile_w), torch.bool) for m in sources}
            self.arrays.append((data, valid))

    def _zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
        # A numpy view of a torch tensor keeps the tensor's (possibly pinned) memory alive.
        return torch.zeros(shape, dtype=dtype, pin_memory=self.pinned).numpy()

    def claim(self) -> None:
        with self._lock:
            self.in_use += 1
            self.peak_in_use = max(self.peak_in_use, self.in_use)

    def give_back(self) -> None:
        with self._lock:
            self.in_use -= 1


def column_owners(tiles: Sequence[Tile], readers: int) -> dict[int, int]:
    """Tile column offset -> the reader whose band it is in (``readers`` bands of about equal width)."""
    columns = sorted({t.x for t in tiles})
    return {x: i * readers // max(1, len(columns)) for i, x in enumerate(columns)}


class ReaderPool:
    """``readers`` threads that read the batches of ``tiles`` and deliver them in order.

    Args:
        sources: the modalities to read (each reader opens its own handles).
        plan / tiles: the tiling and the tiles to read, in order.
        batch_size: tiles per batch (the last batch may be shorter).
        s2_offset: digital numbers subtracted from S2.
        readers: reader threads (capped at the number of tile columns).
        queued: finished batches that may wait for the consumer.
        pin: page-locked buffers (CUDA compute).
    """

    def __init__(self, sources: dict[str, ModalitySource], plan: TilePlan, tiles: list[Tile], batch_size: int,
                 s2_offset: float, readers: int, *, queued: int = 1, pin: bool = False):
        self.sources, self.plan, self.s2_offset = sources, plan, s2_offset
        self.chunks = [tiles[i: i + batch_size] for i in range(0, len(tiles), batch_size)]
        self.readers = max(1, min(readers, len({t.x for t in tiles}) or 1))
        self.window = queued + 2 + (1 if self.readers > 1 else 0)
        self.owner = column_owners(tiles, self.readers)
        self.buffers = BatchBuffers(sources, plan, min(batch_size, len(tiles)) or 1, self.window, pin=pin)
        self.stop = threading.Event()
        self.failure: list[BaseException] = []
        self._released = 0
        self._remaining: dict[int, int] = {}  # batch -> readers still filling it
        self._ready: dict[int, Batch] = {}
        self._turn = threading.Condition()
        self._threads = [threading.Thread(target=self._work, args=(j,), name=f"s1s2-reader-{j}", daemon=True)
                         for j in range(self.readers)]

    @property
    def n_batches(self) -> int:
        return len(self.chunks)

    def start(self) -> "ReaderPool":
        for thread in self._threads:
            thread.start()
        return self

    # ------------------------------------------------------------------ readers
    def _may_start(self, k: int) -> bool:
        """Wait until batch ``k``'s buffer is free (False once stopped); the first reader there claims it."""
        with self._turn:
            while k >= self._released + self.window:
                if self.stop.is_set():
                    return False
                self._turn.wait(_POLL_S)
            if k not in self._remaining:
                self._remaining[k] = self.readers
                self.buffers.claim()
        return not self.stop.is_set()

    def _work(self, j: int) -> None:
        try:
            with contextlib.ExitStack() as stack:
                handles = {m: stack.enter_context(src.reader()) for m, src in self.sources.items()}
                for k in range(self.n_batches):
                    if not self._may_start(k):
                        return
                    data, valid = self._views(k)
                    for slot, tile in enumerate(self.chunks[k]):
                        if self.owner[tile.x] != j:
                            continue
                        if self.stop.is_set():
                            return
                        read_tile(handles, self.plan, tile, self.s2_offset, data, valid, slot)
                    with self._turn:
                        self._remaining[k] -= 1
                        last = self._remaining[k] == 0
                    if last:  # every part is in: this reader finishes the batch
                        batch = self._finish(k, data, valid)
                        with self._turn:
                            del self._remaining[k]
                            self._ready[k] = batch
                            self._turn.notify_all()
        except BaseException as exc:  # the first one is raised by get() in the consumer
            with self._turn:
                self.failure.append(exc)
                self._turn.notify_all()
            self.stop.set()

    def _views(self, k: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        n = len(self.chunks[k])
        data, valid = self.buffers.arrays[k % self.window]
        return {m: a[:n] for m, a in data.items()}, {m: a[:n] for m, a in valid.items()}

    def _finish(self, k: int, data: dict[str, np.ndarray], valid: dict[str, np.ndarray]) -> Batch:
        n = len(self.chunks[k])
        # Valid pixels per tile, counted here in the reader (GeoParquet chips report them; on CUDA the
        # host masks are handed back before the compute thread could look at them).
        counts = {m: np.count_nonzero(valid[m].reshape(n, -1), axis=1) for m in self.sources}
        union = np.count_nonzero(np.logical_or.reduce([valid[m] for m in self.sources]).reshape(n, -1), axis=1)
        empty = union == 0
        keep = ~empty
        full = {m: bool(valid[m].all()) if keep.all() else bool(valid[m][keep].all()) for m in self.sources}
        once = threading.Lock()
        state = {"released": False}

        def release() -> None:
            with once:
                if state["released"]:
                    return
                state["released"] = True
            self.buffers.give_back()
            with self._turn:
                self._released += 1
                self._turn.notify_all()

        return Batch(self.chunks[k], data, valid, empty, release=release, full=full, index=k,
                     valid_pixels={"any": union, **counts})

    # ------------------------------------------------------------------ consumer
    def get(self, k: int) -> Batch:
        """Batch ``k`` (call for k = 0, 1, 2 ... in order, releasing each when done).

        Raises:
            the first exception of any reader, as it was raised.
            PoolStopped: :attr:`stop` was set from outside.
            RuntimeError: the readers ended without delivering (should not happen).
        """
        with self._turn:
            while k not in self._ready:
                if self.failure:
                    raise self.failure[0]
                if self.stop.is_set():
                    raise PoolStopped(f"reading stopped before batch {k}")
                if not any(t.is_alive() for t in self._threads):
                    raise RuntimeError(f"the reader threads ended without batch {k}")
                self._turn.wait(_POLL_S)
            return self._ready.pop(k)

    def close(self) -> None:
        """Stop the readers and wait for them (they notice within ~0.1 s, or after the tile being read)."""
        self.stop.set()
        with self._turn:
            self._turn.notify_all()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join()

    def __enter__(self) -> "ReaderPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
