"""The streaming loop: windowed read -> batch -> infer -> blend -> windowed write.

Threads joined by bounded queues and a fixed set of reusable batch buffers, so that memory is
bounded whatever the scene size:

* ``readers`` **reader** threads (:class:`~.readpool.ReaderPool`), each with its own dataset
  handles (rasterio handles stay in the thread that opened them) and its own column band of the
  scene, read, decode and mask the tiles of every batch in parallel, pad edge tiles with nodata and
  remove the S2 offset; batches reach the compute loop in plan order, so the output is
  bit-identical for every number of readers;
* the **calling thread** runs the model and blends tile outputs into a :class:`RowBlender`; on
  CUDA a :class:`~.feed.DeviceFeed` copies the next batch to the device while this one computes;
* a **writer** compresses and writes finished row stripes.

Batch buffers: 3 with one reader (one being filled, one queued, one in compute), 4 with more
(one more for readers running ahead of the others), whatever the number of readers; each
``B x tile_h x tile_w x (4 x (C_s1 + C_s2) + 2)`` bytes (:func:`~.readpool.batch_buffer_bytes`),
plus one finished stripe queued for the writer and the one being written.

GDAL and PyTorch release the GIL while they work, so reading and writing overlap with compute.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import numpy as np
import torch

from .blend import RowBlender
from .feed import DeviceFeed
from .progress import Progress
from .readpool import Batch, BatchBuffers, PoolStopped, ReaderPool, read_tile
from .sources import ModalitySource
from .tiling import TilePlan
from .writers import OutputSet

__all__ = ["Batch", "BatchBuffers", "ReaderPool", "read_tile", "stream_scene"]

_DONE = object()


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


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


def _in_order(pool: ReaderPool, feed: DeviceFeed | None) -> Iterator[Batch]:
    """The pool's batches in plan order; with a staging feed, batch ``k + 1``'s copy to the device
    is started before batch ``k`` is handed out (so it overlaps ``k``'s compute)."""
    if feed is None or not feed.staging:
        for k in range(pool.n_batches):
            yield pool.get(k)
        return
    pending: Batch | None = None
    for k in range(pool.n_batches):
        batch = pool.get(k)
        feed.stage(batch)
        if pending is not None:
            yield pending
        pending = batch
    if pending is not None:
        yield pending


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
    readers: int = 1,
    device: torch.device | str | None = None,
    feed: DeviceFeed | None = None,
    on_pool: Callable[[ReaderPool], None] | None = None,
) -> int:
    """Run the whole scene through ``infer`` and write it through ``outputs``.

    Args:
        plan: the tiling.
        sources: open-able readers per modality, all on the scene grid.
        infer: a batch -> ``(n, C, rows, cols)`` float32 outputs for the non-empty tiles of the
            batch, in order (NaN where a tile had no valid data); :meth:`Batch.modality` gives
            the engine inputs (the staged device tensors on CUDA).
        channels / groups: output channels and their nodata groups (see :class:`RowBlender`).
        outputs: where finished rows go (already open).
        batch_size: tiles per forward pass.
        s2_offset: digital numbers subtracted from S2 before inference.
        start_row: output rows above this are already on disk (resume).
        progress: progress line, updated per batch.
        on_first_batch: called with the first batch that holds data, before any inference
            (input checks that need values).
        queue_batches: finished batches that may wait for the compute loop.
        readers: reader threads (a resolved count: see :func:`~.feed.resolve_readers`).
        device: the compute device: on CUDA, batches are pinned and staged ahead of use
            (:class:`~.feed.DeviceFeed`); ``feed`` overrides it.
        on_pool: called with the reader pool once it exists (tests and benchmarks count buffers).

    Returns:
        The number of tiles processed.
    """
    first_row = plan.first_row_touching(start_row) if start_row else 0
    tiles = plan.tiles(first_row)
    last_in_row = {}
    for tile in tiles:
        last_in_row[tile.row] = tile
    blender = RowBlender(plan, channels, groups, start_row=start_row)
    if feed is None and device is not None:
        feed = DeviceFeed(torch.device(device))
    pool = ReaderPool(sources, plan, tiles, batch_size, s2_offset, readers, queued=queue_batches,
                      pin=feed is not None and feed.pin)
    if on_pool is not None:
        on_pool(pool)
    stop = pool.stop  # one flag stops readers and writer alike
    stripes: queue.Queue = queue.Queue(maxsize=1)
    writer_failure: list[BaseException] = []
    writer = threading.Thread(target=_writer_main, args=(outputs, stripes, stop, writer_failure),
                              name="s1s2-writer", daemon=True)
    pool.start()
    writer.start()
    checked = on_first_batch is None
    done = 0
    try:
        for batch in _in_order(pool, feed):
            if writer_failure:
                raise writer_failure[0]
            if not checked and not batch.empty.all():
                on_first_batch(batch)
                checked = True
            if feed is not None:
                feed.ready(batch)  # staged: the compute stream waits for the copy; host buffer back
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
            if writer_failure:
                raise writer_failure[0]
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
    except PoolStopped:
        if writer_failure:  # the writer stopped the readers: its error is the one to report
            raise writer_failure[0] from None
        raise
    finally:
        stop.set()
        pool.close()
        writer.join()
        if progress is not None:
            progress.close()
    return done
