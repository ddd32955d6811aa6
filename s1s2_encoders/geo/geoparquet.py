"""GeoParquet chips: one row per pooled tile (chip) of a scene, with its footprint, window and vector.

``embed_scene(..., pooled=True, fmt="geoparquet")`` / ``s1s2 embed --pooled --format geoparquet`` write
a GeoParquet 1.1 file that ``geopandas.read_parquet`` and DuckDB read as they are:

* ``id``: deterministic, ``<16 hex>-r<row>-c<col>``: the hex digits hash the scene's source names
  (STAC item ids, else file names), its CRS, transform and the chip size; ``row`` / ``col`` are the
  chip's pixel offsets. The same scene chipped the same way gets the same ids on every machine and
  with every model, so products of several models join on ``id``.
* ``geometry``: the chip footprint as a WKB polygon in EPSG:4326 (longitude, latitude), its edges
  densified (:data:`DENSIFY` points per edge) before reprojection; counter-clockwise exterior ring.
* ``bbox``: struct ``{xmin, ymin, xmax, ymax}`` of ``geometry`` (the GeoParquet 1.1 ``covering``).
* ``native_crs`` (e.g. ``EPSG:32633``) and ``native_bbox`` (same struct, in that CRS: for the usual
  north-up grid the exact footprint).
* ``row``, ``col``, ``height``, ``width``: the pixel window in the source (S2) grid; edge chips are
  clipped to the scene, so the windows tile the scene exactly, without overlap.
* ``embedding``: ``fixed_size_list<float32>[C]`` (NaN where a modality saw no valid pixel), or
  ``fixed_size_list<int8>[C]`` with ``quantize="int8"`` (-128 there; see :mod:`.quantize`).
* ``valid_fraction``: fraction of the window's pixels valid in at least one modality;
  ``s1_valid_fraction`` / ``s2_valid_fraction`` per modality (null when that modality is not used).
* ``s1_files`` / ``s2_files`` (list of strings), ``s1_item_id`` / ``s2_item_id`` and ``s1_datetime`` /
  ``s2_datetime`` (timestamp, UTC) when the inputs were STAC items (null otherwise).

Every chip of the tile grid has a row, also one without a single valid pixel: its ``valid_fraction``
is 0 and its embedding is all NaN (int8: all -128). The chips thus cover the scene exactly and NaN is
nodata here as in every other output format; filter with ``valid_fraction > 0``.

Footprints are reprojected point by point: a chip across the antimeridian is not split (Sentinel-2 UTM
tiles next to it are the only case). Rows are in Hilbert order of the chip centres (on the chip grid, :func:`hilbert_index`). The file
metadata holds ``geo`` (GeoParquet 1.1.0) and ``s1s2`` (JSON: model, weights sha256, bands, units,
normalisation, compute dtype, dimensions, quantisation, package version, native grid).

Pooled outputs are small (a 10980 px scene in 224 px chips has 2401 rows), so rows are buffered in
memory and the file is written once at the end, under a partial name, then renamed (an interrupted
run leaves no file under the final name). For the same reason ``--resume`` does not apply.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..durable import commit_file, partial_path
from ..errors import OptionError
from .grid import Grid
from .quantize import check_quantize, quantize_int8

GEOPARQUET_EXTRA = "pip install 's1s2-encoders[geoparquet]'"
METADATA_KEY = b"s1s2"
"""The file-metadata key of this package's JSON (what marks a parquet file as the package's own)."""
GEOPARQUET_VERSION = "1.1.0"
DENSIFY = 8
"""Points per chip edge before reprojection to EPSG:4326 (straight UTM edges are curves in lon/lat)."""
MODALITY_NAMES = ("s1", "s2")


def require_geoparquet() -> None:
    """Raise ImportError naming the extra when pyarrow or shapely is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
        import shapely  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"--format geoparquet needs pyarrow and shapely (the 'geoparquet' extra): {GEOPARQUET_EXTRA}") from exc


def hilbert_index(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """Distance along the Hilbert curve of the ``2**order`` x ``2**order`` grid of cells ``(x, y)``.

    Args:
        x / y: integer cell coordinates in ``[0, 2**order)`` (any shape, broadcast together).
        order: curve order; ``0`` gives 0 for the single cell.

    Returns:
        int64 indices in ``[0, 4**order)``; consecutive indices are neighbouring cells.
    """
    x = np.array(x, dtype=np.int64, copy=True)
    y = np.array(y, dtype=np.int64, copy=True)
    x, y = np.broadcast_arrays(x, y)
    x, y = x.copy(), y.copy()
    n = 1 << order
    if x.size and (x.min() < 0 or y.min() < 0 or x.max() >= n or y.max() >= n):
        raise ValueError(f"cell coordinates must lie in [0, {n})")
    d = np.zeros(x.shape, dtype=np.int64)
    s = n >> 1
    while s > 0:
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        # Rotate the quadrant so that the sub-curve has the standard orientation.
        flip = ~ry & rx
        x = np.where(flip, n - 1 - x, x)
        y = np.where(flip, n - 1 - y, y)
        swap = ~ry
        x, y = np.where(swap, y, x), np.where(swap, x, y)
        s >>= 1
    return d


def _parse_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def chip_id_prefix(source_names: dict[str, Sequence[str]], grid: Grid, chip: int) -> str:
    """The 16 hex digits that start every chip ``id`` of a scene (see the module docstring)."""
    record = {
        "sources": {m: list(names) for m, names in sorted(source_names.items())},
        "crs": grid.crs.to_string() if grid.crs is not None else None,
        "transform": [round(float(v), 9) for v in list(grid.transform)[:6]],
        "size": [grid.height, grid.width], "chip": chip,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ChipSink:
    """A :class:`~s1s2_encoders.geo.writers.RowSink` that buffers pooled chip vectors and writes GeoParquet.

    It takes the stripes of the chip grid (one cell per ``chip`` x ``chip`` tile) as ``(C + 1 + M, n, W)``
    float32 arrays: ``C`` embedding channels, then the fraction of valid pixels (any modality), then one
    fraction per modality used (``modalities``); NaN fractions (tiles that were never inferred because
    nothing in them was valid) count as 0.

    Attributes:
        final: the ``.parquet`` to write.
        grid: the source (scene) pixel grid.
        chip: chip size in pixels.
        channels / groups / modalities: embedding channels, each modality's channel range, the modalities.
        quantize: ``"none"`` (float32) or ``"int8"``.
        metadata: the JSON written under :data:`METADATA_KEY`.
        sources: per modality ``{"files": [...], "item_id": str | None, "datetime": str | None}``.
        id_prefix: see :func:`chip_id_prefix`.
    """

    final: Path
    grid: Grid
    chip: int
    channels: int
    groups: Sequence[tuple[int, int]]
    modalities: Sequence[str]
    quantize: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    id_prefix: str = ""
    _rows: dict[int, np.ndarray] = field(default_factory=dict)
    _prepared: bool = False

    def __post_init__(self) -> None:
        self.quantize = check_quantize(self.quantize)
        if self.grid.crs is None:
            raise OptionError("--format geoparquet needs inputs with a CRS (the chip footprints are written in EPSG:4326)")

    @property
    def temp(self) -> Path:
        return partial_path(self.final)

    @property
    def extra_channels(self) -> int:
        return 1 + len(self.modalities)

    def open(self, resume: bool = False) -> None:
        if resume:
            raise OptionError("--resume does not apply to --format geoparquet: chips are written at the end of a scene")
        self._rows = {}

    def write_rows(self, row0: int, values: np.ndarray) -> None:
        for i in range(values.shape[1]):
            self._rows[row0 + i] = np.array(values[:, i, :], dtype=np.float32)  # (C + extra, W)

    def close(self, sync: bool = True) -> None:
        """Nothing is on disk before :meth:`commit`."""

    def discard(self) -> None:
        self._rows = {}
        self._prepared = False
        self.temp.unlink(missing_ok=True)

    def table(self):
        """The chips as a ``pyarrow.Table`` with the ``geo`` and ``s1s2`` metadata, in Hilbert order."""
        import pyarrow as pa
        import shapely
        from rasterio.crs import CRS

        height, width = self.grid.height, self.grid.width
        n_rows, n_cols = -(-height // self.chip), -(-width // self.chip)
        if sorted(self._rows) != list(range(n_rows)):
            raise RuntimeError(f"{self.final}: chip rows {sorted(self._rows)} received, expected 0..{n_rows - 1}")
        stack = np.stack([self._rows[r] for r in range(n_rows)], axis=1)  # (C + extra, rows, cols)
        ci, cj = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
        order = np.argsort(hilbert_index(cj.ravel(), ci.ravel(), max(int(np.ceil(np.log2(max(n_rows, n_cols, 1)))), 0)),
                           kind="stable")
        ci, cj = ci.ravel()[order], cj.ravel()[order]
        values = stack.reshape(stack.shape[0], -1)[:, order].T  # (N, C + extra)
        embedding = values[:, : self.channels]
        fractions = np.nan_to_num(values[:, self.channels:], nan=0.0).astype(np.float32)
        n = len(ci)

        row = (ci * self.chip).astype(np.int32)
        col = (cj * self.chip).astype(np.int32)
        h = np.minimum(self.chip, height - row).astype(np.int32)
        w = np.minimum(self.chip, width - col).astype(np.int32)

        xs, ys = self.grid.window_outlines(row, col, h, w, DENSIFY)
        lon, lat = self.grid.to_lonlat(xs, ys)
        polygons = shapely.orient_polygons(shapely.polygons(np.stack([lon, lat], axis=-1)), exterior_cw=False)
        bounds = shapely.bounds(polygons)  # (N, 4)

        def bbox_struct(b: np.ndarray):
            return pa.StructArray.from_arrays([pa.array(b[:, k], pa.float64()) for k in range(4)],
                                              names=["xmin", "ymin", "xmax", "ymax"])

        native = np.stack([xs.min(axis=1), ys.min(axis=1), xs.max(axis=1), ys.max(axis=1)], axis=1)
        if self.quantize == "int8":
            flat = pa.array(quantize_int8(embedding, self.groups, axis=1).ravel(), pa.int8())
        else:
            flat = pa.array(np.ascontiguousarray(embedding, dtype=np.float32).ravel(), pa.float32())
        prefix = self.id_prefix or chip_id_prefix({}, self.grid, self.chip)
        crs_code = self.grid.crs.to_string()

        def per_row(value, kind):
            return pa.array([value] * n, kind)

        columns: dict[str, Any] = {
            "id": pa.array([f"{prefix}-r{r}-c{c}" for r, c in zip(row, col)], pa.string()),
            "geometry": pa.array(shapely.to_wkb(polygons, output_dimension=2), pa.binary()),
            "bbox": bbox_struct(bounds),
            "row": pa.array(row), "col": pa.array(col), "height": pa.array(h), "width": pa.array(w),
            "native_crs": per_row(crs_code, pa.string()).dictionary_encode(),
            "native_bbox": bbox_struct(native),
            "embedding": pa.FixedSizeListArray.from_arrays(flat, self.channels),
            "valid_fraction": pa.array(fractions[:, 0], pa.float32()),
        }
        for m in MODALITY_NAMES:
            k = list(self.modalities).index(m) + 1 if m in self.modalities else None
            columns[f"{m}_valid_fraction"] = (pa.array(fractions[:, k], pa.float32()) if k is not None
                                              else pa.nulls(n, pa.float32()))
        for m in MODALITY_NAMES:
            info = self.sources.get(m) or {}
            files = info.get("files")
            columns[f"{m}_files"] = per_row(list(files) if files else None, pa.list_(pa.string()))
            columns[f"{m}_item_id"] = per_row(info.get("item_id") or None, pa.string())
            columns[f"{m}_datetime"] = per_row(_parse_datetime(info.get("datetime")), pa.timestamp("us", tz="UTC"))
        table = pa.table(columns)
        geo = {
            "version": GEOPARQUET_VERSION,
            "primary_column": "geometry",
            "columns": {
                "geometry": {
                    "encoding": "WKB",
                    "geometry_types": ["Polygon"],
                    # PROJJSON of EPSG:4326; coordinates are longitude, latitude as GeoParquet requires.
                    "crs": CRS.from_epsg(4326).to_dict(projjson=True),
                    "orientation": "counterclockwise",
                    "bbox": [float(bounds[:, 0].min()), float(bounds[:, 1].min()),
                             float(bounds[:, 2].max()), float(bounds[:, 3].max())],
                    "covering": {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}},
                }
            },
        }
        meta = {**self.metadata, "rows": n, "chip_grid": [n_rows, n_cols]}
        return table.replace_schema_metadata({b"geo": json.dumps(geo).encode(), METADATA_KEY: json.dumps(meta).encode()})

    def prepare(self) -> None:
        """Write the whole table under the partial name (ZSTD) and flush it; :meth:`commit` renames it.

        Outputs are committed in two steps (every file prepared, then every one renamed), so that an
        interrupt while any of them is laid out leaves no final file."""
        import pyarrow.parquet as pq

        table = self.table()
        try:
            pq.write_table(table, self.temp, compression="zstd")
        except BaseException:
            self.temp.unlink(missing_ok=True)
            raise
        self._prepared = True

    def commit(self) -> None:
        """Rename the prepared file onto the final name, durably (prepares it first if that was not done)."""
        if not self._prepared:
            self.prepare()
        try:
            commit_file(self.temp, self.final)
        except BaseException:
            self.temp.unlink(missing_ok=True)
            raise
        self._rows = {}
        self._prepared = False


def is_own_parquet(path: Path) -> bool:
    """Whether ``path`` is a parquet file with this package's :data:`METADATA_KEY` metadata."""
    try:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not parquet, truncated, or pyarrow missing
        return False
    return METADATA_KEY in metadata


def read_chip_metadata(path: str | Path) -> dict[str, Any]:
    """The ``s1s2`` JSON of a chip file written by this package."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if METADATA_KEY not in metadata:
        raise OptionError(f"{path} has no {METADATA_KEY.decode()} metadata: not a chip file of s1s2_encoders")
    return json.loads(metadata[METADATA_KEY])
