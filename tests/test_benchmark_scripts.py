"""The performance benchmarks run end to end (on tiny towers: a smoke test of the scripts, not a benchmark)
and report what the README table is built from."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO

from s1s2_encoders.models.compute import cpu_has_native_bf16


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_embed_benchmark_reports_ratios_and_agreement(tmp_path):
    """bfloat16-only paths are timed where the CPU runs bfloat16 natively and reported "not applicable"
    (without running for minutes) where it does not; the default path applies everywhere."""
    out = tmp_path / "embed.json"
    done = run("embed.py", "--tiny", "--sizes", "64", "--batches", "2", "--repeats", "1", "--json", str(out),
               "--paths", "naive-fp32,embed-fp32,bf16-weights,embed-auto,engine-auto,channels-last-bf16")
    report = json.loads(out.read_text())
    rows = {(r["arch"], r["path"]): r for r in report["results"]}
    assert set(rows) == {
        (arch, path) for arch in ("swin-t", "resnet50")
        for path in ("naive-fp32", "embed-fp32", "bf16-weights", "embed-auto", "engine-auto")
    } | {("resnet50", "channels-last-bf16")}  # channels-last applies to ResNet only
    native = cpu_has_native_bf16()
    assert report["machine"]["native_bf16"] is native
    assert report["machine"]["cpu_class"].startswith("avx512_bf16" if native else ("amx_bf16", "no native bf16"))
    assert done.stdout.startswith(f"# CPU class: {report['machine']['cpu_class']}")
    for (arch, path), row in rows.items():
        if path in ("bf16-weights", "channels-last-bf16") and not native:
            assert row["note"].startswith("not applicable: no native bfloat16") and row["seconds"] == []
            assert math.isnan(row["pairs_per_s"])
            continue
        assert row["pairs_per_s"] > 0 and row["gflop_per_pair"] > 0 and row["peak_gflops"] > 0
        assert row["cosine_min"] >= 0.999, (arch, path, row["cosine_min"])
        if path in ("naive-fp32", "embed-fp32") or (path.endswith("-auto") and not native):
            assert row["max_abs_diff"] < 1e-4  # float32 paths reproduce the baseline
    assert rows[("swin-t", "naive-fp32")]["ratio"] == 1.0
    assert "x base" in done.stdout and "embed-auto" in done.stdout
    assert report["machine"]["torch_threads"] >= 1
    assert math.isnan(report["peak_gflops"]["bfloat16"]) is (not native) and report["peak_gflops"]["float32"] > 0


def test_train_throughput_benchmark_runs(tmp_path):
    out = tmp_path / "train.json"
    run("train_throughput.py", "--tiny", "--batches", "2", "--size", "64", "--repeats", "1", "--json", str(out))
    report = json.loads(out.read_text())
    variants = {r["variant"]: r for r in report["results"]}
    assert set(variants) == {"fp32", "fp32+ckpt", "bf16", "bf16+ckpt"}
    assert variants["fp32"]["ratio"] == 1.0
    # activation checkpointing keeps fewer tensors for the backward pass
    assert variants["fp32+ckpt"]["saved_activation_bytes_per_pair"] < variants["fp32"]["saved_activation_bytes_per_pair"]
    native = cpu_has_native_bf16()
    assert report["machine"]["native_bf16"] is native
    for name, row in variants.items():
        if name.startswith("bf16") and not native:
            assert row["note"].startswith("not applicable") and math.isnan(row["steps_per_s"])
        else:
            assert row["steps_per_s"] > 0


def test_scene_memory_benchmark_reports_memory_and_the_throughput_ratio(tmp_path):
    done = run("scene_memory.py", "--sizes", "256", "--tile", "128", "--overlap", "32", "--repeats", "1",
               "--workdir", str(tmp_path))
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["size"] == 256 and rows[0]["tiles"] == 9  # 3 x 3 tiles of 128 (96 + overlap)
    row = rows[0]
    assert row["peak_rss_mib"] > 0 and row["tiles_per_s"] > 0 and row["forward_tiles_per_s"] > 0
    assert row["throughput_ratio"] == row["tiles_per_s"] / row["forward_tiles_per_s"]
    assert row["compute"].startswith(("bfloat16", "float32"))  # the pure forward pass takes embed's default path
    assert row["output_mib"] >= 0 and "e2e/fwd" in done.stdout and not (tmp_path / "emb_256.tif").exists()  # removed after measuring


def test_output_formats_benchmark_reports_cog_cost_and_int8_agreement(tmp_path):
    out = tmp_path / "formats.json"
    done = run("output_formats.py", "--cells", "40", "--channels", "64", "--tiny", "--json", str(out),
               "--workdir", str(tmp_path))
    assert done.stdout.startswith("# CPU class: ")
    report = json.loads(out.read_text())
    cog_rows = {r["quantize"]: r for r in report["results"] if r["part"] == "cog"}
    assert set(cog_rows) == {"none", "int8"}
    for row in cog_rows.values():
        assert row["cells"] == 40 and row["channels"] == 64
        assert row["tiled_write_s"] > 0 and row["cog_layout_s"] > 0 and row["tiled_mib"] > 0 and row["cog_mib"] > 0
    raw_bytes = 40 * 40 * 64  # int8; float32 is four times that
    assert cog_rows["none"]["raw_mib"] == round(4 * raw_bytes / 2**20, 3) and cog_rows["int8"]["raw_mib"] == round(raw_bytes / 2**20, 3)
    (int8,) = [r for r in report["results"] if r["part"] == "int8"]
    assert int8["scenes"] == 2 and int8["stride"] == 32 and int8["channels"] == 256
    assert int8["cosine_min"] >= 0.995 and int8["max_abs_error"] <= int8["error_bound"] + 1e-5
    assert int8["pixel_data_ratio"] > 2 and int8["size_ratio"] > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["formats.json"]  # the work folder is cleaned up


def test_scene_pipeline_benchmark_reports_readers_end_to_end_and_cores(tmp_path):
    out = tmp_path / "pipeline.json"
    done = run("scene_pipeline.py", "--size", "320", "--tile", "128", "--overlap", "32", "--batch-size", "2",
               "--max-readers", "2", "--repeats", "1", "--forward-rate", "500", "--tiny", "--workdir", str(tmp_path),
               "--json", str(out))
    report = json.loads(out.read_text())
    assert {"cpu", "reader_only", "end_to_end", "cores_to_feed", "outputs_identical", "writer_s_per_tile"} <= set(report)
    assert set(report["reader_only"]) == set(report["end_to_end"]) == {"1", "2"}
    assert all(v > 0 for v in [*report["reader_only"].values(), *report["end_to_end"].values()])
    assert report["cpu"]["class"] in ("avx512_bf16", "no avx512_bf16") and report["cpu"]["cores"] >= 1
    assert report["outputs_identical"] and len(set(report["output_sha256"].values())) == 1
    assert report["scene"]["tiles"] == 9  # 3 x 3 tiles of 128 px (96 px steps) on 320 px
    assert report["output_channels"] == 2 * 128  # tiny Swin: 16 x 8 channels per tower at stride 32
    assert all(report["peak_buffers"][n] <= int(n) + 2 for n in ("1", "2"))
    feed = report["cores_to_feed"]
    assert feed["forward_rate"] == 500 and feed["ideal"] == math.ceil(500 / report["reader_only"]["1"]) + 1
    assert feed["at_measured_efficiency"] >= feed["ideal"] and "estimate" in feed["note"]
    assert done.stdout.startswith(f"# CPU class: {report['cpu']['class']}")
    assert "cores at the measured efficiency" in done.stdout
