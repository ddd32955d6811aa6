"""A checkpoint folder is data: ``config.json``'s ``tower_kwargs`` may only set the towers' architecture.

timm's other keyword arguments load things (``pretrained`` downloads, ``pretrained_cfg_overlay`` points
the download at any Hub repository or file, ``checkpoint_path`` unpickles any file), so they are refused
with an error naming the key when the config is made, before any tower is built or any file is read.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
import yaml

from conftest import REPO, tiny_config
from s1s2_encoders import ConfigError, ModelConfig, load_backbone, load_model, task_config
from s1s2_encoders.models.towers import create_tower

SWIN_ACCEPTED = ("attn_drop_rate, depths, drop_path_rate, drop_rate, embed_dim, img_size, num_heads, "
                 "proj_drop_rate, window_size")
RESNET_ACCEPTED = "channels, drop_path_rate, drop_rate, layers, stem_width"
ACCEPTED = {"swin-t": SWIN_ACCEPTED, "resnet18": RESNET_ACCEPTED, "resnet50": RESNET_ACCEPTED}

# Files the Python process opens while a watch list is set (sys.audit "open" events: builtins.open,
# io.open, os.open; torch.load opens its file with them). Audit hooks cannot be removed, so one hook
# is installed once and consults the current watch list.
_WATCHED: dict[str, list[str]] = {}


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _WATCHED and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in _WATCHED:
            _WATCHED[path].append(event)


sys.addaudithook(_record_open)


@pytest.fixture
def opened():
    """``watch(path)`` starts recording opens of ``path``; the fixture's dict maps paths to the opens seen."""
    def watch(path: Path) -> None:
        _WATCHED[os.path.realpath(path)] = []
    watch.seen = _WATCHED  # type: ignore[attr-defined]
    yield watch
    _WATCHED.clear()


@pytest.fixture(autouse=True)
def no_hub_downloads(monkeypatch):
    """Were a key to get through to timm (the unfixed code), ``pretrained`` must fail here, not download."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def trap_file(folder: Path) -> Path:
    """A file that fails loudly if anything unpickles it (what timm's checkpoint_path would do)."""
    path = folder / "trap.pth"
    path.write_bytes(b"this is not a checkpoint: reading it is the bug\n")
    return path


def dangerous_kwargs(trap: Path) -> dict[str, object]:
    """Each key with a value that makes timm load something."""
    return {
        "pretrained": True,
        "pretrained_cfg": {"hf_hub_id": "someone/other-weights", "file": str(trap)},
        "pretrained_cfg_overlay": {"file": str(trap)},
        "checkpoint_path": str(trap),
        "features_only_please": 1,  # an unknown key
    }


def test_the_open_watcher_sees_timm_reading_a_checkpoint_path(tmp_path, opened):
    """The watcher the tests below rely on records what timm's checkpoint loading opens."""
    from timm.models import load_checkpoint

    trap = trap_file(tmp_path)
    opened(trap)
    with pytest.raises(Exception):
        load_checkpoint(torch.nn.Linear(1, 1), str(trap))
    assert opened.seen[os.path.realpath(trap)] == ["open"]


KEYS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "features_only_please")


def refusal(key: str, architecture: str) -> str:
    return (rf"tower_kwargs key '{key}' is not accepted for {architecture} towers; accepted keys: "
            rf"{ACCEPTED[architecture]}\. A config describes the architecture only")


@pytest.mark.parametrize("architecture", ["swin-t", "resnet18", "resnet50"])
@pytest.mark.parametrize("key", KEYS)
def test_model_config_refuses_loading_and_unknown_tower_kwargs(key, architecture, tmp_path, opened):
    trap = trap_file(tmp_path)
    opened(trap)
    value = dangerous_kwargs(trap)[key]
    with pytest.raises(ConfigError, match=refusal(key, architecture)):
        ModelConfig(architecture=architecture, tower_kwargs={key: value})
    # from_dict (what config.json parsing uses) and replace() go through the same check.
    data = ModelConfig(architecture=architecture).to_dict()
    data["tower_kwargs"] = {key: value}
    with pytest.raises(ConfigError, match=refusal(key, architecture)):
        ModelConfig.from_dict(data)
    with pytest.raises(ConfigError, match=refusal(key, architecture)):
        ModelConfig(architecture=architecture).replace(tower_kwargs={key: value})
    assert opened.seen[os.path.realpath(trap)] == []


def test_keys_of_one_family_are_refused_for_the_other():
    with pytest.raises(ConfigError, match=refusal("layers", "swin-t")):
        ModelConfig(architecture="swin-t", tower_kwargs={"layers": [1, 1, 1, 1]})
    with pytest.raises(ConfigError, match=refusal("embed_dim", "resnet18")):
        ModelConfig(architecture="resnet18", tower_kwargs={"embed_dim": 16})
    with pytest.raises(ConfigError, match=r"tower_kwargs must be a JSON object, got list"):
        ModelConfig(tower_kwargs=[("embed_dim", 16)])


@pytest.mark.parametrize("architecture, kwargs, message", [
    ("swin-t", {"depths": [2, 2, 0, 2]}, r"'depths' must be a list of 4 positive integers \(one per stage\), got \[2, 2, 0, 2\]"),
    ("swin-t", {"depths": [2, 2, 2]}, r"'depths' must be a list of 4 positive integers .*got \[2, 2, 2\]"),
    ("swin-t", {"depths": "2262"}, r"'depths' must be a list of 4 positive integers .*got '2262'"),
    ("swin-t", {"num_heads": [1, 2.0, 2, 4]}, r"'num_heads' must be a list of 4 positive integers .*got \[1, 2.0, 2, 4\]"),
    ("swin-t", {"embed_dim": True}, r"'embed_dim' must be a positive integer, got True"),
    ("swin-t", {"embed_dim": 16.0}, r"'embed_dim' must be a positive integer, got 16.0"),
    ("swin-t", {"window_size": [7, 7]}, r"'window_size' must be a positive integer, got \[7, 7\]"),
    ("swin-t", {"img_size": 100}, r"'img_size' must be a positive multiple of 32 \(pixels\), got 100"),
    ("swin-t", {"drop_path_rate": 1.0}, r"'drop_path_rate' must be a number in \[0, 1\), got 1.0"),
    ("swin-t", {"drop_rate": float("nan")}, r"'drop_rate' must be a number in \[0, 1\), got nan"),
    ("swin-t", {"attn_drop_rate": "0.1"}, r"'attn_drop_rate' must be a number in \[0, 1\), got '0.1'"),
    ("swin-t", {"embed_dim": 16, "num_heads": [1, 2, 3, 4]},
     r"stage 2 has 64 channels \(embed_dim 16 x 4\), which its 3 attention heads \(num_heads \[1, 2, 3, 4\]\) do not divide"),
    ("swin-t", {"embed_dim": 16}, r"stage 0 has 16 channels \(embed_dim 16 x 1\), which its 3 attention heads"),
    ("resnet18", {"layers": [1, 1, 1, -1]}, r"'layers' must be a list of 4 positive integers .*got \[1, 1, 1, -1\]"),
    ("resnet50", {"channels": [8, 16, 32]}, r"'channels' must be a list of 4 positive integers .*got \[8, 16, 32\]"),
    ("resnet18", {"stem_width": 0}, r"'stem_width' must be a positive integer, got 0"),
])
def test_tower_kwargs_values_are_checked(architecture, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(architecture=architecture, tower_kwargs=kwargs)


def repo_tower_kwargs() -> list[tuple[str, str, dict]]:
    """Every (file, architecture, tower_kwargs) the training recipes use."""
    found = []
    for path in sorted((REPO / "training" / "configs").rglob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        found.append((path.name, model.get("architecture", "swin-t"), model.get("tower_kwargs") or {}))
    return found


def test_every_tower_kwargs_the_repository_uses_is_accepted_and_builds_those_towers():
    recipes = repo_tower_kwargs()
    assert {"drop_path_rate", "embed_dim", "depths", "num_heads", "layers", "channels", "stem_width"} <= {
        k for _, _, kwargs in recipes for k in kwargs}
    for name, architecture, kwargs in recipes:
        ModelConfig(architecture=architecture, tower_kwargs=kwargs)  # no error
    # The accepted keys reach timm: the towers have the sizes asked for.
    swin = create_tower("swin-t", 2, embed_dim=16, depths=[1, 2, 1, 1], num_heads=[1, 2, 2, 4], window_size=7,
                        img_size=448, drop_path_rate=0.2)
    assert [len(stage.blocks) for stage in swin.layers] == [1, 2, 1, 1] and swin.num_features == 128
    assert swin.layers[1].blocks[1].drop_path1.drop_prob == pytest.approx(0.2 * 2 / 4)
    resnet = create_tower("resnet18", 13, layers=[1, 1, 1, 1], channels=[8, 16, 32, 64], stem_width=8)
    assert resnet.conv1.in_channels == 13 and resnet.layer1[0].conv1.out_channels == 8 and resnet.num_features == 64
    from s1s2_encoders.config import TOWER_KWARGS

    assert set(TOWER_KWARGS) == {"swin-t", "resnet18", "resnet50"}


def test_create_tower_refuses_what_a_config_refuses_even_after_an_edit(tmp_path, opened):
    trap = trap_file(tmp_path)
    opened(trap)
    with pytest.raises(ConfigError, match=refusal("checkpoint_path", "resnet18")):
        create_tower("resnet18", 2, checkpoint_path=str(trap))
    config = tiny_config("resnet18")
    config.tower_kwargs["checkpoint_path"] = str(trap)  # the dict is mutable after validation
    with pytest.raises(ConfigError, match=refusal("checkpoint_path", "resnet18")):
        load_backbone(config)
    assert opened.seen[os.path.realpath(trap)] == []


def write_folder(folder: Path, config: ModelConfig, key: str, value: object) -> Path:
    """A checkpoint folder whose config.json carries ``tower_kwargs[key] = value`` and whose weights file
    is not safetensors (so reading the weights before the config is checked fails differently)."""
    folder.mkdir()
    data = config.to_dict()
    data["tower_kwargs"] = {**data["tower_kwargs"], key: value}
    (folder / "config.json").write_text(json.dumps(data, indent=2))
    (folder / "model.safetensors").write_bytes(b"not safetensors either\n")
    (folder / "README.md").write_text("# a test folder\n")
    return folder


@pytest.mark.parametrize("key", KEYS)
def test_load_backbone_refuses_a_folder_whose_config_carries_the_key_before_reading_anything(key, tmp_path, opened):
    trap = trap_file(tmp_path)
    folder = write_folder(tmp_path / "model", tiny_config("swin-t"), key, dangerous_kwargs(trap)[key])
    opened(trap)
    opened(folder / "model.safetensors")
    with pytest.raises(ConfigError, match=rf"config.json: {refusal(key, 'swin-t')}"):
        load_backbone(folder)
    with pytest.raises(ConfigError, match=refusal(key, "swin-t")):
        load_backbone(folder, pretrained=False)
    assert opened.seen[os.path.realpath(trap)] == []
    assert opened.seen[os.path.realpath(folder / "model.safetensors")] == []


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
@pytest.mark.parametrize("key", KEYS)
def test_load_model_refuses_task_folders_whose_config_carries_the_key(key, kind, tmp_path, opened):
    trap = trap_file(tmp_path)
    config = task_config(tiny_config("resnet18"), kind)
    folder = write_folder(tmp_path / "model", config, key, dangerous_kwargs(trap)[key])
    opened(trap)
    with pytest.raises(ConfigError, match=rf"config.json: {refusal(key, 'resnet18')}"):
        load_model(folder)
    assert opened.seen[os.path.realpath(trap)] == []


def test_a_valid_folder_still_loads_exactly(tmp_path):
    torch.manual_seed(0)
    model = load_backbone(tiny_config("resnet18").replace(tower_kwargs={"layers": [1, 1, 1, 1], "drop_rate": 0.0}))
    folder = model.save_pretrained(tmp_path / "ok")
    loaded = load_backbone(folder)
    assert loaded.config.tower_kwargs == {"layers": [1, 1, 1, 1], "drop_rate": 0.0}
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
