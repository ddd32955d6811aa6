"""Long runs: Ctrl-C never leaves a file under the final name, --resume continues exactly, and
torchrun shards a scene list so that every scene is written exactly once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
from geo_helpers import files_in, read, save_tiny, synthetic_scene, write_raster
from s1s2_encoders import load_backbone
from s1s2_encoders.geo import SceneInputs, embed_scene


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-swin-fixed"
    save_tiny(folder, "swin-t", "fixed")
    return folder


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "s1s2_encoders", *map(str, args)], cwd=REPO, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before it could be interrupted: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_ctrl_c_with_resume_keeps_partial_output_and_resume_continues_to_the_same_result(tmp_path, model_folder):
    s1, s2 = synthetic_scene(1024, 128, seed=7)
    p1, p2 = write_raster(tmp_path / "s1.tif", s1), write_raster(tmp_path / "s2.tif", s2)
    options = ["--tile", "128", "--overlap", "32", "--stride", "4", "--batch-size", "1", "--s2-offset", "0", "--quiet"]
    reference = tmp_path / "reference.tif"
    embed_scene(load_backbone(model_folder), SceneInputs(s1=[p1], s2=[p2], s2_offset=0), reference, tile=128,
                overlap=32, stride=4, batch_size=1, progress=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "emb.tif"
    partial = out_dir / ".emb.tif.s1s2-partial"
    record = out_dir / ".emb.tif.s1s2-partial.json"

    # With --resume: the partial output and its record stay after an interruption ...
    proc = start("embed", "--model", model_folder, "--s1", p1, "--s2", p2, "-o", out, *options, "--resume",
                 "--checkpoint-every", "0")
    wait_for(lambda: record.exists() and json.loads(record.read_text())["rows_done"] >= 64, proc)
    proc.send_signal(signal.SIGTERM)  # what a batch scheduler sends; handled like Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "s1s2 embed: interrupted" in err
    assert files_in(out_dir) == [partial.name, record.name]
    rows_done = json.loads(record.read_text())["rows_done"]
    assert rows_done % 32 == 0 and 64 <= rows_done < 256

    # ... and a second --resume run continues from there and writes exactly the uninterrupted result.
    proc = start("embed", "--model", model_folder, "--s1", p1, "--s2", p2, "-o", out, *options, "--resume")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    resumed = int(re.search(r"resumed at output row (\d+)", stdout).group(1))
    assert resumed >= rows_done
    assert files_in(out_dir) == ["emb.json", "emb.tif"]
    np.testing.assert_array_equal(read(out)[0], read(reference)[0])


def test_torchrun_two_gloo_processes_write_every_scene_exactly_once(tmp_path, model_folder):
    names = [f"scene{i}" for i in range(5)]
    lines = []
    for i, name in enumerate(names):
        s1, s2 = synthetic_scene(64, 96, seed=i)
        write_raster(tmp_path / f"{name}_s1.tif", s1)
        write_raster(tmp_path / f"{name}_s2.tif", s2)
        lines.append(f"{name}_s1.tif {name}_s2.tif {name}.tif")
    scene_list = tmp_path / "scenes.txt"
    scene_list.write_text("# five scenes\n" + "\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "unused").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "s1s2_encoders",
           "embed", "--model", str(model_folder), "--scenes", str(scene_list), "-o", str(out_dir / "unused"),
           "--tile", "64", "--overlap", "0", "--device", "cpu", "--s2-offset", "0", "--quiet"]
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    wrote = re.findall(r"\[rank (\d)/2\] wrote (\S+) ", result.stdout)
    # The scene list names outputs relative to its folder: tmp_path/sceneN.tif.
    assert sorted(path for _, path in wrote) == sorted(str(tmp_path / f"{n}.tif") for n in names)
    for rank, path in wrote:
        index = names.index(os.path.basename(path)[:-4])
        assert int(rank) == index % 2  # rank r takes scenes r, r + 2, ...
        assert read(tmp_path / f"{names[index]}.tif")[1]["tags"]["S1S2_WRITER"] == f"rank {rank} of 2"
    assert result.stdout.count("5 scene(s): 5 written, 0 skipped (complete), 0 failed, 2 processes") == 1
