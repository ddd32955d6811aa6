"""STAC Item sidecars: every output ``NAME.ext`` of ``embed_scene`` / ``predict_scene`` gets ``NAME.json``.

The Item (STAC 1.x, built with pystac) describes the file so that STAC catalogues and tools can index it:

* ``geometry`` / ``bbox``: the output grid's footprint in EPSG:4326 (edges densified before
  reprojection); ``proj:code``, ``proj:transform`` (6 numbers, the file's affine transform) and
  ``proj:shape`` (``[rows, columns]`` of the file's grid; for chips, of the chip grid);
* ``datetime``: the acquisition time of the inputs when known (a STAC item's datetime, else a
  Sentinel product name's ``YYYYMMDDTHHMMSS`` in the file names); with S1 and S2 at different times
  also ``start_datetime`` / ``end_datetime``. Otherwise the processing time, and
  ``s1s2:datetime_source`` says which (``"STAC item"``, ``"file name"``, ``"processing time"``);
* embeddings only: the Embedding extension fields (``emb:type`` ``pixel`` for dense maps, ``chip`` for
  pooled outputs and GeoParquet chips; ``emb:dimensions``, ``data_type``, ``gsd`` (cell size, metres,
  projected CRSs only), ``emb:quantization`` for int8, ``emb:chip_layout`` for chips) and an asset named
  ``embeddings``; class maps have an asset ``classes``, probabilities ``probabilities``;
* links: ``derived_from`` (and ``emb:source-data`` for embeddings) to each source file or STAC item,
  ``emb:model`` / ``via`` to the model when it came from the Hub or the original checkpoint; the model's
  name, architecture and weights sha256 are in ``s1s2:model``;
* ``s1s2:version`` marks the Item as this package's (many-scene reruns may replace it).

The Item is written atomically after the output itself is committed, so an Item never describes a file
that is not there. Without pystac the Item is skipped with one note (``pip install 's1s2-encoders[stac]'``).
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..durable import atomic_write_text
from ..errors import OptionError, OutputExistsError
from ..stac import STAC_EXTRA, is_url
from .grid import Grid

EMBEDDING_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
MEDIA_TYPES = {
    ".tif": "image/tiff; application=geotiff",
    ".tiff": "image/tiff; application=geotiff",
    ".parquet": "application/vnd.apache.parquet",
    ".npy": "application/octet-stream",
    ".png": "image/png",
}
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
VERSION_PROPERTY = "s1s2:version"
SKIPPED_NOTE = f"no STAC Item sidecar written: pystac is not installed ({STAC_EXTRA})"
_SENTINEL_TIME = re.compile(r"_(\d{8}T\d{6})(?:_|$)")


def stac_item_path(output: str | Path) -> Path:
    """The Item sidecar of ``output``: same folder, stem + ``.json`` (``map.tif`` -> ``map.json``)."""
    output = Path(output)
    return output.with_name(output.stem + ".json")


def stac_available() -> bool:
    """Whether pystac can be imported (the ``stac`` extra)."""
    try:
        import pystac  # noqa: F401
    except ImportError:
        return False
    return True


def is_own_item(path: Path) -> bool:
    """Whether ``path`` is a STAC Item this package wrote (``properties["s1s2:version"]``)."""
    try:
        item = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(item, dict) and item.get("type") == "Feature" and isinstance(item.get("properties"), dict)
            and VERSION_PROPERTY in item["properties"])


def check_item_path(output: Path, inputs: Sequence[Path], overwrite: bool) -> Path:
    """The sidecar path of ``output``, checked before any work: it must not be the output or an input,
    and an existing file there must be one of this package's Items (unless ``overwrite``).

    Raises:
        OptionError: the sidecar would replace the output or an input file (e.g. ``--s2 scene.json -o scene.tif``).
        OutputExistsError: a foreign file is in the way.
    """
    path = stac_item_path(output)
    resolved = path.resolve()
    if resolved == Path(output).resolve() or any(resolved == Path(p).resolve() for p in inputs):
        raise OptionError(f"the STAC Item sidecar of {output} would be {path}, which is an input or the output itself; "
                          "choose another output name or pass stac=False / --no-stac")
    if path.exists() and not overwrite:
        if not is_own_item(path):
            raise OutputExistsError(f"{path} (the STAC Item sidecar of {output}) exists and was not written by "
                                    "s1s2_encoders; move it away, pass --overwrite, or --no-stac")
        described = _asset_file_names(path)
        if described and Path(output).name not in described:
            # Two outputs with one stem in one folder (emb.tif and emb.npy) would share one Item.
            raise OutputExistsError(f"{path} is the STAC Item of {', '.join(sorted(described))}, another output with the "
                                    f"same name stem as {output}; choose another output name, pass --overwrite to "
                                    "replace that Item, or --no-stac")
    return path


def _asset_file_names(path: Path) -> set[str]:
    """The file names the assets of the Item at ``path`` point at (relative hrefs, as this package writes)."""
    try:
        assets = json.loads(Path(path).read_text(encoding="utf-8")).get("assets") or {}
    except (OSError, ValueError, AttributeError):
        return set()
    return {Path(str(a.get("href", ""))).name for a in assets.values() if isinstance(a, dict) and "data" in (a.get("roles") or [])}


def footprint_4326(grid: Grid, densify: int = 8) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline as a GeoJSON polygon in EPSG:4326 (``densify`` points per edge) and its bbox."""
    lons, lats = grid.to_lonlat(*grid.window_outlines(0, 0, grid.height, grid.width, densify))
    lon, lat = lons[0].tolist(), lats[0].tolist()
    ring = [[float(x), float(y)] for x, y in zip(lon, lat)]
    if _signed_area(ring) < 0:  # GeoJSON: exterior rings counter-clockwise
        ring = ring[::-1]
    bbox = [min(lon), min(lat), max(lon), max(lat)]
    return {"type": "Polygon", "coordinates": [ring]}, [float(v) for v in bbox]


def _has_cog_layout(path: Path) -> bool:
    """Whether GDAL reports the COG layout (``LAYOUT=COG`` in IMAGE_STRUCTURE) for a GeoTIFF."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "").upper() == "COG"
    except Exception:
        return False


def _signed_area(ring: list[list[float]]) -> float:
    return 0.5 * sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:]))


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        try:
            value = datetime.strptime(str(text), "%Y%m%dT%H%M%S")
        except ValueError:
            return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def input_datetimes(tags: dict[str, str], files: dict[str, Sequence[Any]]) -> tuple[dict[str, datetime], str]:
    """Acquisition times per modality and where they came from.

    Args:
        tags: the scene's input tags (``S1S2_S2_DATETIME`` ... from STAC items).
        files: per modality, the source file names (a Sentinel product name's ``_YYYYMMDDTHHMMSS_`` is used).

    Returns:
        ``({"s1": ..., "s2": ...}, source)`` with source ``"STAC item"``, ``"file name"`` or ``""`` (none known).
    """
    found: dict[str, datetime] = {}
    source = ""
    for m in ("s1", "s2"):
        value = _parse(tags.get(f"S1S2_{m.upper()}_DATETIME", "")) if tags.get(f"S1S2_{m.upper()}_DATETIME") else None
        if value is not None:
            found[m], source = value, "STAC item"
    if found:
        return found, source
    for m, paths in files.items():
        for p in paths:
            match = _SENTINEL_TIME.search(Path(str(p)).name) or _SENTINEL_TIME.search(Path(str(p)).parent.name)
            if match and (value := _parse(match.group(1))) is not None:
                found[m] = value
                break
    return found, ("file name" if found else "")


def _href(target: Any, folder: Path) -> str:
    """A link to a source: URLs as they are, local files relative to the Item's folder."""
    text = str(target)
    if is_url(text):
        return text
    try:
        return os.path.relpath(Path(text).resolve(), folder.resolve())
    except ValueError:  # another drive (Windows)
        return str(Path(text).resolve())


def model_link(model_info: dict[str, Any]) -> str | None:
    """Where a model's weights came from as a URL: the Hub repository at its revision, or the original
    checkpoint's page; ``None`` for a local folder or random weights."""
    loaded = str(model_info.get("loaded_from") or "")
    if loaded.startswith(("http://", "https://")):
        return loaded.split(" ", 1)[0]
    if "@" in loaded and " " not in loaded:
        repo, revision = loaded.rsplit("@", 1)
        return f"https://huggingface.co/{repo}/tree/{revision}"
    return None


def write_stac_item(
    output: Path,
    *,
    asset_key: str,
    grid: Grid,
    product: str,
    model_info: dict[str, Any],
    tags: dict[str, str],
    sources: dict[str, Sequence[Any]],
    properties: dict[str, Any] | None = None,
    embedding: dict[str, Any] | None = None,
    cog: bool = False,
    extra_assets: dict[str, tuple[Path, str, list[str]]] | None = None,
    title: str = "",
) -> Path:
    """Write ``NAME.json``, the STAC Item of the committed output ``output`` (atomically).

    Args:
        output: the file the Item describes (already under its final name).
        asset_key: ``"embeddings"``, ``"classes"`` or ``"probabilities"``.
        grid: the file's grid (for chips: the chip grid).
        product: ``S1S2_PRODUCT`` of the file (``"embedding"``, ``"segmentation map"`` ...).
        model_info: ``{"name", "architecture", "weights_sha256", "loaded_from"}``.
        tags: the output's dataset tags (the inputs' STAC ids and datetimes among them).
        sources: per modality the source files or STAC item hrefs.
        properties: more properties (``s1s2:*`` fields).
        embedding: for embeddings: ``{"type": "pixel"|"chip", "dimensions": int, "data_type": str,
            "quantization": dict | None, "chip_size": int | None}``.
        cog: the GeoTIFF is a Cloud-Optimized GeoTIFF (media type profile); also found from the file's
            ``LAYOUT=COG`` (IMAGE_STRUCTURE metadata) when not given.
        extra_assets: ``{key: (path, media type, roles)}`` (a quick-look, the ``.npy.json`` georeferencing).

    Returns:
        The Item's path.
    """
    import pystac

    output = Path(output)
    path = stac_item_path(output)
    folder = output.parent
    geometry, bbox = footprint_4326(grid)
    times, time_source = input_datetimes(tags, sources)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    props: dict[str, Any] = {
        VERSION_PROPERTY: __version__,
        "s1s2:product": product,
        "s1s2:model": {k: v for k, v in model_info.items() if v is not None},
        "s1s2:datetime_source": time_source or "processing time",
        "processing:datetime": _iso(now),
        "processing:software": {"s1s2-encoders": __version__},
        "proj:code": grid.crs.to_string() if grid.crs is not None else None,
        "proj:transform": [float(v) for v in list(grid.transform)[:6]],
        "proj:shape": [int(grid.height), int(grid.width)],
    }
    for m in ("s1", "s2"):
        if tags.get(f"S1S2_{m.upper()}_STAC_ITEM"):
            props[f"s1s2:{m}_item_id"] = tags[f"S1S2_{m.upper()}_STAC_ITEM"]
        if m in times:
            props[f"s1s2:{m}_datetime"] = _iso(times[m])
    if times:
        when = times.get("s2", times.get("s1"))
        if len(times) > 1 and min(times.values()) != max(times.values()):
            props["start_datetime"], props["end_datetime"] = _iso(min(times.values())), _iso(max(times.values()))
    else:
        when = now
    extensions = [PROJECTION_EXTENSION, PROCESSING_EXTENSION]
    if embedding is not None:
        extensions.insert(0, EMBEDDING_EXTENSION)
        props["emb:type"] = embedding["type"]
        props["emb:dimensions"] = int(embedding["dimensions"])
        props["data_type"] = embedding["data_type"]
        quant = embedding.get("quantization")
        if quant and quant.get("scheme") == "int8":
            props["emb:quantization"] = {
                "method": "unit_l2_per_modality_linear", "original_dtype": "float32", "quantized_dtype": "int8",
                "scale": [quant["scale"]], "offset": [quant["offset"]], "nodata": quant["nodata"],
                "rule": quant["rule"], "unit_length_groups": quant["unit_length_groups"],
            }
        if embedding.get("chip_size"):
            size = int(embedding["chip_size"])
            props["emb:chip_layout"] = {"layout_type": "regular_grid", "chip_size": [size, size], "stride": [size, size]}
    if grid.crs is not None and not grid.crs.is_geographic and (grid.crs.linear_units or "").lower() in ("metre", "meter"):
        props["gsd"] = float(max(grid.pixel_size))
    props.update(properties or {})
    props = {k: v for k, v in props.items() if v is not None}
    item = pystac.Item(id=output.stem, geometry=geometry, bbox=bbox, datetime=when, properties=props,
                       stac_extensions=extensions)
    media = MEDIA_TYPES.get(output.suffix.lower(), "application/octet-stream")
    if output.suffix.lower() in (".tif", ".tiff") and (cog or _has_cog_layout(output)):
        media = COG_MEDIA_TYPE
    item.add_asset(asset_key, pystac.Asset(href=f"./{output.name}", media_type=media, roles=["data"],
                                           title=title or f"{product} ({output.name})"))
    for key, (extra, kind, roles) in (extra_assets or {}).items():
        item.add_asset(key, pystac.Asset(href=f"./{Path(extra).name}", media_type=kind, roles=roles))
    for modality, hrefs in sources.items():
        item_href = tags.get(f"S1S2_{modality.upper()}_STAC_HREF")
        targets = [item_href] if item_href else list(hrefs)
        kind = "application/geo+json" if item_href else None
        for target in targets:
            href = _href(target, folder)
            title_ = f"{modality.upper()} source"
            item.add_link(pystac.Link("derived_from", href, media_type=kind, title=title_))
            if embedding is not None:
                item.add_link(pystac.Link("emb:source-data", href, media_type=kind, title=title_))
    url = model_link(model_info)
    if url is not None:
        item.add_link(pystac.Link("emb:model" if embedding is not None else "via", url, media_type="text/html",
                                  title=f"model {model_info.get('name')} (weights sha256 {model_info.get('weights_sha256')})"))
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path

