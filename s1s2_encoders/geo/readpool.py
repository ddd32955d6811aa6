"""Ordered parallel reading of tile batches: N reader threads, one fixed batch order.

Reading a 448 px tile of a DEFLATE-compressed S1/S2 pair (decode, nodata masks, S2 offset, edge
padding) costs about 10 ms of CPU; one reader thread therefore caps a scene at ~100 tiles/s whatever
runs the model. A :class:`ReaderPool` spreads whole batches over ``N`` threads:

* batch ``k`` (tiles ``k*B .. k*B+B-1`` in the plan's row-major order) is read by worker ``k % N``,
  each worker with **its own** dataset handles (rasterio handles stay in the thread that opened
  them; GDAL releases the GIL while it decodes, so the workers run in parallel);
* the consumer takes batch ``k`` from worker ``k % N``'s queue, so batches arrive in plan order
  whatever order the workers finish in, and the output is bit-identical for every ``N``;
* a worker may start batch ``k`` only once batch ``k - W`` has been released by the consumer, with
  ``W = N + queued + 1`` batch buffers in all (``N`` being filled, ``queued`` waiting, one in
  compute): memory is bounded and a free buffer always exists for the batch the consumer waits for
  (no deadlock, whatever the speeds).

The first error of any worker stops all of them and is raised by :meth:`ReaderPool.get` (the
original exception object); :meth:`ReaderPool.close` stops and joins every thread.
"""

from __future__ import annotations

import contextlib
import queue
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

    ``in_use`` / ``peak_in_use`` count the buffers handed out (for tests and benchmarks).
    """

    def __init__(self, sources: dict[str, ModalitySource], plan: TilePlan, batch_size: int, count: int,
                 pin: bool = False):
        self.count = count
        self.free: queue.Queue = queue.Queue()
        self.pinned = bool(pin and torch.cuda.is_available())
        self._lock = threading.Lock()
        self.in_use = 0
        self.peak_in_use = 0
        for _ in range(count):
            data = {m: self._zeros((batch_size, src.n_channels, plan.tile_h, plan.tile_w), torch.float32)
                    for m, src in sources.items()}
            valid = {m: self._zeros((batch_size, plan.tile_h, plan.tile_w), torch.bool) for m in sources}
            self.free.put((data, valid))

    def _zeros(self, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
        # A numpy view of a torch tensor keeps the tensor's (possibly pinned) memory alive.
        return torch.zeros(shape, dtype=dtype, pin_memory=self.pinned).numpy()

    def take(self, stop: threading.Event):
        """A free buffer ``(data, valid)``, or ``None`` once ``stop`` is set."""
        while not stop.is_set():
            try:
                taken = self.free.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            with self._lock:
                self.in_use += 1
                self.peak_in_use = max(self.peak_in_use, self.in_use)
            return taken
        return None

    def give_back(self, taken) -> None:
        with self._lock:
            self.in_use -= 1
        self.free.put(taken)


class ReaderPool:
    """``readers`` threads that read the batches of ``tiles`` and deliver them in order.

    Args:
        sources: the modalities to read (each worker opens its own handles).
        plan / tiles: the tiling and the tiles to read, in order.
        batch_size: tiles per batch (the last batch may be shorter).
        s2_offset: digital numbers subtracted from S2.
        readers: worker threads (capped at the number of batches).
        queued: finished batches that may wait for the consumer beyond one per worker being filled.
        pin: page-locked buffers (CUDA compute).
    """

    def __init__(self, sources: dict[str, ModalitySource], plan: TilePlan, tiles: list[Tile], batch_size: int,
                 s2_offset: float, readers: int, *, queued: int = 1, pin: bool = False):
        self.sources, self.plan, self.s2_offset = sources, plan, s2_offset
        self.chunks = [tiles[i: i + batch_size] for i in range(0, len(tiles), batch_size)]
        self.readers = max(1, min(readers, len(self.chunks)))
        self.window = self.readers + queued + 1
        self.buffers = BatchBuffers(sources, plan, min(batch_size, len(tiles)) or 1, self.window, pin=pin)
        self.stop = threading.Event()
        self.failure: list[BaseException] = []
        self._queues: list[queue.Queue] = [queue.Queue() for _ in range(self.readers)]
        self._released = 0
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

    # ------------------------------------------------------------------ workers
    def _may_start(self, k: int) -> bool:
        """Wait until batch ``k`` fits in the window of buffers (False once stopped)."""
        with self._turn:
            while k >= self._released + self.window:
                if self.stop.is_set():
                    return False
                self._turn.wait(_POLL_S)
        return not self.stop.is_set()

    def _released_one(self, taken) -> None:
        self.buffers.give_back(taken)
        with self._turn:
            self._released += 1
            self._turn.notify_all()

    def _work(self, j: int) -> None:
        try:
            with contextlib.ExitStack() as stack:
                handles = {m: stack.enter_context(src.reader()) for m, src in self.sources.items()}
                for k in range(j, self.n_batches, self.readers):
                    if not self._may_start(k):
                        return
                    batch = self._read(handles, k)
                    if batch is None:
                        return
                    self._queues[j].put(batch)
        except BaseException as exc:  # the first one is raised by get() in the consumer
            with self._turn:
                self.failure.append(exc)
            self.stop.set()

    def _read(self, handles: dict, k: int) -> Batch | None:
        taken = self.buffers.take(self.stop)
        if taken is None:
            return None
        chunk = self.chunks[k]
        n = len(chunk)
        data = {m: array[:n] for m, array in taken[0].items()}
        valid = {m: array[:n] for m, array in taken[1].items()}
        for slot, tile in enumerate(chunk):
            if self.stop.is_set():
                self.buffers.give_back(taken)
                return None
            read_tile(handles, self.plan, tile, self.s2_offset, data, valid, slot)
        has_data = {m: valid[m].reshape(n, -1).any(axis=1) for m in self.sources}
        empty = ~np.any(list(has_data.values()), axis=0)
        keep = ~empty
        full = {m: bool(valid[m].all()) if keep.all() else bool(valid[m][keep].all()) for m in self.sources}
        once = threading.Lock()
        state = {"released": False}

        def release() -> None:
            with once:
                if state["released"]:
                    return
                state["released"] = True
            self._released_one(taken)

        return Batch(chunk, data, valid, empty, release=release, full=full, index=k)

    # ------------------------------------------------------------------ consumer
    def get(self, k: int) -> Batch:
        """Batch ``k`` (call for k = 0, 1, 2 ... in order, releasing each when done).

        Raises:
            the first exception of any worker, as it was raised.
            PoolStopped: :attr:`stop` was set from outside.
            RuntimeError: a worker ended without delivering (should not happen).
        """
        q = self._queues[k % self.readers]
        thread = self._threads[k % self.readers]
        while True:
            if self.failure:
                raise self.failure[0]
            try:
                batch = q.get(timeout=_POLL_S)
            except queue.Empty:
                if self.stop.is_set() and not self.failure:
                    raise PoolStopped(f"reading stopped before batch {k}") from None
                if not thread.is_alive() and q.empty():
                    if self.failure:
                        raise self.failure[0]
                    raise RuntimeError(f"{thread.name} thread ended without batch {k}") from None
                continue
            assert batch.index == k, (batch.index, k)
            return batch

    def close(self) -> None:
        """Stop the workers and wait for them (they notice within ~0.1 s, or after the tile being read)."""
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
