"""STAC Items as scene inputs: which asset holds which band, and what the item says about units.

A STAC Item (a JSON file, a URL, or a :class:`pystac.Item`) stands wherever a raster path does
(``s1s2 embed --s2 item.json``, ``SceneInputs(s2=[item])``). Its assets are matched to bands by
the names the big catalogues use:

* **Planetary Computer**: ``sentinel-2-l2a`` assets ``B01`` ... ``B12``, ``B8A``;
  ``sentinel-1-rtc`` assets ``vv``, ``vh``, which hold terrain-corrected gamma0 in **linear
  power** and are converted to dB without being asked.
* **Earth Search**: common names ``coastal, blue, green, red, rededge1-3, nir, nir08, nir09,
  cirrus`` (L1C only: B10) ``, swir16, swir22``; duplicate JPEG 2000 assets (``red-jp2``) lose
  to the Cloud-Optimised GeoTIFFs.
* otherwise the asset's ``eo:bands`` / ``bands`` names (``name``, then an unambiguous
  ``common_name``).

Assets of other roles (thumbnails, metadata, the 8-bit ``visual`` true-colour image) are never
used. The item's id, datetime, collection and platform travel into the output's metadata, and its
processing baseline decides the Sentinel-2 offset (:func:`s1s2_encoders.geo.sources.s2_offset_from_tags`).

HTTP(S) hrefs are handed to rasterio as they are, so GDAL reads them through ``/vsicurl/``
(``s3://`` through ``/vsis3/``); signed URLs (Planetary Computer SAS tokens) pass through unchanged,
and messages show them without their query string so that no token is printed or written.

Reading items needs ``pystac`` (the ``stac`` extra). The name tables and href helpers here do not.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.error import URLError
from urllib.parse import urlsplit, urlunsplit

from .bands import Modality, S1_BANDS, S2_L1C_BANDS, canonical_band_name
from .errors import BandError, RasterReadError

STAC_EXTRA = "pip install 's1s2-encoders[stac]'"
LABEL = {"s1": "Sentinel-1", "s2": "Sentinel-2"}
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")

S2_COMMON_NAMES: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "rededge1": "B05", "rededge2": "B06",
    "rededge3": "B07", "nir": "B08", "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11",
    "swir22": "B12",
}
"""Earth Search asset keys (and eo:bands common names) of the Sentinel-2 bands. The eo extension's
``rededge`` names B05-B07 and B8A alike, so it is not in the table."""

# Catalogue collections whose values are not what the models take, and why.
_S1_LINEAR_POWER = {
    "sentinel-1-rtc": "Planetary Computer sentinel-1-rtc holds terrain-corrected gamma0 in linear power",
}
_S1_UNCALIBRATED = {
    "sentinel-1-grd": (
        "holds uncalibrated GRD amplitude in radar geometry; the models take calibrated, terrain-corrected "
        "backscatter: use the sentinel-1-rtc collection (Planetary Computer) or calibrate and terrain-correct "
        "the GRD product first"
    ),
}
_SKIPPED_ROLES = {"thumbnail", "overview", "metadata", "visual"}
_SKIPPED_KEYS = {"visual", "tci", "rendered_preview", "preview", "thumbnail"}
_NOT_RASTER_TYPES = ("xml", "json", "text/", "parquet", "html")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# --------------------------------------------------------------------------- hrefs
def is_url(href: Any) -> bool:
    """Whether ``href`` is a URL (``https://``, ``s3://``, ...) rather than a local path."""
    return isinstance(href, str) and bool(_URL.match(href)) and not href.startswith("file://")


def display_href(href: str | os.PathLike[str]) -> str:
    """``href`` for messages and metadata: a URL loses its query string (a signed URL's token)."""
    text = os.fspath(href)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    return shown + ("?..." if parts.query else "")


def href_name(href: str | os.PathLike[str]) -> str:
    """The file name of a path or URL (the last path segment, query string left out)."""
    text = os.fspath(href)
    path = urlsplit(text).path if is_url(text) else text
    return Path(path).name


def is_stac_reference(ref: Any) -> bool:
    """Whether a scene input names a STAC Item: a :class:`pystac.Item`, a ``.json`` / ``.geojson``
    file, or a URL that does not end in a raster suffix (``.tif``, ``.jp2``, ...)."""
    if type(ref).__module__.split(".")[0] == "pystac":
        return True
    if not isinstance(ref, (str, os.PathLike)):
        return False
    text = os.fspath(ref)
    suffix = Path(urlsplit(text).path if is_url(text) else text).suffix.lower()
    if is_url(text):
        return suffix not in RASTER_SUFFIXES
    return suffix in (".json", ".geojson")


# --------------------------------------------------------------------------- names
def band_from_name(name: Any, modality: Modality) -> str | None:
    """This package's band name for an asset key, a variable name or an ``eo:bands`` name, or ``None``.

    Understands the canonical spellings (``B04``, ``b8a``, ``B8``, ``vv``) and, for Sentinel-2,
    the Earth Search common names (``red`` -> ``B04``, ``nir08`` -> ``B8A``, ``cirrus`` -> ``B10``).
    """
    if not isinstance(name, str) or not name.strip():
        return None
    text = name.strip()
    if modality == "s2" and text.lower() in S2_COMMON_NAMES:
        return S2_COMMON_NAMES[text.lower()]
    try:
        return canonical_band_name(text, modality)
    except BandError:
        return None


def expected_names(modality: Modality) -> str:
    """The asset names a modality's bands are recognised by (for error messages)."""
    if modality == "s1":
        return "vv, vh (Planetary Computer sentinel-1-rtc), or eo:bands names VV / VH"
    return (
        f"{', '.join(S2_L1C_BANDS)} (Planetary Computer), {', '.join(S2_COMMON_NAMES)} (Earth Search), "
        "or eo:bands names of these bands"
    )


# --------------------------------------------------------------------------- items
@dataclass(frozen=True)
class AssetBand:
    """One band of one asset of an item.

    Attributes:
        band: this package's band name (``B04``, ``VV``).
        key: the asset key (``B04``, ``red``, ``vv``).
        href: the asset's absolute href (a URL as the catalogue signed it, or a local path).
        index: the 1-based band of the asset's file that holds it.
        nodata: the nodata value the item declares for it (``raster:bands``), if any.
        media_type: the asset's media type.
    """

    band: str
    key: str
    href: str
    index: int = 1
    nodata: float | None = None
    media_type: str = ""


@dataclass
class StacItemInput:
    """What one STAC Item supplies for one modality.

    Attributes:
        modality: ``"s1"`` or ``"s2"``.
        item_id / collection / datetime / platform: from the item (``""`` when absent).
        href: where the item was read from, for messages (query string dropped), or ``""``.
        bands: the chosen asset band of every band found, in the order found.
        properties: the item's properties (the S2 offset is read from them).
        s1_linear: the S1 assets hold linear power (converted to dB when read).
        notes: what was decided and why (units, duplicate assets left out).
    """

    modality: Modality
    item_id: str
    collection: str
    datetime: str
    platform: str
    href: str
    bands: list[AssetBand]
    properties: dict[str, Any] = field(default_factory=dict)
    s1_linear: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def shown(self) -> str:
        """How messages name the item."""
        return f"STAC item {self.item_id}" + (f" ({self.href})" if self.href else "")

    def tags(self) -> dict[str, str]:
        """Output metadata: ``S1S2_<S1|S2>_STAC_ITEM``, ``_COLLECTION``, ``_DATETIME``, ``_PLATFORM``, ``_STAC_HREF``."""
        prefix = f"S1S2_{self.modality.upper()}_"
        values = {"STAC_ITEM": self.item_id, "COLLECTION": self.collection, "DATETIME": self.datetime,
                  "PLATFORM": self.platform, "STAC_HREF": self.href}
        return {prefix + key: value for key, value in values.items() if value}


def _pystac():
    try:
        import pystac
    except ImportError as exc:
        raise ImportError(f"STAC Item inputs need pystac (the 'stac' extra): {STAC_EXTRA}") from exc
    return pystac


def load_item(ref: Any, label: str = "input") -> Any:
    """Read a STAC Item from a JSON file, a URL, or take a :class:`pystac.Item` as it is.

    Raises:
        RasterReadError: the file or URL cannot be read, or it is not a STAC Item.
        ImportError: pystac is not installed (names the extra).
    """
    pystac = _pystac()
    if isinstance(ref, pystac.Item):
        return ref
    text = os.fspath(ref)
    shown = display_href(text)
    if not is_url(text) and not Path(text).is_file():
        raise RasterReadError(f"{label}: no such STAC item file: {shown}")
    try:
        item = pystac.Item.from_file(text)
    except (URLError, OSError) as exc:
        raise RasterReadError(f"{label}: cannot read the STAC item {shown}: {exc}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RasterReadError(f"{label}: {shown} is not valid JSON: {exc}") from exc
    except (pystac.STACError, pystac.STACTypeError, KeyError, TypeError, ValueError) as exc:
        raise RasterReadError(f"{label}: {shown} is not a STAC Item ({type(exc).__name__}: {exc})") from exc
    return item


def item_modality(item: Any) -> Modality | None:
    """Which mission an item is from, by its collection, platform, constellation and extensions."""
    props = item.properties or {}
    text = " ".join(str(v).lower() for v in (item.collection_id, props.get("platform"), props.get("constellation"),
                                             props.get("mission")) if v)
    compact = text.replace("-", "").replace("_", "").replace(" ", "")
    if "sentinel1" in compact:
        return "s1"
    if "sentinel2" in compact:
        return "s2"
    if any(k.startswith("sar:") or k.startswith("s1:") for k in props):
        return "s1"
    if any(k.startswith("s2:") for k in props):
        return "s2"
    return None


def _band_entries(asset: Any) -> list[Mapping[str, Any]]:
    extra = asset.extra_fields or {}
    for key in ("eo:bands", "bands"):
        entries = extra.get(key)
        if isinstance(entries, list) and entries:
            return [e if isinstance(e, Mapping) else {} for e in entries]
    return []


def _names_of_entry(entry: Mapping[str, Any]) -> list[Any]:
    return [entry.get("name"), entry.get("common_name"), entry.get("eo:common_name")]


def _asset_bands(key: str, asset: Any, modality: Modality) -> list[str | None]:
    """The band held by each band of an asset's file (``None`` where it holds none we know)."""
    entries = _band_entries(asset)
    raster = (asset.extra_fields or {}).get("raster:bands") or []
    count = max(len(entries), len(raster) if isinstance(raster, list) else 0, 1)
    if count == 1:
        for candidate in [key, *(_names_of_entry(entries[0]) if entries else [])]:
            band = band_from_name(candidate, modality)
            if band is not None:
                return [band]
        return [None]
    names: list[str | None] = []
    for i in range(count):
        entry = entries[i] if i < len(entries) else {}
        names.append(next((b for b in (band_from_name(n, modality) for n in _names_of_entry(entry)) if b), None))
    return names


def _nodata(asset: Any, index: int) -> float | None:
    raster = (asset.extra_fields or {}).get("raster:bands") or []
    if isinstance(raster, list) and index - 1 < len(raster) and isinstance(raster[index - 1], Mapping):
        value = raster[index - 1].get("nodata")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and value.lower() == "nan":
            return float("nan")
    return None


def _is_data_asset(key: str, asset: Any) -> bool:
    roles = {str(r).lower() for r in (asset.roles or [])}
    media = (asset.media_type or "").lower()
    if roles & _SKIPPED_ROLES or key.lower() in _SKIPPED_KEYS:
        return False
    return not any(t in media for t in _NOT_RASTER_TYPES)


def _preference(candidate: AssetBand, asset_count: int) -> tuple:
    """Lower is better: single-band assets, GeoTIFF (COG) before JPEG 2000, then the shorter key."""
    media = candidate.media_type.lower()
    tiff = "tiff" in media or href_name(candidate.href).lower().endswith((".tif", ".tiff"))
    return (asset_count > 1, not tiff, len(candidate.key), candidate.key)


def plan_item(ref: Any, modality: Modality) -> StacItemInput:
    """Read an item and work out which asset holds each band of ``modality``.

    Raises:
        RasterReadError: the item cannot be read; it is from the other mission (an S1 item given as
            S2 or the reverse); it is of a collection whose values the models cannot take
            (``sentinel-1-grd``).
        BandError: no asset matches a known band name (the message lists the asset keys found and
            the names expected).
        ImportError: pystac is not installed.
    """
    label = LABEL[modality]
    item = load_item(ref, f"{label} input")
    href = display_href(item.get_self_href()) if item.get_self_href() else ""
    shown = f"STAC item {item.id}" + (f" ({href})" if href else "")
    found = item_modality(item)
    if found is not None and found != modality:
        other = "s1" if modality == "s2" else "s2"
        raise RasterReadError(
            f"{label} input: {shown} is a {LABEL[found]} item (collection {item.collection_id or 'not given'}, "
            f"platform {item.properties.get('platform', 'not given')}); give it as the {LABEL[found]} input "
            f"(--{other} / {other}=)"
        )
    collection = (item.collection_id or "").lower()
    if modality == "s1" and collection in _S1_UNCALIBRATED:
        raise RasterReadError(f"{label} input: {shown} is of the {collection} collection, which {_S1_UNCALIBRATED[collection]}")

    chosen: dict[str, tuple[AssetBand, int]] = {}
    left_out: list[str] = []
    for key, asset in item.assets.items():
        if not _is_data_asset(key, asset):
            continue
        names = _asset_bands(key, asset, modality)
        absolute = asset.get_absolute_href() or asset.href
        for index, band in enumerate(names, start=1):
            if band is None:
                continue
            candidate = AssetBand(band, key, absolute, index, _nodata(asset, index), asset.media_type or "")
            previous = chosen.get(band)
            if previous is None or _preference(candidate, len(names)) < _preference(*previous):
                if previous is not None:
                    left_out.append(previous[0].key)
                chosen[band] = (candidate, len(names))
            else:
                left_out.append(key)
    if not chosen:
        keys = ", ".join(item.assets) or "none"
        hint = ""
        if modality == "s1" and {k.lower() for k in item.assets} & {"hh", "hv"}:
            hint = f" The item has HH/HV polarisations; the models take {', '.join(S1_BANDS)}."
        raise BandError(
            f"{label} input: {shown} has no asset that holds a {label} band. Asset keys found: {keys}. "
            f"Expected: {expected_names(modality)}.{hint}"
        )
    notes = []
    if left_out:
        notes.append(f"{shown}: assets {', '.join(sorted(set(left_out)))} hold bands that other assets also hold; not used")
    linear = modality == "s1" and collection in _S1_LINEAR_POWER
    if linear:
        notes.append(f"{shown}: {_S1_LINEAR_POWER[collection]}; converted to dB (10 log10)")
    when = item.datetime.isoformat() if item.datetime is not None else str(item.properties.get("start_datetime") or "")
    return StacItemInput(
        modality, item.id, item.collection_id or "", when, str(item.properties.get("platform") or ""), href,
        [entry for entry, _ in chosen.values()], dict(item.properties), linear, notes,
    )


def group_by_file(bands: Sequence[AssetBand]) -> list[tuple[str, dict[int, AssetBand]]]:
    """The chosen bands grouped by the file that holds them, in first-seen order."""
    files: dict[str, dict[int, AssetBand]] = {}
    for entry in bands:
        files.setdefault(entry.href, {})[entry.index] = entry
    return list(files.items())
