"""Registry contents and the ``s1s2 models`` / ``info`` / ``download`` commands."""

import json
import subprocess
import sys

import pytest

from s1s2_encoders import list_models, load_backbone
from s1s2_encoders.cli import main
from s1s2_encoders.registry import REGISTRY, RegistryEntry


def test_three_published_backbones_are_registered_without_claiming_weights():
    names = [e.name for e in list_models()]
    assert names == ["swin-s1s2", "resnet50-s1s2", "resnet18-s1s2"]
    for entry in list_models():
        assert not entry.available and entry.repo_id is None and entry.revision is None and entry.sha256 is None
        assert entry.original_weights == f"https://drive.google.com/file/d/{entry.original_file_id}/view"
        assert entry.weights_source == "original" and entry.original_sha256 is None  # unknown: nothing here sees Drive
        assert "@inproceedings" in entry.citation or "@article" in entry.citation
        config = entry.config()
        assert config.normalization.kind == "sslt_channel_max"
        assert config.name == entry.name
    assert REGISTRY["swin-s1s2"].input_size == 224 and REGISTRY["resnet50-s1s2"].input_size == 128
    assert "CVPRW" in REGISTRY["swin-s1s2"].citation and "2022" in REGISTRY["swin-s1s2"].citation


def test_registry_entries_validate_pins():
    with pytest.raises(ValueError, match=r"repo_id, revision and sha256 go together"):
        RegistryEntry(name="x", architecture="swin-t", description="", input_size=224, license="", license_note="", citation="", repo_id="a/b")
    with pytest.raises(ValueError, match=r"revision must be a 40-hex commit"):
        RegistryEntry(name="x", architecture="swin-t", description="", input_size=224, license="", license_note="", citation="", repo_id="a/b", revision="main", sha256="0" * 64)


def test_pretrained_false_builds_random_weights_offline():
    model = load_backbone("resnet18-s1s2", pretrained=False)
    assert model.embed_dim == 1024 and not model.training


def test_models_command_lists_the_three_names_with_status(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("swin-s1s2", "resnet50-s1s2", "resnet18-s1s2"):
        assert name in out
    assert out.count("original checkpoint from Google Drive, converted on first use") == 3
    assert "convert the original" not in out and "not on the Hub" not in out


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["swin-s1s2", "resnet50-s1s2", "resnet18-s1s2"]
    assert all(r["available"] is False and r["sha256"] is None for r in rows)


def test_info_shows_bands_units_normalisation_and_how_to_get(capsys):
    assert main(["info", "swin-s1s2"]) == 0
    out = capsys.readouterr().out
    assert "B01, B02, B03, B04, B05, B06, B07, B08, B8A, B09, B10, B11, B12" in out
    assert "sslt_channel_max" in out and "dB" in out
    assert "weights:       the authors' original checkpoint swin_t.pth from Google Drive" in out
    assert "cached:        no (`s1s2 download swin-s1s2` fetches and converts it)" in out
    assert "s1s2 convert swin_t.pth --arch swin-t -o swin-s1s2" in out and "load_backbone('./swin-s1s2')" in out


def test_info_on_a_folder(tmp_path, capsys):
    load_backbone("resnet18-s1s2", pretrained=False).save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    assert "resnet18" in capsys.readouterr().out


def test_unknown_name_exits_2_with_one_line(capsys):
    assert main(["info", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s1s2 info: error: unknown model name 'nope'; known names: swin-s1s2")


def test_console_script_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "s1s2_encoders", "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "swin-s1s2" in result.stdout
