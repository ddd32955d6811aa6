"""``predict_scene``: a whole S1/S2 scene -> a land-cover map GeoTIFF from a fine-tuned model.

* Segmentation models give per-pixel class probabilities; overlapping tiles are blended with the
  same smooth weights as embeddings, and the class is the most probable one after blending.
* Classification models give one label per tile: the map has one cell per ``tile`` x ``tile``
  pixels (transform scaled accordingly).

The map is uint8 with the classes' colour table and names in the file (band description
``class``, band tags ``CLASS_NAMES`` (JSON) and ``CLASS_<i>``), 255 where there was no data.
Optionally the blended probabilities (float32, one band per class, NaN for no data) and a PNG
quick-look.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .._warnings import warn_user
from ..errors import ConfigError, OptionError
from ..models.backbone import MODALITIES
from . import stac_item
from .cog import Overviews
from .embed import (SceneResult, compute_record, model_info, source_files, stac_path_for, stream_and_commit,
                    warn_if_seams)
from .feed import check_batch_size, check_readers, default_batch_size
from .progress import Progress
from .scene import SceneInputs, model_fingerprint, open_scene
from .stream import Batch
from .tiling import TilePlan
from .writers import COMPRESSIONS, GeoTiffSink, OutputSet, check_output_path

NODATA_CLASS = 255
DEFAULT_SEGMENTATION_TILE = 448


def class_map_from_probabilities(values: np.ndarray) -> np.ndarray:
    """``(K, n, W)`` float32 probabilities (NaN = no data) -> ``(1, n, W)`` uint8 classes, 255 = no data."""
    nodata = np.isnan(values).all(axis=0)
    classes = np.argmax(np.where(np.isnan(values), -np.inf, values), axis=0).astype(np.uint8)
    classes[nodata] = NODATA_CLASS
    return classes[None]


def class_tags(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Class names as band tags a GIS user (and this package) can read back."""
    tags = {"CLASS_NAMES": json.dumps(list(names)), "NODATA_CLASS": str(NODATA_CLASS)}
    tags.update({f"CLASS_{i}": name for i, name in enumerate(names)})
    return tags


def read_class_names(path: str | Path) -> list[str]:
    """The class names stored in a map written by :func:`predict_scene`."""
    import rasterio

    with rasterio.open(path) as src:
        return json.loads(src.tags(1)["CLASS_NAMES"])


def predict_scene(
    model: Any,
    inputs: SceneInputs,
    output: str | Path,
    *,
    probabilities: str | Path | None = None,
    preview: str | Path | None = None,
    tile: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "auto",
    compress: str = "deflate",
    overwrite: bool = False,
    resume: bool = False,
    check_units: bool = True,
    progress: bool | Progress = True,
    label: str | None = None,
    checkpoint_every: float = 60.0,
    extra_tags: dict[str, str] | None = None,
    stac: bool = True,
    cog: bool = True,
    readers: int | None = None,
) -> SceneResult:
    """Map a whole scene with a fine-tuned task model, streaming.

    Args:
        model: a task model (:func:`~s1s2_encoders.load_model`): ``config.task`` ``"segmentation"``
            or ``"classification"``, ``class_names``, ``class_colors``, ``modalities`` and
            ``predict(s1, s2, ...)``.
        inputs: the scene's files and input options.
        output: the class-map GeoTIFF.
        probabilities: also write the blended class probabilities here.
        preview: also write a PNG quick-look here (input in true colour, map, legend).
        tile: tile size in pixels (segmentation: default 448, a multiple of 32; classification:
            default the model's training crop size, one map cell per tile).
        overlap: segmentation tile overlap in pixels (multiple of 32), blended smoothly.
        batch_size / device / dtype / compress / overwrite / resume / check_units / progress: as for
            :func:`~s1s2_encoders.geo.embed_scene` (the model is not moved and keeps its train/eval
            mode: the scene computes with the model's inference engine).
        stac: also write a STAC Item ``NAME.json`` beside the map and the probabilities (asset ``classes`` /
            ``probabilities``), after they are committed; skipped with a note when pystac is missing.
        cog: write the map and probabilities as Cloud-Optimized GeoTIFFs with overviews (the map's
            overviews take the most frequent class, the probabilities' the mean); False keeps the plain
            tiled files.
        readers: reader threads, as for :func:`~s1s2_encoders.geo.embed_scene` (``None``: auto).

    Raises:
        ConfigError: the model is not a task model, or has more than 255 classes.
        RasterReadError, BandError, GridMismatchError, UnitsError, OutputExistsError.
    """
    started = time.perf_counter()
    config = model.config
    task = config.task
    if task not in ("segmentation", "classification"):
        raise ConfigError(
            f"s1s2 predict needs a fine-tuned segmentation or classification model; {config.name!r} is a {task} "
            "(use s1s2 embed for backbones)"
        )
    names = tuple(model.class_names)
    colors = [tuple(int(v) for v in c) for c in model.class_colors]
    if len(names) > NODATA_CLASS:
        raise ConfigError(f"a uint8 class map holds at most {NODATA_CLASS} classes (255 is nodata); the model has {len(names)}")
    if compress not in COMPRESSIONS:
        raise OptionError(f"compress must be one of {', '.join(COMPRESSIONS)}, got {compress!r}")
    check_batch_size(batch_size)
    check_readers(readers)
    output = Path(output)
    extra = [Path(p) for p in (probabilities, preview) if p is not None]
    for path in [output, *extra]:
        check_output_path(path, overwrite)
    if len({p.resolve() for p in [output, *extra]}) != 1 + len(extra):
        raise OptionError("the map, probabilities and preview outputs must be different files")
    modalities = tuple(getattr(model, "modalities", MODALITIES))
    scene = open_scene(inputs, modalities, config.s1_bands, config.s2_bands)
    grid = scene.grid
    files = source_files(scene)
    notes = list(scene.notes)
    item_paths = [stac_path_for(p, stac, files, overwrite, notes) for p in [output] + ([Path(probabilities)] if probabilities else [])]
    if stac and len({p for p in item_paths if p is not None}) != len([p for p in item_paths if p is not None]):
        raise OptionError("the map and the probabilities would share one STAC Item sidecar name; give them different stems")
    if task == "segmentation":
        plan = TilePlan.dense(grid.height, grid.width, tile or DEFAULT_SEGMENTATION_TILE, overlap, stride=1)
    else:
        plan = TilePlan.grid(grid.height, grid.width, tile or config.input_size)
        if config.head.get("multi_label"):
            warn_user(
                "this classifier is multi-label: the map shows the most probable label of each cell; "
                "pass --probabilities for every label's probability"
            )
    warn_if_seams(model, plan)
    engine = model.inference_engine(dtype, device)
    batch_size = batch_size or default_batch_size(engine.compute.device, plan.tile_h)
    out_grid = grid.scaled(plan.cell)
    tags = {
        "S1S2_VERSION": __version__,
        "S1S2_PRODUCT": f"{task} map",
        "S1S2_MODEL": str(config.name),
        "S1S2_ARCHITECTURE": config.architecture,
        "S1S2_NORMALIZATION": config.normalization.kind,
        "S1S2_MODALITIES": ", ".join(modalities),
        "S1S2_CELL_PX": str(plan.cell),
        "S1S2_COMPUTE": f"{str(engine.compute.dtype).replace('torch.', '')} on {engine.compute.device}",
        "S1S2_TILE": str(plan.tile_h),
        "S1S2_OVERLAP": str(plan.overlap),
        "S1S2_S2_OFFSET": f"{scene.s2_offset:g} ({scene.s2_offset_source or 'none given'})" if "s2" in modalities else "",
        "S1S2_INPUTS": "; ".join(f"{m}: {', '.join(str(p) for p in s.paths)}" for m, s in scene.sources.items()),
        **scene.input_tags(),  # a STAC item's id, datetime, platform ...
        **(extra_tags or {}),
    }
    colormap = {i: (*c, 255) for i, c in enumerate(colors)}
    colormap[NODATA_CLASS] = (0, 0, 0, 0)
    sinks = [GeoTiffSink(output, out_grid, 1, "uint8", NODATA_CLASS, ["class"], tags, {1: class_tags(names)},
                         colormap=colormap, compress=compress, convert=class_map_from_probabilities, cog=cog,
                         overviews=Overviews("mode", NODATA_CLASS))]
    if probabilities is not None:
        sinks.append(GeoTiffSink(Path(probabilities), out_grid, len(names), "float32", float("nan"), list(names),
                                 {**tags, "S1S2_PRODUCT": f"{task} probabilities"}, compress=compress, cog=cog,
                                 overviews=Overviews("average", float("nan"))))
    # Hashes every weight: once per scene, for the resume record and the STAC Items.
    fingerprint = model_fingerprint(model) if (resume or item_paths[0] is not None) else None
    params = {
        "product": "predict", "inputs": inputs.identity(), "tile": plan.tile_h, "overlap": plan.overlap,
        "compress": compress, "probabilities": str(probabilities) if probabilities else None,
        "model": fingerprint if resume else None,
        "compute": compute_record(engine.compute),
    }
    outputs = OutputSet(sinks, params, resume=resume, checkpoint_every=checkpoint_every)
    start_row = min(outputs.resumable_rows(), out_grid.height)  # all rows: only the commit (COG layout) is left
    if isinstance(progress, Progress):
        bar = progress
    else:
        first = plan.first_row_touching(start_row) if start_row else 0
        bar = Progress(len(plan.tiles(first)), label or output.name, enabled=bool(progress))
    def infer(batch: Batch) -> np.ndarray:
        # Views of the readers' arrays on CPU, the tensors already copied to the device on CUDA.
        inputs = {m: batch.modality(m, scene.sources[m].present) for m in modalities}
        probs = engine.predict_batch(inputs).cpu().numpy()
        return probs[:, :, None, None] if probs.ndim == 2 else probs

    tiles = stream_and_commit(scene, plan, engine, outputs, infer, channels=len(names), groups=None,
                              batch_size=batch_size, readers=readers, start_row=start_row, rows=out_grid.height,
                              progress=bar, check_units=check_units)
    written = [output] + ([Path(probabilities)] if probabilities is not None else [])
    if preview is not None:
        from .preview import write_preview

        shown = scene.sources["s2"] if "s2" in scene.sources else scene.sources["s1"]
        write_preview(preview, output, shown, names, colors, s2_offset=scene.s2_offset,
                      map_title=f"{'Land cover' if task == 'segmentation' else 'Tile classes'}: {config.name}")
        written.append(Path(preview))
    if item_paths[0] is not None:
        info = model_info(model, fingerprint)
        common = dict(grid=out_grid, model_info=info, tags=tags, sources=files,
                      properties={"s1s2:task": task, "s1s2:class_names": list(names), "s1s2:compute": tags["S1S2_COMPUTE"],
                                  "s1s2:nodata_class": NODATA_CLASS})
        written.append(stac_item.write_stac_item(
            output, asset_key="classes", product=tags["S1S2_PRODUCT"], **common,
            extra_assets={"preview": (Path(preview), "image/png", ["overview"])} if preview is not None else None))
        if probabilities is not None:
            written.append(stac_item.write_stac_item(Path(probabilities), asset_key="probabilities",
                                                     product=f"{task} probabilities", **common))
    if scene.s2_offset_source and scene.s2_offset_source != "--s2-offset":
        notes.append(f"S2 offset {scene.s2_offset:g} from {scene.s2_offset_source}")
    notes = list(dict.fromkeys(notes))  # the missing-pystac note once, not once per output
    return SceneResult(written, out_grid, tiles, time.perf_counter() - started, start_row, notes, engine.compute)
