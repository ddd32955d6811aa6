"""Feeding the compute device: how many readers, how large a batch, and host-to-device staging.

* :func:`resolve_readers`: ``readers=None`` ("auto") gives the cores the compute does not need. CPU
  compute uses every core, so 1 reader; CUDA compute needs one core to drive the GPU, so this
  process's share of the cores it may run on (``os.sched_getaffinity``, divided by
  ``LOCAL_WORLD_SIZE`` under torchrun) minus one, at least 1, at most :data:`MAX_AUTO_READERS`.
* :func:`default_batch_size`: 8 tiles on CPU (more only adds latency); on a CUDA device with at
  least 16 GB, 32 tiles of 448 px (scaled by tile area, 8 .. 128), where dual Swin-T in bfloat16
  is well past the batch size at which the GPU is saturated and far from its memory limit.
* :class:`DeviceFeed`: on CUDA, batch buffers are page-locked (pinned) and each batch is copied to
  the device **non-blocking on a side stream while the previous batch computes**; the compute
  stream waits on the copy's event, and the host buffer goes back to the readers once the copy is
  done. The input checks and normalisation then run on the device (the engines normalise the
  tensors where they are: :meth:`~s1s2_encoders.models.engine.InferenceEngine.encode_batch`). On
  CPU nothing is staged: the tensors are views of the readers' arrays, as before.
* :func:`writer_env`: with CUDA compute the output GeoTIFFs compress their blocks in several GDAL
  threads (the one writer thread hands GDAL a stripe; GDAL compresses its blocks in parallel).
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import OptionError
from ..models.engine import check_batch_size as check_positive_batch_size
from .readpool import Batch

MAX_AUTO_READERS = 8
"""Upper bound of ``readers="auto"`` on CUDA (more readers than this rarely pay for their memory)."""

CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 32  # 448 px tiles on a GPU with >= 16 GB
GPU_LARGE_MEMORY = 16 * 2**30


def check_readers(readers: object) -> None:
    """``readers`` must be a positive int or ``None`` (auto).

    Raises:
        OptionError: anything else.
    """
    if readers is not None and (isinstance(readers, bool) or not isinstance(readers, int) or readers < 1):
        raise OptionError(f"readers must be a positive integer (reader threads) or None for auto, got {readers!r}")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cores_per_process() -> int:
    """This process's share of the cores: the available cores divided by the processes on this
    node (``LOCAL_WORLD_SIZE`` under torchrun: one process per GPU), at least 1."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, available_cores() // local)


def auto_readers(device: torch.device, cores: int | None = None) -> int:
    """Reader threads for ``readers=None`` on ``device``: 1 on CPU compute (it uses every core),
    ``cores - 1`` (1 .. :data:`MAX_AUTO_READERS`) on CUDA compute, ``cores`` being this process's
    share (:func:`cores_per_process`)."""
    if device.type != "cuda":
        return 1
    cores = cores_per_process() if cores is None else cores
    return max(1, min(MAX_AUTO_READERS, cores - 1))


def resolve_readers(readers: int | None, device: torch.device) -> int:
    """The number of reader threads to run (validated; ``None`` -> :func:`auto_readers`)."""
    check_readers(readers)
    return auto_readers(device) if readers is None else readers


def gdal_cache_mib(readers: int | None) -> int:
    """GDAL block cache (MiB) for ``readers`` reader threads (``None``: the auto count on CUDA when
    CUDA is available, else 1): 512, plus 64 per reader beyond the first, at most 1024.

    Tile rows overlap, so the next tile row re-reads the blocks of the last one: the cache must hold
    the strips of blocks across the scene's width that a tile row touches, two 512-row block strips
    of a 10980 px wide pair (13 x uint16 + 2 x float32: 382 MiB). With 128 MiB every tile row
    decoded them again (measured on a 10980 x 10980 pair: 17.1 ms of CPU per tile against 8.7 ms
    with 512 MiB, 58 vs 116 tiles/s with one reader). Readers share those strips (each reads its
    column band; blocks are cached per file handle), so more readers only add the blocks at band
    edges."""
    if readers is None:
        readers = auto_readers(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    return int(min(1024, 512 + 64 * (readers - 1)))


def default_batch_size(device: torch.device, tile: int = 448, memory_bytes: int | None = None) -> int:
    """Tiles per forward pass when the caller gives none: 8 on CPU and small GPUs; on a CUDA device
    with >= 16 GB, 32 at 448 px scaled by tile area (8 .. 128)."""
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    if memory_bytes is None:
        memory_bytes = torch.cuda.get_device_properties(device).total_memory if torch.cuda.is_available() else 0
    if memory_bytes < GPU_LARGE_MEMORY:
        return CPU_BATCH_SIZE
    return int(max(8, min(128, round(GPU_BATCH_SIZE * (448 / tile) ** 2))))


def writer_threads(device: torch.device, cores: int | None = None) -> int:
    """GDAL compression threads for the output files: 1 with CPU compute (the model uses every core
    and the writer is far from the bottleneck), a quarter of the cores (1 .. 4) with CUDA compute,
    where compressing float32 embeddings (8-13 ms per 448 px tile of dual Swin-T stride-32 features
    with DEFLATE on one core, measured) would otherwise cap the scene at ~80-120 tiles/s."""
    if device.type != "cuda":
        return 1
    cores = cores_per_process() if cores is None else cores
    return max(1, min(4, cores // 4))


def writer_env(device: torch.device) -> contextlib.AbstractContextManager:
    """Where to open the output files so that GDAL compresses their blocks with
    :func:`writer_threads` threads (``GDAL_NUM_THREADS`` at creation; a value the user set in the
    environment wins)."""
    threads = writer_threads(device)
    if threads <= 1 or "GDAL_NUM_THREADS" in os.environ:
        return contextlib.nullcontext()
    import rasterio

    return rasterio.Env(GDAL_NUM_THREADS=str(threads))


def check_batch_size(batch_size: object) -> None:
    """``batch_size`` must be a positive int or ``None`` (device default).

    Raises:
        OptionError: anything else.
    """
    if batch_size is not None:
        check_positive_batch_size(batch_size)


class DeviceFeed:
    """Moves batches onto the compute device ahead of their use.

    Args:
        device: the compute device.
        stage: copy batches to the device ahead of use (default: on CUDA only). ``stage=True`` on
            CPU makes the same calls with copies on the host (to test the logic without a GPU).
    """

    def __init__(self, device: torch.device, stage: bool | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self.staging = self.cuda if stage is None else bool(stage)
        self.pin = self.cuda and self.staging
        self.stream = torch.cuda.Stream(self.device) if self.cuda and self.staging else None

    def stage(self, batch: Batch) -> None:
        """Start copying ``batch`` to the device (non-blocking, on the side stream); sets
        ``batch.staged`` (and ``batch.event`` on CUDA)."""
        if not self.staging:
            return
        context = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        staged = {}
        with context:
            for m, data in batch.data.items():
                valid = None if batch.full.get(m) else torch.from_numpy(batch.valid[m][:, None])
                staged[m] = (self._copy(torch.from_numpy(data)), self._copy(valid) if valid is not None else None)
            if self.stream is not None:
                batch.event = torch.cuda.Event()
                batch.event.record(self.stream)
        batch.staged = staged

    def _copy(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.cuda:
            return tensor.to(self.device, non_blocking=True)
        # On the host the "device" tensor must not share the reader's buffer, which is reused.
        return tensor.to(self.device).clone()

    def ready(self, batch: Batch) -> None:
        """Make the compute stream wait for ``batch``'s copies, then hand its host buffers back."""
        if batch.staged is None:
            return
        if self.stream is not None and batch.event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(batch.event)
            for data, valid in batch.staged.values():
                # Allocated on the side stream, used on the compute stream: tell the caching allocator.
                data.record_stream(compute)
                if valid is not None:
                    valid.record_stream(compute)
            batch.event.synchronize()  # the copy is done: the pinned buffer may be refilled
        batch.release()
