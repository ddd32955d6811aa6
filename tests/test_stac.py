"""STAC Items as scene inputs: catalogue naming, units and offsets from the item, metadata in the
outputs, errors, and signed HTTP hrefs read through GDAL; items built from the bundled real pairs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import rasterio

from conftest import TERRAMESH, tiny_model
from geo_helpers import BEN_PAIRS, BIGEARTHNET, read
from s1s2_encoders import BandError, OptionError, RasterReadError, S1_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from s1s2_encoders.cli import main
from s1s2_encoders.geo import SceneInputs, embed_scene, open_scene
from s1s2_encoders.geo.predict import predict_scene
from s1s2_encoders.geo.sources import open_modality, s2_offset_from_metadata
from s1s2_encoders.stac import band_from_name, display_href, is_stac_reference
from stac_helpers import SignedFileServer, per_band, read_bands, s1_rtc_item, s2_item, tiny_segmenter, write_item

TM = "282D_485L_3_3"
TM_S1 = TERRAMESH / "S1RTC" / f"{TM}.tif"
TM_S2 = TERRAMESH / "S2L1C" / f"{TM}.tif"
BEN_S1 = BIGEARTHNET / "BigEarthNet-S1-Example" / BEN_PAIRS[0][0]
BEN_S2 = BIGEARTHNET / "BigEarthNet-S2-Example" / BEN_PAIRS[0][1]
NAMINGS = ("planetary-computer", "earth-search")


@pytest.fixture(scope="module")
def model():
    return tiny_model("swin-t", "fixed")


@pytest.fixture(scope="module")
def terramesh_items(tmp_path_factory):
    """The real TerraMesh pair as items: S1 as Planetary Computer sentinel-1-rtc (linear power),
    S2 L1C (with the +1000 offset, baseline 05.09) under both namings."""
    folder = tmp_path_factory.mktemp("terramesh-items")
    s1, g1 = read_bands(TM_S1)
    s2, g2 = read_bands(TM_S2)
    s2_items = {naming: s2_item(folder / naming, per_band(s2, S2_L1C_BANDS, **g2), naming) for naming in NAMINGS}
    return s1_rtc_item(folder / "s1", s1, **g1), s2_items


@pytest.fixture(scope="module")
def bigearthnet_items(tmp_path_factory):
    """A real BigEarthNet patch as items: per-band assets at 10, 20 and 60 m, S1 in linear power,
    S2 L2A digital numbers shifted by +1000 and declared as processing baseline 05.00."""
    folder = tmp_path_factory.mktemp("bigearthnet-items")
    db = np.stack([read_bands(BEN_S1 / f"{BEN_PAIRS[0][0]}_{p}.tif")[0][0] for p in S1_BANDS])
    grid = read_bands(BEN_S1 / f"{BEN_PAIRS[0][0]}_VV.tif")[1]
    bands = {}
    for band in S2_L2A_BANDS:
        values, g = read_bands(BEN_S2 / f"{BEN_PAIRS[0][1]}_{band}.tif")
        bands[band] = (values[0] + np.uint16(1000), g["crs"], g["transform"])
    s2_items = {naming: s2_item(folder / naming, bands, naming, item_id="S2A_MSIL2A_20170613T101031_R022_T33UUP",
                                collection="sentinel-2-l2a", baseline="05.00", absolute=naming == "earth-search")
                for naming in NAMINGS}
    return s1_rtc_item(folder / "s1", db, **grid, item_id="S1A_IW_GRDH_1SDV_20170613T165043_rtc"), s2_items


def dense(model, inputs, path, **options):
    embed_scene(model, inputs, path, tile=128, overlap=32, stride=8, dtype="float32", progress=False, **options)
    return read(path)


@pytest.mark.parametrize("naming", NAMINGS)
def test_terramesh_items_embed_as_the_geotiffs_do(tmp_path, model, terramesh_items, naming):
    s1_item, s2_items = terramesh_items
    values, meta = dense(model, SceneInputs(s1=[s1_item], s2=[s2_items[naming]]), tmp_path / "stac.tif")
    reference, ref_meta = dense(model, SceneInputs(s1=[TM_S1], s2=[TM_S2], s2_offset=1000), tmp_path / "tif.tif")
    assert meta["crs"] == ref_meta["crs"] and meta["transform"] == ref_meta["transform"]
    assert values.shape == reference.shape == (2 * 32, 28, 28) and np.isfinite(values).all()
    # Linear power -> dB round trip and the offset from the item: the same embedding to float32 rounding.
    np.testing.assert_allclose(values, reference, atol=1e-3, rtol=0)
    tags = meta["tags"]
    assert tags["S1S2_S2_OFFSET"] == "1000 (STAC item S2A_MSIL1C_20210723T132241_R038_T22JCN: s2:processing_baseline=05.09)"
    assert tags["S1S2_S2_STAC_ITEM"] == "S2A_MSIL1C_20210723T132241_R038_T22JCN"
    assert tags["S1S2_S2_DATETIME"] == "2021-07-23T13:22:41+00:00"
    assert tags["S1S2_S2_PLATFORM"] == ("Sentinel-2A" if naming == "planetary-computer" else "sentinel-2a")
    assert tags["S1S2_S1_STAC_ITEM"] == "S1A_IW_GRDH_1SDV_20210721T084010_rtc"
    assert tags["S1S2_S1_COLLECTION"] == "sentinel-1-rtc" and tags["S1S2_S1_PLATFORM"] == "SENTINEL-1A"
    assert tags["S1S2_S1_DATETIME"] == "2021-07-21T08:40:10+00:00"
    assert tags["S1S2_INPUTS"] == f"s1: {s1_item}; s2: {s2_items[naming]}"


@pytest.mark.parametrize("naming", NAMINGS)
def test_bigearthnet_items_resample_10_20_60m_assets_like_band_files(tmp_path, model, bigearthnet_items, naming):
    s1_item, s2_items = bigearthnet_items
    with pytest.warns(UserWarning, match="B10 missing"):
        values, meta = dense(model, SceneInputs(s1=[s1_item], s2=[s2_items[naming]]), tmp_path / "stac.tif")
    with pytest.warns(UserWarning, match="B10 missing"):
        reference, _ = dense(model, SceneInputs(s1=[BEN_S1], s2=[BEN_S2], s2_offset=0), tmp_path / "tif.tif")
    assert values.shape == reference.shape == (2 * 32, 15, 15)
    np.testing.assert_allclose(values, reference, atol=1e-3, rtol=0)
    assert meta["tags"]["S1S2_S2_OFFSET"].startswith("1000 (STAC item S2A_MSIL2A_20170613T101031_R022_T33UUP: s2:proc")
    source = open_modality("s2", [s2_items[naming]], S2_L1C_BANDS)
    assert source.band_names == list(S2_L2A_BANDS)
    assert {b for b, p in zip(source.band_names, source.files) if p.warp} == {
        "B01", "B05", "B06", "B07", "B8A", "B09", "B11", "B12"}  # 20 and 60 m assets onto the 10 m grid
    assert source.grid.pixel_size == (10.0, 10.0)


def test_cli_embed_and_predict_take_items_and_match_the_geotiff_run(tmp_path, terramesh_items, capsys):
    s1_item, s2_items = terramesh_items
    tiny_model("swin-t", "fixed").save_pretrained(tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--tile", "128", "--overlap", "32", "--dtype", "float32", "--quiet"]
    assert main(["embed", *common, "--s1", str(s1_item), "--s2", str(s2_items["earth-search"]), "-o", str(tmp_path / "a.tif")]) == 0
    out = capsys.readouterr().out
    assert "note: STAC item S1A_IW_GRDH_1SDV_20210721T084010_rtc" in out and "converted to dB" in out
    assert "S2 offset 1000 from STAC item S2A_MSIL1C_20210723T132241_R038_T22JCN: s2:processing_baseline=05.09" in out
    assert main(["embed", *common, "--s1", str(TM_S1), "--s2", str(TM_S2), "--s2-offset", "1000", "-o", str(tmp_path / "b.tif")]) == 0
    np.testing.assert_allclose(read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0], atol=1e-3, rtol=0)

    # A land-cover map from the items equals the map from the GeoTIFFs (Python API, single paths).
    folder = tmp_path / "segmenter"
    segmenter = tiny_segmenter()
    segmenter.save_pretrained(folder)
    assert main(["predict", "--model", str(folder), "--s1", str(s1_item), "--s2", str(s2_items["planetary-computer"]),
                 "--tile", "224", "--dtype", "float32", "--quiet", "-o", str(tmp_path / "stac.tif"),
                 "--probabilities", str(tmp_path / "stac_p.tif")]) == 0
    predict_scene(segmenter, SceneInputs(s1=TM_S1, s2=TM_S2, s2_offset=1000), tmp_path / "tif.tif",
                  probabilities=tmp_path / "tif_p.tif", tile=224, dtype="float32", progress=False)
    (classes, meta), probabilities = read(tmp_path / "stac.tif"), read(tmp_path / "stac_p.tif")[0]
    reference = read(tmp_path / "tif_p.tif")[0]
    np.testing.assert_allclose(probabilities, reference, atol=1e-3, rtol=0)
    top = np.sort(reference, axis=0)
    decided = top[-1] - top[-2] > 1e-3  # pixels whose two most probable classes are not within rounding
    assert decided.mean() > 0.99
    np.testing.assert_array_equal(classes[0][decided], read(tmp_path / "tif.tif")[0][0][decided])
    assert meta["tags"]["S1S2_S1_STAC_ITEM"] == "S1A_IW_GRDH_1SDV_20210721T084010_rtc"
    assert meta["tags"]["S1S2_S2_PLATFORM"] == "Sentinel-2A"


def test_scene_list_with_items(tmp_path, terramesh_items, capsys):
    """A scene list names items like files (paths relative to the list)."""
    s1_item, s2_items = terramesh_items
    tiny_model("swin-t", "fixed").save_pretrained(tmp_path / "model")
    listing = tmp_path / "scenes.txt"
    out = tmp_path / "out"
    out.mkdir()
    listing.write_text(f"{s1_item} {s2_items['earth-search']} out/a.tif\n"
                       f"- {s2_items['planetary-computer']} out/b.tif\n", encoding="utf-8")
    assert main(["embed", "--model", str(tmp_path / "model"), "--scenes", str(listing), "--modality", "s2", "-o", str(out),
                 "--tile", "224", "--dtype", "float32", "--quiet"]) == 0
    assert "2 scene(s): 2 written" in capsys.readouterr().out
    first, second = read(out / "a.tif")[0], read(out / "b.tif")[0]
    assert first.shape == (128, 7, 7)  # S2 features at stride 32
    np.testing.assert_allclose(first, second, atol=1e-3, rtol=0)  # both namings, the same S2 values


@pytest.mark.parametrize("properties,offset,where", [
    ({"s2:processing_baseline": "05.09"}, 1000.0, "s2:processing_baseline=05.09"),
    ({"s2:processing_baseline": "04.00"}, 1000.0, "s2:processing_baseline=04.00"),
    ({"s2:processing_baseline": "03.01"}, 0.0, "s2:processing_baseline=03.01"),
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True}, 0.0,
     "earthsearch:boa_offset_applied=true (the offset was removed already)"),
    ({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False}, 1000.0, "s2:processing_baseline=05.09"),
    ({"s2:product_uri": "S2B_MSIL2A_20230601T101559_N0509_R065_T32TNS_20230601T133110.SAFE"}, 1000.0,
     "processing baseline N0509 in s2:product_uri"),
    ({}, None, ""),
])
def test_s2_offset_from_the_item(tmp_path, properties, offset, where):
    values, grid = read_bands(TM_S2)
    bands = per_band(values[[1, 2, 3]], ("B02", "B03", "B04"), **grid)
    item = s2_item(tmp_path, bands, "earth-search", item_id="S2X", baseline=None, extra_properties=properties)
    found = s2_offset_from_metadata(open_modality("s2", [item], S2_L1C_BANDS))
    assert found == ((offset, f"STAC item S2X: {where}") if offset is not None else (None, ""))
    # An explicit offset wins over the item.
    with pytest.warns(UserWarning, match="B01, B05, B06, B07, B08, B8A, B09, B10, B11, B12 missing"):
        scene = open_scene(SceneInputs(s2=[item], s2_offset=0), ("s2",), S1_BANDS, S2_L1C_BANDS)
    assert (scene.s2_offset, scene.s2_offset_source) == (0.0, "--s2-offset")


def test_bands_come_from_keys_common_names_and_eo_bands(tmp_path):
    assert [band_from_name(n, "s2") for n in ("B04", "b8a", "B8", "red", "nir08", "nir09", "cirrus", "swir22", "rededge",
                                                "scl", "visual")] == [
        "B04", "B8A", "B08", "B04", "B8A", "B09", "B10", "B12", None, None, None]
    assert [band_from_name(n, "s1") for n in ("vv", "VH", "hh", "red")] == ["VV", "VH", None, None]
    values, grid = read_bands(TM_S2)
    item = json.loads(s2_item(tmp_path / "a", per_band(values[[3, 8]], ("B04", "B8A"), **grid), "planetary-computer").read_text())
    # A third catalogue: opaque asset keys, bands named only by eo:bands.
    item["assets"] = {"asset-1": {**item["assets"]["B04"], "eo:bands": [{"name": "band4", "common_name": "red"}]},
                      "asset-2": {**item["assets"]["B8A"], "eo:bands": [{"name": "B8A"}]}}
    for asset, name in (("asset-1", "B04"), ("asset-2", "B8A")):
        item["assets"][asset]["href"] = str((tmp_path / "a" / f"S2A_MSIL1C_20210723T132241_R038_T22JCN_{name}.tif").resolve())
    source = open_modality("s2", [write_item(tmp_path / "opaque.json", item)], S2_L1C_BANDS)
    assert source.band_names == ["B04", "B8A"]


def test_item_with_no_known_band_asset_lists_keys_and_expected_names(tmp_path):
    values, grid = read_bands(TM_S2)
    item = json.loads(s2_item(tmp_path, per_band(values[[3]], ("B04",), **grid), "earth-search").read_text())
    item["assets"] = {"data_1": {**item["assets"]["red"], "eo:bands": []}, "metadata": item["assets"]["granule-metadata"]}
    path = write_item(tmp_path / "odd.json", item)
    with pytest.raises(BandError) as info:
        open_modality("s2", [path], S2_L1C_BANDS)
    message = str(info.value)
    assert "has no asset that holds a Sentinel-2 band" in message and "Asset keys found: data_1, metadata" in message
    assert "B01, B02" in message and "coastal, blue, green, red" in message and "Earth Search" in message


def test_items_of_the_other_mission_and_uncalibrated_grd_are_refused_by_name(tmp_path, terramesh_items):
    s1_item, s2_items = terramesh_items
    with pytest.raises(RasterReadError, match=r"Sentinel-2 input: STAC item S1A_IW_GRDH_1SDV_20210721T084010_rtc .* is a "
                                              r"Sentinel-1 item \(collection sentinel-1-rtc, platform SENTINEL-1A\); give it as "
                                              r"the Sentinel-1 input \(--s1 / s1=\)"):
        open_modality("s2", [s1_item], S2_L1C_BANDS)
    with pytest.raises(RasterReadError, match="Sentinel-1 input: STAC item S2A_MSIL1C_20210723T132241_R038_T22JCN .* is a Sentinel-2 item"):
        open_modality("s1", [s2_items["earth-search"]], S1_BANDS)
    grd = json.loads(s1_item.read_text())
    grd["collection"] = "sentinel-1-grd"
    with pytest.raises(RasterReadError, match="sentinel-1-grd collection, which holds uncalibrated GRD amplitude"):
        open_modality("s1", [write_item(tmp_path / "grd.json", grd)], S1_BANDS)
    polar = json.loads(s1_item.read_text())
    polar["assets"] = {"hh": polar["assets"]["vv"], "hv": polar["assets"]["vh"]}
    with pytest.raises(BandError, match="Asset keys found: hh, hv.*HH/HV polarisations; the models take VV, VH"):
        open_modality("s1", [write_item(tmp_path / "polar.json", polar)], S1_BANDS)


def test_unreadable_items_and_misuse(tmp_path, terramesh_items, monkeypatch):
    s1_item, s2_items = terramesh_items
    with pytest.raises(RasterReadError, match="no such STAC item file: .*nope.json"):
        open_modality("s2", [tmp_path / "nope.json"], S2_L1C_BANDS)
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RasterReadError, match="bad.json is not valid JSON"):
        open_modality("s2", [tmp_path / "bad.json"], S2_L1C_BANDS)
    collection = {"type": "Collection", "stac_version": "1.0.0", "id": "c", "description": "d", "license": "x",
                  "extent": {"spatial": {"bbox": [[0, 0, 1, 1]]}, "temporal": {"interval": [[None, None]]}}, "links": []}
    (tmp_path / "collection.json").write_text(json.dumps(collection), encoding="utf-8")
    with pytest.raises(RasterReadError, match="collection.json is not a STAC Item"):
        open_modality("s2", [tmp_path / "collection.json"], S2_L1C_BANDS)
    with pytest.raises(OptionError, match="a STAC item stands for all the bands of its modality; give it alone"):
        open_modality("s2", [s2_items["earth-search"], TM_S2], S2_L1C_BANDS)
    with pytest.raises(OptionError, match="--s2-bands cannot be used with a STAC item"):
        open_modality("s2", [s2_items["earth-search"]], S2_L1C_BANDS, bands=["B04"])
    asset_gone = json.loads(s2_items["planetary-computer"].read_text())
    asset_gone["assets"]["B04"]["href"] = "gone_B04.tif"
    with pytest.raises(RasterReadError, match="Sentinel-2: cannot read .*gone_B04.tif as a raster"):
        open_modality("s2", [write_item(s2_items["planetary-computer"].parent / "gone.json", asset_gone)], S2_L1C_BANDS)
    monkeypatch.setitem(sys.modules, "pystac", None)
    with pytest.raises(ImportError, match=r"STAC Item inputs need pystac \(the 'stac' extra\): pip install 's1s2-encoders\[stac\]'"):
        open_modality("s2", [s2_items["earth-search"]], S2_L1C_BANDS)


def test_references_and_displayed_hrefs():
    assert is_stac_reference("item.json") and is_stac_reference("https://host/api/stac/v1/collections/c/items/x")
    assert not is_stac_reference("https://host/B04.tif?sig=1") and not is_stac_reference("s2.tif")
    assert display_href("https://acct.blob.core.windows.net/c/B04.tif?st=2026&sig=SECRET") == \
        "https://acct.blob.core.windows.net/c/B04.tif?..."
    assert display_href("/data/B04.tif") == "/data/B04.tif"


def test_item_and_signed_asset_urls_over_http(tmp_path, terramesh_items, model):
    """The item from a URL, its assets from signed URLs: GDAL gets every query string unchanged,
    and no signature reaches a message or the output file."""
    s1_item, s2_items = terramesh_items
    served = tmp_path / "served"
    served.mkdir()
    for item_path in (s1_item, s2_items["planetary-computer"]):
        item = json.loads(item_path.read_text())
        for asset in item["assets"].values():
            name = asset["href"].rsplit("/", 1)[-1]
            if (item_path.parent / name).is_file():
                (served / name).write_bytes((item_path.parent / name).read_bytes())
            asset["href"] = "{base}/" + name + "?st=2026-01-01&sig=SECRET"
        (served / item_path.name).write_text(json.dumps(item), encoding="utf-8")
    with SignedFileServer(served, signature="SECRET") as server:
        for name in (s1_item.name, s2_items["planetary-computer"].name):
            text = (served / name).read_text().replace("{base}", server.url)
            (served / name).write_text(text, encoding="utf-8")
        urls = [f"{server.url}/{name}?sig=SECRET" for name in (s1_item.name, s2_items["planetary-computer"].name)]
        values, meta = dense(model, SceneInputs(s1=urls[0], s2=urls[1]), tmp_path / "http.tif")
        asked = [query for command, path, query in server.requests if path.endswith(".tif")]
        # A wrong signature: refused by the server, reported without the token.
        wrong = (served / s1_item.name).read_text().replace("sig=SECRET", "sig=WRONG")
        (served / "wrong.json").write_text(wrong, encoding="utf-8")
        with pytest.raises(RasterReadError) as info:
            open_modality("s1", [f"{server.url}/wrong.json?sig=SECRET"], S1_BANDS)
    reference, _ = dense(model, SceneInputs(s1=[TM_S1], s2=[TM_S2], s2_offset=1000), tmp_path / "tif.tif")
    np.testing.assert_allclose(values, reference, atol=1e-3, rtol=0)
    assert asked and all(q == "st=2026-01-01&sig=SECRET" for q in asked)  # signed URLs passed through unchanged
    with rasterio.open(tmp_path / "http.tif") as src:
        assert "SECRET" not in json.dumps(src.tags())
    assert meta["tags"]["S1S2_S2_STAC_HREF"] == f"{server.url}/{s2_items['planetary-computer'].name}?..."
    assert "cannot read" in str(info.value) and "?..." in str(info.value)
    assert "SECRET" not in str(info.value) and "WRONG" not in str(info.value)
