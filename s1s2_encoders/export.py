"""Export the embedder to ONNX or to a ``torch.export`` program, normalisation included.

An exported embedder takes raw inputs and returns the pooled embedding, exactly as
:meth:`S1S2Backbone.forward` does:

* ``s1``: ``(B, 2, H, W)`` float32 backscatter in dB (VV, VH);
* ``s2``: ``(B, 13, H, W)`` float32 L1C digital numbers in model band order, **with the +1000 offset
  of processing baseline 04.00 already removed** (``embed``'s ``s2_offset``: the graph has no
  knowledge of acquisition dates);
* output ``embedding``: ``(B, D)`` float32, S1 features then S2 features (one of them for a
  per-modality export).

The batch size, height and width are all dynamic (any ``H, W >= 33``; non-multiples of 32 are
padded inside the graph exactly as ``embed`` does). Both are traced through the backbone's
own ``encode``; for Swin towers that reads out through :func:`models.swin_graph.swin_pooled` when
traced, the same arithmetic written without size-dependent reshapes (timm's shifted-window padding would pin
the program to the example's size), and traced with ``backed_size_oblivious`` so that no size is
assumed to be 0 or 1. Inputs must be finite (no nodata masking in the graph).

Both formats carry the checkpoint's ``config.json`` and a description of the inputs: ONNX in the
model's ``metadata_props`` (keys ``s1s2.config`` and ``s1s2.export``), ``.pt2`` files as extra
files of the same names. Writing is atomic (temporary name, then rename).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from .errors import ExportError, InputShapeError
from .models.backbone import S1S2Backbone
from .models.swin_graph import check_swin_structure
from .models.towers import TOTAL_STRIDE, is_swin

ExportFormat = Literal["onnx", "torch-export"]
ExportModality = Literal["both", "s1", "s2"]
FORMATS: tuple[str, ...] = ("onnx", "torch-export")
EXPORT_MODALITIES: tuple[str, ...] = ("both", "s1", "s2")
EXPORT_FORMAT_VERSION = 1
META_CONFIG = "s1s2.config"
META_EXPORT = "s1s2.export"
MIN_DYNAMIC_SIZE = TOTAL_STRIDE + 1
"""Smallest height/width of an exported program: the stride-32 map must have >= 2 cells, else
``torch.export`` specialises the pooling on a single cell."""
_MAX_BATCH = 1 << 16
_MAX_SIZE = 1 << 16
_EXAMPLE_SIZE = (256, 288)
"""Height and width traced: >= 2 windows in every Swin stage and H != W, so the trace takes no
branch that holds only for one window or a square input."""


class _Embedder(nn.Module):
    """``forward(*inputs) -> (B, D)`` for the modalities in ``modalities``, in that order."""

    def __init__(self, backbone: S1S2Backbone, modalities: tuple[str, ...]):
        super().__init__()
        self.backbone = backbone
        self.modalities = modalities
        self.swin = is_swin(backbone.config.architecture)
        if self.swin:
            for modality in modalities:
                check_swin_structure(backbone.tower(modality))  # type: ignore[arg-type]

    def pooled(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """``(B, D_m)`` pooled feature of one modality from raw input: ``backbone.encode``, which traces
        Swin towers through :func:`models.swin_graph.swin_pooled` (see :func:`models.towers.tower_output`)."""
        return self.backbone.encode(modality, x).pooled  # type: ignore[arg-type]


class FusedEmbedder(_Embedder):
    def __init__(self, backbone: S1S2Backbone):
        super().__init__(backbone, ("s1", "s2"))

    def forward(self, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pooled("s1", s1), self.pooled("s2", s2)], dim=1)


class S1Embedder(_Embedder):
    def __init__(self, backbone: S1S2Backbone):
        super().__init__(backbone, ("s1",))

    def forward(self, s1: torch.Tensor) -> torch.Tensor:
        return self.pooled("s1", s1)


class S2Embedder(_Embedder):
    def __init__(self, backbone: S1S2Backbone):
        super().__init__(backbone, ("s2",))

    def forward(self, s2: torch.Tensor) -> torch.Tensor:
        return self.pooled("s2", s2)


def embedder_module(backbone: S1S2Backbone, modality: ExportModality = "both") -> _Embedder:
    """The module that is exported: fused S1 + S2, or one modality."""
    if modality not in EXPORT_MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(EXPORT_MODALITIES)}, got {modality!r}")
    cls = {"both": FusedEmbedder, "s1": S1Embedder, "s2": S2Embedder}[modality]
    return cls(backbone).eval()


@dataclass
class ExportResult:
    """What :func:`export_embedder` wrote and how well the file reproduces PyTorch.

    Attributes:
        path: the written file.
        format: ``"onnx"`` or ``"torch-export"``.
        inputs: input names in call order.
        embed_dim: size of the output embedding.
        max_abs_diff: largest |exported - PyTorch| over the check inputs (``None`` when not checked,
            e.g. ONNX without onnxruntime installed).
        checked_shapes: the ``(B, H, W)`` the check ran on.
    """

    path: Path
    format: str
    inputs: tuple[str, ...]
    embed_dim: int
    max_abs_diff: float | None
    checked_shapes: list[tuple[int, int, int]]


def _example_inputs(backbone: S1S2Backbone, modalities: tuple[str, ...], batch: int, height: int, width: int,
                    seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Raw inputs in realistic ranges: S1 in [-25, 0] dB, S2 in [0, 10000] DN."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for modality in modalities:
        bands = len(backbone.bands(modality))  # type: ignore[arg-type]
        x = torch.rand(batch, bands, height, width, generator=generator)
        out.append(x * 25 - 25 if modality == "s1" else x * 10000)
    return tuple(out)


def _dynamic_shapes(modalities: tuple[str, ...]) -> dict[str, dict[int, object]]:
    from torch.export import Dim

    spec: dict[int, object] = {
        0: Dim("batch", min=1, max=_MAX_BATCH),
        2: Dim("height", min=MIN_DYNAMIC_SIZE, max=_MAX_SIZE),
        3: Dim("width", min=MIN_DYNAMIC_SIZE, max=_MAX_SIZE),
    }
    return {m: dict(spec) for m in modalities}


def _size_oblivious():
    """Trace without specialising sizes on 0 or 1 (a batch of one, a single window per stage).

    ``torch.fx.experimental._config.backed_size_oblivious`` is the switch torch.export documents
    for this; if a future torch drops it, tracing still works but may pin such sizes, which the
    written-file check below would then report.
    """
    config = getattr(torch.fx.experimental, "_config", None)
    if config is None or not hasattr(config, "backed_size_oblivious"):
        return contextlib.nullcontext()
    return config.patch(backed_size_oblivious=True)


def _export_description(backbone: S1S2Backbone, module: _Embedder, fmt: str) -> dict:
    config = backbone.config
    units = {"s1": "backscatter in dB", "s2": "L1C digital numbers (reflectance x 10000), +1000 offset removed"}
    size = [f"H >= {MIN_DYNAMIC_SIZE}", f"W >= {MIN_DYNAMIC_SIZE}"]
    return {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "format": fmt,
        "architecture": config.architecture,
        "name": config.name,
        "inputs": [
            {"name": m, "shape": ["batch", len(backbone.bands(m)), *size], "dtype": "float32",  # type: ignore[arg-type]
             "bands": list(backbone.bands(m)), "units": units[m]}  # type: ignore[arg-type]
            for m in module.modalities
        ],
        "output": {
            "name": "embedding", "dtype": "float32",
            "shape": ["batch", sum(backbone.embed_dims[m] for m in module.modalities)],
            "parts": [{"modality": m, "dim": backbone.embed_dims[m]} for m in module.modalities],
        },
        "normalization": config.normalization.to_dict(),
        "notes": "normalisation is inside the graph; inputs must be finite; subtract the S2 processing-baseline "
                 "offset (1000 DN for baseline >= 04.00) before calling",
    }


def _tmp_sibling(path: Path) -> Path:
    """A hidden temporary name next to ``path`` that keeps its suffix (torch.export.save wants ``.pt2``)."""
    return path.parent / f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}"


def export_embedder(
    backbone: S1S2Backbone,
    out: str | os.PathLike[str],
    *,
    format: ExportFormat = "onnx",
    modality: ExportModality = "both",
    opset: int | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> ExportResult:
    """Export the pooled embedder (normalisation included) to an ONNX file or a ``.pt2`` program.

    Args:
        backbone: the model (exported in float32, eval mode; the model itself is not changed).
        out: destination file (``.onnx`` / ``.pt2`` by convention).
        format: ``"onnx"`` (dynamo-based exporter, needs the ``onnx`` extra) or ``"torch-export"``
            (``torch.export.save``; load with ``torch.export.load(path).module()``).
        modality: ``"both"`` (inputs ``s1, s2``; output S1 then S2 features), ``"s1"`` or ``"s2"``.
        opset: ONNX opset (default: the exporter's).
        overwrite: replace an existing ``out``.
        check: run the written file on the :data:`CHECK_SHAPES` (batch sizes and image sizes other
            than the traced one) and record its largest difference from the backbone's own
            forward in the result.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false.
        ValueError: bad format or modality, or a tower of unexpected structure.
        ExportError: the exporter failed (nothing is written then).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    module = embedder_module(backbone, modality)
    names = module.modalities
    example = _example_inputs(backbone, names, 2, *_EXAMPLE_SIZE)  # type: ignore[arg-type]
    dynamic = _dynamic_shapes(names)
    description = _export_description(backbone, module, format)
    config_json = backbone.config.to_json()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), _size_oblivious():
            if format == "torch-export":
                _write_program(module, example, dynamic, tmp, config_json, description)
            else:
                _write_onnx(module, example, dynamic, tmp, config_json, description, opset)
        result = ExportResult(
            path=out, format=format, inputs=names,
            embed_dim=sum(backbone.embed_dims[m] for m in names), max_abs_diff=None, checked_shapes=[],
        )
        if check:
            _check(module, tmp, result)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        backbone.train(was_training)
    return result


def _write_program(module: _Embedder, example: tuple[torch.Tensor, ...], dynamic: dict, path: Path,
                   config_json: str, description: dict) -> None:
    try:
        program = torch.export.export(module, example, dynamic_shapes=dynamic)
    except Exception as exc:  # torch raises many types here; keep the cause
        raise ExportError(f"torch.export failed for {type(module.backbone).__name__}: {exc}") from exc
    torch.export.save(program, path, extra_files={META_CONFIG: config_json, META_EXPORT: json.dumps(description)})


def _write_onnx(module: _Embedder, example: tuple[torch.Tensor, ...], dynamic: dict, path: Path, config_json: str,
                description: dict, opset: int | None) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it; say so clearly)
    except ImportError as exc:
        raise ExportError(
            "ONNX export needs the 'onnx' extra (onnx, onnxscript): pip install 's1s2-encoders[onnx]'"
        ) from exc
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's progress chatter and axis-renaming notes
            program = torch.onnx.export(
                module, example, dynamo=True, dynamic_shapes=dynamic, input_names=list(module.modalities),
                output_names=["embedding"], opset_version=opset, external_data=False, verbose=False,
            )
    except Exception as exc:
        raise ExportError(f"ONNX export failed for {type(module.backbone).__name__}: {exc}") from exc
    program.model.metadata_props[META_CONFIG] = config_json
    program.model.metadata_props[META_EXPORT] = json.dumps(description)
    program.save(path, external_data=False)


CHECK_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (3, 50, 77))
"""``(B, H, W)`` the written file is run on: a batch of one, one Swin window per late stage, and a
size that is not a multiple of 32 (nor of the windows) -- none of them the traced size."""


def _check(module: _Embedder, path: Path, result: ExportResult) -> None:
    """Run the written file and compare with PyTorch; fills ``max_abs_diff`` and ``checked_shapes``."""
    if result.format == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return
    runner = load_exported(path, result.format)
    worst = 0.0
    for i, (b, h, w) in enumerate(CHECK_SHAPES):
        inputs = _example_inputs(module.backbone, module.modalities, b, h, w, seed=i + 1)  # type: ignore[arg-type]
        with torch.no_grad():
            # The reference is the backbone's eager forward, not the traced module: this also checks
            # that the export-only Swin arithmetic (models/swin_graph.py) matches it.
            expected = module.backbone(**dict(zip(module.modalities, inputs)))
            got = runner(*inputs)
        worst = max(worst, float((torch.as_tensor(got).detach() - expected).abs().max()))
        result.checked_shapes.append((b, h, w))
    result.max_abs_diff = worst


class _OnnxRunner:
    """Call an ONNX embedder like the PyTorch module: tensors or arrays in, tensor out."""

    def __init__(self, path: Path):
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor | np.ndarray) -> torch.Tensor:
        if len(inputs) != len(self.names):
            raise InputShapeError(f"this ONNX embedder takes {len(self.names)} input(s) ({', '.join(self.names)})")
        feed = {n: np.ascontiguousarray(np.asarray(x, dtype=np.float32)) for n, x in zip(self.names, inputs)}
        return torch.from_numpy(self.session.run(["embedding"], feed)[0])


def load_exported(path: str | os.PathLike[str], format: ExportFormat | None = None):
    """A callable ``(*inputs) -> (B, D)`` tensor for an exported file (format from the suffix if not given).

    For ``.pt2`` this is ``torch.export.load(path).module()``; for ONNX an onnxruntime session
    (CPU provider) wrapped to take and return tensors.
    """
    path = Path(path)
    fmt = format or ("onnx" if path.suffix == ".onnx" else "torch-export")
    if fmt == "onnx":
        return _OnnxRunner(path)
    return torch.export.load(path).module()


def read_export_metadata(path: str | os.PathLike[str]) -> tuple[dict, dict]:
    """``(config dict, export description)`` stored in an exported ``.onnx`` or ``.pt2`` file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
    else:
        extra = {META_CONFIG: "", META_EXPORT: ""}
        torch.export.load(path, extra_files=extra)
        props = extra
    missing = [k for k in (META_CONFIG, META_EXPORT) if not props.get(k)]
    if missing:
        raise ExportError(f"{path} has no s1s2 metadata ({', '.join(missing)}): not written by s1s2 export")
    return json.loads(props[META_CONFIG]), json.loads(props[META_EXPORT])


__all__ = [
    "ExportResult",
    "FORMATS",
    "embedder_module",
    "export_embedder",
    "load_exported",
    "read_export_metadata",
]
