"""Parallel scene readers (``readers=N``): identical outputs for every N, order, bounded memory,
errors and interruption, and the device-feed choices (auto readers, batch size, staging)."""

from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import pytest
import torch

from conftest import tiny_model
from geo_helpers import files_in, read, synthetic_scene, write_raster
from s1s2_encoders.errors import OptionError, RasterReadError
from s1s2_encoders.geo import SceneInputs, embed_scene, predict_scene
from s1s2_encoders.geo import feed as feedmod
from s1s2_encoders.geo import stream as streammod
from s1s2_encoders.geo.readpool import ReaderPool
from s1s2_encoders.geo.sources import _OpenReader
from s1s2_encoders.geo.tiling import TilePlan


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 200 x 168 pair with S2 nodata on the left and S1 nodata at the bottom (empty and partial tiles)."""
    folder = tmp_path_factory.mktemp("scene")
    s1, s2 = synthetic_scene(200, 168, seed=5)
    s2[:, :, :40] = 0
    s1[:, 180:] = np.nan
    s2[:, 150:, :70] = 0
    s1[:, 150:, :70] = np.nan  # bottom-left corner: no data in either modality (empty tiles)
    return write_raster(folder / "s1.tif", s1), write_raster(folder / "s2.tif", s2)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Extra reader threads and a 2-thread OpenMP team on 2 shared cores make the team stall at its
    barriers (seconds per batch under load): the reason readers=1 is the CPU default. One intra-op
    thread keeps these tests fast; what they check does not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backbone():
    return tiny_model(normalization="fixed")


def live_reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("s1s2-reader")]


@contextlib.contextmanager
def counting_pools(monkeypatch):
    """Every ReaderPool the stream makes, to look at its buffers afterwards."""
    pools = []

    class Counted(ReaderPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    monkeypatch.setattr(streammod, "ReaderPool", Counted)
    yield pools


@pytest.mark.parametrize("pooled", [False, True], ids=["dense", "pooled"])
def test_embeddings_are_bit_identical_for_every_reader_count(tmp_path, scene, backbone, monkeypatch, pooled):
    inputs = SceneInputs(s1=[scene[0]], s2=[scene[1]], s2_offset=0)
    options = dict(tile=64, overlap=32, stride=8, pooled=pooled, batch_size=2, progress=False, dtype="float32")
    results = {}
    with counting_pools(monkeypatch) as pools:
        for readers in (1, 2, 3):
            embed_scene(backbone, inputs, tmp_path / f"r{readers}.tif", readers=readers, **options)
            results[readers] = read(tmp_path / f"r{readers}.tif")[0]
    assert np.isnan(results[1]).any() and np.isfinite(results[1]).any()  # nodata and data both present
    for readers in (2, 3):
        assert results[readers].tobytes() == results[1].tobytes()
    # Memory bound: 3 buffers with one reader (filled, queued, in compute), 4 with more (one more for
    # readers running ahead), whatever the number of readers; never more hold a batch.
    assert [p.readers for p in pools] == [1, 2, 3]
    for pool in pools:
        assert pool.buffers.count == pool.window == (3 if pool.readers == 1 else 4)
        assert 1 <= pool.buffers.peak_in_use <= pool.buffers.count and pool.buffers.in_use == 0
    assert live_reader_threads() == []


def test_staged_feed_logic_gives_the_same_embeddings(tmp_path, scene, backbone, monkeypatch):
    """The CUDA path's staging (copy ahead, wait, hand the host buffer back early) run on the CPU."""
    inputs = SceneInputs(s1=[scene[0]], s2=[scene[1]], s2_offset=0)
    options = dict(tile=64, overlap=32, stride=8, batch_size=3, progress=False, dtype="float32")
    embed_scene(backbone, inputs, tmp_path / "plain.tif", readers=1, **options)
    staged = []

    class Staging(feedmod.DeviceFeed):
        def __init__(self, device):
            super().__init__(device, stage=True)

        def stage(self, batch):
            super().stage(batch)
            staged.append(batch.index)
            assert all(d.data_ptr() != torch.from_numpy(batch.data[m]).data_ptr() for m, (d, _) in batch.staged.items())

    monkeypatch.setattr(streammod, "DeviceFeed", Staging)
    embed_scene(backbone, inputs, tmp_path / "staged.tif", readers=2, **options)
    assert staged == sorted(staged) and len(staged) > 3
    assert read(tmp_path / "staged.tif")[0].tobytes() == read(tmp_path / "plain.tif")[0].tobytes()


def test_predictions_are_bit_identical_for_every_reader_count(tmp_path, scene):
    from test_geo_predict import tiny_task

    model = tiny_task("segmentation")
    inputs = SceneInputs(s1=[scene[0]], s2=[scene[1]], s2_offset=0)
    maps, probs = {}, {}
    for readers in (1, 2, 3):
        predict_scene(model, inputs, tmp_path / f"map{readers}.tif", probabilities=tmp_path / f"p{readers}.tif",
                      tile=64, overlap=32, batch_size=2, progress=False, readers=readers, dtype="float32")
        maps[readers], probs[readers] = read(tmp_path / f"map{readers}.tif")[0], read(tmp_path / f"p{readers}.tif")[0]
    assert (maps[1] == 255).any() and (maps[1] < 3).any()
    for readers in (2, 3):
        assert maps[readers].tobytes() == maps[1].tobytes() and probs[readers].tobytes() == probs[1].tobytes()


def test_resume_from_a_middle_row_with_other_reader_counts_matches_one_run(tmp_path, backbone, monkeypatch):
    from s1s2_encoders.models.engine import InferenceEngine

    s1, s2 = synthetic_scene(416, 96, seed=6)  # tall enough for stripes to be written before the end
    s2[:, 200:260] = 0
    inputs = SceneInputs(s1=[write_raster(tmp_path / "s1.tif", s1)], s2=[write_raster(tmp_path / "s2.tif", s2)],
                         s2_offset=0)
    options = dict(tile=64, overlap=32, stride=8, batch_size=2, progress=False, dtype="float32")
    embed_scene(backbone, inputs, tmp_path / "whole.tif", readers=1, **options)
    encode, calls = InferenceEngine.encode_batch, []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 11:
            raise RuntimeError("stop here")
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(InferenceEngine, "encode_batch", failing)
    out = tmp_path / "resumed.tif"
    with pytest.raises(RuntimeError, match="stop here"):
        embed_scene(backbone, inputs, out, readers=3, resume=True, checkpoint_every=0, **options)
    monkeypatch.setattr(InferenceEngine, "encode_batch", encode)
    result = embed_scene(backbone, inputs, out, readers=2, resume=True, checkpoint_every=0, **options)
    assert 0 < result.resumed_from_row < result.grid.height
    assert read(out)[0].tobytes() == read(tmp_path / "whole.tif")[0].tobytes()


def test_a_reader_failure_propagates_and_leaves_no_output(tmp_path, scene, backbone, monkeypatch):
    original = _OpenReader.read

    def failing(self, window, out=None, valid=None):
        if self.source.modality == "s2" and window.row_off == 96 and window.col_off == 64:
            time.sleep(0.05)  # the other readers are well ahead by then
            raise RasterReadError("Sentinel-2: reading s2.tif failed at rows 96-160 (injected)")
        return original(self, window, out, valid)

    monkeypatch.setattr(_OpenReader, "read", failing)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    inputs = SceneInputs(s1=[scene[0]], s2=[scene[1]], s2_offset=0)
    with pytest.raises(RasterReadError, match=r"failed at rows 96-160 \(injected\)"):
        embed_scene(backbone, inputs, out_dir / "emb.tif", tile=64, overlap=32, stride=8, batch_size=2,
                    progress=False, readers=3)
    assert files_in(out_dir) == []  # neither the output nor a partial file
    assert live_reader_threads() == []


def test_an_interrupt_stops_every_reader(tmp_path, scene, backbone, monkeypatch):
    from s1s2_encoders.models.engine import InferenceEngine

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(InferenceEngine, "encode_batch", interrupted)
    inputs = SceneInputs(s1=[scene[0]], s2=[scene[1]], s2_offset=0)
    with pytest.raises(KeyboardInterrupt):
        embed_scene(backbone, inputs, tmp_path / "emb.tif", tile=64, overlap=32, stride=8, batch_size=2,
                    progress=False, readers=3)
    assert live_reader_threads() == [] and not (tmp_path / "emb.tif").exists()


@pytest.mark.parametrize("readers", [0, -2, 1.5, True, "2"])
def test_readers_must_be_a_positive_integer(tmp_path, scene, backbone, readers):
    inputs = SceneInputs(s1=[scene[0]], s2=[scene[1]], s2_offset=0)
    with pytest.raises(OptionError, match=r"readers must be a positive integer \(reader threads\) or None for auto, "
                                          rf"got {readers!r}"):
        embed_scene(backbone, inputs, tmp_path / "emb.tif", progress=False, readers=readers)
    assert not (tmp_path / "emb.tif").exists()


def test_cli_readers_option(tmp_path, scene, capsys):
    from s1s2_encoders.cli import main
    from geo_helpers import save_tiny

    folder = tmp_path / "model"
    save_tiny(folder, "swin-t", "fixed")
    base = ["embed", "--model", str(folder), "--s1", str(scene[0]), "--s2", str(scene[1]), "--s2-offset", "0",
            "--tile", "64", "--overlap", "32", "--stride", "8", "--quiet"]
    assert main(base + ["-o", str(tmp_path / "bad.tif"), "--readers", "0"]) != 0
    assert "readers must be a positive integer" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "two.tif"), "--readers", "2"]) == 0
    assert read(tmp_path / "two.tif")[0].shape[0] > 0


class SlowSource:
    """A fake modality whose tiles take longer the further left they are, so later batches are
    finished before earlier ones; records the order tiles were finished in."""

    n_channels = 1

    def __init__(self, delays: dict[int, float]):
        self.delays = delays
        self.finished: list[tuple[int, int]] = []

    @contextlib.contextmanager
    def reader(self):
        owner = threading.current_thread().name

        class Reader:
            def read(_, window, out, valid):
                assert threading.current_thread().name == owner  # handles stay in their thread
                time.sleep(self.delays.get(int(window.col_off), 0.0))
                out[...] = window.row_off * 1000 + window.col_off
                valid[...] = True
                self.finished.append((int(window.row_off), int(window.col_off)))
                return out, valid

        yield Reader()


def test_batches_arrive_in_plan_order_when_readers_finish_out_of_order():
    plan = TilePlan.grid(32 * 4, 32 * 3, 32)  # 4 rows of 3 tiles: one column band per reader
    tiles = plan.tiles(0)
    source = SlowSource({0: 0.12, 32: 0.06, 64: 0.0})
    pool = ReaderPool({"s1": source}, plan, tiles, 1, 0.0, 3, queued=1)
    assert pool.owner == {0: 0, 32: 1, 64: 2} and pool.window == 4
    with pool:
        seen = []
        for k in range(pool.n_batches):
            batch = pool.get(k)
            assert batch.index == k and batch.tiles == [tiles[k]]
            seen.append(float(batch.data["s1"][0, 0, 0, 0]))
            assert pool.buffers.in_use <= pool.window
            batch.release()
            batch.release()  # twice is harmless
    assert seen == [float(t.y * 1000 + t.x) for t in tiles]  # plan order
    finished = [(y, x) for y, x in source.finished]
    assert finished != [(t.y, t.x) for t in tiles] and finished[0] == (0, 64)  # the readers did not finish in order
    assert pool.buffers.peak_in_use == pool.window  # readers ran ahead, up to the bound
    assert live_reader_threads() == []


def test_column_bands_split_the_scene_evenly():
    from s1s2_encoders.geo.readpool import column_owners

    tiles = TilePlan.dense(448, 4096, 448, 64, 32).tiles(0)
    owners = column_owners(tiles, 2)
    counts = [list(owners.values()).count(j) for j in (0, 1)]
    assert sorted(owners) == sorted({t.x for t in tiles}) and abs(counts[0] - counts[1]) <= 1
    assert list(owners.values()) == sorted(owners.values())  # contiguous bands, left to right


def test_auto_readers_share_the_node_between_torchrun_processes(monkeypatch):
    monkeypatch.setattr(feedmod, "available_cores", lambda: 96)
    cuda = torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 GPUs, 12 cores each
    assert feedmod.cores_per_process() == 12 and feedmod.auto_readers(cuda) == 8 and feedmod.writer_threads(cuda) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert feedmod.cores_per_process() == 3 and feedmod.auto_readers(cuda) == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert feedmod.cores_per_process() == 96


def test_auto_readers_batch_size_and_gdal_cache():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert feedmod.auto_readers(cpu, cores=64) == 1
    assert [feedmod.auto_readers(cuda, cores=c) for c in (1, 2, 5, 16, 128)] == [1, 1, 4, 8, 8]
    assert feedmod.resolve_readers(3, cuda) == 3 and feedmod.resolve_readers(None, cpu) == 1
    assert [feedmod.writer_threads(cuda, cores=c) for c in (2, 8, 16, 64)] == [1, 2, 4, 4]
    assert feedmod.writer_threads(cpu, cores=64) == 1
    assert feedmod.default_batch_size(cpu) == 8
    assert feedmod.default_batch_size(cuda, 448, memory_bytes=80 * 2**30) == 32
    assert feedmod.default_batch_size(cuda, 224, memory_bytes=80 * 2**30) == 128
    assert feedmod.default_batch_size(cuda, 896, memory_bytes=80 * 2**30) == 8
    assert feedmod.default_batch_size(cuda, 448, memory_bytes=8 * 2**30) == 8
    assert [feedmod.gdal_cache_mib(n) for n in (1, 2, 4, 8, 64)] == [512, 576, 704, 960, 1024]
    with pytest.raises(OptionError, match="batch_size must be a positive integer, got 0"):
        feedmod.check_batch_size(0)
    # Without CUDA nothing is pinned or staged on a CUDA device request (the feed just does nothing).
    if not torch.cuda.is_available():
        feed = feedmod.DeviceFeed(cuda)
        assert not feed.pin and not feed.staging and feed.stream is None


def test_staged_batches_select_their_non_empty_tiles_on_the_device():
    """Batch.modality on staged tensors (the CUDA path's inputs) equals the host path, empty tiles left out."""
    from s1s2_encoders.geo.readpool import Batch

    rng = np.random.default_rng(0)
    data = {"s1": rng.random((3, 2, 8, 8), dtype=np.float32), "s2": rng.random((3, 13, 8, 8), dtype=np.float32)}
    valid = {"s1": np.ones((3, 8, 8), bool), "s2": np.ones((3, 8, 8), bool)}
    valid["s1"][1] = False  # tile 1: no data at all -> empty
    valid["s2"][1] = False
    valid["s2"][2, :2] = False  # tile 2: partly valid S2
    empty = np.array([False, True, False])
    full = {"s1": True, "s2": False}
    host = Batch([], data, valid, empty, full=full)
    staged = Batch([], data, valid, empty, full=full)
    feedmod.DeviceFeed(torch.device("cpu"), stage=True).stage(staged)
    for m, present in (("s1", None), ("s2", (0, 1, 2))):
        a, b = host.modality(m, present), staged.modality(m, present)
        assert a.data.shape[0] == 2 and torch.equal(a.data, b.data) and a.present == b.present == present
        assert (a.valid is None) == (b.valid is None) == full[m]
        if a.valid is not None:
            assert a.valid.shape == (2, 1, 8, 8) and torch.equal(a.valid, b.valid)
    assert staged.staged["s2"][0].data_ptr() != torch.from_numpy(data["s2"]).data_ptr()  # a copy, not a view


def test_a_writer_failure_is_the_error_raised_and_stops_the_readers(tmp_path, backbone, monkeypatch):
    from s1s2_encoders.geo.writers import GeoTiffSink

    s1, s2 = synthetic_scene(416, 96, seed=7)  # tall: stripes are written before the readers are done
    inputs = SceneInputs(s1=[write_raster(tmp_path / "s1.tif", s1)], s2=[write_raster(tmp_path / "s2.tif", s2)],
                         s2_offset=0)

    def full_disk(self, row0, values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GeoTiffSink, "write_rows", full_disk)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(OSError, match="No space left on device"):
        embed_scene(backbone, inputs, out_dir / "emb.tif", tile=64, overlap=32, stride=8, batch_size=2,
                    progress=False, readers=2)
    assert files_in(out_dir) == [] and live_reader_threads() == []
