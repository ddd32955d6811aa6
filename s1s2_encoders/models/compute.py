"""How ``embed`` and ``predict`` compute: the compute dtype (``dtype="auto"``) and the two concurrent towers.

Kept apart from :mod:`.backbone` so that the backbone stays a plain description of the model and
its ``forward`` stays export-friendly; everything that is only about *speed* lives here.

The choice of ``dtype="auto"``:

* CUDA with bfloat16 support (compute capability >= 8.0): bfloat16.
* CPU with native bfloat16 instructions (``avx512_bf16`` or AMX ``amx_bf16``): bfloat16. Without
  them oneDNN emulates bfloat16 and it is *slower* than float32, so those CPUs get float32.
* Anything else (Apple MPS, CPUs without native bfloat16, other OSes where the flags cannot be
  read): float32.

How it runs (:mod:`.engine` holds the towers each choice computes with):

* ``"auto"`` and ``"bfloat16"`` run an **inference copy** of each tower in the chosen dtype
  (:mod:`.fast`: weights cast, BatchNorm folded, Swin window bookkeeping cached, fc1 + GELU fused):
  bfloat16 where the hardware has it, float32 elsewhere. The user's modules are never touched.
  bfloat16 casts the *weights*, not autocast: autocast re-casts every weight at every call and
  keeps activations in float32 between layers, which costs about 15-25 % on CPU. bfloat16 asked
  for by name on a CPU without it runs emulated (correct, slow) with a warning.
* ``"float32"`` runs the plain timm towers: the reference.
* ``"float16"`` runs the plain towers under autocast (for GPUs; weights stay float32).

On a CPU with at least two intra-op threads and both modalities given, the S1 and S2 towers run
**at the same time**, each with half of the threads (:func:`run_towers`): the towers are independent
and equally expensive, and one OpenMP team per tower avoids the thread barriers of every small
operation (LayerNorm, softmax, reshapes), which matter most when other processes share the cores.
``S1S2_PARALLEL_TOWERS=0`` turns this off.

The input normalisation always runs in float32 (S2 digital numbers reach 10000 and bfloat16 keeps
8 bits of mantissa), and pooling and outputs are float32. On the example pairs bfloat16 embeddings
keep cosine similarity >= 0.999 with float32 (``tests/test_compute.py``; ``benchmarks/embed.py``
reports the agreement of every path).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, TypeVar

import torch

from .._warnings import warn_user

log = logging.getLogger("s1s2_encoders")
T = TypeVar("T")

PARALLEL_ENV = "S1S2_PARALLEL_TOWERS"
"""Set to ``0`` to run the two towers one after the other with all threads (default: in parallel on CPU)."""

DTYPE_ENV = "S1S2_DTYPE"
"""Environment variable that overrides what ``dtype="auto"`` picks (e.g. ``S1S2_DTYPE=float32``)."""

_NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class ComputeChoice:
    """How an ``embed`` call computes.

    Attributes:
        dtype: compute dtype of the towers (outputs are always float32).
        device: where the towers run.
        requested: what the caller passed as ``dtype`` (``"auto"``, ``"float32"``, ...).
        reason: why this dtype, in words (for logs).
        mode: ``"inference-copy"`` (cached optimised tower copies in ``dtype``), ``"plain"`` (the
            model's own towers, float32) or ``"autocast"`` (float16: own towers under autocast).
    """

    dtype: torch.dtype
    device: torch.device
    requested: str
    reason: str
    mode: str

    def __str__(self) -> str:
        return f"{str(self.dtype).replace('torch.', '')} on {self.device} ({self.mode}): {self.reason}"


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Instruction-set flags of this CPU as Linux reports them (empty where they cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU executes bfloat16 dot products natively (AVX512-BF16 or AMX-BF16)."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return any(flag in flags for flag in _NATIVE_BF16_CPU_FLAGS)


def auto_dtype(
    device: torch.device, *, native_bf16_cpu: bool | None = None, cuda_bf16: bool | None = None
) -> tuple[torch.dtype, str]:
    """The dtype ``"auto"`` picks on ``device``, and why.

    ``native_bf16_cpu`` / ``cuda_bf16`` override the hardware checks (for tests and for callers
    that know better).
    """
    if device.type == "cuda":
        if cuda_bf16 is None:
            cuda_bf16 = _cuda_native_bf16()
        if cuda_bf16:
            return torch.bfloat16, "CUDA device with native bfloat16"
        return torch.float32, "CUDA device without native bfloat16 (compute capability < 8.0)"
    if device.type == "cpu":
        native = cpu_has_native_bf16() if native_bf16_cpu is None else native_bf16_cpu
        if native:
            found = [f for f in _NATIVE_BF16_CPU_FLAGS if f in cpu_flags()]
            return torch.bfloat16, f"CPU with native bfloat16 ({', '.join(found) or 'as told'})"
        return torch.float32, "CPU without native bfloat16 (no avx512_bf16/amx_bf16): bfloat16 would be emulated"
    return torch.float32, f"no bfloat16 fast path known for device type {device.type!r}"


def _cuda_native_bf16() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.4 has no including_emulation (and did not count emulation)
        return bool(torch.cuda.is_bf16_supported())


_ALIASES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | None:
    """``"auto"`` -> ``None`` (decide per device); names and torch dtypes -> the dtype.

    Raises:
        ValueError: for anything but float32, bfloat16, float16 or auto (``None`` included: the
            default is spelled ``"auto"``, the float32 reference ``"float32"``).
    """
    if dtype is None:
        raise ValueError("dtype=None is not accepted: use 'auto' (the default) or 'float32' (the reference path)")
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
        return dtype
    name = str(dtype).lower()
    if name == "auto":
        return None
    try:
        return _ALIASES[name]
    except KeyError:
        raise ValueError(
            f"dtype must be 'float32', 'bfloat16' or 'float16', got {dtype!r} "
            "(or 'auto' to let the device decide)"
        ) from None


_logged: set[tuple[str, str, str]] = set()


def choose_compute(dtype: str | torch.dtype, device: torch.device) -> ComputeChoice:
    """Resolve the ``dtype`` argument of ``embed`` / ``predict`` on ``device`` into a :class:`ComputeChoice`.

    ``"auto"`` follows :func:`auto_dtype` unless the environment variable :data:`DTYPE_ENV` names a
    dtype. The first time a choice is made for a device it is logged at INFO level on the
    ``s1s2_encoders`` logger. bfloat16 asked for on a CPU without native bfloat16 runs (oneDNN
    emulates it, correctly but several times slower than float32) with a one-time warning.
    """
    requested = str(dtype).replace("torch.", "")
    explicit = parse_dtype(dtype)
    if explicit is not None:
        chosen, reason = explicit, "asked for"
    elif os.environ.get(DTYPE_ENV):
        try:
            env_dtype = parse_dtype(os.environ[DTYPE_ENV])
        except ValueError as exc:
            raise ValueError(f"environment variable {DTYPE_ENV}={os.environ[DTYPE_ENV]!r}: {exc}") from None
        if env_dtype is None:
            chosen, reason = auto_dtype(device)
        else:
            chosen, reason = env_dtype, f"{DTYPE_ENV}={os.environ[DTYPE_ENV]}"
    else:
        chosen, reason = auto_dtype(device)
    if chosen == torch.float16:
        mode = "autocast"
    elif chosen == torch.float32 and explicit is not None:
        mode = "plain"  # float32 asked for by name: the reference towers
    else:
        mode = "inference-copy"
    choice = ComputeChoice(dtype=chosen, device=device, requested=requested, reason=reason, mode=mode)
    key = (str(device), str(chosen), requested)
    if key not in _logged:
        _logged.add(key)
        log.info("embed computes in %s", choice)
    if chosen == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        warn_user(
            "bfloat16 on this CPU is emulated (no avx512_bf16 / amx_bf16): results are correct but "
            "typically several times slower than float32. dtype='auto' picks float32 here; use it, or "
            "dtype='float32', unless you need bfloat16 numerics."
        )
    return choice


_tower_pool: ThreadPoolExecutor | None = None
_tower_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _tower_pool
    with _tower_pool_lock:
        if _tower_pool is None:
            _tower_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="s1s2-tower")
        return _tower_pool


def parallel_towers_enabled(device: torch.device, n_jobs: int) -> bool:
    """Whether :func:`run_towers` runs ``n_jobs`` tower jobs concurrently on ``device``."""
    return (
        device.type == "cpu" and n_jobs == 2 and torch.get_num_threads() >= 2
        and os.environ.get(PARALLEL_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
    )


@contextlib.contextmanager
def inference_context(choice: ComputeChoice) -> Iterator[None]:
    """Inference mode, plus autocast to ``choice.dtype`` when ``choice`` computes that way.

    A factory of this context is what :func:`run_towers` enters in its helper thread (grad and
    autocast state are thread-local)."""
    autocast = (
        torch.autocast(device_type=choice.device.type, dtype=choice.dtype)
        if choice.mode == "autocast"
        else contextlib.nullcontext()
    )
    with torch.inference_mode(), autocast:
        yield


def run_towers(
    jobs: dict[str, Callable[[], T]], device: torch.device, context: Callable[[], ContextManager[Any]]
) -> dict[str, T]:
    """Run one job per tower; on CPU, two jobs run concurrently with half of the threads each.

    Args:
        jobs: modality -> zero-argument callable that encodes one batch.
        device: where the towers run.
        context: factory of the context the jobs need (inference mode, autocast): grad and
            autocast state are thread-local, so the helper thread enters it itself.

    The caller's intra-op thread count is restored afterwards.
    """
    names = list(jobs)
    if not parallel_towers_enabled(device, len(jobs)):
        return {name: jobs[name]() for name in names}
    total = torch.get_num_threads()
    helper_threads = total // 2

    def helper() -> T:
        torch.set_num_threads(helper_threads)
        with context():
            return jobs[names[0]]()

    future = _pool().submit(helper)
    try:
        torch.set_num_threads(total - helper_threads)
        second = jobs[names[1]]()
    finally:
        torch.set_num_threads(total)
        first = future.result()  # wait even when the second job failed; re-raises the helper's error
    return {names[0]: first, names[1]: second}
