"""The hub code path against a real HTTP server on 127.0.0.1 (huggingface_hub does the downloading)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_pair, tiny_model
from hub_server import FakeHub, HubServer

from s1s2_encoders import (
    ChecksumError,
    DownloadError,
    ModelNotCachedError,
    ModelNotFoundError,
    WeightsNotAvailableError,
    load_backbone,
)
from s1s2_encoders.checkpoint import sha256_file
from s1s2_encoders.registry import REGISTRY, RegistryEntry

REPO_ID = "s1s2-test/tiny-swin"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model saved as a checkpoint folder, and its reference embedding."""
    model = tiny_model("swin-t")
    folder = model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny-swin")
    s1, s2 = synthetic_pair()
    return folder, model.embed(s1, s2), (s1, s2)


@pytest.fixture()
def hub(saved, monkeypatch):
    folder, _, _ = saved
    fake = FakeHub()
    fake.add_folder(REPO_ID, folder)
    with HubServer(fake) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def test_download_then_cache_with_server_stopped(hub, saved, tmp_path):
    folder, reference, (s1, s2) = saved
    cache = tmp_path / "cache"
    model = load_backbone(f"hf-hub:{REPO_ID}", cache_dir=cache)
    np.testing.assert_array_equal(model.embed(s1, s2), reference)
    assert ("GET", f"{REPO_ID}/main/model.safetensors") in hub.hub.requests
    hub.stop()
    # Server gone: the cached copy is used (huggingface_hub falls back to the cache).
    again = load_backbone(f"hf-hub:{REPO_ID}", cache_dir=cache)
    np.testing.assert_array_equal(again.embed(s1, s2), reference)
    assert again.config.provenance["loaded_from"] == f"{REPO_ID}@main"


def test_offline_mode_uses_cache_and_explains_when_not_cached(hub, saved, tmp_path, monkeypatch):
    _, reference, (s1, s2) = saved
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotCachedError, match=r"not in the local cache and offline mode is on \(HF_HUB_OFFLINE=1\).*s1s2 download"):
        load_backbone(f"hf-hub:{REPO_ID}", cache_dir=cache)
    assert not hub.hub.requests  # offline really means no request
    monkeypatch.delenv("HF_HUB_OFFLINE")
    load_backbone(f"hf-hub:{REPO_ID}", cache_dir=cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.hub.requests)
    model = load_backbone(f"hf-hub:{REPO_ID}", cache_dir=cache)
    np.testing.assert_array_equal(model.embed(s1, s2), reference)
    assert len(hub.hub.requests) == before
    with pytest.raises(ModelNotCachedError, match=r"local_files_only=True"):
        monkeypatch.delenv("HF_HUB_OFFLINE")
        load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path / "empty", local_files_only=True)


def test_unknown_repo_file_and_revision_give_404_errors(hub, tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"repository s1s2-test/missing not found"):
        load_backbone("hf-hub:s1s2-test/missing", cache_dir=tmp_path)
    with pytest.raises(ModelNotFoundError, match=r"revision 'v9' not found in s1s2-test/tiny-swin"):
        load_backbone(f"hf-hub:{REPO_ID}@v9", cache_dir=tmp_path)
    del hub.hub.repos[REPO_ID].files["model.safetensors"]
    with pytest.raises(ModelNotFoundError, match=r"has no file model.safetensors"):
        load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)


def test_server_error_is_a_download_error(hub, tmp_path):
    hub.hub.faults[(REPO_ID, "model.safetensors")] = "500_get"
    with pytest.raises(DownloadError, match=r"the hub answered with an error for model.safetensors: Server error '500"):
        load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)
    assert not list(tmp_path.glob("models--*/snapshots/*/model.safetensors"))


def test_server_error_on_metadata_is_a_download_error(hub, tmp_path, monkeypatch):
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # skip the client's back-off waits
    hub.hub.faults[(REPO_ID, "model.safetensors")] = "500"
    with pytest.raises(DownloadError, match=r"could not download model.safetensors from s1s2-test/tiny-swin@main"):
        load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)


def test_corrupted_file_is_refused_and_evicted(hub, saved, tmp_path):
    folder, reference, (s1, s2) = saved
    hub.hub.faults[(REPO_ID, "model.safetensors")] = "corrupt"
    with pytest.raises(ChecksumError, match=r"has sha256 [0-9a-f]{64}, expected [0-9a-f]{64}.*removed from the cache; nothing was loaded"):
        load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)
    blobs = list(tmp_path.glob("models--*/blobs/*"))
    assert all(sha256_file(b) != "" for b in blobs)
    assert not any(b.stat().st_size > 10_000 for b in blobs)  # the corrupted weights are gone
    # Once the server is healthy, the next load downloads a good copy.
    del hub.hub.faults[(REPO_ID, "model.safetensors")]
    model = load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)
    np.testing.assert_array_equal(model.embed(s1, s2), reference)


def test_truncated_transfer_is_a_download_error_and_leaves_nothing(hub, tmp_path):
    hub.hub.faults[(REPO_ID, "model.safetensors")] = "truncate"
    with pytest.raises(DownloadError, match=r"model.safetensors.*(Consistency check failed|size)"):
        load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)
    assert not list(tmp_path.glob("models--*/snapshots/*/model.safetensors"))


def test_broken_connection_is_resumed(hub, saved, tmp_path):
    _, reference, (s1, s2) = saved
    hub.hub.faults[(REPO_ID, "model.safetensors")] = "drop_once"
    model = load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)
    np.testing.assert_array_equal(model.embed(s1, s2), reference)
    ranged = [r for r in hub.hub.requests if r == ("GET", f"{REPO_ID}/main/model.safetensors")]
    assert len(ranged) == 2  # the first broke off, the second resumed


def test_registry_name_is_pinned_to_commit_and_sha256(hub, saved, tmp_path, monkeypatch):
    folder, reference, (s1, s2) = saved
    commit = hub.hub.repos[REPO_ID].commit
    entry = RegistryEntry(
        name="tiny-test", architecture="swin-t", description="test", input_size=224, license="other",
        license_note="", citation="", repo_id=REPO_ID, revision=commit, sha256=sha256_file(folder / "model.safetensors"),
    )
    monkeypatch.setitem(REGISTRY, "tiny-test", entry)
    model = load_backbone("tiny-test", cache_dir=tmp_path)
    np.testing.assert_array_equal(model.embed(s1, s2), reference)
    assert ("GET", f"{REPO_ID}/{commit}/model.safetensors") in hub.hub.requests
    # A registry sha256 that the file does not have is refused.
    wrong = RegistryEntry(**{**entry.__dict__, "name": "tiny-wrong", "sha256": "0" * 64})
    monkeypatch.setitem(REGISTRY, "tiny-wrong", wrong)
    with pytest.raises(ChecksumError, match=r"expected 0{64}"):
        load_backbone("tiny-wrong", cache_dir=tmp_path / "other")


def test_an_entry_without_any_weights_says_so(monkeypatch):
    bare = RegistryEntry(name="bare-test", architecture="resnet18", description="test", input_size=128,
                         license="other", license_note="", citation="")
    monkeypatch.setitem(REGISTRY, "bare-test", bare)
    assert bare.weights_source is None and bare.status == "no pretrained weights"
    with pytest.raises(WeightsNotAvailableError, match=r"'bare-test' has no published weights.*pretrained=False"):
        load_backbone("bare-test")
    assert load_backbone("bare-test", pretrained=False).embed_dim == 1024


def test_a_folder_named_like_a_registry_entry_does_not_replace_it(tmp_path, monkeypatch):
    """Issue 11 point 5: with ./swin-s1s2/ holding a ResNet-18, load_backbone("swin-s1s2") used to return the
    ResNet. A registry name resolves to the registry (here: its original checkpoint, not cached, offline, so
    ModelNotCachedError); the folder loads when given as a path."""
    tiny_model("resnet18").save_pretrained(tmp_path / "swin-s1s2")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"'swin-s1s2' is a registry name and loads the registry entry; the folder "
                      r"swin-s1s2/ in the working directory .* is not used\. To load that folder, pass it as a path: "
                      r"'\./swin-s1s2', its absolute path, or pathlib\.Path\('swin-s1s2'\)"):
        with pytest.raises(ModelNotCachedError, match=r"swin-s1s2: not in the local cache .*s1s2 download swin-s1s2"):
            load_backbone("swin-s1s2", local_files_only=True)
    for as_path in ("./swin-s1s2", "swin-s1s2/", str(tmp_path / "swin-s1s2"), Path("swin-s1s2")):
        model = load_backbone(as_path)
        assert model.config.architecture == "resnet18", as_path
    # A pathlib.Path is a path even when it spells a registry name and no such folder exists.
    with pytest.raises(ModelNotFoundError, match=r"resnet18-s1s2: no such checkpoint folder \(for the registry entry, "
                       r"pass the name as a string: 'resnet18-s1s2'\)"):
        load_backbone(Path("resnet18-s1s2"))


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"'swin-s1s3' is neither a registry name \(swin-s1s2, resnet50-s1s2, resnet18-s1s2\) nor an existing folder"):
        load_backbone("swin-s1s3")
    with pytest.raises(ModelNotFoundError, match=r"For a hub repository use 'hf-hub:org/repo'"):
        load_backbone("org/repo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"config.json is missing"):
        load_backbone(tmp_path / "empty")
    with pytest.raises(ModelNotFoundError, match=r"not a valid hub reference"):
        load_backbone("hf-hub:not a repo")


def test_a_hub_config_that_would_steer_timm_is_refused_before_the_weights_are_downloaded(saved, tmp_path, monkeypatch):
    """A checkpoint folder is data: a config.json whose tower_kwargs name a file for timm to load is refused
    once config.json is read, and model.safetensors is never requested."""
    import json
    import shutil

    from s1s2_encoders import ConfigError

    folder, _, _ = saved
    steering = tmp_path / "steering"
    shutil.copytree(folder, steering)
    config = json.loads((steering / "config.json").read_text())
    config["tower_kwargs"]["checkpoint_path"] = "/etc/passwd"
    (steering / "config.json").write_text(json.dumps(config))
    fake = FakeHub()
    fake.add_folder("s1s2-test/steering", steering)
    with HubServer(fake) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        with pytest.raises(ConfigError, match=r"checkpoint_path"):
            load_backbone("hf-hub:s1s2-test/steering", cache_dir=tmp_path / "cache")
        assert not any(path.endswith("model.safetensors") for _, path in fake.requests)
