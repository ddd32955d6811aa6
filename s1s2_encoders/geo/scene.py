"""A scene: the S1 and S2 sources of one place, checked to be on one grid, and the S2 offset."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._warnings import warn_user
from ..bands import Modality
from ..errors import GridMismatchError, InputShapeError, UnitsError
from ..inputs import check_input_units, check_s2_offset
from ..preprocess import looks_like_s2_offset
from ..stac import display_href, is_url
from .grid import Grid, check_same_grid
from .sources import LABEL, ArraySource, ModalitySource, open_modality, s2_offset_from_metadata

MODALITY_CHOICES = ("both", "s1", "s2")


@dataclass
class SceneInputs:
    """Where a scene's data are and how to read them (the input options of ``s1s2 embed/predict``).

    Attributes:
        s1 / s2: file paths (one multi-band file, or per-band files, folders, glob patterns, raster
            URLs), or one STAC Item (a ``.json`` file, a URL, a :class:`pystac.Item`), or an
            already built source (an :class:`~s1s2_encoders.geo.sources.ArraySource` from
            :mod:`s1s2_encoders.xarray`).
        s1_bands / s2_bands: band names of all input bands in order, ``"-"`` for unused ones;
            ``None`` reads them from the files.
        s1_linear: S1 holds linear power (converted to dB).
        s2_offset: digital numbers to subtract from S2 (1000 from processing baseline 04.00), or
            ``None`` to read it from the product metadata when there is some, else 0 (with a
            warning when the values look offset).
        align: warp S1 onto the S2 grid instead of refusing a pair on different grids.
        resampling: resampling for per-band files coarser than 10 m and for ``align``.
    """

    s1: Sequence[Any] | ModalitySource | None = None
    s2: Sequence[Any] | ModalitySource | None = None
    s1_bands: Sequence[str] | None = None
    s2_bands: Sequence[str] | None = None
    s1_linear: bool = False
    s2_offset: float | None = None
    align: bool = False
    resampling: str = "bilinear"

    def identity(self) -> dict[str, Any]:
        """Paths, sizes and modification times of the inputs (to tell a resumable run)."""
        out: dict[str, Any] = {}
        for name in ("s1", "s2"):
            paths = getattr(self, name) or []
            if isinstance(paths, ModalitySource):
                out[name] = [[str(p), None, None] for p in paths.paths]
                continue
            entries = []
            for p in _as_list(paths):
                if is_url(p) or not isinstance(p, (str, os.PathLike)):
                    # A URL or a pystac.Item: named, not stat-ed (a signed URL's query changes per signing).
                    shown = display_href(p) if isinstance(p, str) else f"STAC item {getattr(p, 'id', p)}"
                    entries.append([shown, None, None])
                    continue
                path = Path(p)
                stat = path.stat() if path.exists() else None
                entries.append([str(path.resolve()), stat.st_size if stat else None,
                                stat.st_mtime_ns if stat and path.is_file() else None])
            out[name] = entries
        out.update(s1_bands=list(self.s1_bands or []), s2_bands=list(self.s2_bands or []),
                   s1_linear=self.s1_linear, s2_offset=self.s2_offset, align=self.align, resampling=self.resampling)
        return out


@dataclass
class Scene:
    """The opened sources of one scene, on one grid.

    Attributes:
        sources: ``{"s1": ..., "s2": ...}`` (only the modalities used).
        grid: the scene grid (S2's when S2 is used, else S1's).
        s2_offset: the offset that will be subtracted (0 when none).
        s2_offset_source: where it came from (``"--s2-offset"``, a metadata tag, ...), or ``""``
            when nothing said (values are then checked on the first batch).
    """

    sources: dict[str, ModalitySource]
    grid: Grid
    s2_offset: float = 0.0
    s2_offset_source: str = ""
    notes: list[str] = field(default_factory=list)

    def input_tags(self) -> dict[str, str]:
        """Output metadata about the inputs: each STAC item's id, collection, datetime, platform
        and href (``S1S2_S1_STAC_ITEM``, ``S1S2_S2_DATETIME``, ...); empty for plain files."""
        tags: dict[str, str] = {}
        for source in self.sources.values():
            tags.update(source.tags)
        return tags


def open_scene(inputs: SceneInputs, modalities: Sequence[Modality], s1_bands: Sequence[str],
               s2_bands: Sequence[str]) -> Scene:
    """Open and check the sources of the modalities used.

    Args:
        inputs: the input files and options.
        modalities: which modalities the model will see.
        s1_bands / s2_bands: the model's bands.

    Raises:
        InputShapeError: a needed modality has no files.
        RasterReadError, BandError: see :func:`open_modality`.
        GridMismatchError: S1 and S2 on different grids without ``align``; the message shows both.
    """
    sources: dict[str, ModalitySource] = {}
    for modality in modalities:
        paths = inputs.s1 if modality == "s1" else inputs.s2
        if paths is None or (not isinstance(paths, ModalitySource) and not paths):
            raise InputShapeError(
                f"the model's {LABEL[modality]} tower is used (modality {'both' if len(modalities) == 2 else modality}) "
                f"but no {LABEL[modality]} input was given (--{modality})"
            )
        if isinstance(paths, ModalitySource):
            if paths.modality != modality:
                raise InputShapeError(f"the {LABEL[modality]} input is a {paths.label} source ({_shown(paths)})")
            sources[modality] = paths
            continue
        sources[modality] = open_modality(
            modality, _as_list(paths), s1_bands if modality == "s1" else s2_bands,
            inputs.s1_bands if modality == "s1" else inputs.s2_bands,
            linear=inputs.s1_linear and modality == "s1", resampling=inputs.resampling,
        )
    notes = [f"{LABEL[m]}: ignored {', '.join(s.ignored)}" for m, s in sources.items() if s.ignored]
    notes += [note for s in sources.values() for note in s.notes]
    for modality, source in sources.items():
        if source.selection.missing:
            warn_user(
                f"{_shown(source)}: {LABEL[modality]} band(s) {', '.join(source.selection.missing)} missing from the "
                "input; the model's first-layer weights for them are dropped (equivalent to a zero input after "
                "normalisation). Embeddings can differ from those of a full band stack."
            )
    if "s1" in sources and "s2" in sources:
        s1, s2 = sources["s1"], sources["s2"]
        if not s1.grid.same_as(s2.grid):
            arrays = isinstance(s1, ArraySource) or isinstance(s2, ArraySource)
            if not inputs.align or arrays:
                check_same_grid(
                    ("S1", _shown(s1), s1.grid), ("S2", _shown(s2), s2.grid),
                    hint="Reproject one onto the other first (rioxarray: s1.rio.reproject_match(s2))." if arrays else
                    "Pass --align to warp S1 onto the S2 grid with rasterio, or resample the files yourself.",
                )
            if s1.grid.crs is None or s2.grid.crs is None:
                raise GridMismatchError("--align needs both inputs to have a CRS")
            s1.align_to = s2.grid
            notes.append(f"S1 warped onto the S2 grid ({s2.grid.describe()}) with {inputs.resampling} resampling")
    grid = sources["s2"].grid if "s2" in sources else sources["s1"].output_grid
    offset, where = 0.0, ""
    if "s2" in sources:
        if inputs.s2_offset is not None:
            check_s2_offset(inputs.s2_offset)
            offset, where = float(inputs.s2_offset), "--s2-offset"
        else:
            found, where = s2_offset_from_metadata(sources["s2"])
            offset = found or 0.0
    return Scene(sources, grid, offset, where, notes)


def _as_list(paths: Any) -> list[Any]:
    """One path, URL or pystac.Item given on its own, rather than in a list, as a list."""
    if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Sequence):
        return [paths]
    return list(paths)


def _shown(source: ModalitySource) -> str:
    paths = source.paths
    return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} band files)"


def check_first_batch(scene: Scene, data: dict[str, np.ndarray], valid: dict[str, np.ndarray],
                      check_units: bool) -> None:
    """Unit and offset checks on the first batch with data, before anything is inferred.

    Raises:
        UnitsError: values that look like S2 reflectance in 0-1 or S1 in linear power.
    """
    for modality, values in data.items():
        # Every 4th pixel in each direction is plenty to judge units, and 16 x cheaper.
        x = torch.from_numpy(np.ascontiguousarray(values[:, :, ::4, ::4]))
        mask = torch.from_numpy(np.ascontiguousarray(valid[modality][:, None, ::4, ::4]))
        if bool(mask.all()):
            mask = None
        if check_units:
            try:
                check_input_units(x, modality, mask, s2_offset_removed=bool(scene.s2_offset))  # type: ignore[arg-type]
            except UnitsError as exc:
                hint = " (command line: --s1-linear converts linear power to dB)" if modality == "s1" else ""
                raise UnitsError(f"{_shown(scene.sources[modality])}: {exc}{hint} (--no-check-units skips this check)") from None
        if modality == "s2" and not scene.s2_offset_source:
            names = scene.sources["s2"].band_names
            if looks_like_s2_offset(x, names, mask):
                warn_user(
                    f"{_shown(scene.sources['s2'])}: the Sentinel-2 values look like they carry the +1000 offset "
                    "of processing baseline 04.00 (products from 25 January 2022 on) and the files do not say; "
                    "pass --s2-offset 1000 to remove it, or --s2-offset 0 to keep the values and silence this warning."
                )


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's config and weights (to tell whether a partial output can be resumed)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        # reshape(-1): a 0-d tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes.
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()
