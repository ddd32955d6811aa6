"""The streaming loop: windowed read -> batch -> infer -> blend -> windowed write.

Three threads, joined by bounded queues and a fixed set of reusable batch buffers, so that at most
three batches and two finished stripes exist at once whatever the scene size:

* a **reader** opens the input files (rasterio handles stay in the thread that opened them),
  reads tile windows straight into a batch buffer, pads edge tiles with nodata and removes the
  S2 offset;
* the **calling thread** runs the model and blends tile outputs into a :class:`RowBlender`;
* a **writer** compresses and writes finished row stripes.

GDAL and PyTorch release the GIL while they work, so reading and writing overlap with compute.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
from rasterio.windows import Window

from .blend import RowBlender
from .progress import Progress
from .sources import ModalitySource
from .tiling import Tile, TilePlan
from .writers import OutputSet

_DONE = object()


@dataclass
class Batch:
    """Tiles read together.

    Attributes:
        tiles: the tiles, in order.
        data: per modality ``(B, C, tile_h, tile_w)`` float32 raw values (S1 dB, S2 DN with the
            offset removed), 0 where invalid.
        valid: per modality ``(B, tile_h, tile_w)`` bool.
        empty: per tile, True when no modality has a single valid pixel (not worth a forward pass).
        release: hands the arrays back to the reader for reuse (call when done with them).
    """

    tiles: list[Tile]
    data: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    empty: np.ndarray
    release: Callable[[], None] = lambda: None


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, thread: threading.Thread):
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if not thread.is_alive() and q.empty():
                raise RuntimeError(f"{thread.name} thread ended without a result") from None


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


class BatchBuffers:
    """A fixed set of batch arrays that the reader fills and the caller hands back when done.

    Reusing them keeps memory flat (no allocator churn tile after tile) and bounds it: at most
    ``count`` batches exist at any time, whatever the scene size.
    """

    def __init__(self, sources: dict[str, ModalitySource], plan: TilePlan, batch_size: int, count: int):
        self.free: queue.Queue = queue.Queue()
        for _ in range(count):
            data = {m: np.zeros((batch_size, src.n_channels, plan.tile_h, plan.tile_w), np.float32)
                    for m, src in sources.items()}
            valid = {m: np.zeros((batch_size, plan.tile_h, plan.tile_w), bool) for m in sources}
            self.free.put((data, valid))

    def take(self, stop: threading.Event):
        while not stop.is_set():
            try:
                return self.free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None


def _reader_main(sources, plan, tiles, batch_size, s2_offset, out_q, stop, buffers: BatchBuffers):
    import contextlib

    try:
        with contextlib.ExitStack() as stack:
            readers = {m: stack.enter_context(src.reader()) for m, src in sources.items()}
            for start in range(0, len(tiles), batch_size):
                chunk = tiles[start: start + batch_size]
                n = len(chunk)
                taken = buffers.take(stop)
                if taken is None:
                    return
                data = {m: array[:n] for m, array in taken[0].items()}
                valid = {m: array[:n] for m, array in taken[1].items()}
                for slot, tile in enumerate(chunk):
                    read_tile(readers, plan, tile, s2_offset, data, valid, slot)
                empty = ~np.any([valid[m].reshape(n, -1).any(axis=1) for m in sources], axis=0)
                batch = Batch(chunk, data, valid, empty, release=lambda t=taken: buffers.free.put(t))
                if not _put(out_q, batch, stop):
                    return
        _put(out_q, _DONE, stop)
    except BaseException as exc:  # handed to the calling thread, which raises it
        _put(out_q, _Failure(exc), stop)


def _writer_main(outputs: OutputSet, in_q: queue.Queue, stop: threading.Event, failure: list):
    try:
        while True:
            try:
                item = in_q.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            outputs.write_rows(*item)
    except BaseException as exc:
        failure.append(exc)
        stop.set()


def stream_scene(
    *,
    plan: TilePlan,
    sources: dict[str, ModalitySource],
    infer: Callable[[Batch], np.ndarray],
    channels: int,
    groups: list[tuple[int, int]] | None,
    outputs: OutputSet,
    batch_size: int,
    s2_offset: float = 0.0,
    start_row: int = 0,
    progress: Progress | None = None,
    on_first_batch: Callable[[Batch], None] | None = None,
    queue_batches: int = 1,
) -> int:
    """Run the whole scene through ``infer`` and write it through ``outputs``.

    Args:
        plan: the tiling.
        sources: open-able readers per modality, all on the scene grid.
        infer: a batch -> ``(n, C, rows, cols)`` float32 outputs for the non-empty tiles of the
            batch, in order (NaN where a tile had no valid data).
        channels / groups: output channels and their nodata groups (see :class:`RowBlender`).
        outputs: where finished rows go (already open).
        batch_size: tiles per forward pass.
        s2_offset: digital numbers subtracted from S2 before inference.
        start_row: output rows above this are already on disk (resume).
        progress: progress line, updated per batch.
        on_first_batch: called with the first batch that holds data, before any inference
            (input checks that need values).

    Returns:
        The number of tiles processed.
    """
    first_row = plan.first_row_touching(start_row) if start_row else 0
    tiles = plan.tiles(first_row)
    last_in_row = {}
    for tile in tiles:
        last_in_row[tile.row] = tile
    blender = RowBlender(plan, channels, groups, start_row=start_row)
    stop = threading.Event()
    batches: queue.Queue = queue.Queue(maxsize=queue_batches)
    stripes: queue.Queue = queue.Queue(maxsize=1)
    # One batch being filled, queue_batches waiting, one being inferred.
    buffers = BatchBuffers(sources, plan, min(batch_size, len(tiles)) or 1, queue_batches + 2)
    writer_failure: list[BaseException] = []
    reader = threading.Thread(
        target=_reader_main, args=(sources, plan, tiles, batch_size, s2_offset, batches, stop, buffers),
        name="s1s2-reader", daemon=True,
    )
    writer = threading.Thread(target=_writer_main, args=(outputs, stripes, stop, writer_failure),
                              name="s1s2-writer", daemon=True)
    reader.start()
    writer.start()
    checked = on_first_batch is None
    done = 0
    try:
        while True:
            item = _get(batches, reader)
            if item is _DONE:
                break
            if isinstance(item, _Failure):
                raise item.exc
            if writer_failure:
                raise writer_failure[0]
            batch: Batch = item
            if not checked and not batch.empty.all():
                on_first_batch(batch)
                checked = True
            results = infer(batch) if not batch.empty.all() else None
            batch.release()
            k = 0
            for tile, empty in zip(batch.tiles, batch.empty):
                if not empty:
                    blender.add(tile, results[k])
                    k += 1
                if last_in_row[tile.row] is tile:
                    stripe = blender.pop(plan.row_end_cell(tile.row))
                    if stripe is not None and not _put(stripes, stripe, stop):
                        break
            done += len(batch.tiles)
            if progress is not None:
                progress.update(len(batch.tiles))
        stripe = blender.pop(plan.out_height)
        if stripe is not None:
            _put(stripes, stripe, stop)
        _put(stripes, _DONE, stop)
        writer.join()
        if writer_failure:
            raise writer_failure[0]
    finally:
        stop.set()
        reader.join()
        writer.join()
        if progress is not None:
            progress.close()
    return done
