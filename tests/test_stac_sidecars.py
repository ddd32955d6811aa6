"""STAC Item sidecars (NAME.json) of embed and predict outputs: parsed with pystac, checked against the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from rasterio.warp import transform_bounds

from conftest import tiny_model
from geo_helpers import (
    BEN_PAIRS, BIGEARTHNET, TM_INPUTS, TM_S1, TM_S2, files_in, save_tiny, synthetic_scene, write_raster,
)
from s1s2_encoders import OptionError, OutputExistsError, S2_L1C_BANDS
from s1s2_encoders.cli import main
from s1s2_encoders.geo import SceneInputs, embed_scene
from s1s2_encoders.geo import stac_item
from s1s2_encoders.geo.predict import predict_scene
from s1s2_encoders.geo.writers import is_own_output
from stac_helpers import per_band, read_bands, s1_rtc_item, s2_item, tiny_segmenter

@pytest.fixture(scope="module")
def model():
    return tiny_model("swin-t", "fixed")


def load(path: Path) -> pystac.Item:
    item = pystac.Item.from_file(str(path))
    # item.validate() needs the schemas from the network; the fields are checked one by one instead.
    assert item.properties["s1s2:version"] and is_own_output(path)
    return item


def test_dense_geotiff_item_matches_the_file(tmp_path, model):
    out = tmp_path / "emb.tif"
    result = embed_scene(model, TM_INPUTS, out, tile=224, stride=16, progress=False)
    assert result.outputs == [out, tmp_path / "emb.json"] and files_in(tmp_path) == ["emb.json", "emb.tif"]
    item = load(tmp_path / "emb.json")
    with rasterio.open(out) as ds:
        shape, transform, crs, count = [ds.height, ds.width], ds.transform, ds.crs, ds.count
        bounds = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
    p = item.properties
    assert item.id == "emb" and p["proj:shape"] == shape == [14, 14]
    assert p["proj:transform"] == pytest.approx(list(transform)[:6]) and p["proj:code"] == crs.to_string()
    assert p["emb:type"] == "pixel" and p["emb:dimensions"] == count == 128 and p["data_type"] == "float32"
    assert p["gsd"] == 160.0 and "emb:quantization" not in p
    assert stac_item.EMBEDDING_EXTENSION in item.stac_extensions and stac_item.PROJECTION_EXTENSION in item.stac_extensions
    west, south, east, north = item.bbox
    assert west <= bounds[0] + 1e-9 and south <= bounds[1] + 1e-9 and east >= bounds[2] - 1e-9 and north >= bounds[3] - 1e-9
    footprint = shapely.geometry.shape(item.geometry)
    assert footprint.is_valid and footprint.exterior.is_ccw and shapely.box(*item.bbox).covers(footprint)
    asset = item.assets["embeddings"]
    assert Path(asset.get_absolute_href()) == out and asset.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"  # COG by default
    assert asset.roles == ["data"]
    # TerraMesh files carry no acquisition time: the processing time, marked as such.
    assert p["s1s2:datetime_source"] == "processing time" and item.datetime is not None
    sources = {Path(item.get_self_href() or out).parent.joinpath(l.href).resolve()
               for l in item.links if l.rel == "derived_from"}
    assert sources == {TM_S1.resolve(), TM_S2.resolve()}
    assert {l.rel for l in item.links} >= {"derived_from", "emb:source-data"}
    assert p["s1s2:model"]["name"] == "tiny-swin-t" and len(p["s1s2:model"]["weights_sha256"]) == 64


def test_chip_items_for_pooled_geotiff_parquet_and_int8(tmp_path, model):
    embed_scene(model, TM_INPUTS, tmp_path / "pooled.tif", pooled=True, tile=64, progress=False)
    embed_scene(model, TM_INPUTS, tmp_path / "chips.parquet", pooled=True, tile=64, fmt="geoparquet",
                quantize="int8", progress=False)
    pooled, chips = load(tmp_path / "pooled.json"), load(tmp_path / "chips.json")
    for item in (pooled, chips):
        p = item.properties
        assert p["emb:type"] == "chip" and p["proj:shape"] == [4, 4] and p["gsd"] == 640.0
        assert p["emb:chip_layout"] == {"layout_type": "regular_grid", "chip_size": [64, 64], "stride": [64, 64]}
    assert chips.assets["embeddings"].media_type == "application/vnd.apache.parquet"
    assert chips.properties["data_type"] == "int8"
    quant = chips.properties["emb:quantization"]
    assert quant["original_dtype"] == "float32" and quant["quantized_dtype"] == "int8" and quant["nodata"] == -128
    assert quant["scale"] == [pytest.approx(1 / 127)] and quant["offset"] == [0.0]
    assert Path(chips.assets["embeddings"].get_absolute_href()) == tmp_path / "chips.parquet"


def test_npy_output_keeps_its_georeferencing_sidecar_and_gets_an_item(tmp_path, model):
    embed_scene(model, TM_INPUTS, tmp_path / "e.npy", tile=224, stride=32, fmt="npy", progress=False)
    assert files_in(tmp_path) == ["e.json", "e.npy", "e.npy.json"]
    item = load(tmp_path / "e.json")
    assert item.assets["embeddings"].media_type == "application/octet-stream"
    assert Path(item.assets["georeferencing"].get_absolute_href()) == tmp_path / "e.npy.json"
    assert json.loads((tmp_path / "e.npy.json").read_text())["layout"] == "HWC"


def test_predict_items_have_class_assets_and_no_embedding_fields(tmp_path):
    s1, s2 = synthetic_scene(64, 64, seed=2)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    out = tmp_path / "map.tif"
    predict_scene(tiny_segmenter(), SceneInputs(s1=[p1], s2=[p2], s2_offset=0), out, probabilities=tmp_path / "p.tif",
                  preview=tmp_path / "map.png", tile=64, overlap=0, progress=False)
    classes, probabilities = load(tmp_path / "map.json"), load(tmp_path / "p.json")
    assert set(classes.assets) == {"classes", "preview"} and set(probabilities.assets) == {"probabilities"}
    assert classes.assets["preview"].roles == ["overview"] and classes.assets["preview"].media_type == "image/png"
    for item in (classes, probabilities):
        assert not any(k.startswith("emb:") for k in item.properties) and "data_type" not in item.properties
        assert stac_item.EMBEDDING_EXTENSION not in item.stac_extensions
        assert item.properties["proj:shape"] == [64, 64] and item.properties["s1s2:class_names"]


def test_stac_item_inputs_give_datetimes_ids_and_links(tmp_path, model):
    s1, g1 = read_bands(TM_S1)
    s2, g2 = read_bands(TM_S2)
    s1_json = s1_rtc_item(tmp_path / "items" / "s1", s1, **g1)
    s2_json = s2_item(tmp_path / "items" / "s2", per_band(s2, S2_L1C_BANDS, **g2), "planetary-computer")
    out = tmp_path / "chips.parquet"
    embed_scene(model, SceneInputs(s1=[s1_json], s2=[s2_json]), out, pooled=True, tile=112, fmt="geoparquet",
                progress=False)
    item = load(tmp_path / "chips.json")
    p = item.properties
    assert p["s1s2:datetime_source"] == "STAC item"
    assert item.datetime.isoformat() == "2021-07-23T13:22:41+00:00"  # S2's
    assert p["start_datetime"] == "2021-07-21T08:40:10Z" and p["end_datetime"] == "2021-07-23T13:22:41Z"
    assert p["s1s2:s2_item_id"] == "S2A_MSIL1C_20210723T132241_R038_T22JCN"
    links = {Path(out.parent, l.href).resolve() for l in item.links if l.rel == "derived_from"}
    assert links == {s1_json.resolve(), s2_json.resolve()}
    import pyarrow.parquet as pq

    rows = pq.read_table(out).to_pydict()
    assert set(rows["s2_item_id"]) == {"S2A_MSIL1C_20210723T132241_R038_T22JCN"}
    assert {d.isoformat() for d in rows["s1_datetime"]} == {"2021-07-21T08:40:10+00:00"}


def test_sidecar_refusals_and_no_stac(tmp_path, model, monkeypatch):
    foreign = tmp_path / "emb.json"
    foreign.write_text('{"mine": true}\n')
    with pytest.raises(OutputExistsError, match="emb.json .* not written by s1s2_encoders"):
        embed_scene(model, TM_INPUTS, tmp_path / "emb.tif", tile=224, progress=False)
    assert foreign.read_text() == '{"mine": true}\n' and files_in(tmp_path) == ["emb.json"]
    embed_scene(model, TM_INPUTS, tmp_path / "emb.tif", tile=224, progress=False, stac=False)
    assert foreign.read_text() == '{"mine": true}\n'
    # An input named like the sidecar is never replaced, even with overwrite.
    s2, g2 = read_bands(TM_S2)
    scene = s2_item(tmp_path / "items", per_band(s2, S2_L1C_BANDS, **g2), "planetary-computer", item_id="scene")
    before = scene.read_bytes()
    with pytest.raises(OptionError, match="is an input or the output itself"):
        embed_scene(model, SceneInputs(s2=[scene]), tmp_path / "items" / "scene.tif", modality="s2", tile=64,
                    overwrite=True, progress=False)
    assert scene.read_bytes() == before and not (tmp_path / "items" / "scene.tif").exists()
    # Without pystac: the output, and one note naming the extra.
    monkeypatch.setattr(stac_item, "stac_available", lambda: False)
    result = embed_scene(model, TM_INPUTS, tmp_path / "plain.tif", tile=224, progress=False)
    assert result.outputs == [tmp_path / "plain.tif"] and not (tmp_path / "plain.json").exists()
    assert any("pip install 's1s2-encoders[stac]'" in note for note in result.notes)


def test_two_outputs_with_one_stem_do_not_share_an_item(tmp_path, model):
    embed_scene(model, TM_INPUTS, tmp_path / "emb.tif", pooled=True, tile=224, progress=False)
    item_before = (tmp_path / "emb.json").read_bytes()
    with pytest.raises(OutputExistsError, match=r"emb.json is the STAC Item of emb.tif, another output with the same name stem"):
        embed_scene(model, TM_INPUTS, tmp_path / "emb.npy", fmt="npy", pooled=True, tile=224, progress=False)
    assert (tmp_path / "emb.json").read_bytes() == item_before and not (tmp_path / "emb.npy").exists()
    # The same output again replaces its own Item (a rerun); --overwrite lets the other one take it.
    embed_scene(model, TM_INPUTS, tmp_path / "emb.tif", pooled=True, tile=224, progress=False, overwrite=True)
    embed_scene(model, TM_INPUTS, tmp_path / "emb.npy", fmt="npy", pooled=True, tile=224, progress=False, overwrite=True)
    assert load(tmp_path / "emb.json").assets["embeddings"].href == "./emb.npy"


def test_cli_many_scenes_redo_a_scene_whose_item_is_missing(tmp_path, capsys):
    folder = tmp_path / "model"
    save_tiny(folder, "swin-t", "fixed")
    out = tmp_path / "out"
    out.mkdir()
    base = ["embed", "--model", str(folder), "--scenes", str(BIGEARTHNET / "pairs.txt"), "--tile", "64", "--overlap", "0",
            "--quiet"]
    args = [*base, "-o", str(out)]
    assert main(args) == 0
    names = [s2 for _, s2 in BEN_PAIRS]
    assert files_in(out) == sorted([f"{n}.tif" for n in names] + [f"{n}.json" for n in names])
    item = load(out / f"{names[0]}.json")
    assert item.properties["s1s2:datetime_source"] == "file name"
    assert item.datetime.strftime("%Y%m%dT%H%M%S") == names[0].split("_")[2]
    (out / f"{names[0]}.json").unlink()
    assert main(args) == 0
    assert "2 scene(s): 1 written, 1 skipped (complete), 0 failed" in capsys.readouterr().out
    assert (out / f"{names[0]}.json").is_file()
    # --no-stac: nothing but the outputs.
    other = tmp_path / "plain"
    other.mkdir()
    assert main([*base, "-o", str(other), "--no-stac"]) == 0
    assert files_in(other) == sorted(f"{n}.tif" for n in names)


def test_a_cog_output_gets_the_cloud_optimized_media_type(tmp_path):
    from rasterio.transform import from_origin

    from s1s2_encoders.geo.grid import Grid

    grid = Grid(rasterio.crs.CRS.from_epsg(32633), from_origin(404400.0, 5342400.0, 10.0, 10.0), 512, 512)
    for driver in ("COG", "GTiff"):
        path = tmp_path / f"{driver}.tif"
        with rasterio.open(path, "w", driver=driver, width=512, height=512, count=1, dtype="float32", crs=grid.crs,
                           transform=grid.transform) as ds:
            ds.write(np.zeros((1, 512, 512), np.float32))
        stac_item.write_stac_item(path, asset_key="embeddings", grid=grid, product="embedding",
                                  model_info={"name": "m", "loaded_from": "org/repo@abc123"}, tags={}, sources={},
                                  embedding={"type": "pixel", "dimensions": 1, "data_type": "float32"})
        item = pystac.Item.from_file(str(tmp_path / f"{driver}.json"))
        cog = driver == "COG"
        assert item.assets["embeddings"].media_type == (stac_item.COG_MEDIA_TYPE if cog else "image/tiff; application=geotiff")
        model_links = [l.href for l in item.links if l.rel == "emb:model"]
        assert model_links == ["https://huggingface.co/org/repo/tree/abc123"]
