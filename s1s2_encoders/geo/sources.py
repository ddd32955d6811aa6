"""Read one modality of a scene from GeoTIFFs: one multi-band file, or one file per band.

A :class:`ModalitySource` knows, for every band the model uses, which file and band index hold
it, and how to bring it onto the modality's reference grid:

* Band names come from the files' band descriptions when they name bands (``"B04"``,
  ``"B4, central wavelength 665 nm"``, ``"VV"``, ``"Sigma0_VH_db"``), else from the file name for
  single-band files (``..._B8A.tif``, ``T33UUP_..._B8A_20m.jp2``, ``..._VV.tif``), else from the
  ``--s1-bands`` / ``--s2-bands`` flags, else the file is taken to be in model order.
* Per-band files at 10, 20 and 60 m (BigEarthNet, SAFE) are resampled **explicitly** to the grid
  of the finest band (the 10 m grid) through a GDAL warped VRT; bands already on that grid are
  read directly.
* ``align_to`` warps the whole modality onto another grid (``--align``: S1 onto the S2 grid).
* A STAC Item (JSON file, URL or :class:`pystac.Item`) stands for its assets: band names, nodata
  and S1 units come from the item (:mod:`s1s2_encoders.stac`); URLs are read by GDAL as rasterio
  does (``/vsicurl/``).
* :class:`ArraySource` is the same interface over an in-memory or lazy array (xarray, dask).

Reading a window returns float32 values in model band order and a validity mask: a pixel is
invalid when any band is NaN/inf, equals the band's declared nodata value, is masked by the
file's mask or alpha band, lies outside the source after warping, or (Sentinel-2) is 0 in every
band, the Sentinel-2 product convention for "no data".
"""

from __future__ import annotations

import contextlib
import glob as globlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..bands import BandSelection, Modality, canonical_band_name, select_bands
from ..errors import BandError, GridMismatchError, OptionError, RasterReadError
from ..stac import StacItemInput, display_href, group_by_file, href_name, is_stac_reference, is_url, plan_item
from .grid import Grid, check_same_grid

LABEL = {"s1": "Sentinel-1", "s2": "Sentinel-2"}
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
SKIP_BAND = "-"  # in --s1-bands / --s2-bands: a band of the file that the model does not use
_GLOB_CHARS = re.compile(r"[*?\[]")
# A band token delimited by anything but letters and digits (underscores included).
_S2_TOKEN = re.compile(r"(?<![A-Za-z0-9])(B\d{1,2}A?)(?![A-Za-z0-9])", re.IGNORECASE)
_S1_TOKEN = re.compile(r"(?<![A-Za-z0-9])(VV|VH)(?![A-Za-z0-9])", re.IGNORECASE)
RESAMPLING = {"nearest": Resampling.nearest, "bilinear": Resampling.bilinear, "cubic": Resampling.cubic,
              "average": Resampling.average}


def band_token(text: str | None, modality: Modality) -> str | None:
    """The canonical band name found in a band description or a file name, or ``None``."""
    if not text:
        return None
    pattern = _S1_TOKEN if modality == "s1" else _S2_TOKEN
    for match in pattern.finditer(text):
        try:
            return canonical_band_name(match.group(1), modality)
        except BandError:
            continue
    return None


def expand_paths(paths: Sequence[str | os.PathLike[str]], modality: Modality) -> list[Path | str]:
    """Files named by ``paths``: plain files, glob patterns, folders of per-band files and URLs.

    A folder stands for the raster files in it (and below it) whose names carry a band token
    (``_B04``, ``_VV``): a BigEarthNet patch folder, or a SAFE product or its ``IMG_DATA`` folder.
    Metadata files and the SAFE quality masks (``QI_DATA``, ``MSK_*``) are ignored. A URL of a
    raster (``https://.../B04.tif``, ``s3://...``) is kept as a string for GDAL to read.

    Raises:
        RasterReadError: a path or pattern that names no file.
    """
    label = LABEL[modality]
    out: list[Path | str] = []
    for raw in paths:
        text = os.fspath(raw)
        if is_url(text):
            out.append(text)
            continue
        if _GLOB_CHARS.search(text) and not Path(text).exists():
            matches = sorted(globlib.glob(text, recursive=True))
            if not matches:
                raise RasterReadError(f"{label}: the pattern {text!r} matches no file")
            out.extend(Path(m) for m in matches)
            continue
        path = Path(text)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES and band_token(p.stem, modality)
                and not p.name.upper().startswith("MSK_") and "QI_DATA" not in p.relative_to(path).parts
            )
            if not found:
                raise RasterReadError(
                    f"{label}: the folder {path} holds no raster file named after a band "
                    f"(expected names like ..._{'VV' if modality == 's1' else 'B04'}.tif)"
                )
            out.extend(found)
        elif path.is_file():
            out.append(path)
        elif path.exists():
            raise RasterReadError(f"{label}: {path} is not a regular file")
        else:
            raise RasterReadError(f"{label}: no such file: {path}")
    return out


def open_raster(path: Path | str, label: str):
    """``rasterio.open`` with an error that names the modality and the file.

    URLs go to rasterio unchanged (GDAL's ``/vsicurl/``, ``/vsis3/`` ...), signed query strings
    included; GDAL is told not to list the remote folder first (one request less per file, and
    signed blob stores refuse listings anyway). Messages show URLs without their query string.
    """
    try:
        if is_url(path):
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                return rasterio.open(path)
        return rasterio.open(path)
    except (RasterioError, OSError) as exc:
        raise RasterReadError(f"{label}: cannot read {display_href(path)} as a raster: {_hide_query(exc, path)}") from exc


def _hide_query(exc: BaseException, path: Path | str) -> str:
    """GDAL's message without the signed query string of a URL it quotes."""
    text = str(exc)
    if is_url(path) and "?" in str(path):
        text = text.replace(str(path), display_href(path))
    return text


@dataclass
class _FilePlan:
    """One input file and what is read from it."""

    path: Path | str  # a local file, or a URL for GDAL
    grid: Grid
    count: int
    dtype: str
    nodata: tuple[float | None, ...]
    masked: tuple[bool, ...]  # band has a per-dataset mask or alpha band
    names: list[str | None] = field(default_factory=list)
    indexes: list[int] = field(default_factory=list)  # 1-based band indexes to read
    positions: list[int] = field(default_factory=list)  # where each goes in the output channels
    warp: bool = False  # needs resampling onto the reference grid


@dataclass
class ModalitySource:
    """One modality of a scene, ready to be read window by window on its reference grid.

    Build it with :func:`open_modality`. ``grid`` is the reference grid; ``selection`` maps model
    bands to the channels that :meth:`read` returns (only the bands present in the files, in model
    order); ``present`` is what :meth:`S1S2Backbone.encode` needs when bands are missing.
    """

    modality: Modality
    files: list[_FilePlan]
    grid: Grid
    selection: BandSelection
    linear: bool = False
    resampling: Resampling = Resampling.bilinear
    align_to: Grid | None = None
    ignored: list[str] = field(default_factory=list)
    stac: StacItemInput | None = None
    """The STAC Item the files are the assets of (``None`` for plain files)."""
    metadata_offset: tuple[float, str] | None = None
    """The S2 offset the input's own metadata states (a STAC item, xarray attributes) and where."""
    notes: list[str] = field(default_factory=list)
    """What was decided about this input and why (units, assets left out), for the user."""

    @property
    def label(self) -> str:
        return LABEL[self.modality]

    @property
    def tags(self) -> dict[str, str]:
        """Output metadata about the input (the STAC item's id, datetime, platform ...)."""
        return self.stac.tags() if self.stac is not None else {}

    @property
    def present(self) -> tuple[int, ...] | None:
        return None if not self.selection.missing else self.selection.present_positions

    @property
    def band_names(self) -> list[str]:
        """Names of the channels :meth:`read` returns, in order."""
        return [self.selection.model_bands[p] for p in self.selection.present_positions]

    @property
    def n_channels(self) -> int:
        return len(self.selection.present_positions)

    @property
    def paths(self) -> list[Path | str]:
        """The inputs as the user named them, for messages and metadata: the files, or the STAC
        item they are the assets of; URLs without their query string (no signature leaks)."""
        if self.stac is not None:
            return [self.stac.href or f"STAC item {self.stac.item_id}"]
        return [display_href(f.path) if is_url(f.path) else f.path for f in self.files]

    @property
    def output_grid(self) -> Grid:
        """The grid :meth:`read` windows refer to (the alignment target when aligning)."""
        return self.align_to if self.align_to is not None else self.grid

    def read_decimated(self, names: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
        """The whole extent of some bands at a reduced size ``(h, w)`` (GDAL averages; used for
        quick-looks). Returns ``(len(names), h, w)`` float32 raw values, NaN where nodata.

        Raises:
            BandError: a name that is not among :attr:`band_names`.
        """
        out = np.empty((len(names), *shape), dtype=np.float32)
        with self.reader() as reader:
            for k, name in enumerate(names):
                if name not in self.band_names:
                    raise BandError(f"{self.label}: band {name} is not in the input ({', '.join(self.band_names)})")
                position = self.band_names.index(name)
                for plan, ds in zip(self.files, reader.handles):
                    if position in plan.positions:
                        index = plan.indexes[plan.positions.index(position)]
                        masked = ds.read(index, out_shape=shape, resampling=Resampling.average, masked=True,
                                         out_dtype="float32")
                        out[k] = masked.filled(np.nan)
        if self.modality == "s1" and self.linear:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = np.where(out > 0, 10 * np.log10(out), np.nan).astype(np.float32)
        return out

    @contextlib.contextmanager
    def reader(self) -> Iterator["_OpenReader"]:
        """Open the files (in the calling thread: rasterio handles are not shared between threads)."""
        with contextlib.ExitStack() as stack:
            handles = []
            target = self.output_grid
            for plan in self.files:
                ds = stack.enter_context(open_raster(plan.path, self.label))
                if plan.warp or self.align_to is not None:
                    # Explicit resampling onto the target grid; float32 with NaN outside the source
                    # so that pixels the source does not cover come out invalid.
                    src_nodata = plan.nodata[0]
                    if src_nodata is None and np.issubdtype(np.dtype(plan.dtype), np.floating):
                        src_nodata = math.nan
                    ds = stack.enter_context(WarpedVRT(
                        ds, crs=target.crs, transform=target.transform, width=target.width,
                        height=target.height, resampling=self.resampling, src_nodata=src_nodata,
                        nodata=math.nan, dtype="float32",
                    ))
                handles.append(ds)
            yield _OpenReader(self, handles)


class _OpenReader:
    def __init__(self, source: ModalitySource, handles: list):
        self.source = source
        self.handles = handles
        self._scratch: dict[int, np.ndarray] = {}

    def _buffer(self, number: int, shape: tuple[int, int, int]) -> np.ndarray:
        """A reusable read buffer per file (reading tile after tile must not churn the allocator)."""
        buffer = self._scratch.get(number)
        if buffer is None or buffer.shape[0] != shape[0] or buffer.shape[1] < shape[1] or buffer.shape[2] < shape[2]:
            buffer = self._scratch[number] = np.empty(shape, dtype=np.float32)
        return buffer[:, : shape[1], : shape[2]]

    def read(self, window: Window, out: np.ndarray | None = None,
             valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window of the output grid.

        Args:
            window: the window (inside the grid).
            out / valid: optional ``(C, h, w)`` float32 and ``(h, w)`` bool arrays (views are fine)
                to read into, e.g. a slot of a batch; allocated when not given.

        Returns:
            ``(data, valid)``: ``(C, h, w)`` float32 raw values in model band order (S1 in dB,
            S2 digital numbers as stored) with invalid pixels set to 0, and ``(h, w)`` bool.
        """
        source = self.source
        h, w = int(window.height), int(window.width)
        data = out if out is not None else np.empty((source.n_channels, h, w), dtype=np.float32)
        if valid is None:
            valid = np.ones((h, w), dtype=bool)
        else:
            valid[...] = True
        for number, (plan, ds) in enumerate(zip(source.files, self.handles)):
            first, count = plan.positions[0], len(plan.positions)
            in_place = plan.positions == list(range(first, first + count))
            target = data[first: first + count] if in_place else self._buffer(number, (count, h, w))
            try:
                ds.read(plan.indexes, window=window, out=target)
                masks = None
                if any(plan.masked[i - 1] for i in plan.indexes) and not isinstance(ds, WarpedVRT):
                    masks = ds.read_masks(plan.indexes, window=window)
            except (RasterioError, OSError) as exc:
                raise RasterReadError(
                    f"{source.label}: reading {display_href(plan.path)} failed at rows {window.row_off}-"
                    f"{window.row_off + h}, columns {window.col_off}-{window.col_off + w}: {_hide_query(exc, plan.path)}"
                ) from exc
            can_be_nan = isinstance(ds, WarpedVRT) or not np.issubdtype(np.dtype(plan.dtype), np.integer)
            for k, (index, position) in enumerate(zip(plan.indexes, plan.positions)):
                band = target[k]
                if can_be_nan:
                    valid &= np.isfinite(band)
                nodata = None if isinstance(ds, WarpedVRT) else plan.nodata[index - 1]
                if nodata is not None and not math.isnan(nodata):
                    valid &= band != np.float32(nodata)
                if masks is not None:
                    valid &= masks[k] > 0
                if not in_place:
                    data[position] = band
        return finish_window(source, data, valid)


def finish_window(source: ModalitySource, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What every reader does last to a window of raw values ``(C, h, w)`` and its validity ``(h, w)``:
    S1 linear power to dB (non-positive power is invalid), the Sentinel-2 "0 in every band" nodata
    rule, and invalid pixels set to 0. In place; returns ``(data, valid)``."""
    if source.modality == "s1" and source.linear:
        with np.errstate(divide="ignore", invalid="ignore"):
            valid &= data.min(axis=0) > 0
            np.log10(data, out=data, where=valid[None])
            data *= 10.0
    if source.modality == "s2":
        valid &= np.any(data, axis=0)  # not 0 in every band (NaN counts as non-zero but is invalid already)
    if not valid.all():
        np.copyto(data, np.float32(0), where=~valid[None])
    return data, valid


WindowReader = Callable[[int, int, int, int], np.ndarray]


@dataclass
class ArraySource(ModalitySource):
    """One modality held by an array rather than files (see :mod:`s1s2_encoders.xarray`).

    The same interface as a file source, so scenes stream it with the same tiling, blending and
    checks. ``read_window(row0, row1, col0, col1)`` returns the ``(C, h, w)`` raw values of the
    bands present, in model order (any real dtype; a dask-backed array computes just that window),
    and ``nodata`` gives each channel's nodata value (``None``: none). Validity (NaN/inf, nodata),
    S1 linear power -> dB and the S2 "0 in every band" rule are those of file sources
    (:func:`finish_window`). ``files`` is empty; ``name`` describes the array in messages.
    """

    read_window: WindowReader | None = None
    nodata: tuple[float | None, ...] = ()
    name: str = "array"

    @property
    def paths(self) -> list[Path | str]:
        return [self.name]

    def read_decimated(self, names: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
        raise OptionError(f"{self.label}: quick-looks are drawn from files; {self.name} is an array")

    @contextlib.contextmanager
    def reader(self) -> Iterator["_ArrayReader"]:
        yield _ArrayReader(self)


class _ArrayReader:
    def __init__(self, source: ArraySource):
        self.source = source

    def read(self, window: Window, out: np.ndarray | None = None,
             valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Read a window; as :meth:`_OpenReader.read`."""
        source = self.source
        h, w = int(window.height), int(window.width)
        row, col = int(window.row_off), int(window.col_off)
        values = np.asarray(source.read_window(row, row + h, col, col + w))
        if values.shape != (source.n_channels, h, w):
            raise RasterReadError(
                f"{source.label}: {source.name} gave a window of shape {values.shape} for rows {row}-{row + h}, "
                f"columns {col}-{col + w}; expected {(source.n_channels, h, w)}"
            )
        data = out if out is not None else np.empty((source.n_channels, h, w), dtype=np.float32)
        np.copyto(data, values, casting="unsafe")
        if valid is None:
            valid = np.ones((h, w), dtype=bool)
        else:
            valid[...] = True
        if not np.issubdtype(values.dtype, np.integer):
            valid &= np.isfinite(data).all(axis=0)
        for band, nodata in zip(data, source.nodata):
            if nodata is not None and not math.isnan(nodata):
                valid &= band != np.float32(nodata)
        return finish_window(source, data, valid)


def _file_names(ds, path: Path | str, modality: Modality) -> list[str | None]:
    """Band names a file declares: from descriptions, else (single band) from the file name."""
    names = [band_token(d, modality) for d in ds.descriptions]
    if not any(names) and ds.count == 1:
        names = [band_token(Path(href_name(path)).stem, modality)]
    return names


def open_modality(
    modality: Modality,
    paths: Sequence[Any],
    model_bands: Sequence[str],
    bands: Sequence[str] | None = None,
    *,
    linear: bool = False,
    resampling: str = "bilinear",
) -> ModalitySource:
    """Inspect the files of one modality and plan how to read them.

    Args:
        modality: ``"s1"`` or ``"s2"``.
        paths: one multi-band file, or per-band files / folders / glob patterns / raster URLs, or
            one STAC Item (a ``.json`` file, a URL, a :class:`pystac.Item`), whose assets are the files.
        model_bands: the model's bands of this modality, in model order.
        bands: names of all bands of all files in order (the ``--s1-bands`` / ``--s2-bands``
            flags); ``"-"`` marks a band the model does not use. Overrides what the files say.
            Not with a STAC item (its assets name the bands).
        linear: (S1) the files hold linear power; converted to dB as ``10 log10(x)``. A STAC item
            of Planetary Computer's ``sentinel-1-rtc`` sets it by itself.
        resampling: how per-band files coarser than the finest one are brought onto its grid
            (``nearest``, ``bilinear``, ``cubic``, ``average``).

    Raises:
        RasterReadError: missing or unreadable files, a file without a recognisable band, an item
            that cannot be read or is of the other mission.
        BandError: wrong band counts, unknown / duplicate / missing bands, an item without a band asset.
        GridMismatchError: per-band files at the finest resolution on different grids, or coarser
            files that do not cover the same area.
        ImportError: a STAC item without pystac installed (names the extra).
    """
    label = LABEL[modality]
    if resampling not in RESAMPLING:
        raise OptionError(f"resampling must be one of {', '.join(RESAMPLING)}, got {resampling!r}")
    item: StacItemInput | None = None
    overrides: list[dict[int, Any] | None] = []  # per file: band index -> the item's AssetBand
    if any(is_stac_reference(p) for p in paths):
        if len(paths) != 1:
            raise OptionError(
                f"{label}: a STAC item stands for all the bands of its modality; give it alone "
                f"(got {len(paths)} inputs: {', '.join(display_href(os.fspath(p)) if not hasattr(p, 'id') else p.id for p in paths)})"
            )
        if bands is not None:
            raise OptionError(f"{label}: --{modality}-bands cannot be used with a STAC item: its assets name the bands")
        item = plan_item(paths[0], modality)
        grouped = group_by_file(item.bands)
        files: list[Path | str] = [href if is_url(href) else Path(href) for href, _ in grouped]
        overrides = [by_index for _, by_index in grouped]
    else:
        files = expand_paths(paths, modality)
        overrides = [None] * len(files)
    if not files:
        raise RasterReadError(f"{label}: no input file given")
    plans: list[_FilePlan] = []
    declared: list[list[str | None]] = []
    for path, override in zip(files, overrides):
        with open_raster(path, label) as ds:
            masked = tuple(
                bool({MaskFlags.per_dataset, MaskFlags.alpha} & set(flags)) for flags in ds.mask_flag_enums
            )
            nodata = tuple(ds.nodatavals)
            if override is None:
                declared.append(_file_names(ds, path, modality))
            else:
                if max(override) > ds.count:
                    raise RasterReadError(
                        f"{label}: {item.shown} says asset {override[max(override)].key} has band {max(override)}, "
                        f"but {display_href(path)} has {ds.count} band(s)"
                    )
                declared.append([override[i].band if i in override else None for i in range(1, ds.count + 1)])
                # The item's nodata stands in where the file declares none.
                nodata = tuple(n if n is not None or i not in override else override[i].nodata
                               for i, n in enumerate(nodata, start=1))
            plans.append(_FilePlan(path, Grid.of(ds), ds.count, ds.dtypes[0], nodata, masked))
    total = sum(p.count for p in plans)

    if bands is not None:
        bands = [b.strip() for b in bands]
        if len(bands) != total:
            listing = ", ".join(f"{href_name(p.path)} ({p.count})" for p in plans)
            raise BandError(
                f"{label}: {len(bands)} band names given ({', '.join(bands)}) but the input has {total} "
                f"band(s): {listing}"
            )
        flat: list[str | None] = [None if b == SKIP_BAND else canonical_band_name(b, modality) for b in bands]
    elif len(plans) == 1 and not any(declared[0]):
        flat = [None] * total  # nothing declared: model order if the count fits (checked below)
    else:
        flat = [name for names in declared for name in names]
        for plan, names in zip(plans, declared):
            if len(plans) > 1 and not any(names):
                raise RasterReadError(
                    f"{label}: cannot tell which band {display_href(plan.path)} holds (no band description, no band "
                    f"name like _{'VV' if modality == 's1' else 'B04'} in the file name); rename it or "
                    f"pass --{modality}-bands"
                )

    # Assign names to plans; keep the finest file when a band appears in several (SAFE L2A has
    # B02 at 10, 20 and 60 m).
    chosen: dict[str, tuple[int, int]] = {}  # band -> (plan number, 1-based index)
    ignored: list[str] = []
    cursor = 0
    for number, plan in enumerate(plans):
        plan.names = flat[cursor: cursor + plan.count]
        cursor += plan.count
        for index, name in enumerate(plan.names, start=1):
            if name is None:
                if any(flat):
                    ignored.append(f"{href_name(plan.path)} band {index}")
                continue
            if name in chosen:
                other = plans[chosen[name][0]]
                if other.grid.resolution == plan.grid.resolution:
                    raise BandError(
                        f"{label}: band {name} appears twice: {display_href(other.path)} band {chosen[name][1]} and "
                        f"{display_href(plan.path)} band {index}"
                    )
                if plan.grid.resolution > other.grid.resolution:
                    continue
            chosen[name] = (number, index)

    if not chosen:
        # Nothing named anywhere: a single file in model order (select_bands checks the count).
        plan = plans[0]
        try:
            selection = select_bands(modality, model_bands, plan.count)
        except BandError as exc:
            raise BandError(f"{label} file {display_href(plan.path)}: {exc}") from None
        plan.indexes = list(range(1, plan.count + 1))
        plan.positions = list(range(plan.count))
        used = [plan]
    else:
        names_in_order = list(chosen)
        try:
            selection = select_bands(modality, model_bands, len(names_in_order), names_in_order)
        except BandError as exc:
            where = item.shown if item is not None else ", ".join(display_href(p.path) for p in plans)
            raise BandError(f"{exc} [files: {where}]") from None
        present = [selection.model_bands[p] for p in selection.present_positions]
        for plan in plans:
            plan.indexes, plan.positions = [], []
        for position, name in enumerate(present):
            number, index = chosen[name]
            plans[number].indexes.append(index)
            plans[number].positions.append(position)
        ignored += [n for n in names_in_order if n not in present]
        used = [p for p in plans if p.indexes]

    grid = _reference_grid(used, label)
    for plan in used:
        plan.warp = not plan.grid.same_as(grid)
    offset = None
    if item is not None and modality == "s2":
        found, where = s2_offset_from_tags([item.properties], f"STAC item {item.item_id}")
        offset = (found, where) if found is not None else None
    return ModalitySource(
        modality, used, grid, selection, linear=linear or (item is not None and item.s1_linear),
        resampling=RESAMPLING[resampling], ignored=ignored, stac=item, metadata_offset=offset,
        notes=list(item.notes) if item is not None else [],
    )


def _reference_grid(plans: list[_FilePlan], label: str) -> Grid:
    """The finest file's grid; every other file must be on it or cover the same area coarser."""
    finest = min(plans, key=lambda p: p.grid.resolution)
    for plan in plans:
        if plan.grid.resolution == finest.grid.resolution or plan is finest:
            check_same_grid(
                (f"{label} band file", display_href(finest.path), finest.grid),
                (f"{label} band file", display_href(plan.path), plan.grid),
                hint="Files of the same resolution must share one grid.",
            )
            continue
        if plan.grid.crs != finest.grid.crs:
            check_same_grid((label, display_href(finest.path), finest.grid), (label, display_href(plan.path), plan.grid))
        tolerance = plan.grid.resolution / 2
        if any(abs(a - b) > tolerance for a, b in zip(plan.grid.bounds, finest.grid.bounds)):
            a, b = display_href(plan.path), display_href(finest.path)
            raise GridMismatchError(
                f"{label}: {a} does not cover the same area as {b}, so it cannot be "
                f"resampled onto its grid:\n  {b}: {finest.grid.describe()}, bounds "
                f"{_fmt_bounds(finest.grid)}\n  {a}: {plan.grid.describe()}, bounds {_fmt_bounds(plan.grid)}"
            )
    return finest.grid


def _fmt_bounds(grid: Grid) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in grid.bounds) + ")"


# --------------------------------------------------------------------------- the S2 offset
_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})_")
_BASELINE_VALUE = re.compile(r"^\s*N(\d{2})(\d{2})\s*$", re.IGNORECASE)
_BASELINE_KEYS = ("PROCESSING_BASELINE", "S2:PROCESSING_BASELINE")
_PRODUCT_NAME_KEYS = ("S2:PRODUCT_URI", "PRODUCT_URI", "S2:PRODUCT_ID")
_OFFSET_REMOVED_KEYS = ("EARTHSEARCH:BOA_OFFSET_APPLIED",)


def _baseline(value: Any) -> float | None:
    """``"05.09"``, ``"N0509"``, ``5.09`` -> 5.09; ``None`` when it is not a baseline."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        match = _BASELINE_VALUE.match(str(value))
        return int(match.group(1)) + int(match.group(2)) / 100 if match else None


def _offset_of_baseline(baseline: float) -> float:
    return 1000.0 if baseline >= 4.0 else 0.0


def s2_offset_from_tags(tag_sets: Sequence[Mapping[str, Any]], where: str) -> tuple[float | None, str]:
    """The Sentinel-2 offset that a set of metadata fields states (GeoTIFF tags, STAC item
    properties, xarray attributes), in this order of precedence:

    1. ``BOA_ADD_OFFSET`` / ``RADIO_ADD_OFFSET`` (the product fields, -1000 from baseline 04.00 on):
       the offset is minus their value;
    2. ``earthsearch:boa_offset_applied: true`` (Earth Search removed it already): 0;
    3. a processing baseline (``PROCESSING_BASELINE``, ``s2:processing_baseline``: ``"05.09"``):
       1000 from 04.00 on, else 0;
    4. the ``_Nxxyy_`` baseline in a product name (``s2:product_uri``).

    Args:
        tag_sets: the metadata dictionaries to look in (earlier ones first within each rule).
        where: names the source in the returned explanation.

    Returns:
        ``(offset, where)``: digital numbers to subtract and ``"where: KEY=VALUE"``, or ``(None, "")``.
    """
    for tags in tag_sets:
        for key, value in tags.items():
            if "ADD_OFFSET" in str(key).upper():
                try:
                    return -float(value), f"{where}: {key}={value}"
                except (TypeError, ValueError):
                    continue
    for tags in tag_sets:
        for key, value in tags.items():
            if str(key).upper() in _OFFSET_REMOVED_KEYS and (value is True or str(value).lower() == "true"):
                return 0.0, f"{where}: {key}=true (the offset was removed already)"
    for tags in tag_sets:
        for key, value in tags.items():
            if str(key).upper() in _BASELINE_KEYS:
                baseline = _baseline(value)
                if baseline is not None:
                    return _offset_of_baseline(baseline), f"{where}: {key}={value}"
    for tags in tag_sets:
        for key, value in tags.items():
            if str(key).upper() in _PRODUCT_NAME_KEYS:
                match = _BASELINE_IN_NAME.search(f"{value}_")
                if match:
                    baseline = int(match.group(1)) + int(match.group(2)) / 100
                    return _offset_of_baseline(baseline), f"{where}: processing baseline N{match.group(1)}{match.group(2)} in {key}"
    return None, ""


def s2_offset_from_metadata(source: ModalitySource) -> tuple[float | None, str]:
    """The Sentinel-2 processing-baseline offset, when the input says what it is.

    Looks, in order, at what the input's own metadata states (a STAC item's properties, xarray
    attributes: :attr:`ModalitySource.metadata_offset`), at each file's tags
    (:func:`s2_offset_from_tags`), and at the ``_Nxxyy_`` baseline in a SAFE product path
    (``S2A_MSIL1C_20220315T..._N0400_...``).

    Returns:
        ``(offset, where)``: the digital numbers to subtract (0 or 1000) and where it came from,
        or ``(None, "")`` when nothing says.
    """
    if source.metadata_offset is not None:
        return source.metadata_offset
    for plan in source.files:
        try:
            with open_raster(plan.path, source.label) as ds:
                tag_sets = [ds.tags()] + [ds.tags(i) for i in plan.indexes]
        except RasterReadError:
            continue
        found = s2_offset_from_tags(tag_sets, href_name(plan.path))
        if found[0] is not None:
            return found
    for plan in source.files:
        if is_url(plan.path):
            continue
        for part in Path(plan.path).resolve().parts:
            match = _BASELINE_IN_NAME.search(part + "_") if ".SAFE" in part.upper() else None
            if match:
                baseline = int(match.group(1)) + int(match.group(2)) / 100
                return _offset_of_baseline(baseline), f"processing baseline N{match.group(1)}{match.group(2)} in {part}"
    return None, ""
