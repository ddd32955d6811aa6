"""Outputs are durable and never replace someone else's file.

* A finished output is flushed to disk (fsync) *before* it is renamed onto its final name, and the
  folder after: a power loss cannot leave a truncated file under the final name that already says
  it is complete (which many-scene runs would then skip). The same for ``.npy`` outputs, their JSON
  sidecars, the resume record and the PNG quick-look.
* Many-scene runs replace only the package's own leftovers (files carrying S1S2 tags); a foreign file
  at an output path makes that scene fail with a message naming it, and the other scenes go on.
"""

from __future__ import annotations

import errno
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning

from conftest import tiny_config
from geo_helpers import UTM, UTM_TRANSFORM, files_in, save_tiny, synthetic_scene, write_raster
from s1s2_encoders import create_model, task_config
from s1s2_encoders.cli import main
from s1s2_encoders.durable import atomic_write_text
from s1s2_encoders.geo import writers
from s1s2_encoders.geo.grid import Grid
from s1s2_encoders.geo.writers import COMPLETE_TAG, GeoTiffSink, NpySink, OutputSet, is_complete_geotiff, partial_path, record_path

GRID = Grid(UTM, UTM_TRANSFORM, 40, 24)


# ---------------------------------------------------------------------------------------- fsync order
class DiskEvents:
    """Records os.fsync and os.replace calls (the real ones still run), each with the inode it touches,
    so that a test can say which file was flushed before which rename."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, int]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.fstat(fd).st_ino))
            return real_fsync(fd)

        def replace(src, dst, *args, **kwargs):
            self.events.append(("replace", os.stat(src).st_ino))
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def index(self, event: tuple[str, int]) -> int:
        assert event in self.events, (event, self.events)
        return self.events.index(event)

    def assert_flushed_then_renamed(self, inode: int, folder: Path) -> None:
        """The file ``inode`` was fsynced, then renamed, then its folder fsynced."""
        flushed = self.index(("fsync", inode))
        renamed = self.index(("replace", inode))
        folder_inode = os.stat(folder).st_ino
        after = [i for i, event in enumerate(self.events) if event == ("fsync", folder_inode) and i > renamed]
        assert flushed < renamed and after, self.events


def stripes(count: int) -> np.ndarray:
    return np.arange(count * GRID.height * GRID.width, dtype=np.float32).reshape(count, GRID.height, GRID.width)


def test_geotiff_commit_flushes_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    sink = GeoTiffSink(tmp_path / "emb.tif", GRID, 3, "float32", float("nan"), ["a", "b", "c"], {"S1S2_PRODUCT": "test"})
    sink.open()
    values = stripes(3)
    sink.write_rows(0, values[:, :8])
    sink.write_rows(8, values[:, 8:])
    inode = os.stat(sink.temp).st_ino
    disk = DiskEvents(monkeypatch)
    sink.commit()
    disk.assert_flushed_then_renamed(inode, tmp_path)
    with rasterio.open(tmp_path / "emb.tif") as ds:
        assert ds.tags()[COMPLETE_TAG] == "1" and np.array_equal(ds.read(), values)
    assert files_in(tmp_path) == ["emb.tif"]


def test_a_failing_flush_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    sink = GeoTiffSink(tmp_path / "emb.tif", GRID, 1, "float32", float("nan"), tags={"S1S2_PRODUCT": "test"})
    sink.open()
    sink.write_rows(0, stripes(1))

    def broken_disk(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_disk)
    with pytest.raises(OSError, match="Input/output error"):
        sink.commit()
    assert not (tmp_path / "emb.tif").exists()  # nothing claims to be complete
    assert files_in(tmp_path) == [".emb.tif.s1s2-partial"]


def test_npy_commit_flushes_the_sidecar_and_the_array_before_their_renames(tmp_path, monkeypatch):
    sink = NpySink(tmp_path / "emb.npy", GRID, 2, ["a", "b"], {"S1S2_PRODUCT": "test"})
    sink.open()
    values = stripes(2)
    sink.write_rows(0, values)
    inode = os.stat(sink.temp).st_ino
    disk = DiskEvents(monkeypatch)
    sink.commit()
    disk.assert_flushed_then_renamed(inode, tmp_path)
    sidecar = tmp_path / "emb.npy.json"
    disk.assert_flushed_then_renamed(os.stat(sidecar).st_ino, tmp_path)  # the inode kept by the rename
    assert disk.index(("replace", os.stat(sidecar).st_ino)) < disk.index(("replace", inode))  # sidecar first
    assert np.array_equal(np.load(tmp_path / "emb.npy"), np.moveaxis(values, 0, -1))
    assert json.loads(sidecar.read_text())["bands"] == ["a", "b"]
    assert files_in(tmp_path) == ["emb.npy", "emb.npy.json"]


def test_resume_checkpoints_flush_the_partial_files_before_the_record_and_the_record_before_its_rename(tmp_path, monkeypatch):
    sinks = [GeoTiffSink(tmp_path / "a.tif", GRID, 1, "float32", float("nan"), tags={"S1S2_PRODUCT": "test"}),
             NpySink(tmp_path / "a.npy", GRID, 1, ["x"], {"S1S2_PRODUCT": "test"})]
    outputs = OutputSet(sinks, {"p": 1}, resume=True, checkpoint_every=1e9)
    outputs.open(0)
    outputs.write_rows(0, stripes(1)[:, :8])
    partial_inodes = [os.stat(s.temp).st_ino for s in sinks]
    disk = DiskEvents(monkeypatch)
    outputs.checkpoint()
    record = record_path(tmp_path / "a.tif")
    record_inode = os.stat(record).st_ino
    disk.assert_flushed_then_renamed(record_inode, tmp_path)
    for inode in partial_inodes:  # rows on disk before the record says they are
        assert disk.index(("fsync", inode)) < disk.index(("fsync", record_inode))
    assert json.loads(record.read_text())["rows_done"] == 8
    outputs.abort()


def test_atomic_write_text_flushes_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old\n")
    disk = DiskEvents(monkeypatch)
    atomic_write_text(target, "new\n")
    disk.assert_flushed_then_renamed(os.stat(target).st_ino, tmp_path)
    assert target.read_text() == "new\n" and files_in(tmp_path) == ["results.json"]


# ---------------------------------------------------------------------------------------- ownership
def own_unfinished_geotiff(path: Path) -> Path:
    """What a power loss could leave under the final name before this fix: the package's file (S1S2
    tags) without the complete tag."""
    sink = GeoTiffSink(path, GRID, 1, "float32", float("nan"), tags={"S1S2_PRODUCT": "embedding"})
    sink.open()
    sink.write_rows(0, stripes(1)[:, :8])
    sink.close()
    os.replace(sink.temp, path)
    return path


def test_is_own_output_tells_the_package_files_from_others(tmp_path):
    own = own_unfinished_geotiff(tmp_path / "own.tif")
    assert writers.is_own_output(own) and not is_complete_geotiff(own)
    foreign_tif = write_raster(tmp_path / "foreign.tif", np.zeros((1, 8, 8), np.float32), tags={"AREA": "mine"})
    foreign_text = tmp_path / "notes.tif"
    foreign_text.write_text("my notes, not a raster\n")
    assert not writers.is_own_output(foreign_tif) and not writers.is_own_output(foreign_text)
    assert not writers.is_own_output(tmp_path / "missing.tif")

    sink = NpySink(tmp_path / "own.npy", GRID, 1, ["x"], {"S1S2_PRODUCT": "embedding"})
    sink.open()
    sink.write_rows(0, stripes(1))
    sink.commit()
    assert writers.is_own_output(tmp_path / "own.npy") and writers.is_own_output(tmp_path / "own.npy.json")
    np.save(tmp_path / "foreign.npy", np.zeros(3))
    (tmp_path / "other.npy.json").write_text(json.dumps({"layout": "HWC", "tags": {"AUTHOR": "me"}}))
    (tmp_path / "list.npy.json").write_text("[1, 2]")
    assert not any(writers.is_own_output(tmp_path / name) for name in ("foreign.npy", "other.npy.json", "list.npy.json"))


def write_scenes(folder: Path, names: list[str]) -> Path:
    """Small S1/S2 GeoTIFF pairs s1/NAME.tif, s2/NAME.tif and a scene list (outputs default to NAME.tif)."""
    (folder / "s1").mkdir(parents=True)
    (folder / "s2").mkdir()
    for seed, name in enumerate(names):
        s1, s2 = synthetic_scene(64, 64, seed=seed)
        write_raster(folder / "s1" / f"{name}.tif", s1)
        write_raster(folder / "s2" / f"{name}.tif", s2)
    listing = folder / "scenes.txt"
    listing.write_text("".join(f"s1/{n}.tif s2/{n}.tif\n" for n in names))
    return listing


@pytest.fixture(scope="module")
def backbone_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-resnet"
    save_tiny(folder, "resnet18", "fixed")
    return folder


def refused(path: Path) -> str:
    return (f"{path} exists and was not written by s1s2_encoders (it carries no S1S2 tags), so it is left as it is; "
            "move it away, choose another output folder, or pass --overwrite to replace it")


def test_many_scene_embed_replaces_only_its_own_leftovers(tmp_path, backbone_folder, capsys):
    listing = write_scenes(tmp_path, ["a", "b", "c", "d"])
    out = tmp_path / "out"
    out.mkdir()
    foreign_tif = write_raster(out / "a.tif", np.full((1, 8, 8), 7, np.uint8), tags={"AREA": "someone's map"})
    foreign_text = out / "b.tif"
    foreign_text.write_text("someone's notes\n")
    before = {p: p.read_bytes() for p in (foreign_tif, foreign_text)}
    own_unfinished_geotiff(out / "c.tif")
    partial_path(out / "d.tif").write_bytes(b"an interrupted run's partial file")
    args = ["embed", "--model", str(backbone_folder), "--scenes", str(listing), "-o", str(out), "--tile", "64",
            "--overlap", "0", "--s2-offset", "0", "--quiet"]

    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"FAILED a: {refused(foreign_tif)}" in captured.err
    assert f"FAILED b: {refused(foreign_text)}" in captured.err
    assert "4 scene(s): 2 written, 0 skipped (complete), 2 failed" in captured.out
    assert {p: p.read_bytes() for p in before} == before  # left exactly as they were
    for name in ("c", "d"):  # the package's own unfinished file and partial file were replaced
        assert is_complete_geotiff(out / f"{name}.tif")
        with rasterio.open(out / f"{name}.tif") as ds:
            assert ds.count == 1024 and (ds.height, ds.width) == (2, 2)
    assert files_in(out) == ["a.tif", "b.tif", "c.json", "c.tif", "d.json", "d.tif"]

    # Again: the complete ones are skipped, the foreign ones still refused ...
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "4 scene(s): 0 written, 2 skipped (complete), 2 failed" in captured.out
    assert {p: p.read_bytes() for p in before} == before
    # ... until --overwrite says to replace them.
    assert main([*args, "--overwrite"]) == 0
    assert "4 scene(s): 4 written, 0 skipped (complete), 0 failed" in capsys.readouterr().out
    assert all(is_complete_geotiff(out / f"{n}.tif") for n in "abcd")


def test_npy_sidecars_are_not_replaced_unless_they_are_the_package_own(tmp_path, backbone_folder, capsys):
    listing = write_scenes(tmp_path, ["a", "b"])
    out = tmp_path / "out"
    out.mkdir()
    foreign = out / "a.npy.json"
    foreign.write_text('{"mine": true}\n')
    args = ["embed", "--model", str(backbone_folder), "--scenes", str(listing), "-o", str(out), "--tile", "64",
            "--overlap", "0", "--s2-offset", "0", "--quiet", "--format", "npy"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"FAILED a: {refused(foreign)}" in captured.err
    assert foreign.read_text() == '{"mine": true}\n'
    assert files_in(out) == ["a.npy.json", "b.json", "b.npy", "b.npy.json"]
    # One scene, no --overwrite: a foreign sidecar beside a new -o file is refused too.
    single = ["embed", "--model", str(backbone_folder), "--s1", str(tmp_path / "s1" / "a.tif"), "--s2",
              str(tmp_path / "s2" / "a.tif"), "-o", str(out / "a.npy"), "--format", "npy", "--tile", "64",
              "--overlap", "0", "--s2-offset", "0", "--quiet"]
    assert main(single) == 2
    assert refused(foreign) in capsys.readouterr().err and foreign.read_text() == '{"mine": true}\n'
    assert main([*single, "--overwrite"]) == 0
    assert writers.is_own_output(out / "a.npy") and json.loads(foreign.read_text())["layout"] == "HWC"


@pytest.fixture(scope="module")
def segmenter_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-segmenter"
    torch.manual_seed(0)
    config = task_config(tiny_config("resnet18", "fixed"), "segmentation", class_names=["water", "land"],
                         class_colors=[[0, 0, 255], [0, 128, 0]], decoder={"channels": [8, 8, 8]})
    create_model(config).save_pretrained(folder)
    return folder


def test_many_scene_predict_refuses_foreign_side_outputs_and_tags_its_previews(tmp_path, segmenter_folder, capsys):
    listing = write_scenes(tmp_path, ["a", "b", "c"])
    out = tmp_path / "out"
    out.mkdir()
    foreign_png = out / "a.png"
    foreign_png.write_bytes(b"\x89PNG\r\n\x1a\nsomeone's picture")
    foreign_probabilities = write_raster(out / "b_probabilities.tif", np.zeros((2, 8, 8), np.float32))
    before = {p: p.read_bytes() for p in (foreign_png, foreign_probabilities)}
    args = ["predict", "--model", str(segmenter_folder), "--scenes", str(listing), "-o", str(out), "--tile", "64",
            "--overlap", "0", "--probabilities", "--preview", "--quiet", "--s2-offset", "0"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"FAILED a: {refused(foreign_png)}" in captured.err
    assert f"FAILED b: {refused(foreign_probabilities)}" in captured.err
    assert {p: p.read_bytes() for p in before} == before
    # Nothing of a refused scene is written (its map is not made without its preview).
    assert files_in(out) == ["a.png", "b_probabilities.tif", "c.json", "c.png", "c.tif", "c_probabilities.json",
                             "c_probabilities.tif"]
    assert writers.is_own_output(out / "c.png")  # the quick-look carries S1S2 tags in PNG text chunks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out / "c.png") as ds:
            assert ds.tags()["S1S2_MAP"] == "c.tif" and ds.driver == "PNG"
    # A complete scene with a foreign file as its preview is not complete: refused, not skipped.
    (out / "c.png").write_bytes(before[foreign_png])
    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"FAILED c: {refused(out / 'c.png')}" in captured.err
    assert re.search(r"3 scene\(s\): 0 written, 0 skipped \(complete\), 3 failed", captured.out)
