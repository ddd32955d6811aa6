"""Checkpoint folders: bit-exact round trip, strict loading, atomic writes, config validation."""

import json

import numpy as np
import pytest
import torch
from conftest import synthetic_pair, tiny_config, tiny_model
from safetensors.torch import load_file, save_file

from s1s2_encoders import CheckpointError, ConfigError, ModelConfig, load_backbone
from s1s2_encoders.checkpoint import write_checkpoint


@pytest.mark.parametrize("architecture", ["swin-t", "resnet18"])
def test_save_load_round_trip_is_bit_exact(architecture, tmp_path):
    model = tiny_model(architecture, normalization="fixed")
    folder = model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_backbone(folder)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert loaded.config.to_dict() == model.config.to_dict()
    s1, s2 = synthetic_pair()
    np.testing.assert_array_equal(loaded.embed(s1, s2), model.embed(s1, s2))


def test_weights_file_holds_only_tower_weights(tmp_path):
    folder = tiny_model("swin-t").save_pretrained(tmp_path / "ckpt")
    keys = load_file(str(folder / "model.safetensors")).keys()
    assert all(k.startswith(("s1.", "s2.")) for k in keys)
    assert not any("normalizer" in k or "attn_mask" in k or "relative_position_index" in k for k in keys)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    folder = tiny_model("resnet18").save_pretrained(tmp_path / "ckpt")
    weights = load_file(str(folder / "model.safetensors"))
    weights.pop("s1.conv1.weight")
    weights["s2.extra.weight"] = torch.zeros(1)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): s1.conv1.weight\n  1 unexpected key\(s\): s2.extra.weight"):
        load_backbone(folder)


def test_shape_mismatch_is_listed(tmp_path):
    folder = tiny_model("resnet18").save_pretrained(tmp_path / "ckpt")
    weights = load_file(str(folder / "model.safetensors"))
    weights["s2.conv1.weight"] = weights["s2.conv1.weight"][:, :12].contiguous()
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 shape mismatch\(es\): s2.conv1.weight \(file \(64, 12, 7, 7\), model \(64, 13, 7, 7\)\)"):
        load_backbone(folder)


def test_garbage_weights_file(tmp_path):
    folder = tiny_model("resnet18").save_pretrained(tmp_path / "ckpt")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=r"is not a readable safetensors file"):
        load_backbone(folder)


def test_existing_folder_is_not_overwritten_unless_asked(tmp_path):
    model = tiny_model("resnet18")
    folder = model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileExistsError, match=r"already exists and is not empty; pass overwrite=True"):
        model.save_pretrained(folder)
    other = tiny_model("resnet18", seed=1)
    other.save_pretrained(folder, overwrite=True)
    assert torch.equal(load_backbone(folder).s1.conv1.weight, other.s1.conv1.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary or backup folder left


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    model = tiny_model("resnet18")

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("s1s2_encoders.checkpoint.save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path / "ckpt", model.config, model.state_dict())
    assert list(tmp_path.iterdir()) == []


def test_config_round_trip_and_strictness(tmp_path):
    config = tiny_config("swin-t")
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
    data = config.to_dict()
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['colour'\]"):
        ModelConfig.from_dict({**data, "colour": "red"})
    with pytest.raises(ConfigError, match=r"unknown architecture 'vit-b'; known: swin-t, resnet18, resnet50"):
        ModelConfig.from_dict({**data, "architecture": "vit-b"})
    with pytest.raises(ConfigError, match=r"format_version 99 is newer"):
        ModelConfig.from_dict({**data, "format_version": 99})
    with pytest.raises(ConfigError, match=r"2 mean/std values for 13 bands"):
        ModelConfig.from_dict({**data, "normalization": {"kind": "fixed", "s1": {"clip": [-25, 0], "mean": [0, 0], "std": [1, 1]}, "s2": {"clip": [0, 1], "mean": [0, 0], "std": [1, 1]}}})
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON"):
        ModelConfig.load(tmp_path / "config.json")


def test_config_band_names_are_canonicalised():
    config = ModelConfig(s1_bands=("vv", "vh"), s2_bands=("B2", "B3", "B4"))
    assert config.s1_bands == ("VV", "VH") and config.s2_bands == ("B02", "B03", "B04")
    model = load_backbone(config.replace(architecture="resnet18", tower_kwargs={"layers": (1, 1, 1, 1)}))
    assert model.s2.conv1.weight.shape[1] == 3
