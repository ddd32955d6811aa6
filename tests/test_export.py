"""Export to ONNX and torch.export: the written files reproduce the PyTorch embedder within 1e-4 (float32)
on several batch sizes and sizes (incl. non-multiples of 32), carry their metadata, and are written atomically."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, terramesh_pair, tiny_model

from s1s2_encoders import load_backbone
from s1s2_encoders.errors import ExportError
from s1s2_encoders.export import export_embedder, load_exported, read_export_metadata

TOL = 1e-4
# Two Swin stages with shifted windows at the test sizes, half the blocks of the tiny config: the
# ONNX export of Swin is the slow part of this module.
SMALL_SWIN = {"embed_dim": 16, "depths": (2, 2, 1, 1), "num_heads": (1, 2, 2, 4)}


def raw_inputs(batch: int, h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 2, h, w, generator=g) * 25 - 25, torch.rand(batch, 13, h, w, generator=g) * 10000


def max_diff(a, b) -> float:
    return float((torch.as_tensor(a).detach() - torch.as_tensor(b)).abs().max())


@pytest.fixture(scope="module")
def resnet():
    return tiny_model("resnet18", normalization="fixed")


@pytest.fixture(scope="module")
def swin():
    return tiny_model("swin-t", tower_kwargs=SMALL_SWIN)


@pytest.fixture(scope="module", params=["torch-export", "onnx"])
def resnet_export(request, resnet, tmp_path_factory):
    suffix = ".onnx" if request.param == "onnx" else ".pt2"
    path = tmp_path_factory.mktemp("export") / f"resnet{suffix}"
    result = export_embedder(resnet, path, format=request.param)
    return result


@pytest.mark.parametrize("batch, h, w", [(1, 64, 64), (3, 50, 77), (2, 224, 224), (4, 33, 130)])
def test_resnet_export_has_dynamic_batch_and_size(resnet, resnet_export, batch, h, w):
    """ResNet exports take any batch and any H, W >= 33 (padding to a multiple of 32 is in the graph)."""
    run = load_exported(resnet_export.path)
    s1, s2 = raw_inputs(batch, h, w, seed=batch + h)
    with torch.no_grad():
        expected = resnet(s1, s2)
        got = run(s1, s2)
    assert tuple(got.shape) == (batch, 1024)
    diff = max_diff(got, expected)
    print(f"{resnet_export.format} resnet B={batch} {h}x{w}: max |diff| = {diff:.2e}")
    assert diff <= TOL


def test_export_reports_its_own_check(resnet_export):
    assert resnet_export.max_abs_diff is not None and resnet_export.max_abs_diff <= TOL
    assert resnet_export.checked_shapes == [(1, 64, 64), (3, 50, 77)]
    assert resnet_export.inputs == ("s1", "s2") and resnet_export.embed_dim == 1024


def test_exported_file_matches_embed_on_real_pairs(resnet, resnet_export):
    """End to end: the exported graph on the real TerraMesh pairs == embed(dtype="float32") (which
    removes the +1000 S2 offset that the graph expects to be removed already)."""
    run = load_exported(resnet_export.path)
    pairs = [terramesh_pair(s) for s in ("282D_485L_3_3", "38D_378R_2_3")]
    s1 = np.stack([p[0] for p in pairs]).astype(np.float32)
    s2 = np.stack([p[1] for p in pairs]).astype(np.float32)
    expected = resnet.embed(s1, s2, s2_offset=1000, dtype="float32")
    with torch.no_grad():
        got = run(torch.from_numpy(s1), torch.from_numpy(s2) - 1000)
    assert max_diff(got, expected) <= TOL


def test_metadata_travels_with_the_file(resnet, resnet_export):
    config, description = read_export_metadata(resnet_export.path)
    assert config == json.loads(resnet.config.to_json())
    assert description["format"] == resnet_export.format
    assert [i["name"] for i in description["inputs"]] == ["s1", "s2"]
    assert description["inputs"][1]["bands"] == list(resnet.config.s2_bands)
    assert description["inputs"][0]["shape"] == ["batch", 2, "H >= 33", "W >= 33"]
    assert description["output"] == {
        "name": "embedding", "dtype": "float32", "shape": ["batch", 1024],
        "parts": [{"modality": "s1", "dim": 512}, {"modality": "s2", "dim": 512}],
    }
    assert description["normalization"]["kind"] == "fixed"


# (B, H, W): one window in the late stages, non-multiples of 32 and of the windows, the traced
# size's neighbours, and a large tile -- all different from the traced 256 x 288.
SWIN_SIZES = [(1, 33, 33), (3, 50, 77), (2, 224, 224), (1, 100, 300), (2, 481, 250)]


def test_swin_torch_export_per_modality_has_dynamic_batch_and_size(swin, tmp_path):
    """One Swin program serves every batch and every H, W >= 33; per-modality export works."""
    path = tmp_path / "swin_s2.pt2"
    result = export_embedder(swin, path, format="torch-export", modality="s2")
    assert result.inputs == ("s2",) and result.embed_dim == 128
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOL
    run = load_exported(path)
    for batch, h, w in SWIN_SIZES:
        _, s2 = raw_inputs(batch, h, w, seed=batch + h)
        with torch.no_grad():
            got = run(s2)
            diff = max_diff(got, swin(s2=s2))
        print(f"torch-export swin s2 B={batch} {h}x{w}: max |diff| = {diff:.2e}")
        assert tuple(got.shape) == (batch, 128) and diff <= TOL
    _, description = read_export_metadata(path)
    assert description["inputs"][0]["shape"] == ["batch", 13, "H >= 33", "W >= 33"]


def test_swin_onnx_fused_has_dynamic_batch_and_size(swin, tmp_path):
    path = tmp_path / "swin.onnx"
    result = export_embedder(swin, path, format="onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOL
    run = load_exported(path)
    for batch, h, w in SWIN_SIZES:
        s1, s2 = raw_inputs(batch, h, w, seed=batch + w)
        with torch.no_grad():
            got = run(s1, s2)
            diff = max_diff(got, swin(s1, s2))
        print(f"onnx swin B={batch} {h}x{w}: max |diff| = {diff:.2e}")
        assert tuple(got.shape) == (batch, 256) and diff <= TOL


def test_bad_arguments_are_refused_before_writing(resnet, tmp_path):
    with pytest.raises(ValueError, match=r"format must be one of onnx, torch-export, got 'tflite'"):
        export_embedder(resnet, tmp_path / "x.tflite", format="tflite")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"modality must be one of both, s1, s2, got 's3'"):
        export_embedder(resnet, tmp_path / "x.pt2", format="torch-export", modality="s3")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_nothing_behind(resnet, tmp_path, monkeypatch):
    def broken_save(*args, **kwargs):
        path = args[1]
        with open(path, "wb") as handle:  # half a file, then a crash
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch.export, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_embedder(resnet, tmp_path / "model.pt2", format="torch-export")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_overwritten_without_asking(resnet, tmp_path):
    out = tmp_path / "model.pt2"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"model.pt2 already exists; pass overwrite=True \(--overwrite\)"):
        export_embedder(resnet, out, format="torch-export")
    assert out.read_bytes() == b"keep me"


def test_exporter_failure_is_an_export_error(resnet, tmp_path, monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.export, "export", broken_export)
    with pytest.raises(ExportError, match=r"torch.export failed for S1S2Backbone: unsupported operator"):
        export_embedder(resnet, tmp_path / "model.pt2", format="torch-export")
    assert list(tmp_path.iterdir()) == []


def test_metadata_of_a_foreign_file_is_a_clear_error(tmp_path):
    class Plain(torch.nn.Module):
        def forward(self, x):
            return x * 2

    path = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(Plain(), (torch.ones(2),)), path)
    with pytest.raises(ExportError, match=r"plain.pt2 has no s1s2 metadata .*not written by s1s2 export"):
        read_export_metadata(path)


def test_cli_export_onnx_per_modality(resnet, tmp_path):
    folder = resnet.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "s1.onnx"
    cmd = [sys.executable, "-m", "s1s2_encoders", "export", str(folder), "--format", "onnx", "-o", str(out), "--modality", "s1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"wrote {out} (onnx): inputs s1, batch dynamic, dynamic H x W (>= 33), output embedding (B, 512)" in done.stdout
    assert "max |exported - PyTorch| = " in done.stdout
    reported = float(done.stdout.split("max |exported - PyTorch| = ")[1].split()[0])
    assert reported <= TOL
    s1, _ = raw_inputs(2, 40, 72, seed=5)
    with torch.no_grad():
        assert max_diff(load_exported(out)(s1), load_backbone(folder)(s1=s1)) <= TOL
    # a second run refuses to replace the file, with a one-line error and status 2
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 2
    assert again.stderr.strip() == f"s1s2 export: error: {out} already exists; pass overwrite=True (--overwrite) to replace it"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "s1.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_real_swin_t_export(fmt, tmp_path, real_pair):
    torch.manual_seed(0)
    model = load_backbone("swin-s1s2", pretrained=False)
    path = tmp_path / ("swin.onnx" if fmt == "onnx" else "swin.pt2")
    result = export_embedder(model, path, format=fmt)
    assert result.embed_dim == 1536
    assert result.max_abs_diff is not None and result.max_abs_diff <= TOL
    run = load_exported(path)
    s1, s2 = real_pair
    # The real 224 px pair, and its 120 px crop (BigEarthNet's size), through one file.
    for size in (224, 120):
        a, b = s1[:, :size, :size], s2[:, :size, :size]
        with torch.no_grad():
            got = run(torch.from_numpy(a.astype(np.float32))[None], torch.from_numpy(b.astype(np.float32))[None] - 1000)
        expected = model.embed(a, b, s2_offset=1000, dtype="float32")
        print(f"{fmt} real Swin-T {size} px: max |diff| = {max_diff(got, expected):.2e}")
        assert max_diff(got, expected) <= TOL
