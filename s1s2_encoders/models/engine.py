"""Inference engines: one compute choice (dtype, device) and the modules it computes with.

An engine is the one place where a model's inference *computes*; everything above it (``embed``,
``predict``, whole scenes, the xarray and TerraTorch adapters) hands it batches:

* :meth:`InferenceEngine.encode_batch` (backbones) and :meth:`TaskInferenceEngine.predict_batch`
  (classifiers, segmenters) take a batch of :class:`ModalityBatch` and return float32 outputs.
  ``S1S2Backbone.embed`` / ``embed_dense`` and ``S1S2TaskModel.predict`` validate user arrays
  and call them chunk by chunk; ``s1s2 embed`` / ``s1s2 predict`` call them tile batch by tile batch.

What an engine computes with (``compute.mode``, see :func:`~.compute.choose_compute`):

* ``"inference-copy"`` (``dtype="auto"``, ``"bfloat16"``): :class:`~.fast.InferenceTower` copies of the
  towers in the compute dtype on the compute device;
* ``"plain"`` (``dtype="float32"``): the model's own towers when the device is the model's, else a
  float32 copy on that device;
* ``"autocast"`` (``dtype="float16"``): the same, under autocast.

**Ownership and freshness.** An engine made with ``model.inference_engine()`` is the caller's, like
the module ``timm.utils.reparameterize_model`` returns: a snapshot of the weights at that moment,
with no per-call cost; after changing the model's weights call :meth:`InferenceEngine.refresh`
(or make a new engine). ``model.embed()`` / ``predict()`` use an engine of their own that they
refresh at the start of every call (one pass over the weights: ~10 ms per Swin-T tower on CPU), so
they never compute with weights the model no longer has, however the weights were changed.

**The caller's model is not changed**: not moved to another device, not switched between train and
eval mode (the own-tower paths switch to eval for the call and restore the mode afterwards).
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputShapeError, OptionError
from ..inputs import ArrayLike, NodataPolicy, PreparedInput, prepare_pair
from .compute import ComputeChoice, choose_compute, inference_context, run_towers
from .fast import InferenceTower
from .towers import PYRAMID_STRIDES, TowerOutput, tower_output

if TYPE_CHECKING:
    from .backbone import S1S2Backbone
    from .task import S1S2TaskModel

MODALITY_ORDER = ("s1", "s2")
DTypeArg = str | torch.dtype
ENGINE_CACHE_SIZE = 2
"""Compute choices whose engines a model keeps for its own ``embed`` / ``predict`` calls."""


@dataclass
class ModalityBatch:
    """One modality of a batch, ready for a tower.

    Attributes:
        data: ``(B, C, H, W)`` float32 raw values (S1 dB, S2 L1C DN with any offset removed), channels
            in model band order (only the ``present`` ones when bands are missing), invalid pixels 0.
        valid: ``(B, 1, H, W)`` bool mask of pixels with data, or ``None`` when every pixel has data.
        present: model positions of ``data``'s channels when some bands are missing, else ``None``.
    """

    data: torch.Tensor
    valid: torch.Tensor | None = None
    present: Sequence[int] | None = None

    @classmethod
    def from_prepared(cls, item: PreparedInput, start: int = 0, stop: int | None = None) -> "ModalityBatch":
        """Samples ``[start, stop)`` of a validated user input."""
        valid = item.valid[start:stop] if item.valid is not None else None
        return cls(item.data[start:stop], valid, item.present)

    @classmethod
    def from_numpy(cls, data: np.ndarray, valid: np.ndarray | None = None,
                   present: Sequence[int] | None = None) -> "ModalityBatch":
        """From ``(B, C, H, W)`` float32 values and a ``(B, H, W)`` or ``(B, 1, H, W)`` bool mask
        (``None``, or all true: every pixel valid); the arrays are shared, not copied."""
        mask = None
        if valid is not None and not valid.all():
            mask = torch.from_numpy(valid if valid.ndim == 4 else valid[:, None])
        return cls(torch.from_numpy(data), mask, present)

    def to(self, device: torch.device) -> "ModalityBatch":
        non_blocking = device.type == "cuda" and self.data.is_pinned()
        valid = self.valid.to(device, non_blocking=non_blocking) if self.valid is not None else None
        return ModalityBatch(self.data.to(device, non_blocking=non_blocking), valid, self.present)


def check_batch_size(batch_size: Any) -> None:
    """Raises OptionError (a ValueError) unless ``batch_size`` is a positive int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive integer, got {batch_size!r}")


def compute_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """``device`` as a :class:`torch.device` (the model's when ``None``; ``cuda`` with its index)."""
    target = torch.device(device) if device is not None else next(model.parameters()).device
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    return target


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then the module's own train/eval state again (every submodule)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _to_user(x: torch.Tensor, item: PreparedInput) -> Any:
    return x.cpu().numpy() if item.was_numpy else x.to(item.source_device)


def _concat(parts: list[Any]) -> Any:
    return np.concatenate(parts, axis=1) if isinstance(parts[0], np.ndarray) else torch.cat(parts, dim=1)


class InferenceEngine:
    """Computes a backbone's embeddings with one :class:`~.compute.ComputeChoice`.

    Build it with :meth:`S1S2Backbone.inference_engine`. Attributes: ``compute`` (the choice),
    ``config`` (the backbone's config).

    With ``dtype="float32"`` on the model's own device it computes with the model's own towers (so it
    always sees their current weights); every other choice computes with copies, a snapshot until
    :meth:`refresh`.
    """

    def __init__(self, model: "S1S2Backbone", compute: ComputeChoice):
        self._model = model
        self.config = model.config
        self.compute = compute
        self._towers: dict[str, nn.Module | InferenceTower] = {}
        self._normalizers = {m: self._on_device(model.normalizer(m)) for m in MODALITY_ORDER}  # type: ignore[arg-type]
        for modality in MODALITY_ORDER:
            self._towers[modality] = self._build(model.tower(modality))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ building and freshness
    @property
    def own_towers(self) -> bool:
        """Whether the engine computes with the model's own tower modules (no copy)."""
        return self.compute.mode != "inference-copy" and self._model_device == self.compute.device

    @property
    def _model_device(self) -> torch.device:
        device = next(self._model.parameters()).device
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def _on_device(self, module: nn.Module) -> nn.Module:
        """A normaliser on the compute device (its buffers come from the config, not from training)."""
        return module if next(module.buffers()).device == self.compute.device else copy.deepcopy(module).to(self.compute.device)

    def _build(self, tower: nn.Module) -> nn.Module | InferenceTower:
        if self.own_towers:
            return tower
        optimize = self.compute.mode == "inference-copy"
        dtype = self.compute.dtype if optimize else torch.float32
        return InferenceTower(tower, self.config.architecture, dtype, self.compute.device, optimize=optimize)

    def refresh(self) -> "InferenceEngine":
        """Bring the copies up to date with the model's current weights (rebuilding any copy whose
        tower changed layout); returns the engine."""
        for modality in MODALITY_ORDER:
            tower = self._model.tower(modality)  # type: ignore[arg-type]
            current = self._towers[modality]
            if self.own_towers:
                self._towers[modality] = tower
            elif isinstance(current, InferenceTower) and current.matches(tower):
                current.refresh(tower)
            else:
                self._towers[modality] = self._build(tower)
        return self

    def tower(self, modality: str) -> nn.Module:
        """The module that computes ``modality`` (the model's tower, or its copy)."""
        tower = self._towers[modality]
        return tower.module if isinstance(tower, InferenceTower) else tower

    # ------------------------------------------------------------------ the batch method
    def encode_batch(self, inputs: Mapping[str, ModalityBatch], *, dense: bool = False) -> dict[str, TowerOutput]:
        """Encode one batch: the one batch-inference method of backbones.

        Args:
            inputs: ``{"s1": ModalityBatch, "s2": ModalityBatch}`` (either may be left out), on any
                device (moved to the compute device).
            dense: also return the feature pyramid.

        Returns:
            ``{modality: TowerOutput}`` float32 on the compute device: ``pooled`` ``(B, D_m)`` and,
            with ``dense``, ``pyramid`` at strides 4, 8, 16, 32.
        """
        unknown = sorted(set(inputs) - set(MODALITY_ORDER))
        if unknown or not inputs:
            raise InputShapeError(f"encode_batch takes 's1' and/or 's2' batches, got {sorted(inputs)}")
        device = self.compute.device
        architecture = self.config.architecture

        def job(modality: str, batch: ModalityBatch):
            def encode() -> TowerOutput:
                on_device = batch.to(device)
                normalized = self._normalizers[modality](on_device.data, valid=on_device.valid, present=on_device.present)
                return tower_output(self.tower(modality), architecture, normalized, on_device.valid, dense=dense)
            return encode

        modes = eval_mode(self._model) if self.own_towers else contextlib.nullcontext()
        with modes, inference_context(self.compute):
            jobs = {m: job(m, inputs[m]) for m in MODALITY_ORDER if m in inputs}
            return run_towers(jobs, device, lambda: inference_context(self.compute))

    # ------------------------------------------------------------------ user arrays
    def embed(self, s1: ArrayLike | None = None, s2: ArrayLike | None = None, *, s1_bands: Sequence[str] | None = None,
              s2_bands: Sequence[str] | None = None, s2_offset: float | None = None, per_modality: bool = False,
              batch_size: int = 32, nodata: NodataPolicy = "raise", check_units: bool = True) -> Any:
        """:meth:`S1S2Backbone.embed` computed by this engine (no per-call refresh)."""
        check_batch_size(batch_size)
        prepared = prepare_pair(self.config, s1, s2, s1_bands, s2_bands, s2_offset, nodata, check_units)
        return self.embed_prepared(prepared, batch_size=batch_size, dense=False, per_modality=per_modality)

    def embed_dense(self, s1: ArrayLike | None = None, s2: ArrayLike | None = None, *,
                    s1_bands: Sequence[str] | None = None, s2_bands: Sequence[str] | None = None,
                    s2_offset: float | None = None, per_modality: bool = False, batch_size: int = 32,
                    nodata: NodataPolicy = "raise", check_units: bool = True) -> Any:
        """:meth:`S1S2Backbone.embed_dense` computed by this engine (no per-call refresh)."""
        check_batch_size(batch_size)
        prepared = prepare_pair(self.config, s1, s2, s1_bands, s2_bands, s2_offset, nodata, check_units)
        return self.embed_prepared(prepared, batch_size=batch_size, dense=True, per_modality=per_modality)

    def embed_prepared(self, prepared: Mapping[str, PreparedInput], *, batch_size: int, dense: bool,
                       per_modality: bool) -> Any:
        """Validated inputs -> ``embed`` / ``embed_dense`` results, ``batch_size`` samples at a time."""
        n = next(iter(prepared.values())).data.shape[0]
        pooled: dict[str, list[torch.Tensor]] = {m: [] for m in prepared}
        levels: dict[str, list[list[torch.Tensor]]] = {m: [] for m in prepared}
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = {m: ModalityBatch.from_prepared(item, start, stop) for m, item in prepared.items()}
            for modality, out in self.encode_batch(batch, dense=dense).items():
                pooled[modality].append(out.pooled)
                if dense:
                    levels[modality].append(out.pyramid)  # type: ignore[arg-type]
        present = [m for m in MODALITY_ORDER if m in prepared]
        if not dense:
            per = {m: _to_user(torch.cat(pooled[m]), prepared[m]) for m in present}
            return per if per_modality else _concat([per[m] for m in present])
        maps = {m: {s: _to_user(torch.cat(level), prepared[m]) for s, level in zip(PYRAMID_STRIDES, zip(*levels[m]))}
                for m in present}
        if per_modality:
            return maps
        return {s: _concat([maps[m][s] for m in present]) for s in PYRAMID_STRIDES}


class TaskInferenceEngine:
    """Computes a task model's probabilities with one :class:`~.compute.ComputeChoice`.

    The model's own modules when the device is the model's (eval mode for the call, then the model's
    own mode again), else a float32 copy on the compute device (refreshed by :meth:`refresh`);
    bfloat16 / float16 run under autocast (the decoders read the towers' intermediate maps, which
    the backbone's inference copies do not keep).
    """

    def __init__(self, model: "S1S2TaskModel", compute: ComputeChoice):
        self._model = model
        self.config = model.config
        self.compute = compute
        self._copy: InferenceTower | None = None
        self.refresh()

    @property
    def own_modules(self) -> bool:
        return compute_device(self._model, None) == self.compute.device

    def refresh(self) -> "TaskInferenceEngine":
        """Bring a copy on another device up to date with the model's current weights."""
        if self.own_modules:
            self._copy = None
        elif self._copy is not None and self._copy.matches(self._model):
            self._copy.refresh(self._model)
        else:
            self._copy = InferenceTower(self._model, self.config.architecture, torch.float32, self.compute.device,
                                        optimize=False)
        return self

    @property
    def module(self) -> "S1S2TaskModel":
        return self._model if self._copy is None else self._copy.module  # type: ignore[return-value]

    def predict_batch(self, inputs: Mapping[str, ModalityBatch]) -> torch.Tensor:
        """Probabilities of one batch: the one batch-inference method of task models.

        Args:
            inputs: a :class:`ModalityBatch` per modality the model reads (``model.modalities``).

        Returns:
            float32 on the compute device: classifier ``(B, K)`` (softmax, or sigmoid per class when
            multi-label), segmenter ``(B, K, H, W)`` softmax (NaN where a modality it reads has no
            valid pixel).
        """
        module = self.module
        expected = set(module.modalities)
        if set(inputs) != expected:
            raise InputShapeError(
                f"this model ({module.fusion} fusion) reads {' and '.join(module.modalities)}; got {', '.join(sorted(inputs))}"
            )
        device = self.compute.device
        choice = self.compute
        autocast = (torch.autocast(device_type=device.type, dtype=choice.dtype) if choice.dtype != torch.float32
                    else contextlib.nullcontext())
        with eval_mode(module), torch.inference_mode(), autocast:
            batches = {m: b.to(device) for m, b in inputs.items()}
            valid = {m: b.valid for m, b in batches.items()}
            normalized = {m: module.normalize(m, b.data, valid=b.valid, present=b.present)  # type: ignore[arg-type]
                          for m, b in batches.items()}
            return module.probabilities(module.logits(normalized, valid).float(), valid)

    def predict_prepared(self, prepared: Mapping[str, PreparedInput], *, batch_size: int) -> Any:
        """Validated inputs -> ``predict`` results, ``batch_size`` samples at a time."""
        n = next(iter(prepared.values())).data.shape[0]
        chunks = []
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            chunks.append(self.predict_batch({m: ModalityBatch.from_prepared(p, start, stop) for m, p in prepared.items()}))
        return _to_user(torch.cat(chunks), next(iter(prepared.values())))


class EngineCache:
    """The engines a model keeps for its own calls: at most :data:`ENGINE_CACHE_SIZE`, most recent
    first. Never pickled or deep-copied with the model (rebuilt on first use)."""

    def __init__(self) -> None:
        self._engines: dict[tuple, Any] = {}

    def __getstate__(self) -> dict:
        return {"_engines": {}}

    def __setstate__(self, state: dict) -> None:
        self._engines = {}

    def __deepcopy__(self, memo: dict) -> "EngineCache":
        return EngineCache()

    def fresh(self, model: nn.Module, dtype: DTypeArg, device: str | torch.device | None, build) -> Any:
        """The engine for ``dtype`` on ``device``, refreshed from the model's weights now (built with
        ``build(compute_choice)`` on first use)."""
        choice = choose_compute(dtype, compute_device(model, device))
        key = (str(choice.dtype), choice.mode, str(choice.device))
        engine = self._engines.pop(key, None)
        if engine is None:
            engine = build(choice)
        else:
            engine.compute = choice  # same dtype, mode and device; the request and reason of this call
            engine.refresh()
        self._engines[key] = engine
        while len(self._engines) > ENGINE_CACHE_SIZE:
            self._engines.pop(next(iter(self._engines)))
        return engine

    def clear(self) -> None:
        self._engines.clear()

    def __len__(self) -> int:
        return len(self._engines)
