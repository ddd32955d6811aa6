"""``embed_scene``: a whole S1/S2 scene -> a georeferenced embedding GeoTIFF (or ``.npy``, or GeoParquet chips)."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._warnings import warn_user
from ..bands import Modality
from ..errors import OptionError
from ..models.backbone import MODALITIES, S1S2Backbone
from ..models.towers import PYRAMID_STRIDES, cell_origin_shift
from .cog import Overviews
from .feed import check_batch_size, check_readers, default_batch_size, resolve_readers, writer_env
from .grid import Grid
from .progress import Progress
from .quantize import INT8_NODATA, INT8_SCALE, check_quantize, quantization_metadata, quantize_int8
from .scene import MODALITY_CHOICES, SceneInputs, check_first_batch, model_fingerprint, open_scene
from .stream import Batch, stream_scene
from .tiling import TilePlan
from .writers import COMPRESSIONS, GeoTiffSink, NpySink, OutputSet, check_output_path
from . import stac_item

FORMATS = ("tif", "npy", "geoparquet")

SEAM_WARNING = (
    "this model normalises each tile by its own per-channel maximum (sslt_channel_max, the "
    "original SSLTransformerRS normalisation), so the same pixel gets different inputs in "
    "neighbouring tiles and seams between tiles are unavoidable; --overlap blends them smoothly "
    "but cannot remove them. Models with a fixed normalisation have no such seams."
)


@dataclass
class SceneResult:
    """What a scene run produced.

    Attributes:
        outputs: the files written (primary first).
        grid: the output grid (CRS, transform scaled to the output cell, size).
        tiles: tiles processed in this run; seconds: wall time.
        resumed_from_row: output rows already on disk from an earlier run.
        notes: things worth telling the user (band files ignored, S1 warped, offset source).
        compute: how the model computed (dtype, device, why), as :class:`~s1s2_encoders.models.compute.ComputeChoice`.
    """

    outputs: list[Path]
    grid: Grid
    tiles: int
    seconds: float
    resumed_from_row: int = 0
    notes: list[str] = field(default_factory=list)
    compute: object = None


def modalities_of(modality: str) -> tuple[Modality, ...]:
    """``"both"`` -> ``("s1", "s2")``; ``"s1"`` / ``"s2"`` -> that one."""
    if modality not in MODALITY_CHOICES:
        raise OptionError(f"modality must be one of {', '.join(MODALITY_CHOICES)}, got {modality!r}")
    return MODALITIES if modality == "both" else (modality,)  # type: ignore[return-value]


def compute_record(choice) -> dict[str, str]:
    """What a resume record keeps of how a scene computed: rows of another dtype or device must not be
    stitched onto them."""
    return {"dtype": str(choice.dtype).replace("torch.", ""), "device": choice.device.type, "mode": choice.mode}


def model_info(model: torch.nn.Module, fingerprint: str) -> dict[str, str | None]:
    """What outputs record about the model: name, architecture, weights sha256 (``fingerprint``, of the
    config and state dict as loaded, :func:`~s1s2_encoders.geo.scene.model_fingerprint`: computed once
    per scene, it hashes every weight) and where the weights came from (``provenance.loaded_from``: a Hub
    repo@revision, the original checkpoint, a folder)."""
    config = getattr(model, "config", None)
    provenance = getattr(config, "provenance", None) or {}
    return {
        "name": str(getattr(config, "name", type(model).__name__)),
        "architecture": getattr(config, "architecture", None),
        "weights_sha256": fingerprint,
        "loaded_from": provenance.get("loaded_from") if isinstance(provenance, dict) else None,
    }


def source_files(scene) -> dict[str, list[str]]:
    """Per modality, the files (or URLs) the scene was read from."""
    return {m: [str(p) for p in src.paths] for m, src in scene.sources.items()}


def stac_path_for(output: Path, stac: bool, inputs_files: dict[str, list[str]], overwrite: bool,
                  notes: list[str]) -> Path | None:
    """The STAC Item sidecar to write after ``output`` (checked now), or ``None`` (off, or pystac missing:
    then a note says so)."""
    if not stac:
        return None
    if not stac_item.stac_available():
        notes.append(stac_item.SKIPPED_NOTE)
        return None
    local = [Path(p) for files in inputs_files.values() for p in files if not stac_item.is_url(p)]
    return stac_item.check_item_path(output, local, overwrite)


def stream_and_commit(scene, plan: TilePlan, engine, outputs: OutputSet, infer, *, channels: int,
                      groups: list[tuple[int, int]] | None, batch_size: int, readers: int | None, start_row: int,
                      rows: int, progress: Progress, check_units: bool) -> int:
    """Stream output rows ``start_row`` .. ``rows`` of ``scene`` through ``infer`` into ``outputs`` and commit
    them (COG layouts included); on any failure or interrupt the outputs are aborted (kept for a resume,
    or removed). ``start_row == rows``: every row is on disk already and only the commit is left.

    Returns:
        The number of tiles processed.
    """
    try:
        with writer_env(engine.compute.device):  # GDAL compression threads on CUDA
            outputs.open(start_row)
        tiles = 0
        if start_row < rows:
            tiles = stream_scene(
                plan=plan, sources=scene.sources, infer=infer, channels=channels, groups=groups, outputs=outputs,
                batch_size=batch_size, s2_offset=scene.s2_offset, start_row=start_row, progress=progress,
                readers=resolve_readers(readers, engine.compute.device), device=engine.compute.device,
                on_first_batch=lambda b: check_first_batch(scene, b.data, b.valid, check_units),
            )
        outputs.commit()
    except BaseException:
        outputs.abort()
        raise
    return tiles


def warn_if_seams(model: torch.nn.Module, plan: TilePlan) -> None:
    """Warn that per-tile max normalisation makes seams when a dense output has several tiles."""
    config = getattr(model, "config", None)
    if config is not None and config.normalization.kind == "sslt_channel_max" and plan.n_tiles > 1 and not plan.pooled:
        warn_user(SEAM_WARNING)


def embed_scene(
    model: S1S2Backbone,
    inputs: SceneInputs,
    output: str | Path,
    *,
    modality: str = "both",
    stride: int = 32,
    pooled: bool = False,
    tile: int = 448,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    fmt: str = "tif",
    compress: str = "deflate",
    overwrite: bool = False,
    resume: bool = False,
    check_units: bool = True,
    progress: bool | Progress = True,
    label: str | None = None,
    checkpoint_every: float = 60.0,
    extra_tags: dict[str, str] | None = None,
    quantize: str | None = "none",
    stac: bool = True,
    cog: bool = True,
    readers: int | None = None,
) -> SceneResult:
    """Embed a whole scene, streaming, and write a georeferenced embedding file.

    Args:
        model: the backbone.
        inputs: the scene's files and input options.
        output: ``.tif`` (or ``.npy`` with ``fmt="npy"``) to write; written under a temporary
            name and renamed when complete.
        modality: ``"both"`` (S1 features then S2 features), ``"s1"`` or ``"s2"``.
        stride: input pixels per output cell of the dense map: 4, 8, 16 or 32 (pyramid level).
        pooled: one pooled vector per ``tile`` x ``tile`` cell of a tile grid instead of a dense map.
        tile / overlap: tile size and overlap in pixels (multiples of 32 for dense maps).
        batch_size / device / dtype: inference options, as for :meth:`S1S2Backbone.embed`
            (``dtype="auto"``: bfloat16 inference copies where the hardware runs bf16 natively, else
            float32 ones; ``"float32"`` is the reference path). The model is not moved and keeps its
            train/eval mode: the scene computes with an inference engine made at the start.
        fmt: ``"tif"`` (GeoTIFF, one band per feature), ``"npy"`` (``(H, W, C)`` array + JSON) or, with
            ``pooled``, ``"geoparquet"`` (one row per chip, see :mod:`~s1s2_encoders.geo.geoparquet`; needs
            the ``geoparquet`` extra; no ``resume``).
        compress: GeoTIFF compression.
        overwrite / resume: replace an existing output / continue an interrupted run.
        check_units: check the first batch for S2 reflectance in 0-1 and S1 in linear power.
        progress: show a progress line (or pass a :class:`Progress`).
        cog: GeoTIFF output as a Cloud-Optimized GeoTIFF with overviews (laid out after the streamed tiled
            file is complete, :mod:`~s1s2_encoders.geo.cog`); False keeps the plain tiled file.
        quantize: ``"none"`` (float32) or ``"int8"``: each modality part of every vector scaled to unit
            length, ``round(127 x)``, ``-128`` where the float value is NaN (:mod:`~s1s2_encoders.geo.quantize`);
            the GeoTIFF gets band scale ``1/127`` and the rule in its tags, the ``.npy`` sidecar a
            ``quantization`` entry.
        stac: also write ``NAME.json``, a STAC Item describing the output (:mod:`~s1s2_encoders.geo.stac_item`),
            after the output is committed; skipped with a note when pystac is missing.
        readers: reader threads that read, decode and mask tile batches in parallel (each with its own
            file handles; the output is the same for every number). ``None`` (auto): 1 when computing
            on CPU (the model uses every core), the available cores minus one (at most 8) on CUDA.
            ``batch_size=None``: 8 on CPU, 32 at 448 px on a CUDA device with >= 16 GB
            (:func:`~s1s2_encoders.geo.feed.default_batch_size`).

    Output: float32 (int8 with ``quantize="int8"``), one band per feature (S1 features then S2 features), NaN where a cell saw no
    valid pixel of that modality; CRS as the input, transform the input's scaled by the cell size
    and placed where each cell's receptive field is centred (dense ResNet maps: ``stride/2 - 1/2``
    pixels up and left of the Swin placement, see :func:`~s1s2_encoders.models.towers.cell_centre`).

    Raises:
        RasterReadError, BandError, GridMismatchError, UnitsError, OutputExistsError.
    """
    started = time.perf_counter()
    output = Path(output)
    if fmt not in FORMATS:
        raise OptionError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    chips = fmt == "geoparquet"
    quantize = check_quantize(quantize)
    if chips:
        if not pooled:
            raise OptionError("fmt='geoparquet' (--format geoparquet) writes one row per chip: it needs pooled=True (--pooled)")
        if resume:
            raise OptionError("resume (--resume) does not apply to fmt='geoparquet': the chips of a scene are written "
                              "at its end (they are small), so there is no partial output to continue")
        from .geoparquet import require_geoparquet

        require_geoparquet()
    if compress not in COMPRESSIONS:
        raise OptionError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    check_batch_size(batch_size)
    check_readers(readers)
    if not pooled and stride not in PYRAMID_STRIDES:
        raise OptionError(f"stride must be one of {', '.join(map(str, PYRAMID_STRIDES))}, got {stride}")
    modalities = modalities_of(modality)
    check_output_path(output, overwrite)
    scene = open_scene(inputs, modalities, model.config.s1_bands, model.config.s2_bands)
    files = source_files(scene)
    notes = list(scene.notes)
    stac_path = stac_path_for(output, stac, files, overwrite, notes)
    grid = scene.grid
    plan = TilePlan.grid(grid.height, grid.width, tile) if pooled else TilePlan.dense(grid.height, grid.width, tile, overlap, stride)
    warn_if_seams(model, plan)

    # The same compute path as S1S2Backbone.embed (one engine for the whole scene: the weights do
    # not change during it): "auto" picks bfloat16 inference copies of the towers where the hardware
    # runs bf16 natively, and the two towers run concurrently on CPU.
    engine = model.inference_engine(dtype, device)
    batch_size = batch_size or default_batch_size(engine.compute.device, plan.tile_h)
    level = PYRAMID_STRIDES.index(stride) if not pooled else None
    widths = [model.embed_dims[m] if pooled else model.pyramid_channels[m][level] for m in modalities]
    groups, start = [], 0
    for width in widths:
        groups.append((start, start + width))
        start += width
    channels = start
    descriptions = [f"{m}_{i:04d}" for m, width in zip(modalities, widths) for i in range(width)]
    shift = 0.0 if pooled else cell_origin_shift(model.config.architecture, stride)
    out_grid = grid.scaled(plan.cell, origin_shift=shift)
    tags = {
        "S1S2_VERSION": __version__,
        "S1S2_PRODUCT": "embedding",
        "S1S2_MODEL": str(model.config.name),
        "S1S2_ARCHITECTURE": model.config.architecture,
        "S1S2_NORMALIZATION": model.config.normalization.kind,
        "S1S2_MODALITY": modality,
        "S1S2_LAYOUT": "pooled per tile" if pooled else f"dense, stride {stride}",
        "S1S2_CELL_PX": str(plan.cell),
        "S1S2_CELL_ORIGIN_SHIFT_PX": f"{shift:g}",
        "S1S2_COMPUTE": f"{str(engine.compute.dtype).replace('torch.', '')} on {engine.compute.device}",
        "S1S2_TILE": str(tile),
        "S1S2_OVERLAP": str(0 if pooled else overlap),
        "S1S2_CHANNELS": ", ".join(f"{m}: bands {a + 1}-{b}" for m, (a, b) in zip(modalities, groups)),
        "S1S2_QUANTIZATION": quantize,
        "S1S2_S2_OFFSET": f"{scene.s2_offset:g} ({scene.s2_offset_source or 'none given'})" if "s2" in modalities else "",
        "S1S2_INPUTS": "; ".join(f"{m}: {', '.join(str(p) for p in s.paths)}" for m, s in scene.sources.items()),
        **scene.input_tags(),  # a STAC item's id, datetime, platform ...
        **(extra_tags or {}),
    }
    quantization = quantization_metadata(quantize, groups, modalities)
    int8 = quantize == "int8"
    if int8:
        tags["S1S2_DEQUANTIZATION"] = quantization["rule"]

    def to_int8(values: np.ndarray) -> np.ndarray:  # one (C, n, W) stripe
        return quantize_int8(values, groups, axis=0)

    fingerprint = model_fingerprint(model) if (resume or chips or stac_path is not None) else None
    info = model_info(model, fingerprint) if (chips or stac_path is not None) else None
    extra = 0
    if chips:
        sink = _chip_sink(output, model, scene, grid, tile, channels, groups, modalities, modality, quantize,
                          quantization, info, engine, tags, files)
        extra = sink.extra_channels
    elif fmt == "npy":
        sink = NpySink(output, out_grid, channels, descriptions, tags, dtype=quantization["dtype"],
                       convert=to_int8 if int8 else None, nodata=quantization["nodata"],
                       metadata={"quantization": quantization})
    else:
        sink = GeoTiffSink(
            output, out_grid, channels, quantization["dtype"], INT8_NODATA if int8 else float("nan"), descriptions,
            tags, compress=compress, convert=to_int8 if int8 else None,
            scales=[1.0 / INT8_SCALE] * channels if int8 else None, offsets=[0.0] * channels if int8 else None,
            cog=cog, overviews=Overviews("unit-int8", INT8_NODATA, tuple(groups)) if int8 else None,
        )
    params = {
        "product": "embed", "inputs": inputs.identity(), "modality": modality, "stride": stride, "pooled": pooled,
        "tile": tile, "overlap": overlap, "fmt": fmt, "compress": compress, "quantize": quantize,
        "model": fingerprint if resume else None,
        "compute": compute_record(engine.compute),
    }
    outputs = OutputSet([sink], params, resume=resume, checkpoint_every=checkpoint_every)
    start_row = min(outputs.resumable_rows(), out_grid.height)  # all rows: only the commit (COG layout) is left
    if isinstance(progress, Progress):
        bar = progress
    else:
        first = plan.first_row_touching(start_row) if start_row else 0
        bar = Progress(len(plan.tiles(first)), label or output.name, enabled=bool(progress))

    def infer(batch: Batch) -> np.ndarray:
        # Views of the readers' arrays on CPU, the tensors already copied to the device on CUDA.
        inputs = {m: batch.modality(m, scene.sources[m].present) for m in modalities}
        results = engine.encode_batch(inputs, dense=not pooled)
        parts = [results[m].pooled[:, :, None, None] if pooled else results[m].pyramid[level] for m in modalities]
        out = torch.cat(parts, dim=1).cpu().numpy()
        if not chips:
            return out
        # The chips' valid-pixel fractions ride along as extra channels, which the chip sink strips.
        kept = [t for t, empty in zip(batch.tiles, batch.empty) if not empty]
        area = np.array([min(plan.tile_h, plan.height - t.y) * min(plan.tile_w, plan.width - t.x) for t in kept],
                        dtype=np.float64)
        keep = ~batch.empty
        fractions = [batch.valid_pixels[key][keep] / area for key in ("any", *modalities)]
        return np.concatenate([out, np.stack(fractions, axis=1).astype(np.float32)[:, :, None, None]], axis=1)

    tiles = stream_and_commit(
        scene, plan, engine, outputs, infer, channels=channels + extra,
        groups=groups + [(channels + k, channels + k + 1) for k in range(extra)], batch_size=batch_size,
        readers=readers, start_row=start_row, rows=out_grid.height, progress=bar, check_units=check_units,
    )
    written = [output] + ([sink.sidecar] if isinstance(sink, NpySink) else [])
    if stac_path is not None:
        written.append(stac_item.write_stac_item(
            output, asset_key="embeddings", grid=out_grid, product=tags["S1S2_PRODUCT"] + (" chips" if chips else ""),
            model_info=info, tags=tags, sources=files,
            embedding={"type": "chip" if pooled else "pixel", "dimensions": channels,
                       "data_type": quantization["dtype"], "quantization": quantization,
                       "chip_size": tile if pooled else None},
            extra_assets={"georeferencing": (sink.sidecar, "application/json", ["metadata"])} if isinstance(sink, NpySink) else None,
            properties={"s1s2:modality": modality, "s1s2:layout": tags["S1S2_LAYOUT"],
                        "s1s2:compute": tags["S1S2_COMPUTE"],
                        "emb:runtime_parameters": {"tile": tile, "overlap": 0 if pooled else overlap,
                                                   "stride": None if pooled else stride, "pooled": pooled,
                                                   "s2_offset": scene.s2_offset if "s2" in modalities else None}},
        ))
    if scene.s2_offset_source and scene.s2_offset_source != "--s2-offset":
        notes.append(f"S2 offset {scene.s2_offset:g} from {scene.s2_offset_source}")
    return SceneResult(written, out_grid, tiles, time.perf_counter() - started, start_row, notes, engine.compute)


def _chip_sink(output: Path, model, scene, grid: Grid, tile: int, channels: int, groups, modalities, modality: str,
               quantize: str, quantization: dict, info: dict, engine, tags: dict[str, str],
               files: dict[str, list[str]]):
    """The GeoParquet chip sink of a pooled scene, with its file metadata and per-modality sources."""
    from .geoparquet import ChipSink, chip_id_prefix

    config = model.config
    times, _ = stac_item.input_datetimes(tags, files)
    sources = {}
    for m in modalities:
        item = tags.get(f"S1S2_{m.upper()}_STAC_ITEM")
        sources[m] = {"files": files[m], "item_id": item,
                      "datetime": tags.get(f"S1S2_{m.upper()}_DATETIME") or (times[m].isoformat() if m in times else None)}
    names = {m: [sources[m]["item_id"]] if sources[m]["item_id"] else [Path(p).name for p in files[m]] for m in modalities}
    metadata = {
        "version": __version__,
        "product": "embedding chips",
        "model": info,
        "modality": modality,
        "dimensions": channels,
        "channel_groups": {m: [a, b] for m, (a, b) in zip(modalities, groups)},
        "bands": {m: list(config.s1_bands if m == "s1" else config.s2_bands) for m in modalities},
        "units": {m: config.input_units.get(m) for m in modalities},
        "normalization": config.normalization.to_dict(),
        "compute": compute_record(engine.compute),
        "chip_size": tile,
        "pooling": "mean of the last stage's feature map over the chip's valid pixels (S1S2Backbone.embed)",
        "quantization": quantization,
        "native_crs": grid.crs.to_string() if grid.crs is not None else None,
        "native_crs_wkt": grid.crs.to_wkt() if grid.crs is not None else None,
        "native_transform": [float(v) for v in list(grid.transform)[:6]],
        "native_size": [grid.height, grid.width],
        "s2_offset": scene.s2_offset if "s2" in modalities else None,
        "tags": tags,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    return ChipSink(output, grid, tile, channels, groups, list(modalities), quantize, metadata, sources,
                    chip_id_prefix(names, grid, tile))
