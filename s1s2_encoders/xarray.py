"""xarray in, georeferenced xarray out: :func:`embed_xarray` and :func:`predict_xarray`.

Inputs are what rioxarray, odc-stac and stackstac give:

* a :class:`xarray.DataArray` with a band dimension (any name besides the spatial ones), y and x,
  its bands named by the band coordinate's values (``"B04"``, ``"red"``, ``"vv"``) where they
  are strings, else by the ``long_name`` attribute (rioxarray's band descriptions), else by
  ``s1_bands`` / ``s2_bands``, else taken in model order; or
* a :class:`xarray.Dataset` with one variable per band (odc-stac's default), variables named after
  bands; other variables (``scl``, ``SCL``) are left out.

A time dimension of length one is dropped. CRS and transform come from rioxarray (``.rio``). The
scene runs through the same code as ``s1s2 embed`` / ``s1s2 predict``: each input becomes an
:class:`~s1s2_encoders.geo.sources.ArraySource`, read window by window by the scene streamer with
the same tiling, blending, unit checks and S2-offset rules, so a dask-backed input is computed one
tile at a time and never as a whole. The outputs are written once to a temporary file by the scene
writer (so they are exactly what the command writes) and returned as in-memory arrays with the
CRS and transform set (``out.rio.crs``, ``out.rio.transform()``) and NaN (embeddings,
probabilities) or 255 (class maps) where there was no data.

Needs the ``xarray`` extra (xarray, rioxarray): ``pip install 's1s2-encoders[xarray]'``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .bands import Modality, select_bands
from .errors import BandError, InputShapeError
from .geo.grid import Grid
from .geo.sources import LABEL, ArraySource, band_token, s2_offset_from_tags
from .stac import band_from_name

XARRAY_EXTRA = "pip install 's1s2-encoders[xarray]'"
_TIME_DIMS = ("time", "t")


def _require() -> tuple[Any, Any]:
    """xarray and rioxarray (which registers the ``.rio`` accessor), or an error naming the extra."""
    try:
        import rioxarray  # noqa: F401  (registers .rio)
        import xarray
    except ImportError as exc:
        raise ImportError(f"embed_xarray / predict_xarray need xarray and rioxarray (the 'xarray' extra): {XARRAY_EXTRA}") from exc
    return xarray, rioxarray


def _is_dask(data: Any) -> bool:
    return type(data).__module__.split(".")[0] == "dask"


def _spatial_dims(obj: Any) -> tuple[str, str]:
    try:
        return obj.rio.y_dim, obj.rio.x_dim
    except Exception as exc:  # rioxarray raises MissingSpatialDimensionError
        raise InputShapeError(f"cannot find the spatial dimensions (y, x) of the input with dims {tuple(obj.dims)}: {exc}") from None


def _drop_time(arr: Any, label: str) -> Any:
    for dim in _TIME_DIMS:
        if dim in arr.dims:
            if arr.sizes[dim] != 1:
                raise InputShapeError(
                    f"{label}: the input has {arr.sizes[dim]} time steps ({dim!r} dimension); embed one at a time, "
                    f"e.g. x.isel({dim}=0)"
                )
            arr = arr.isel({dim: 0}, drop=True)
    return arr


def _label_names(labels: Sequence[Any], modality: Modality) -> list[str | None]:
    """Band names for band labels: exact names and catalogue names, else a band token in the text."""
    names = []
    for label in labels:
        name = band_from_name(label, modality)
        if name is None and isinstance(label, str):
            name = band_token(label, modality)
        names.append(name)
    return names


def _grid(obj: Any, y_dim: str, x_dim: str) -> Grid:
    transform = obj.rio.transform()
    return Grid(obj.rio.crs, transform, int(obj.sizes[x_dim]), int(obj.sizes[y_dim]))


def _nodata(arr: Any) -> float | None:
    value = arr.rio.nodata
    return None if value is None else float(value)


def array_source(
    x: Any, modality: Modality, model_bands: Sequence[str], bands: Sequence[str] | None = None, *,
    linear: bool = False,
) -> ArraySource:
    """An :class:`~s1s2_encoders.geo.sources.ArraySource` over a DataArray or Dataset.

    Args:
        x: ``(band, y, x)`` DataArray (a ``(y, x)`` one is a single band), or a Dataset of ``(y, x)``
            variables; numpy-, lazily- or dask-backed.
        modality: ``"s1"`` or ``"s2"``.
        model_bands: the model's bands of the modality.
        bands: names of the DataArray's bands in order (``None``: from the array, see the module doc).
        linear: (S1) the values are linear power; converted to dB.

    Raises:
        InputShapeError: not a DataArray / Dataset, wrong dimensions, more than one time step.
        BandError: wrong band counts, unknown or duplicate names.
    """
    xr, _ = _require()
    label = LABEL[modality]
    if isinstance(x, xr.Dataset):
        if bands is not None:
            raise BandError(f"{label}: a Dataset names its bands by its variables; {modality}_bands is for DataArrays")
        variables = {str(name): _drop_time(var, label) for name, var in x.data_vars.items()}
        y_dim, x_dim = _spatial_dims(x)
        names = dict(zip(variables, _label_names(list(variables), modality)))
        found = [(names[raw], var) for raw, var in variables.items() if names[raw] is not None]
        if not found:
            raise BandError(
                f"{label}: no variable of the Dataset is named after a {label} band (variables: "
                f"{', '.join(variables)}); expected names such as {', '.join(model_bands[:4])} or the "
                "Earth Search common names (red, nir08, ...)"
            )
        for raw, var in variables.items():
            if names[raw] is not None and set(var.dims) != {y_dim, x_dim}:
                raise InputShapeError(f"{label}: Dataset variable {raw!r} has dims {tuple(var.dims)}; expected ({y_dim}, {x_dim})")
        selection = select_bands(modality, model_bands, len(found), [n for n, _ in found])
        present = [selection.model_bands[p] for p in selection.present_positions]
        by_name = dict(found)
        pieces = [by_name[name].transpose(y_dim, x_dim) for name in present]
        nodata = tuple(_nodata(p) for p in pieces)
        ignored = [raw for raw, name in names.items() if name is None or name not in present]
        grid = _grid(x, y_dim, x_dim)
        stacked = False
        shown = f"xarray.Dataset ({', '.join(variables)})"
    elif isinstance(x, xr.DataArray):
        arr = _drop_time(x, label)
        y_dim, x_dim = _spatial_dims(arr)
        others = [d for d in arr.dims if d not in (y_dim, x_dim)]
        if len(others) > 1:
            raise InputShapeError(f"{label}: the DataArray has dims {tuple(arr.dims)}; expected (band, {y_dim}, {x_dim})")
        if not others:
            arr = arr.expand_dims("band")
            others = ["band"]
        band_dim = others[0]
        count = int(arr.sizes[band_dim])
        given: list[str | None] | None
        if bands is not None:
            given = list(bands)
        else:
            labels = list(arr.coords[band_dim].values) if band_dim in arr.coords else []
            given = _label_names([v if isinstance(v, str) else None for v in labels], modality) if labels else []
            if not any(given):
                long_name = arr.attrs.get("long_name")
                texts = [long_name] * count if isinstance(long_name, str) else list(long_name or [])
                given = _label_names(texts, modality) if len(texts) == count else []
            if not any(given):
                given = None  # nothing named: model order (the count is checked)
        if given is None:
            selection = select_bands(modality, model_bands, count)
            indexes = list(range(count))
            ignored = []
        else:
            if len(given) != count:
                raise BandError(f"{label}: {len(given)} band names given for a DataArray of {count} bands")
            named = [(i, n) for i, n in enumerate(given) if n is not None]
            selection = select_bands(modality, model_bands, len(named), [n for _, n in named])
            present = [selection.model_bands[p] for p in selection.present_positions]
            position = {n: i for i, n in named}
            indexes = [position[name] for name in present]
            ignored = [str(given[i]) if given[i] else f"band {i + 1}" for i in range(count) if i not in indexes]
        pieces = [arr.isel({band_dim: indexes}).transpose(band_dim, y_dim, x_dim)]
        nodata = (_nodata(arr),) * len(indexes)
        grid = _grid(arr, y_dim, x_dim)
        stacked = True
        shown = f"xarray.DataArray {arr.name or ''} ({count} bands, {grid.height} x {grid.width})".replace("  ", " ")
    else:
        raise InputShapeError(f"{label} input must be an xarray DataArray or Dataset, got {type(x).__name__}")

    def read_window(row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        window = {y_dim: slice(row0, row1), x_dim: slice(col0, col1)}
        parts = [p.isel(window).data for p in pieces]
        if any(_is_dask(p) for p in parts):
            import dask

            parts = list(dask.compute(*parts))  # one graph for all bands of the window
        arrays = [np.asarray(p) for p in parts]
        return arrays[0] if stacked else np.stack(arrays)

    offset_found, where = s2_offset_from_tags([x.attrs], "xarray attributes") if modality == "s2" else (None, "")
    return ArraySource(
        modality, [], grid, selection, linear=linear, ignored=ignored,
        metadata_offset=(offset_found, where) if offset_found is not None else None,
        read_window=read_window, nodata=nodata, name=shown,
    )


def _coords(grid: Grid) -> dict[str, np.ndarray]:
    """Cell-centre coordinates of a north-up grid (what rioxarray writes for a GeoTIFF)."""
    t = grid.transform
    return {"y": t.f + t.e * (np.arange(grid.height) + 0.5), "x": t.c + t.a * (np.arange(grid.width) + 0.5)}


def _georeference(obj: Any, grid: Grid) -> Any:
    """``obj`` with ``grid``'s transform and CRS written the rioxarray way (a ``spatial_ref`` coordinate)."""
    obj = obj.rio.write_transform(grid.transform)
    if grid.crs is not None:
        obj = obj.rio.write_crs(grid.crs)
    return obj


def _sources(model_config: Any, s1: Any, s2: Any, s1_bands: Any, s2_bands: Any, s1_linear: bool,
             modalities: Sequence[str]) -> dict[str, ArraySource]:
    given = {"s1": s1, "s2": s2}
    return {
        m: array_source(given[m], m, model_config.s1_bands if m == "s1" else model_config.s2_bands,  # type: ignore[arg-type]
                        s1_bands if m == "s1" else s2_bands, linear=s1_linear and m == "s1")
        for m in modalities
    }


def embed_xarray(
    model: Any,
    s1: Any = None,
    s2: Any = None,
    *,
    stride: int = 32,
    pooled: bool = False,
    tile: int | None = None,
    overlap: int = 64,
    s2_offset: float | None = None,
    dtype: str | torch.dtype = "auto",
    s1_bands: Sequence[str] | None = None,
    s2_bands: Sequence[str] | None = None,
    s1_linear: bool = False,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    check_units: bool = True,
    progress: bool = False,
) -> Any:
    """Embed a scene given as xarray objects; the result is what ``s1s2 embed`` writes, as a DataArray.

    Args:
        model: a backbone (:func:`~s1s2_encoders.load_backbone`).
        s1 / s2: DataArrays or Datasets (see the module docstring) on one grid; give one of them to
            run that tower only.
        stride / pooled / tile / overlap: as for ``s1s2 embed`` (``tile`` default: 448 for dense
            maps, the model's training crop size with ``pooled``).
        s2_offset: digital numbers to subtract from S2; ``None`` reads it from the input's
            attributes when they say (``BOA_ADD_OFFSET``, ``s2:processing_baseline`` ...), else 0 with
            a warning when the values look offset.
        dtype / batch_size / device / check_units: inference options, as for ``s1s2 embed``.
        s1_bands / s2_bands: band names of a DataArray's bands, when the array does not name them.
        s1_linear: S1 holds linear power (converted to dB).
        progress: show the progress line.

    Returns:
        ``(band, y, x)`` float32 DataArray: one band per feature (``s1_0000`` ... then ``s2_0000``
        ...), cells ``stride`` (or ``tile`` with ``pooled``) pixels wide, the input's CRS, its
        transform scaled to the cell, NaN where a cell saw no valid pixel; the scene metadata
        (model, normalisation, offset) in ``attrs``.

    Raises:
        ImportError (the extra is missing), InputShapeError, BandError, GridMismatchError, UnitsError.
    """
    xr, _ = _require()
    from .geo.embed import embed_scene
    from .geo.scene import SceneInputs

    modalities = [m for m, v in (("s1", s1), ("s2", s2)) if v is not None]
    if not modalities:
        raise InputShapeError("pass s1 and/or s2")
    sources = _sources(model.config, s1, s2, s1_bands, s2_bands, s1_linear, modalities)
    inputs = SceneInputs(s1=sources.get("s1"), s2=sources.get("s2"), s2_offset=s2_offset)
    with tempfile.TemporaryDirectory(prefix="s1s2-xarray-") as folder:
        path = Path(folder) / "embedding.npy"
        result = embed_scene(
            model, inputs, path, modality="both" if len(modalities) == 2 else modalities[0], stride=stride,
            pooled=pooled, tile=tile or (model.config.input_size if pooled else 448), overlap=overlap,
            batch_size=batch_size, device=device, dtype=dtype, fmt="npy", check_units=check_units, progress=progress,
            stac=False,  # a temporary file: no Item to describe it
        )
        meta = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        stored = np.load(path, mmap_mode="r")  # (H, W, C) on disk; one copy into (C, H, W)
        values = np.moveaxis(stored, -1, 0).copy()
        del stored
    grid = result.grid
    out = xr.DataArray(values, dims=("band", "y", "x"), coords={"band": meta["bands"], **_coords(grid)},
                       name="embedding", attrs={**meta["tags"], "notes": "; ".join(result.notes)})
    return _georeference(out, grid).rio.write_nodata(np.nan, encoded=False)


def predict_xarray(
    model: Any,
    s1: Any = None,
    s2: Any = None,
    *,
    probabilities: bool = False,
    tile: int | None = None,
    overlap: int = 64,
    s2_offset: float | None = None,
    dtype: str | torch.dtype = "auto",
    s1_bands: Sequence[str] | None = None,
    s2_bands: Sequence[str] | None = None,
    s1_linear: bool = False,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    check_units: bool = True,
    progress: bool = False,
) -> Any:
    """Map a scene given as xarray objects with a fine-tuned task model, as ``s1s2 predict`` does.

    Args:
        model: a task model (:func:`~s1s2_encoders.load_model`) with the modalities it was trained on.
        s1 / s2: DataArrays or Datasets on one grid (the model's modalities).
        probabilities: also return the blended class probabilities.
        tile / overlap / s2_offset / dtype / ...: as for :func:`embed_xarray` and ``s1s2 predict``.

    Returns:
        A Dataset with ``classes`` ``(y, x)`` uint8 (255 = no data; ``attrs["class_names"]``, JSON) and,
        with ``probabilities``, ``probabilities`` ``(class, y, x)`` float32 (NaN = no data; the ``class``
        coordinate holds the class names); the input's
        CRS and transform (scaled to the tile for classification models).
    """
    xr, _ = _require()
    import rasterio

    from .geo.predict import NODATA_CLASS, predict_scene
    from .geo.scene import SceneInputs

    wanted = list(getattr(model, "modalities", ("s1", "s2")))
    given = [m for m, v in (("s1", s1), ("s2", s2)) if v is not None]
    missing = [m for m in wanted if m not in given]
    if missing:
        raise InputShapeError(f"the model takes {', '.join(wanted)}; {', '.join(missing)} not given")
    sources = _sources(model.config, s1, s2, s1_bands, s2_bands, s1_linear, wanted)
    inputs = SceneInputs(s1=sources.get("s1"), s2=sources.get("s2"), s2_offset=s2_offset)
    names = list(model.class_names)
    with tempfile.TemporaryDirectory(prefix="s1s2-xarray-") as folder:
        path = Path(folder) / "map.tif"
        probs_path = Path(folder) / "probabilities.tif" if probabilities else None
        result = predict_scene(
            model, inputs, path, probabilities=probs_path, tile=tile, overlap=overlap, batch_size=batch_size,
            device=device, dtype=dtype, compress="none", check_units=check_units, progress=progress,
            stac=False,
        )
        with rasterio.open(path) as src:
            classes, tags = src.read(1), src.tags()
        probs = None
        if probs_path is not None:
            with rasterio.open(probs_path) as src:
                probs = src.read()
    grid = result.grid
    coords = _coords(grid)
    class_map = xr.DataArray(classes, dims=("y", "x"), coords=coords, attrs={"class_names": json.dumps(names)})
    variables = {"classes": class_map.rio.write_nodata(NODATA_CLASS, encoded=False)}
    if probs is not None:
        variables["probabilities"] = xr.DataArray(
            probs, dims=("class", "y", "x"), coords={"class": names, **coords}).rio.write_nodata(np.nan, encoded=False)
    out = xr.Dataset(variables, attrs={**tags, "notes": "; ".join(result.notes)})
    return _georeference(out, grid)
