"""STAC Items written the way the big catalogues write them, with per-band GeoTIFF assets made from
the bundled real pairs, and a static file server on 127.0.0.1 that speaks HTTP range requests and
checks a URL signature (as signed blob-store URLs do)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import rasterio
from rasterio.warp import transform_bounds

from conftest import tiny_config
from s1s2_encoders import create_model, task_config
from s1s2_encoders.stac import S2_COMMON_NAMES

ES_KEYS = {band: key for key, band in S2_COMMON_NAMES.items()}  # B04 -> red
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def tiny_segmenter(seed: int = 0):
    """A tiny segmentation model (ResNet-18 towers, fixed normalisation, 3 classes)."""
    import torch

    torch.manual_seed(seed)
    config = task_config(tiny_config("resnet18", "fixed"), "segmentation", class_names=["water", "forest", "crops"],
                         class_colors=[[0, 0, 255], [0, 128, 0], [250, 200, 0]], decoder={"channels": [16, 16, 16]})
    return create_model(config).eval()


def read_bands(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(), {"crs": src.crs, "transform": src.transform}


def write_band(path: Path, band: np.ndarray, crs, transform, nodata=None) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=band.shape[1], height=band.shape[0], count=1,
                       dtype=band.dtype, crs=crs, transform=transform, nodata=nodata, tiled=True,
                       blockxsize=64, blockysize=64) as dst:
        dst.write(band[None])
    return path


def _footprint(crs, transform, width, height) -> tuple[list[float], dict]:
    left, top = transform.c, transform.f
    right, bottom = left + transform.a * width, top + transform.e * height
    west, south, east, north = transform_bounds(crs, "EPSG:4326", left, bottom, right, top)
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return [west, south, east, north], {"type": "Polygon", "coordinates": [ring]}


def item_json(item_id: str, collection: str | None, properties: dict, assets: dict, grid: dict,
              extensions: tuple[str, ...] = ()) -> dict:
    """A STAC 1.0 Item as a catalogue serves it."""
    bbox, geometry = _footprint(grid["crs"], grid["transform"], grid["width"], grid["height"])
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id,
        "stac_extensions": [f"https://stac-extensions.github.io/{e}/schema.json" for e in extensions],
        "geometry": geometry, "bbox": bbox, "properties": properties, "links": [], "assets": assets,
    }
    if collection is not None:
        item["collection"] = collection
    return item


def write_item(path: Path, item: dict) -> Path:
    path.write_text(json.dumps(item, indent=2), encoding="utf-8")
    return path


def s1_rtc_item(folder: Path, s1_db: np.ndarray, crs, transform, item_id: str = "S1A_IW_GRDH_1SDV_20210721T084010_rtc",
                href_base: str | None = None, datetime: str = "2021-07-21T08:40:10Z") -> Path:
    """A Planetary Computer ``sentinel-1-rtc`` item: assets ``vv``, ``vh``, float32 **linear power**
    gamma0 (``10 ** (dB / 10)``), nodata -32768; hrefs relative to the item, or under ``href_base``."""
    folder.mkdir(parents=True, exist_ok=True)
    assets = {}
    for k, key in enumerate(("vv", "vh")):
        linear = np.power(10.0, s1_db[k].astype(np.float64) / 10.0).astype(np.float32)
        name = f"{item_id}-{key}.tif"
        write_band(folder / name, linear, crs, transform, nodata=-32768)
        assets[key] = {
            "href": f"{href_base}/{name}" if href_base else f"./{name}", "type": COG, "roles": ["data"],
            "title": f"{key.upper()}: vertical transmit, {'vertical' if key == 'vv' else 'horizontal'} receive",
            "raster:bands": [{"nodata": -32768, "data_type": "float32", "spatial_resolution": 10}],
        }
    assets["thumbnail"] = {"href": "./missing-thumbnail.png", "type": "image/png", "roles": ["thumbnail"]}
    properties = {
        "datetime": datetime, "platform": "SENTINEL-1A", "constellation": "Sentinel-1", "sar:product_type": "GRD",
        "sar:polarizations": ["VV", "VH"], "sar:instrument_mode": "IW", "sat:orbit_state": "descending",
    }
    grid = {"crs": crs, "transform": transform, "width": s1_db.shape[2], "height": s1_db.shape[1]}
    item = item_json(item_id, "sentinel-1-rtc", properties, assets, grid, ("sar/v1.0.0", "raster/v1.1.0"))
    return write_item(folder / f"{item_id}.json", item)


def s2_item(folder: Path, bands: dict[str, tuple[np.ndarray, Any, Any]], naming: str,
            item_id: str = "S2A_MSIL1C_20210723T132241_R038_T22JCN", collection: str = "sentinel-2-l1c",
            baseline: str | None = "05.09", boa_offset_applied: bool | None = None, absolute: bool = False,
            href_base: str | None = None, extra_properties: dict | None = None) -> Path:
    """A Sentinel-2 item with one GeoTIFF asset per band (each at its own resolution).

    ``naming``: ``"planetary-computer"`` (keys ``B01`` ... ``B12``, ``B8A``; ``eo:bands`` name and
    common name) or ``"earth-search"`` (keys ``coastal`` ... ``swir22``, plus a ``<key>-jp2``
    duplicate of every band whose file does not exist, so choosing it would fail). Both add a
    ``visual`` true-colour asset and non-data assets that must never be opened."""
    folder.mkdir(parents=True, exist_ok=True)
    assets: dict[str, dict] = {}
    for band, (values, crs, transform) in bands.items():
        key = band if naming == "planetary-computer" else ES_KEYS[band]
        name = f"{item_id}_{key}.tif"
        write_band(folder / name, values, crs, transform, nodata=0)
        href = f"{href_base}/{name}" if href_base else (str((folder / name).resolve()) if absolute else name)
        gsd = abs(transform.a)
        if naming == "planetary-computer":
            common = ES_KEYS.get(band, "").rstrip("123") if band not in ("B8A",) else "rededge"
            eo = {"name": band, "common_name": common or None}
            assets[key] = {"href": href, "type": COG, "roles": ["data"], "gsd": gsd, "title": f"Band {band}",
                           "eo:bands": [{k: v for k, v in eo.items() if v}]}
        else:
            assets[key] = {"href": href, "type": COG, "roles": ["data", "reflectance"], "gsd": gsd,
                           "eo:bands": [{"name": key, "common_name": key}],
                           "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]}
            assets[f"{key}-jp2"] = {"href": f"{item_id}_{key}_missing.jp2", "type": "image/jp2", "roles": ["data"],
                                    "eo:bands": [{"name": key, "common_name": key}]}
    assets["visual"] = {"href": "missing-TCI.tif", "type": COG, "roles": ["visual"] if naming == "earth-search" else ["data"],
                        "eo:bands": [{"name": "B04"}, {"name": "B03"}, {"name": "B02"}]}
    assets["SCL" if naming == "planetary-computer" else "scl"] = {"href": "missing-SCL.tif", "type": COG, "roles": ["data"]}
    assets["granule-metadata"] = {"href": "missing-MTD_TL.xml", "type": "application/xml", "roles": ["metadata"]}
    first = next(iter(bands.values()))
    platform = "Sentinel-2A" if naming == "planetary-computer" else "sentinel-2a"
    properties = {"datetime": "2021-07-23T13:22:41Z", "platform": platform, "constellation": "sentinel-2",
                  "eo:cloud_cover": 0.5, "instruments": ["msi"]}
    if baseline is not None:
        properties["s2:processing_baseline"] = baseline
    if boa_offset_applied is not None:
        properties["earthsearch:boa_offset_applied"] = boa_offset_applied
    properties.update(extra_properties or {})
    finest = min(bands.values(), key=lambda b: abs(b[2].a))
    grid = {"crs": first[1], "transform": finest[2], "width": finest[0].shape[1], "height": finest[0].shape[0]}
    item = item_json(item_id, collection, properties, assets, grid, ("eo/v1.0.0", "raster/v1.1.0"))
    return write_item(folder / f"{item_id}.json", item)


def per_band(stack: np.ndarray, names, crs, transform) -> dict[str, tuple[np.ndarray, Any, Any]]:
    return {name: (stack[k], crs, transform) for k, name in enumerate(names)}


class SignedFileServer:
    """Serves the files of a folder on 127.0.0.1 with HEAD and ranged GET, like a blob store; with
    ``signature`` set, every request must carry ``?sig=<signature>`` (else 403). ``requests``
    records the paths and query strings asked for."""

    def __init__(self, root: Path, signature: str | None = None):
        self.root = Path(root)
        self.signature = signature
        self.requests: list[tuple[str, str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _resolve(self):
                parts = urlsplit(self.path)
                server.requests.append((self.command, parts.path, parts.query))
                if server.signature is not None and parse_qs(parts.query).get("sig") != [server.signature]:
                    self.send_error(403, "signature missing or wrong")
                    return None
                path = server.root / parts.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return None
                return path.read_bytes()

            def do_HEAD(self):
                data = self._resolve()
                if data is None:
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self):
                data = self._resolve()
                if data is None:
                    return
                header = self.headers.get("Range")
                if header and header.startswith("bytes="):
                    first, _, last = header[6:].partition("-")
                    start = int(first)
                    stop = min(int(last) + 1 if last else len(data), len(data))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
                    body = data[start:stop]
                else:
                    self.send_response(200)
                    body = data
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "SignedFileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
