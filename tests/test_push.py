"""``s1s2 push`` / ``push_to_hub`` against the loopback Hub (tests/hub_server.py), then download again.

huggingface_hub 2.4 uploads in one of two ways, both exercised here with the real client code:

* with ``hf_xet`` disabled (``HF_HUB_DISABLE_XET=1``): ``create_repo`` -> ``validate-yaml`` -> preupload
  -> git-lfs batch -> PUT of the weights -> verify -> NDJSON commit (the classic LFS protocol);
* with ``hf_xet`` available (the default install): the streamed upload pipeline -> preupload -> commit.
  The server answers ``regular`` for every file, so the content travels inline in the commit.

What is NOT tested: the xet transfer itself (hf_xet's content-addressed storage protocol, which the real
Hub uses for ``model.safetensors`` when hf_xet is installed). It needs a xet CAS server, which is not
emulated here; huggingface_hub tests that part against the real Hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from conftest import synthetic_pair
from hub_server import FakeHub, HubServer
from huggingface_hub.utils._runtime import is_xet_available
from original_layout import original_state_dict, save_original, tiny_registry_config

from s1s2_encoders import CheckpointError, ModelNotFoundError, PublishError, load_backbone, push_to_hub
from s1s2_encoders.checkpoint import sha256_file
from s1s2_encoders.convert import convert_sslt_checkpoint
from s1s2_encoders.registry import REGISTRY, RegistryEntry

TOKEN = "hf_loopback_write_token"
REPO_ID = "s1s2-test/swin-s1s2"
FILES = ("README.md", "config.json", "model.safetensors")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A converted checkpoint (small Swin towers, hand-written card) and a reference embedding."""
    root = tmp_path_factory.mktemp("push")
    save_original(root / "swin_t.pth", original_state_dict("swin-t", tiny=True, seed=8))
    report = convert_sslt_checkpoint(root / "swin_t.pth", output=root / "swin-s1s2", config=tiny_registry_config("swin-t"))
    s1, s2 = synthetic_pair((2,), h=96, w=96, seed=1)
    return report.folder, (s1, s2), load_backbone(report.folder).embed(s1, s2)


@pytest.fixture()
def hub(monkeypatch, tmp_path):
    fake = FakeHub(write_token=TOKEN)
    with HubServer(fake) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


@pytest.fixture()
def no_xet(monkeypatch):
    # huggingface_hub reads HF_HUB_DISABLE_XET at import; is_xet_available() reads the constant at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    assert not is_xet_available()


@pytest.fixture()
def pipeline_calls(monkeypatch):
    """Counts calls of huggingface_hub's streamed (xet) upload pipeline, which upload_folder imports per call."""
    import huggingface_hub._upload_pipeline as pipeline

    calls = []
    real = pipeline.pipelined_upload

    def spy(*args, **kwargs):
        calls.append(kwargs.get("repo_id"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "pipelined_upload", spy)
    return calls


def assert_repo_holds(fake: FakeHub, folder: Path, commit: str) -> None:
    repo = fake.repos[REPO_ID]
    assert repo.commit == commit and re.fullmatch(r"[0-9a-f]{40}", commit)
    assert sorted(repo.files) == [".gitattributes", *FILES]
    for name in FILES:
        assert repo.files[name] == (folder / name).read_bytes(), name


def test_push_over_lfs_then_download_and_load_pinned(hub, folder, no_xet, pipeline_calls, tmp_path, monkeypatch):
    local, (s1, s2), reference = folder
    result = push_to_hub(local, REPO_ID, token=TOKEN)
    assert pipeline_calls == []  # the classic single-commit path
    fake = hub.hub
    assert_repo_holds(fake, local, result.commit)
    assert result.sha256 == sha256_file(local / "model.safetensors") and result.name == "swin-s1s2"
    assert result.url == f"{hub.url}/{REPO_ID}/commit/{result.commit}"
    # The weights went through git-lfs (batch, PUT, verify); config and card inline in the commit.
    assert list(fake.lfs_objects) == [result.sha256]
    requests = fake.requests
    assert ("POST", "api/repos/create") in requests and ("POST", "api/validate-yaml") in requests
    assert ("POST", f"{REPO_ID}.git/info/lfs/objects/batch") in requests
    assert ("PUT", f"_lfs/{result.sha256}") in requests and ("POST", f"_lfs/{result.sha256}/verify") in requests
    (commit,) = fake.commits
    ops = {op["value"]["path"]: op for op in commit["operations"]}
    assert ops["model.safetensors"]["key"] == "lfsFile" and ops["model.safetensors"]["value"]["oid"] == result.sha256
    assert ops["config.json"]["key"] == ops["README.md"]["key"] == "file"
    assert commit["header"]["summary"] == "Upload swin-s1s2 checkpoint (s1s2-encoders)"

    # Download it back through the same server: by hub id at the commit, and as a pinned registry entry.
    model = load_backbone(f"hf-hub:{REPO_ID}@{result.commit}", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(model.embed(s1, s2), reference)
    entry = RegistryEntry(
        name="swin-s1s2-loopback", architecture="swin-t", description="test", input_size=224, license="other",
        license_note="", citation="", repo_id=result.repo_id, revision=result.commit, sha256=result.sha256,
    )
    monkeypatch.setitem(REGISTRY, entry.name, entry)
    pinned = load_backbone(entry.name, cache_dir=tmp_path / "cache2")
    np.testing.assert_array_equal(pinned.embed(s1, s2), reference)

    # Pushing the same folder again changes nothing: no new commit, no new upload.
    before = len(fake.requests)
    again = push_to_hub(local, REPO_ID, token=TOKEN)
    assert again.commit == result.commit and len(fake.commits) == 1
    assert not [r for r in fake.requests[before:] if r[0] == "PUT"]


def test_push_with_the_default_xet_client_commits_inline_when_the_server_says_regular(hub, folder, pipeline_calls, tmp_path):
    """The default install (hf_xet present) takes the streamed upload pipeline; no xet transfer happens
    because the server asks for every file inline."""
    assert is_xet_available()
    local, (s1, s2), reference = folder
    hub.hub.upload_mode = "regular"
    result = push_to_hub(local, REPO_ID, token=TOKEN, commit_message="first upload")
    assert pipeline_calls == [REPO_ID]
    assert_repo_holds(hub.hub, local, result.commit)
    (commit,) = hub.hub.commits
    assert {op["key"] for op in commit["operations"]} == {"file"} and commit["header"]["summary"] == "first upload"
    assert not hub.hub.lfs_objects and not any("xet" in path or "lfs" in path for _, path in hub.hub.requests)
    model = load_backbone(f"hf-hub:{REPO_ID}", cache_dir=tmp_path)
    np.testing.assert_array_equal(model.embed(s1, s2), reference)


def test_push_without_write_access_is_refused_with_a_hint(hub, folder, no_xet):
    local, _, _ = folder
    with pytest.raises(PublishError, match=r"(?s)upload of .*swin-s1s2 to s1s2-test/swin-s1s2 failed: .*401.*hf auth login"):
        push_to_hub(local, REPO_ID, token="hf_wrong_token")
    assert REPO_ID not in hub.hub.repos


def test_unpublishable_folders_are_refused_before_any_request(hub, folder, tmp_path):
    local, _, _ = folder
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in FILES:
        (bad / name).write_bytes((local / name).read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["tower_kwargs"]["embed_dim"] = 32  # weights no longer fit the config
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"(?s)model.safetensors does not match the architecture:.*222 shape mismatch"):
        push_to_hub(bad, REPO_ID, token=TOKEN)
    (bad / "config.json").write_bytes((local / "config.json").read_bytes())
    card = (bad / "README.md").read_text()
    (bad / "README.md").write_text(card.replace("license: other", "license: mit", 1))
    with pytest.raises(PublishError, match=r"README.md says license 'mit' but config.json says 'other'"):
        push_to_hub(bad, REPO_ID, token=TOKEN)
    (bad / "README.md").unlink()
    with pytest.raises(ModelNotFoundError, match=r"has no README.md \(model card\)"):
        push_to_hub(bad, REPO_ID, token=TOKEN)
    with pytest.raises(PublishError, match=r"'swin-s1s2' is not a Hub repository id; expected 'ORG/NAME'"):
        push_to_hub(local, "swin-s1s2", token=TOKEN)
    assert hub.hub.requests == []


def test_push_command_prints_the_registry_pin(hub, folder, tmp_path):
    local, _, _ = folder
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-m", "s1s2_encoders", "push", str(local), "--repo-id", REPO_ID, "--private"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert result.returncode == 0, result.stderr
    repo = hub.hub.repos[REPO_ID]
    sha = hashlib.sha256((local / "model.safetensors").read_bytes()).hexdigest()
    assert repo.private and repo.files["model.safetensors"] == (local / "model.safetensors").read_bytes()
    assert f"pushed {local} to {REPO_ID} at commit {repo.commit}" in result.stdout
    assert "set in the RegistryEntry 'swin-s1s2' (s1s2_encoders/registry.py):" in result.stdout
    pin = f'    repo_id="{REPO_ID}",\n    revision="{repo.commit}",\n    sha256="{sha}",\n'
    assert pin in result.stdout
