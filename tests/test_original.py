"""Registry names without a Hub pin: the authors' original checkpoint fetched from Google Drive, converted once,
cached, loaded from the cache afterwards (s1s2_encoders/original.py, s1s2_encoders/gdrive.py).

Drive is a loopback server that behaves as Drive does (tests/drive_server.py: direct files, the virus-scan form,
quota / sign-in / removed pages, 404, cut and stalled transfers). The files it serves are real checkpoints in the
original layout (tests/original_layout.py, small towers) under the registry's real Drive file ids; the registry
entries are the published ones with those small towers in their config. What a fetch gives is compared with the
same file converted by hand with `s1s2 convert` (the manual route), bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TOWER_KWARGS, synthetic_pair, tiny_model
from drive_server import DriveServer
from original_layout import REGISTRY_NAMES, original_state_dict, save_original, tiny_registry_entry

from s1s2_encoders import (
    CheckpointError,
    ChecksumError,
    DriveDownloadError,
    ModelNotCachedError,
    OptionError,
    S1S2Backbone,
    load_backbone,
    resolve_model,
)
from s1s2_encoders.checkpoint import read_config, sha256_file
from s1s2_encoders.cli import main
from s1s2_encoders.original import MANIFEST_FILENAME, cache_folder
from s1s2_encoders.registry import LICENSE_NOTE_ORIGINAL, REGISTRY

REPO = Path(__file__).resolve().parents[1]
SWIN = "swin-s1s2"
FILE, OTHER = "swin_t.pth", "other"  # keys of the `originals` fixture
SWIN_ID = REGISTRY[SWIN].original_file_id
DRIVE_LINK = f"https://drive.google.com/file/d/{SWIN_ID}/view"
PAIR = synthetic_pair((2,), h=64, w=64, seed=7)


def embed(model) -> np.ndarray:
    return model.embed(*PAIR, dtype="float32")


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of two Swin-T checkpoints in the original layout (trainer wrapper, optimizer state; small towers,
    7.6 MB): "swin_t.pth", the one Drive serves, and another one (other weights) for a file that changed."""
    root = tmp_path_factory.mktemp("drive-files")
    out = {}
    for key, seed in ((FILE, 1), (OTHER, 2)):
        save_original(root / key, original_state_dict("swin-t", tiny=True, seed=seed))
        out[key] = (root / key).read_bytes()
    return out


@pytest.fixture(scope="module")
def by_hand(originals, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The served file converted by hand, `s1s2 convert swin_t.pth -o FOLDER` (the manual route), and its
    embedding."""
    root = tmp_path_factory.mktemp("by-hand")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(REGISTRY, SWIN, tiny_registry_entry("swin-t"))
        (root / "swin_t.pth").write_bytes(originals[FILE])
        assert main(["convert", str(root / "swin_t.pth"), "-o", str(root / SWIN)]) == 0
        return root / SWIN, embed(load_backbone(root / SWIN))


@pytest.fixture()
def drive(originals, tmp_path, monkeypatch):
    """The fake Drive serving swin_t.pth behind the virus-scan form (as Drive serves large files), the cache in
    tmp_path, the registry entries with small towers."""
    with DriveServer() as server:
        server.drive.add(SWIN_ID, "swin_t.pth", originals[FILE], mode="virus-scan")
        monkeypatch.setenv("S1S2_GDRIVE_ENDPOINT", server.url)
        monkeypatch.setenv("S1S2_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for var in ("HF_HUB_OFFLINE", "S1S2_GDRIVE_TIMEOUT"):
            monkeypatch.delenv(var, raising=False)
        for arch, name in REGISTRY_NAMES.items():
            monkeypatch.setitem(REGISTRY, name, tiny_registry_entry(arch))
        yield server.drive


@pytest.fixture(scope="module")
def fetched(originals, tmp_path_factory) -> Path:
    """One cache filled by a real fetch (its own server and cache root); tests that start from a cached model copy
    it (:func:`cached`) instead of fetching and converting again."""
    root = tmp_path_factory.mktemp("fetched")
    with DriveServer() as server, pytest.MonkeyPatch.context() as patch:
        server.drive.add(SWIN_ID, "swin_t.pth", originals[FILE])
        patch.setenv("S1S2_GDRIVE_ENDPOINT", server.url)
        patch.setitem(REGISTRY, SWIN, tiny_registry_entry("swin-t"))
        patch.delenv("HF_HUB_OFFLINE", raising=False)
        resolve_model(SWIN, cache_dir=root)
    return cache_folder(SWIN, root)


@pytest.fixture()
def cached(drive, fetched, tmp_path) -> Path:
    """The drive fixture with swin-s1s2 already in the cache, as a first load leaves it."""
    shutil.copytree(fetched, cache_folder(SWIN))
    return cache_folder(SWIN)


def cache_contents(tmp_path) -> list[str]:
    """Everything in the cache root but the lock folder: nothing may be left after a failure."""
    root = tmp_path / "cache"
    return sorted(p.name for p in root.iterdir() if p.name != ".locks") if root.exists() else []


# --------------------------------------------------------------------------- the first load and the later ones


def test_first_load_fetches_through_the_virus_scan_form_converts_and_matches_s1s2_convert(drive, by_hand, originals, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="s1s2_encoders.original")
    model = load_backbone(SWIN)
    np.testing.assert_array_equal(embed(model), by_hand[1])
    assert model.config.architecture == "swin-t" and model.config.name == SWIN
    # Drive's protocol: the first request gets the form, submitting it (id, export, confirm, uuid) gets the file.
    assert [q for _, q in drive.requests] == [
        {"id": SWIN_ID, "export": "download"},
        {"id": SWIN_ID, "export": "download", "confirm": "t", "uuid": drive.files[SWIN_ID].uuid},
    ]
    assert drive.transfers == [SWIN_ID]
    # A normal checkpoint folder, the same weights file as the manual route, and the download's record.
    folder = cache_folder(SWIN)
    assert folder == tmp_path / "cache" / "original--swin-s1s2"
    assert sorted(f.name for f in folder.iterdir()) == ["README.md", "config.json", MANIFEST_FILENAME, "model.safetensors"]
    assert sha256_file(folder / "model.safetensors") == sha256_file(by_hand[0] / "model.safetensors")
    record = json.loads((folder / MANIFEST_FILENAME).read_text())
    served = hashlib.sha256(originals[FILE]).hexdigest()
    assert record["sha256"] == served and record["size"] == len(originals[FILE]) and record["filename"] == "swin_t.pth"
    assert record["source_url"] == DRIVE_LINK and record["file_id"] == SWIN_ID
    assert record["weights_sha256"] == sha256_file(folder / "model.safetensors")
    p = read_config(folder).provenance
    assert p["converted_from"] == "swin_t.pth" and p["converted_from_sha256"] == served
    assert p["downloaded_from"] == DRIVE_LINK and p["downloaded_bytes"] == len(originals[FILE])
    assert p["converter"].endswith("(fetched from Google Drive and converted)")
    card = (folder / "README.md").read_text()
    section = card.split("## Conversion provenance", 1)[1]
    assert f"| downloaded from | {DRIVE_LINK} on " in section and served in section
    assert f"| licence | {LICENSE_NOTE_ORIGINAL} |" in section and "no licence file" in card
    # Logged once: what is fetched from where, the licence, then size and sha256 with how to pin them.
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2
    assert f"downloading the authors' original checkpoint swin_t.pth from Google Drive ({DRIVE_LINK}" in logged[0]
    assert LICENSE_NOTE_ORIGINAL in logged[0]
    assert f"fetched swin_t.pth ({len(originals[FILE]):,} bytes, sha256 {served})" in logged[1]
    assert f"expected_sha256='{served}'" in logged[1]
    assert model.config.provenance["loaded_from"].startswith(f"{DRIVE_LINK} (original checkpoint, sha256 {served})")

    # Later loads: the cache, no request, nothing logged; the sha256 printed above pins the file.
    caplog.clear()
    again = load_backbone(SWIN, expected_sha256=served)
    np.testing.assert_array_equal(embed(again), by_hand[1])
    assert len(drive.requests) == 2 and not caplog.records


def test_a_file_drive_serves_directly_comes_with_one_request(drive, originals, tmp_path):
    from s1s2_encoders.gdrive import download_drive_file

    drive.files[SWIN_ID].mode = "direct"  # what Drive does for files small enough to scan
    got = download_drive_file(SWIN_ID, tmp_path / "dl", progress=False)
    assert [q for _, q in drive.requests] == [{"id": SWIN_ID, "export": "download"}]
    assert got.path == tmp_path / "dl" / "swin_t.pth" and got.path.read_bytes() == originals[FILE]
    assert got.size == len(originals[FILE]) and got.sha256 == hashlib.sha256(originals[FILE]).hexdigest()
    assert not got.passed_virus_scan_page and sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["swin_t.pth"]


def test_a_registry_name_loads_the_registry_entry_even_beside_a_folder_of_that_name(cached, by_hand, tmp_path, monkeypatch):
    tiny_model("resnet18").save_pretrained(tmp_path / SWIN)
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"'swin-s1s2' is a registry name and loads the registry entry"):
        model = load_backbone(SWIN)
    assert model.config.architecture == "swin-t"
    np.testing.assert_array_equal(embed(model), by_hand[1])
    assert load_backbone(f"./{SWIN}").config.architecture == "resnet18"


# --------------------------------------------------------------------------- Drive failures: nothing cached, the cause named


FAILURES = {
    "quota": r"Too many users have viewed or downloaded this file recently.*try again later",
    "signin": r"a sign-in or permission page \(title 'Sign in - Google Accounts'\).*not shared publicly",
    "removed": r"Drive says the file was removed or does not exist \(title 'Google Drive - Page Not Found'\)",
    "404": r"HTTP 404 for http://127\.0\.0\.1:\d+/download\?id=.*the file is gone from Drive",
    "html-body": r"an HTML page \(title 'Google Drive'\) from .* where the checkpoint was expected",
    "truncate": r"the server closed the connection after [\d,]+ of [\d,]+ bytes",
    "reset": r"the connection broke after [\d,]+ of [\d,]+ bytes \(ReadError: .*reset",
    "stall": r"no data for 0\.3 s after [\d,]+ of [\d,]+ bytes \(read timeout; S1S2_GDRIVE_TIMEOUT sets it\)",
}
CAUSE = {"quota": "quota", "signin": "access", "removed": "removed", "404": "not-found", "html-body": "html",
         "truncate": "truncated", "reset": "connection-broken", "stall": "timeout"}


@pytest.mark.parametrize("fault", list(FAILURES))
def test_drive_failures_name_the_cause_the_link_and_the_manual_route_and_cache_nothing(fault, drive, originals, tmp_path, monkeypatch):
    drive.faults[SWIN_ID] = fault
    drive.stall_s = 1.5
    monkeypatch.setenv("S1S2_GDRIVE_TIMEOUT", "0.3")
    with pytest.raises(DriveDownloadError) as info:
        load_backbone(SWIN)
    message = str(info.value)
    assert info.value.cause == CAUSE[fault]
    assert re.search(FAILURES[fault], message), message
    assert message.startswith("swin-s1s2: could not download the original checkpoint from Google Drive: ")
    assert f"[{CAUSE[fault]}]. Nothing was cached." in message
    assert f"Drive link: {DRIVE_LINK}" in message
    assert "download swin_t.pth in a browser" in message and "s1s2 convert swin_t.pth --arch swin-t -o swin-s1s2" in message
    if fault in ("truncate", "reset", "stall"):
        half = len(originals[FILE]) // 2
        assert f"of {len(originals[FILE]):,} bytes" in message and int(re.search(r"after ([\d,]+) of", message).group(1).replace(",", "")) <= half
    assert cache_contents(tmp_path) == []


def test_a_server_that_is_not_there_is_a_connect_error(drive, tmp_path, monkeypatch):
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    monkeypatch.setenv("S1S2_GDRIVE_ENDPOINT", f"http://127.0.0.1:{closed.getsockname()[1]}")
    with pytest.raises(DriveDownloadError, match=r"could not connect to 127\.0\.0\.1:\d+: .*\[connect\]") as info:
        load_backbone(SWIN)
    closed.close()
    assert info.value.cause == "connect" and cache_contents(tmp_path) == []


def test_files_that_do_not_load_or_do_not_convert_cache_nothing(drive, originals, tmp_path):
    spec = drive.files[SWIN_ID]
    spec.data = b"PK\x03\x04" + os.urandom(4000)  # looks like a zip, is not a checkpoint
    with pytest.raises(CheckpointError, match=r"swin-s1s2: the file downloaded from .*/view \(swin_t\.pth, 4,004 bytes, "
                       r"sha256 [0-9a-f]{64}\) is not a checkpoint that torch\.load\(weights_only=True\) accepts: .*is not a "
                       r"readable PyTorch checkpoint.*Nothing was cached"):
        load_backbone(SWIN)
    assert cache_contents(tmp_path) == []

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "args": _Payload(str(tmp_path / "ran"))}, evil)
    spec.data = evil.read_bytes()
    with pytest.raises(CheckpointError, match=r"torch\.load\(weights_only=True\) accepts: .*refused to load \(it contains a "
                       r"test_original\._touch object\)"):
        load_backbone(SWIN)
    assert not (tmp_path / "ran").exists() and cache_contents(tmp_path) == []

    sd = original_state_dict("swin-t", tiny=True, seed=1)
    del sd["backbone2.norm.weight"]
    save_original(tmp_path / "incomplete.pth", sd)
    spec.data = (tmp_path / "incomplete.pth").read_bytes()  # a real checkpoint that lacks a key
    with pytest.raises(CheckpointError, match=r"(?s)the file downloaded from .* loads but does not convert to swin-t: "
                       r"swin_t\.pth does not match the original swin-t layout \(--arch swin-t\):\n  1 missing key\(s\): "
                       r"backbone2\.norm\.weight\n  Nothing was cached\.$"):
        load_backbone(SWIN)
    assert cache_contents(tmp_path) == []


def _touch(path: str) -> None:
    Path(path).touch()


class _Payload:
    """A full unpickle of this would create a file; weights_only refuses it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


# --------------------------------------------------------------------------- integrity of the download and of the cache


def test_expected_sha256_pins_the_original_file(drive, fetched, originals, tmp_path):
    served = hashlib.sha256(originals[FILE]).hexdigest()
    wrong = "0" * 64
    with pytest.raises(ChecksumError, match=rf"swin-s1s2: the file downloaded from .* sha256 {served}\) does not have "
                       rf"expected_sha256 sha256 {wrong}\. Nothing was cached\."):
        load_backbone(SWIN, expected_sha256=wrong)
    assert cache_contents(tmp_path) == []
    # A cached copy converted from another file than the pinned one is not loaded: it is fetched again, and the
    # new download is refused too; the good cached copy stays as it was. (A matching pin loads: see the first test.)
    shutil.copytree(fetched, cache_folder(SWIN))
    with pytest.raises(ChecksumError, match=rf"does not have expected_sha256 sha256 {wrong}"):
        load_backbone(SWIN, expected_sha256=wrong)
    assert drive.transfers_of(SWIN_ID) == 2 and cache_contents(tmp_path) == ["original--swin-s1s2"]
    assert sha256_file(cache_folder(SWIN) / "model.safetensors") == sha256_file(fetched / "model.safetensors")
    with pytest.raises(ValueError, match=r"expected_sha256 must be 64 hex digits, got 'abc'"):
        load_backbone(SWIN, expected_sha256="abc")


def test_registry_size_and_sha256_are_checked_where_known(drive, originals, tmp_path, monkeypatch):
    entry = REGISTRY[SWIN]
    known = type(entry)(**{**entry.__dict__, "original_size": len(originals[FILE]) + 1})
    monkeypatch.setitem(REGISTRY, SWIN, known)
    with pytest.raises(ChecksumError, match=rf"should have {len(originals[FILE]) + 1:,} bytes \(registry\)\. Nothing was cached"):
        load_backbone(SWIN)
    pinned = type(entry)(**{**entry.__dict__, "original_sha256": "1" * 64})
    monkeypatch.setitem(REGISTRY, SWIN, pinned)
    with pytest.raises(ChecksumError, match=r"does not have the registry's sha256 1{64}"):
        load_backbone(SWIN)
    with pytest.raises(ChecksumError, match=r"expected_sha256=2{64} differs from the registry's sha256 of the original file"):
        load_backbone(SWIN, expected_sha256="2" * 64)
    assert cache_contents(tmp_path) == []


def test_a_corrupted_cache_entry_is_refused_offline_and_fetched_again_online(cached, drive, by_hand, tmp_path, monkeypatch, caplog):
    weights = cached / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100:] = bytes(100)  # same size, other values
    weights.write_bytes(bytes(data))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ChecksumError, match=r"swin-s1s2: the cached copy in .*original--swin-s1s2 is corrupted: "
                       r"model\.safetensors has sha256 [0-9a-f]{64}, but [0-9a-f]{64} was recorded when it was written\. "
                       r"It was not loaded, and offline mode is on \(HF_HUB_OFFLINE=1\).*s1s2 download swin-s1s2"):
        load_backbone(SWIN)
    assert cache_contents(tmp_path) == ["original--swin-s1s2"] and drive.requests == []  # refused, left as it is
    monkeypatch.delenv("HF_HUB_OFFLINE")
    caplog.set_level(logging.WARNING, logger="s1s2_encoders.original")
    source = resolve_model(SWIN)
    assert source.sha256 == sha256_file(by_hand[0] / "model.safetensors") == sha256_file(weights)
    assert drive.transfers == [SWIN_ID]
    messages = [r.getMessage() for r in caplog.records]
    assert "is corrupted" in messages[0] and "it is not loaded and is fetched again" in messages[0]
    assert cache_contents(tmp_path) == ["original--swin-s1s2"]


def test_offline_never_touches_the_network(drive, fetched, by_hand, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotCachedError, match=r"swin-s1s2: not in the local cache \(.*original--swin-s1s2\) and offline "
                       r"mode is on \(HF_HUB_OFFLINE=1\)\. Run once with network access: `s1s2 download swin-s1s2`"):
        load_backbone(SWIN)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotCachedError, match=r"offline mode is on \(local_files_only=True\)"):
        load_backbone(SWIN, local_files_only=True)
    shutil.copytree(fetched, cache_folder(SWIN))  # what a load with network access leaves
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    np.testing.assert_array_equal(embed(load_backbone(SWIN)), by_hand[1])
    assert drive.requests == []


# --------------------------------------------------------------------------- two processes, one download

SCRIPT = r"""
import json, sys, time
from pathlib import Path
import numpy as np
from s1s2_encoders import load_backbone
from s1s2_encoders.registry import REGISTRY, RegistryEntry

name, tower_kwargs, barrier, me = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

class Small(RegistryEntry):  # the published entry with small towers, as in the parent test
    def config(self):
        return RegistryEntry.config(self).replace(tower_kwargs=tower_kwargs)

REGISTRY[name] = Small(**REGISTRY[name].__dict__)
(barrier / me).touch()
while len(list(barrier.iterdir())) < 2:  # start loading at the same moment
    time.sleep(0.005)
model = load_backbone(name)
rng = np.random.default_rng(0)
s1 = rng.uniform(-25, -5, size=(1, 2, 64, 64)).astype("float32")
s2 = rng.uniform(100, 4000, size=(1, 13, 64, 64)).astype("float32")
s2[:, 10] = rng.uniform(5, 30, size=(1, 64, 64))  # a dark cirrus band, as in real L1C
print(json.dumps(model.embed(s1, s2, dtype="float32").tolist()))
"""


def test_two_threads_loading_at_once_download_once(drive, by_hand, caplog):
    """The file lock serialises concurrent loads: the second waits for the first and then loads its cache."""
    drive.body_delay_s = 1.0  # the first download is still running when the second thread asks
    caplog.set_level(logging.WARNING, logger="s1s2_encoders.original")
    results: list = [None, None]

    def load(i: int) -> None:
        results[i] = resolve_model(SWIN)

    threads = [threading.Thread(target=load, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert drive.transfers_of(SWIN_ID) == 1
    assert results[0] == results[1] and results[0].sha256 == sha256_file(by_hand[0] / "model.safetensors")
    assert sum("another process is fetching it; waiting for it to finish" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow  # two fresh interpreters importing torch and timm: ~10 s on an idle 2-core machine
def test_two_processes_loading_at_once_download_once(drive, tmp_path):
    drive.body_delay_s = 1.0  # the first download is still running when the second process asks
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen([sys.executable, "-c", SCRIPT, SWIN, json.dumps(TINY_TOWER_KWARGS["swin-t"]), str(barrier), str(i)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
    assert drive.transfers_of(SWIN_ID) == 1
    first, second = (np.array(json.loads(out)) for out, _ in results)
    np.testing.assert_array_equal(first, second)
    waited = [err for _, err in results if "another process is fetching it; waiting for it to finish" in err]
    assert len(waited) == 1  # the second one really waited on the lock
    reference = load_backbone(SWIN, local_files_only=True)
    rng = np.random.default_rng(0)
    s1 = rng.uniform(-25, -5, size=(1, 2, 64, 64)).astype("float32")
    s2 = rng.uniform(100, 4000, size=(1, 13, 64, 64)).astype("float32")
    s2[:, 10] = rng.uniform(5, 30, size=(1, 64, 64))
    assert first.shape == (1, reference.embed_dim)
    np.testing.assert_array_equal(first, reference.embed(s1, s2, dtype="float32"))


# --------------------------------------------------------------------------- commands


def test_download_models_info_and_cache_commands(drive, fetched, originals, tmp_path, capsys):
    served = hashlib.sha256(originals[FILE]).hexdigest()
    folder = cache_folder(SWIN)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"swin-s1s2\s+swin-t\s+original checkpoint from Google Drive, converted on first use, ~220 MiB\s+no", out)
    assert "convert the original" not in out

    shutil.copytree(fetched, folder)  # as `s1s2 download` leaves it (the fetch itself: the tests above)
    assert main(["download", SWIN]) == 0
    out = capsys.readouterr().out
    assert "swin-s1s2: the authors' original checkpoint swin_t.pth, cached" in out
    assert f"  source:  {DRIVE_LINK}" in out and f"  bytes:   {len(originals[FILE]):,}" in out
    assert f"  sha256:  {served} (not in the registry; pin it with --expected-sha256" in out
    assert f"  folder:  {folder}" in out

    assert main(["models"]) == 0
    assert re.search(r"swin-s1s2\s+swin-t\s+.*~220 MiB\s+yes", capsys.readouterr().out)
    assert main(["info", SWIN]) == 0
    out = capsys.readouterr().out
    assert f"cached:        yes, {folder}" in out and f"{len(originals[FILE]):,} bytes, sha256 {served}" in out
    assert "weights:       the authors' original checkpoint swin_t.pth from Google Drive" in out

    # --verify downloads the file again and compares it with the recorded one.
    assert drive.requests == []
    assert main(["download", SWIN, "--verify"]) == 0
    out = capsys.readouterr().out
    assert ", cached" in out and f"the file on Drive still has {len(originals[FILE]):,} bytes and sha256 {served}" in out
    assert drive.transfers_of(SWIN_ID) == 1
    drive.files[SWIN_ID].data = originals[OTHER]  # the file changed on Drive
    assert main(["download", SWIN, "--verify"]) == 2
    err = capsys.readouterr().err
    assert "the file on Google Drive now has" in err and f"cached copy was converted from {len(originals[FILE]):,} bytes" in err
    assert sha256_file(folder / "model.safetensors") == json.loads((folder / MANIFEST_FILENAME).read_text())["weights_sha256"]

    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {tmp_path / 'cache'}" in out and str(folder) in out and served[:16] in out
    assert main(["cache", "remove", SWIN, "resnet18-s1s2"]) == 0
    out = capsys.readouterr().out
    assert f"removed {folder}" in out and f"resnet18-s1s2: not cached in {tmp_path / 'cache'}" in out
    assert cache_contents(tmp_path) == []
    assert main(["cache", "remove"]) == 2
    assert "takes registry names or --all" in capsys.readouterr().err


# --------------------------------------------------------------------------- torch.hub


def test_hubconf_entry_points_load_with_torch_hub_from_the_repository(drive, fetched, by_hand, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError(f"torch.hub tried the network: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    model = torch.hub.load(str(REPO), "resnet18_s1s2", source="local", pretrained=False)
    assert isinstance(model, S1S2Backbone) and model.config.name == "resnet18-s1s2" and not model.training
    shutil.copytree(fetched, cache_folder(SWIN))  # the cache as a first load_backbone("swin-s1s2") leaves it
    model = torch.hub.load(str(REPO), "swin_s1s2", source="local")
    np.testing.assert_array_equal(embed(model), by_hand[1])
    assert drive.requests == []
    # What torch.hub.list() would offer: the public callables of hubconf.py.
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert public == ["resnet18_s1s2", "resnet50_s1s2", "swin_s1s2"]


# --------------------------------------------------------------------------- the default endpoint and cache


def test_defaults_follow_hf_home_and_the_drive_endpoint(monkeypatch, tmp_path, capsys):
    from s1s2_encoders.gdrive import DEFAULT_ENDPOINT, download_drive_file, download_url, drive_endpoint
    from s1s2_encoders.original import cache_root

    monkeypatch.delenv("S1S2_CACHE_DIR")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_root() == tmp_path / "hf" / "s1s2-encoders"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "huggingface" / "s1s2-encoders"
    assert cache_root(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.delenv("S1S2_GDRIVE_ENDPOINT")
    assert drive_endpoint() == DEFAULT_ENDPOINT == "https://drive.usercontent.google.com"
    assert download_url(SWIN_ID) == f"https://drive.usercontent.google.com/download?id={SWIN_ID}&export=download"
    monkeypatch.setenv("S1S2_GDRIVE_TIMEOUT", "soon")
    with pytest.raises(OptionError, match=r"S1S2_GDRIVE_TIMEOUT='soon' is not a number of seconds"):
        download_drive_file(SWIN_ID, tmp_path)
    assert main(["download", SWIN, "--expected-sha256", "abc"]) == 2  # checked before anything is fetched
    assert "s1s2 download: error: expected_sha256 must be 64 hex digits, got 'abc'" in capsys.readouterr().err


# --------------------------------------------------------------------------- real size


@pytest.mark.slow  # a real-size Swin-T checkpoint (~220 MiB) through the loopback Drive and the converter twice
def test_real_size_swin_fetch_equals_the_manual_route(tmp_path, monkeypatch):
    path = tmp_path / "swin_t.pth"
    save_original(path, original_state_dict("swin-t", seed=3))
    assert main(["convert", str(path), "-o", str(tmp_path / "by-hand")]) == 0
    with DriveServer() as server:
        server.drive.add(SWIN_ID, "swin_t.pth", path.read_bytes())
        monkeypatch.setenv("S1S2_GDRIVE_ENDPOINT", server.url)
        monkeypatch.setenv("S1S2_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        model = load_backbone(SWIN)
        assert server.drive.transfers == [SWIN_ID] and len(server.drive.requests) == 2  # the virus-scan form
    assert sha256_file(cache_folder(SWIN) / "model.safetensors") == sha256_file(tmp_path / "by-hand" / "model.safetensors")
    s1, s2 = synthetic_pair((1,), h=224, w=224, seed=4)
    np.testing.assert_array_equal(model.embed(s1, s2, dtype="float32"),
                                  load_backbone(tmp_path / "by-hand").embed(s1, s2, dtype="float32"))
    assert model.embed_dim == 1536
