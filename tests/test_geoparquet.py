"""GeoParquet chips: values against embed(), footprints, GeoParquet 1.1 metadata, geopandas and DuckDB,
Hilbert order, int8, chips without data, atomic writes, and the CLI over many scenes."""

from __future__ import annotations

import json

import duckdb
import geopandas
import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
from rasterio.warp import transform_geom

from conftest import tiny_model
from geo_helpers import (
    BEN_PAIRS, BIGEARTHNET, TM_INPUTS, TM_S1, TM_S2, fail_encoding_at, files_in, save_tiny, synthetic_scene, write_raster,
)
from s1s2_encoders import OptionError
from s1s2_encoders.cli import main
from s1s2_encoders.geo import SceneInputs, embed_scene
from s1s2_encoders.geo.geoparquet import hilbert_index, is_own_parquet, read_chip_metadata
from s1s2_encoders.geo.quantize import dequantize_int8, normalize_groups
from s1s2_encoders.geo.writers import is_own_output

@pytest.fixture(scope="module")
def model():
    return tiny_model("swin-t", "fixed")


@pytest.fixture(scope="module")
def chips(tmp_path_factory, model):
    """The real TerraMesh pair (224 x 224 px) in 64 px chips: a 4 x 4 chip grid with 32 px edge chips."""
    out = tmp_path_factory.mktemp("chips") / "chips.parquet"
    result = embed_scene(model, TM_INPUTS, out, pooled=True, tile=64, fmt="geoparquet", dtype="float32",
                         progress=False, stac=False)
    assert result.outputs == [out]
    return out


def embeddings(table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1)


def test_top_left_chip_is_the_embedding_of_that_crop(chips, model):
    table = pq.read_table(chips)
    assert table.num_rows == 16
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: float>[256]"
    rows = table.to_pydict()
    top_left = rows["row"].index(0) if rows["col"][rows["row"].index(0)] == 0 else None
    assert top_left is not None and (rows["height"][top_left], rows["width"][top_left]) == (64, 64)
    with rasterio.open(TM_S1) as a, rasterio.open(TM_S2) as b:
        s1, s2 = a.read(), b.read()
    expected = model.embed(s1[None, :, :64, :64], s2[None, :, :64, :64], s2_offset=1000, dtype="float32")[0]
    np.testing.assert_allclose(embeddings(table)[top_left], expected, rtol=1e-5, atol=1e-5)
    # An edge chip: the window is clipped to the scene and its vector is that of the 32 px crop.
    corner = [i for i in range(16) if rows["row"][i] == 192 and rows["col"][i] == 192][0]
    assert (rows["height"][corner], rows["width"][corner]) == (32, 32) and rows["valid_fraction"][corner] == 1.0
    assert np.isfinite(embeddings(table)[corner]).all()


def test_footprints_cover_the_scene_exactly_without_overlap(chips):
    table = pq.read_table(chips)
    with rasterio.open(TM_S2) as src:
        crs, bounds, transform = src.crs, src.bounds, src.transform
    rows = table.to_pydict()
    native = [shapely.box(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in rows["native_bbox"]]
    scene = shapely.box(*bounds)
    assert abs(shapely.union_all(native).area - scene.area) < 1e-6 * scene.area
    assert abs(sum(p.area for p in native) - scene.area) < 1e-6 * scene.area  # no overlap
    assert set(rows["native_crs"]) == {crs.to_string()}
    for r, c, h, w, box in zip(rows["row"], rows["col"], rows["height"], rows["width"], native):
        x0, y0 = transform * (c, r)
        x1, y1 = transform * (c + w, r + h)
        assert box.equals(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    # The EPSG:4326 polygons, projected back, are the native footprints (edges densified, so exact at vertices).
    for wkb, box, bbox in zip(rows["geometry"], native, rows["bbox"]):
        polygon = shapely.from_wkb(wkb)
        assert polygon.geom_type == "Polygon" and polygon.exterior.is_ccw and len(polygon.exterior.coords) == 33
        back = shapely.geometry.shape(transform_geom("EPSG:4326", crs, shapely.geometry.mapping(polygon)))
        assert back.symmetric_difference(box).area < 1e-6 * box.area
        assert np.allclose(polygon.bounds, [bbox["xmin"], bbox["ymin"], bbox["xmax"], bbox["ymax"]])


def test_geo_metadata_geopandas_and_duckdb(chips):
    schema = pq.read_schema(chips)
    geo = json.loads(schema.metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 4326}
    assert column["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}
    frame = geopandas.read_parquet(chips)
    assert frame.crs.to_epsg() == 4326 and len(frame) == 16 and frame.geometry.geom_type.eq("Polygon").all()
    assert np.allclose(frame.total_bounds, column["bbox"])
    meta = read_chip_metadata(chips)
    assert meta["model"]["name"] == "tiny-swin-t" and len(meta["model"]["weights_sha256"]) == 64
    assert meta["bands"]["s2"][0] == "B01" and meta["units"]["s1"] and meta["compute"]["dtype"] == "float32"
    assert meta["dimensions"] == 256 and meta["channel_groups"] == {"s1": [0, 128], "s2": [128, 256]}
    assert meta["quantization"]["scheme"] == "none" and meta["native_crs"].startswith("EPSG:")
    assert meta["normalization"]["kind"] == "fixed" and meta["chip_size"] == 64 and meta["version"]
    assert is_own_parquet(chips) and is_own_output(chips)
    # DuckDB reads the file as it is (its spatial extension cannot be installed offline here, so the
    # geometry is read as WKB bytes and decoded with shapely; the bbox covering column filters rows).
    west = min(b["xmin"] for b in pq.read_table(chips, columns=["native_bbox"]).column("native_bbox").to_pylist())
    rows = duckdb.sql(f"select id, geometry, len(embedding) as d, bbox.xmin as xmin, valid_fraction "
                      f"from read_parquet('{chips}') where native_bbox.xmin <= {west + 1e-6} order by row").fetchall()
    assert len(rows) == 4 and {r[2] for r in rows} == {256}  # the western column of chips
    assert [r[0].rsplit("-", 2)[1:] for r in rows] == [["r0", "c0"], ["r64", "c0"], ["r128", "c0"], ["r192", "c0"]]
    assert all(shapely.from_wkb(bytes(r[1])).bounds[0] == pytest.approx(r[3]) for r in rows)
    assert duckdb.sql(f"select count(*) from read_parquet('{chips}')").fetchall() == [(16,)]


def test_rows_are_in_hilbert_order(chips):
    rows = pq.read_table(chips, columns=["row", "col", "id"]).to_pydict()
    i, j = np.array(rows["row"]) // 64, np.array(rows["col"]) // 64
    assert np.all(np.diff(hilbert_index(j, i, 2)) > 0)
    assert np.all(np.abs(np.diff(i)) + np.abs(np.diff(j)) == 1)  # a 4 x 4 curve: each step is to a neighbour
    assert rows["id"][0].endswith("-r0-c0") and len(set(rows["id"])) == 16
    for order in range(1, 6):  # the index itself: a bijection whose consecutive cells touch
        n = 1 << order
        x, y = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        d = hilbert_index(x.ravel(), y.ravel(), order)
        assert sorted(d) == list(range(n * n))
        step = np.argsort(d)
        assert np.all(np.abs(np.diff(x.ravel()[step])) + np.abs(np.diff(y.ravel()[step])) == 1)


def test_ids_are_deterministic_and_independent_of_the_model_and_output_name(tmp_path, chips):
    other = tiny_model("swin-t", "fixed", seed=3)
    out = tmp_path / "another-name.parquet"
    embed_scene(other, TM_INPUTS, out, pooled=True, tile=64, fmt="geoparquet", progress=False, stac=False)
    assert pq.read_table(out, columns=["id"]).column("id").to_pylist() == pq.read_table(chips, columns=["id"]).column("id").to_pylist()


def test_int8_chips_dequantise_to_the_unit_float_vectors(tmp_path, model, chips):
    out = tmp_path / "int8.parquet"
    embed_scene(model, TM_INPUTS, out, pooled=True, tile=64, fmt="geoparquet", dtype="float32", quantize="int8",
                progress=False, stac=False)
    table = pq.read_table(out)
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: int8>[256]"
    q = embeddings(table)
    unit = normalize_groups(embeddings(pq.read_table(chips)), [(0, 128), (128, 256)], axis=1)
    back = dequantize_int8(q.astype(np.int8))
    assert np.abs(back - unit).max() <= 0.5 / 127 + 1e-6
    cos = [np.dot(back[k, a:b], unit[k, a:b]) / np.linalg.norm(back[k, a:b]) for k in range(16) for a, b in ((0, 128), (128, 256))]
    assert min(cos) >= 0.999
    meta = read_chip_metadata(out)["quantization"]
    assert meta["scheme"] == "int8" and meta["nodata"] == -128 and meta["scale"] == pytest.approx(1 / 127)
    assert embedding_bytes(out) < 0.35 * embedding_bytes(chips)


def embedding_bytes(path) -> int:
    """Compressed bytes of the embedding column (the file metadata dominates a 16-row file)."""
    meta = pq.ParquetFile(path).metadata
    return sum(meta.row_group(g).column(c).total_compressed_size for g in range(meta.num_row_groups)
               for c in range(meta.num_columns) if meta.row_group(g).column(c).path_in_schema.startswith("embedding"))


def test_chips_without_valid_pixels_keep_a_row_with_nan_and_valid_fraction_zero(tmp_path):
    s1, s2 = synthetic_scene(128, 128, seed=4)
    s1 = s1.copy()
    s1[:, :64, :] = np.nan          # no S1 in the top chip row
    s2[:, :64, :64] = 0             # and no S2 in the top-left chip: nothing valid there
    s2[:, 64:, 64:96] = 0           # half of the bottom-right chip has no S2
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    out = tmp_path / "c.parquet"
    embed_scene(tiny_model(), SceneInputs(s1=[p1], s2=[p2], s2_offset=0), out, pooled=True, tile=64,
                fmt="geoparquet", progress=False, stac=False)
    table = pq.read_table(out)
    rows = table.to_pydict()
    values = embeddings(table)
    at = {(r, c): k for k, (r, c) in enumerate(zip(rows["row"], rows["col"]))}
    empty, s2_only, half = at[0, 0], at[0, 64], at[64, 64]
    assert rows["valid_fraction"][empty] == 0 and np.isnan(values[empty]).all()
    assert rows["s1_valid_fraction"][s2_only] == 0 and rows["s2_valid_fraction"][s2_only] == 1
    assert np.isnan(values[s2_only, :128]).all() and np.isfinite(values[s2_only, 128:]).all()
    assert rows["s2_valid_fraction"][half] == 0.5 and rows["s1_valid_fraction"][half] == 1
    assert rows["valid_fraction"][half] == 1 and np.isfinite(values[half]).all()
    int8 = tmp_path / "q.parquet"
    embed_scene(tiny_model(), SceneInputs(s1=[p1], s2=[p2], s2_offset=0), int8, pooled=True, tile=64,
                fmt="geoparquet", quantize="int8", progress=False, stac=False)
    q = embeddings(pq.read_table(int8))
    assert (q[empty] == -128).all() and (q[s2_only, :128] == -128).all() and (q[s2_only, 128:] != -128).all()


def test_geoparquet_needs_pooled_and_refuses_resume(tmp_path, model):
    with pytest.raises(OptionError, match="needs pooled=True"):
        embed_scene(model, TM_INPUTS, tmp_path / "x.parquet", fmt="geoparquet", progress=False)
    with pytest.raises(OptionError, match="resume .* does not apply"):
        embed_scene(model, TM_INPUTS, tmp_path / "x.parquet", pooled=True, fmt="geoparquet", resume=True, progress=False)
    assert files_in(tmp_path) == []


def test_an_interrupted_run_leaves_no_file(tmp_path, model, monkeypatch):
    fail_encoding_at(monkeypatch, 2, KeyboardInterrupt("stop"))
    with pytest.raises(KeyboardInterrupt, match="stop"):
        embed_scene(model, TM_INPUTS, tmp_path / "c.parquet", pooled=True, tile=64, batch_size=4, fmt="geoparquet",
                    progress=False)
    assert files_in(tmp_path) == []
    monkeypatch.undo()
    # A failure while the file itself is written: the partial file goes too.
    import pyarrow.parquet

    def half_written(table, where, **kwargs):
        open(where, "wb").write(b"PAR1 half")
        raise KeyboardInterrupt("disk")

    monkeypatch.setattr(pyarrow.parquet, "write_table", half_written)
    with pytest.raises(KeyboardInterrupt, match="disk"):
        embed_scene(model, TM_INPUTS, tmp_path / "c.parquet", pooled=True, tile=64, fmt="geoparquet", progress=False)
    assert files_in(tmp_path) == []


def test_cli_two_scenes_give_one_parquet_each_with_one_schema(tmp_path, capsys):
    folder = tmp_path / "model"
    save_tiny(folder, "swin-t", "fixed")
    out = tmp_path / "out"
    out.mkdir()
    args = ["embed", "--model", str(folder), "--scenes", str(BIGEARTHNET / "pairs.txt"), "-o", str(out), "--pooled",
            "--tile", "64", "--format", "geoparquet", "--quiet"]
    assert main(args) == 0
    assert "2 scene(s): 2 written, 0 skipped (complete), 0 failed" in capsys.readouterr().out
    names = [s2 for _, s2 in BEN_PAIRS]
    assert files_in(out) == sorted([f"{n}.parquet" for n in names] + [f"{n}.json" for n in names])
    schemas = [pq.read_schema(out / f"{n}.parquet").remove_metadata() for n in names]
    assert schemas[0].equals(schemas[1])
    assert duckdb.sql(f"select count(*), count(distinct s2_item_id is null) from read_parquet('{out}/*.parquet')").fetchall() == [(8, 1)]
    for n in names:
        table = pq.read_table(out / f"{n}.parquet")
        assert table.num_rows == 4  # 120 x 120 px patches in 64 px chips
        rows = table.to_pydict()
        assert rows["s2_files"][0][0].endswith("_B01.tif") or len(rows["s2_files"][0]) == 12
        # The acquisition time of a Sentinel product name (S2A_MSIL2A_20170613T101031_...).
        stamp = n.split("_")[2]
        assert rows["s2_datetime"][0].strftime("%Y%m%dT%H%M%S") == stamp
    assert main(args) == 0
    assert "2 scene(s): 0 written, 2 skipped (complete), 0 failed" in capsys.readouterr().out
    # Refusals name the problem.
    assert main([a for a in args if a != "--pooled"]) == 2
    assert "--format geoparquet writes one row per chip: add --pooled" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 2
    assert "--resume does not apply to --format geoparquet" in capsys.readouterr().err
