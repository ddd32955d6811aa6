"""Outputs written row-stripe by row-stripe under a temporary name, renamed when complete.

Every output goes to a hidden sibling ``.NAME.s1s2-partial`` in the same folder (so the final
``os.replace`` is an atomic rename on the same file system); an interrupted or failed run never
leaves a file under the final name. The data are flushed to disk before the rename (and the folder
after it), so that a power loss cannot leave a truncated file under the final name that already
says it is complete. With ``resume``, the partial files are closed and reopened
every ``checkpoint_every`` seconds and a small JSON record says how many output rows are on disk
and with which parameters, so a later run with the same parameters can continue from there.

GeoTIFFs are tiled (256 x 32 blocks by default: stripes are flushed in whole block rows, so each
compressed block is written exactly once), compressed, band-interleaved (one embedding dimension
per band reads fast) and BigTIFF when they may pass 4 GB. With ``cog``, the finished tiled file is
turned into a Cloud-Optimized GeoTIFF with overviews (:mod:`.cog`) under a second temporary name
``.NAME.s1s2-cog`` before the rename; the tiled partial file is removed only once the COG is in place.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import rasterio
from rasterio.windows import Window

from ..durable import PARTIAL_SUFFIX, atomic_write_text, commit_file, fsync_file, partial_path
from ..errors import OptionError, OutputExistsError
from .cog import Overviews, write_cog
from .grid import Grid

OWN_TAG_PREFIX = "S1S2_"
"""Every dataset tag this package writes starts with it: what marks a file as the package's own."""
COMPLETE_TAG = "S1S2_COMPLETE"
BLOCK_W = 256
BLOCK_H = 32
COMPRESSIONS = ("deflate", "zstd", "lzw", "none")


def cog_path(final: Path) -> Path:
    """The temporary name a COG is laid out under, from the finished partial file."""
    return final.parent / f".{final.name}.s1s2-cog"


def record_path(final: Path) -> Path:
    """The resume record of a scene whose primary output is ``final``."""
    return final.parent / f".{final.name}{PARTIAL_SUFFIX}.json"


def check_output_path(path: Path, overwrite: bool) -> None:
    """Refuse a final output that exists (unless ``overwrite``) or whose folder is missing."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists already; pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise OutputExistsError(f"the output folder {path.parent} does not exist")
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder, not an output file name")


def npy_sidecar_path(final: Path) -> Path:
    """The JSON sidecar (CRS, transform, band names) of an ``.npy`` output."""
    return final.with_name(final.name + ".json")


def _raster_tags(path: Path) -> dict[str, str] | None:
    """The dataset tags of a raster file (GeoTIFF, PNG), or None when GDAL cannot read it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # NotGeoreferencedWarning for a PNG quick-look
            with rasterio.open(path) as ds:
                return ds.tags()
    except Exception:
        return None


def is_complete_geotiff(path: Path) -> bool:
    """Whether ``path`` is a GeoTIFF this package finished writing (``S1S2_COMPLETE=1`` tag)."""
    if not path.is_file():
        return False
    tags = _raster_tags(path)
    return tags is not None and tags.get(COMPLETE_TAG) == "1"


def _is_own_sidecar(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("layout") != "HWC" or not isinstance(meta.get("tags"), dict):
        return False
    return any(str(key).startswith(OWN_TAG_PREFIX) for key in meta["tags"])


def is_own_output(path: Path) -> bool:
    """Whether the existing file ``path`` was written by this package, finished or not.

    * rasters (GeoTIFF outputs, PNG quick-looks): dataset tags starting with ``S1S2_``;
    * an ``.npy`` output: its JSON sidecar is the package's (an ``.npy`` header holds no tags);
    * a JSON sidecar: the package's layout with ``S1S2_`` tags, or a STAC Item with ``s1s2:version``;
    * a GeoParquet chip file: its ``s1s2`` file metadata.

    A file GDAL cannot read at all (e.g. truncated before its header) counts as not the package's.
    """
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix == ".json":
        from .stac_item import is_own_item

        return _is_own_sidecar(path) or is_own_item(path)
    if path.suffix == ".parquet":
        from .geoparquet import is_own_parquet

        return is_own_parquet(path)
    if path.suffix == ".npy":
        return _is_own_sidecar(npy_sidecar_path(path))
    tags = _raster_tags(path)
    return tags is not None and any(key.startswith(OWN_TAG_PREFIX) for key in tags)


def refuse_foreign_outputs(paths: Sequence[Path]) -> None:
    """Refuse to replace an existing file that this package did not write (see :func:`is_own_output`).

    Many-scene runs replace their own leftovers (an unfinished file under the final name, a missing
    sidecar's partner) without ``--overwrite``; a file of someone else's that happens to sit at an
    output path is never replaced without it.

    Raises:
        OutputExistsError: naming the first such file and how to proceed.
    """
    for path in map(Path, paths):
        if (path.exists() or path.is_symlink()) and not is_own_output(path):
            raise OutputExistsError(
                f"{path} exists and was not written by s1s2_encoders (it carries no S1S2 tags), so it is "
                "left as it is; move it away, choose another output folder, or pass --overwrite to replace it"
            )


class RowSink(Protocol):
    """Something that takes output rows ``[row0, row0 + n)`` as ``(C, n, W)`` arrays."""

    final: Path

    def open(self, resume: bool) -> None: ...
    def write_rows(self, row0: int, values: np.ndarray) -> None: ...
    def close(self, sync: bool = True) -> None: ...
    def prepare(self) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


@dataclass
class GeoTiffSink:
    """A tiled, compressed GeoTIFF written by row stripes.

    Attributes:
        final: final path.
        grid: the output grid (CRS, transform, size).
        count / dtype / nodata: bands, their type and nodata value.
        descriptions: one per band.
        tags / band_tags: dataset and per-band metadata.
        colormap: band 1 colour table ``{value: (r, g, b, a)}`` (class maps).
        compress: ``deflate``, ``zstd``, ``lzw`` or ``none``.
        convert: applied to each ``(C, n, W)`` float32 stripe before writing (e.g. argmax, int8 quantisation).
        scales / offsets: per-band GDAL scale and offset (``value = raw * scale + offset``), e.g. ``1/127`` for
            int8 embeddings; None leaves GDAL's default (1, 0).
        cog: at commit, lay the finished file out as a Cloud-Optimized GeoTIFF with overviews.
        overviews: how the COG's overview cells aggregate (default: ``average`` for float bands,
            ``mode`` for integer ones).
    """

    final: Path
    grid: Grid
    count: int
    dtype: str
    nodata: float | int | None
    descriptions: Sequence[str] = ()
    tags: dict[str, str] = field(default_factory=dict)
    band_tags: dict[int, dict[str, str]] = field(default_factory=dict)
    colormap: dict[int, tuple[int, int, int, int]] | None = None
    compress: str = "deflate"
    convert: Any = None
    scales: Sequence[float] | None = None
    offsets: Sequence[float] | None = None
    cog: bool = False
    overviews: Overviews | None = None
    _ds: Any = None
    _prepared: bool = False

    @property
    def temp(self) -> Path:
        return partial_path(self.final)

    @property
    def cog_temp(self) -> Path:
        return cog_path(self.final)

    def overview_rule(self) -> Overviews:
        """The COG's overview aggregation: the one given, else by dtype (float: average, integer: mode)."""
        if self.overviews is not None:
            return self.overviews
        method = "average" if np.dtype(self.dtype).kind == "f" else "mode"
        return Overviews(method, self.nodata)

    def profile(self) -> dict[str, Any]:
        width, height = self.grid.width, self.grid.height
        profile: dict[str, Any] = {
            "driver": "GTiff", "width": width, "height": height, "count": self.count, "dtype": self.dtype,
            "crs": self.grid.crs, "transform": self.grid.transform, "nodata": self.nodata,
            "tiled": True, "blockxsize": min(BLOCK_W, -(-width // 16) * 16), "blockysize": BLOCK_H,
            "interleave": "band" if self.count > 1 else "pixel", "bigtiff": "IF_SAFER",
        }
        if self.compress != "none":
            profile["compress"] = self.compress
            if self.dtype.startswith("float"):
                profile["predictor"] = 3  # floating-point predictor: much better ratios on feature maps
        return profile

    def open(self, resume: bool = False) -> None:
        self.cog_temp.unlink(missing_ok=True)  # a layout an interrupted commit left: made again from the partial
        self._prepared = False
        if resume and self.temp.is_file():
            self._ds = rasterio.open(self.temp, "r+")
            return
        self.temp.unlink(missing_ok=True)
        self._ds = rasterio.open(self.temp, "w", **self.profile())
        if self.scales is not None:
            self._ds.scales = list(self.scales)
        if self.offsets is not None:
            self._ds.offsets = list(self.offsets)
        for i, text in enumerate(self.descriptions, start=1):
            self._ds.set_band_description(i, text)
        if self.colormap is not None:
            self._ds.write_colormap(1, self.colormap)
        if self.tags:
            self._ds.update_tags(**self.tags)
        for band, tags in self.band_tags.items():
            self._ds.update_tags(band, **tags)

    def write_rows(self, row0: int, values: np.ndarray) -> None:
        data = self.convert(values) if self.convert is not None else values
        n = data.shape[1]
        self._ds.write(data.astype(self.dtype, copy=False), window=Window(0, row0, self.grid.width, n))

    def close(self, sync: bool = True) -> None:
        """Close the partial file; with ``sync``, flush it to disk (a resume checkpoint records
        rows as done only after this). A COG laid out by :meth:`prepare` but not committed is removed
        (the partial file it came from is what a resume continues from)."""
        if self._ds is not None:
            self._ds.close()
            self._ds = None
            if sync:
                fsync_file(self.temp)
        if self._prepared:
            self.cog_temp.unlink(missing_ok=True)
            self._prepared = False

    def prepare(self) -> None:
        """Mark the partial file complete and close it; with ``cog``, lay out the COG under
        :attr:`cog_temp` (flushed). Nothing appears under the final name yet."""
        if self._ds is None:
            raise RuntimeError(f"{self.temp} is not open")
        tags = {COMPLETE_TAG: "1"}
        if self.cog:
            tags["S1S2_OVERVIEWS"] = self.overview_rule().describe()
        self._ds.update_tags(**tags)
        # Without cog, commit_file flushes the file it renames; with cog the partial file is flushed now:
        # it is what a resume lays out again if the layout is interrupted (the record then says all rows).
        self.close(sync=self.cog)
        if self.cog:
            self._prepared = True
            write_cog(self.temp, self.cog_temp, self.overview_rule(), self.compress)

    def commit(self) -> None:
        """:meth:`prepare` (unless done), rename onto the final name durably (flushed before, folder after);
        with ``cog`` the COG is renamed and the tiled partial file removed after."""
        if not self._prepared and self._ds is not None:
            self.prepare()
        if self.cog:
            commit_file(self.cog_temp, self.final)
            self._prepared = False
            self.temp.unlink(missing_ok=True)
        else:
            commit_file(self.temp, self.final)

    def discard(self) -> None:
        self.close(sync=False)
        self.temp.unlink(missing_ok=True)
        self.cog_temp.unlink(missing_ok=True)


@dataclass
class NpySink:
    """An ``(H, W, C)`` ``.npy`` (float32, or int8 for quantised embeddings) written by row stripes, plus a
    JSON sidecar ``NAME.json`` with the CRS (WKT), the affine transform, the band names and nodata.

    C-order ``(H, W, C)`` keeps each row stripe contiguous in the file, so stripes are plain
    ``seek`` + ``write`` calls and nothing is memory-mapped (memory stays bounded).

    Attributes:
        dtype: ``"float32"`` (nodata NaN) or ``"int8"`` (nodata ``nodata``).
        convert: applied to each ``(C, n, W)`` float32 stripe before writing (e.g. int8 quantisation).
        nodata: what the sidecar says marks no data (``"NaN"`` for float32).
        metadata: more sidecar entries (e.g. ``{"quantization": ...}``).
    """

    final: Path
    grid: Grid
    count: int
    descriptions: Sequence[str] = ()
    tags: dict[str, str] = field(default_factory=dict)
    dtype: str = "float32"
    convert: Any = None
    nodata: Any = "NaN"
    metadata: dict[str, Any] = field(default_factory=dict)
    _fh: Any = None
    _header: int = 0

    @property
    def temp(self) -> Path:
        return partial_path(self.final)

    @property
    def sidecar(self) -> Path:
        return npy_sidecar_path(self.final)

    @property
    def _dtype(self) -> np.dtype:
        return np.dtype(self.dtype).newbyteorder("<")

    def open(self, resume: bool = False) -> None:
        shape = (self.grid.height, self.grid.width, self.count)
        header = {"descr": np.lib.format.dtype_to_descr(self._dtype), "fortran_order": False, "shape": shape}
        if resume and self.temp.is_file():
            self._fh = open(self.temp, "r+b")
            np.lib.format.read_magic(self._fh)
            found = np.lib.format.read_array_header_2_0(self._fh)
            if tuple(found[0]) != shape or np.dtype(found[2]) != self._dtype:
                raise ValueError(f"{self.temp} holds an array of shape {found[0]} and dtype {found[2]}, "
                                 f"expected {shape} and {self._dtype}")
            self._header = self._fh.tell()
            return
        self._fh = open(self.temp, "w+b")
        np.lib.format.write_array_header_2_0(self._fh, header)
        self._header = self._fh.tell()
        self._fh.truncate(self._header + int(np.prod(shape)) * self._dtype.itemsize)

    def write_rows(self, row0: int, values: np.ndarray) -> None:
        data = self.convert(values) if self.convert is not None else values
        stripe = np.ascontiguousarray(np.moveaxis(data, 0, -1), dtype=self._dtype)  # (n, W, C)
        self._fh.seek(self._header + row0 * self.grid.width * self.count * self._dtype.itemsize)
        self._fh.write(stripe.tobytes())

    def close(self, sync: bool = True) -> None:
        """Close the partial file; with ``sync``, flush it to disk first."""
        if self._fh is not None:
            self._fh.flush()
            if sync:
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def prepare(self) -> None:
        """Nothing to lay out: an ``.npy`` is complete once its rows are written."""

    def commit(self) -> None:
        """Flush and close, write the sidecar (durably), then rename the array onto its final name."""
        self.close(sync=False)  # commit_file flushes it
        meta = {
            "shape": [self.grid.height, self.grid.width, self.count], "layout": "HWC", "dtype": self.dtype,
            "crs": self.grid.crs.to_wkt() if self.grid.crs is not None else None,
            "crs_string": self.grid.crs.to_string() if self.grid.crs is not None else None,
            "transform": list(self.grid.transform)[:6], "bands": list(self.descriptions), "nodata": self.nodata,
            **self.metadata,
            "tags": self.tags,
        }
        # The sidecar first: an .npy under its final name always has its georeferencing beside it.
        atomic_write_text(self.sidecar, json.dumps(meta, indent=2) + "\n")
        commit_file(self.temp, self.final)

    def discard(self) -> None:
        self.close(sync=False)
        self.temp.unlink(missing_ok=True)


def _compute_text(compute: Any) -> str:
    if not isinstance(compute, dict):
        return "an unrecorded precision (written by an older version)"
    return f"{compute.get('dtype')} on {compute.get('device')}"


class OutputSet:
    """The outputs of one scene, committed together (the primary one last) and, with resume,
    checkpointed together with one record of how many rows are on disk."""

    def __init__(self, sinks: list[RowSink], params: dict[str, Any], resume: bool = False,
                 checkpoint_every: float = 60.0):
        self.sinks = sinks
        self.primary = sinks[0]
        self.params = params
        self.resume = resume
        self.checkpoint_every = checkpoint_every
        self.rows_done = 0
        self._last_checkpoint = time.monotonic()

    @property
    def record(self) -> Path:
        return record_path(self.primary.final)

    def resumable_rows(self) -> int:
        """Rows a previous run with the same parameters left on disk (0 when none or different).

        Raises:
            OptionError: the rows on disk were computed in another dtype or on another kind of device
                (``params["compute"]``): stitching them to this run's rows would mix precisions.
        """
        if not self.resume or not self.record.is_file():
            return 0
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        params = json.loads(json.dumps(self.params))
        before, now = (record.get("params") or {}).get("compute"), params.get("compute")
        if (before != now and record.get("rows_done", 0) and now is not None
                and all(partial_path(s.final).is_file() for s in self.sinks)):
            raise OptionError(
                f"{self.primary.final}: the {record['rows_done']} output rows on disk were computed in "
                f"{_compute_text(before)}, this run computes in {_compute_text(now)}; resuming would stitch "
                f"the two. Resume with the same --dtype and device (e.g. --dtype {(before or {}).get('dtype', 'float32')}), "
                "or run without --resume to start over."
            )
        if record.get("params") != params:
            return 0
        if not all(partial_path(s.final).is_file() for s in self.sinks):
            return 0
        return int(record.get("rows_done", 0))

    def open(self, start_row: int) -> None:
        self.rows_done = start_row
        for sink in self.sinks:
            sink.open(resume=start_row > 0)
        if not start_row:
            self.record.unlink(missing_ok=True)

    def write_rows(self, row0: int, values: np.ndarray) -> None:
        for sink in self.sinks:
            sink.write_rows(row0, values)
        self.rows_done = row0 + values.shape[1]
        if self.resume and time.monotonic() - self._last_checkpoint >= self.checkpoint_every:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Close (flushing everything to disk), record the rows done, reopen for appending."""
        for sink in self.sinks:
            sink.close()
        self._write_record()
        for sink in self.sinks:
            sink.open(resume=True)
        self._last_checkpoint = time.monotonic()

    def _write_record(self) -> None:
        """The resume record: rows on disk and the run's parameters."""
        atomic_write_text(self.record, json.dumps({"rows_done": self.rows_done, "params": self.params}) + "\n")

    def commit(self) -> None:
        """Prepare every output (COG layouts), then rename them into place, the primary one last: an
        interrupt while any layout is made leaves no final file and keeps every partial one."""
        for sink in self.sinks:
            sink.prepare()
        for sink in self.sinks[1:] + [self.primary]:
            sink.commit()
        self.record.unlink(missing_ok=True)

    def abort(self) -> None:
        """Stop after a failure or an interrupt.

        With ``resume`` and rows on disk, the partial files are closed (flushing every row written
        so far) and the record is brought up to date, for a later ``--resume``; otherwise they are
        removed.
        """
        keep = self.resume and self.rows_done > 0
        for sink in self.sinks:
            try:
                sink.close() if keep else sink.discard()
            except Exception:  # a broken file must not hide the original error
                keep = False
        if keep:
            self._write_record()
        else:
            for sink in self.sinks:
                partial_path(sink.final).unlink(missing_ok=True)
                cog_path(sink.final).unlink(missing_ok=True)
            self.record.unlink(missing_ok=True)
