"""``s1s2 convert``: original SSLTransformerRS checkpoints -> checkpoint folders, with numerical parity.

What these tests prove (the checkpoints are built by tests/original_layout.py from random weights,
in the original key layout documented there; no original file is available here):

* Swin: the converted timm towers give the same pooled features as an independent reference
  forward of the Microsoft-Swin semantics (patch merging at the END of stages 0..2, relative
  position index and shifted-window masks read from the checkpoint's own buffers) within 1e-5.
  reference_facts.md §1.6 records that the original repo's Swin code and timm's agree to 0.0 on
  the same weights; the reference here replaces that code, which may not be copied.
* ResNet: the converted towers equal torchvision's ResNet with a 2-/13-channel conv1, loaded
  strictly from the same original-layout weights, within 1e-5.
* original -> ours -> original is the identity (keys, dtypes, values), given back the heads the
  conversion drops; the buffers it drops are recomputed bit-exactly.
* Every malformed input is refused with the keys / file named, and nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_pair
from original_layout import (
    IN_CHANS,
    SWIN_T,
    original_state_dict,
    reference_resnet_pooled,
    reference_swin_pooled,
    save_original,
    sslt_normalise,
    swin_tower,
    tiny_registry_config,
    tiny_swin_spec,
    tower_state,
)

from s1s2_encoders import CheckpointError, ModelNotFoundError, load_backbone
from s1s2_encoders.checkpoint import read_config
from s1s2_encoders.cli import main
from s1s2_encoders.convert import (
    DROP_PROJECTION,
    DROP_SWIN_BUFFERS,
    DROP_SWIN_HEAD,
    convert_sslt_checkpoint,
    infer_architecture,
    read_original_checkpoint,
    to_original_layout,
)
from s1s2_encoders.models.towers import create_tower
from s1s2_encoders.registry import ORIGINAL_COMMIT, ORIGINAL_REPO, REGISTRY

ARCHS = ("swin-t", "resnet50", "resnet18")
TOL = 1e-5
REPO = Path(__file__).resolve().parents[1]


def input_size(arch: str, tiny: bool = False) -> int:
    """224 for Swin (the original code is fixed to it); ResNets were trained on 128 px crops, and any
    multiple of 32 gives the same computation, so the tiny tests use 64 px to save time."""
    if arch == "swin-t":
        return 224
    return 64 if tiny else 128


def reference_pooled(arch: str, sd, modality: str, x: torch.Tensor, tiny: bool) -> torch.Tensor:
    if arch == "swin-t":
        return reference_swin_pooled(tower_state(sd, modality), x, tiny_swin_spec() if tiny else SWIN_T)
    return reference_resnet_pooled(arch, sd, modality, x, (1, 1, 1, 1) if tiny else None)


def assert_embed_parity(model, arch: str, sd, tiny: bool, batch: int = 2) -> float:
    """model.embed on raw S1 dB / S2 DN == reference(original normalisation(raw)); returns max |diff|."""
    size = input_size(arch, tiny)
    s1, s2 = synthetic_pair((batch,), h=size, w=size, seed=3)
    ours = model.embed(s1, s2, dtype="float32")  # float32 parity; the default "auto" may run bfloat16
    ref = torch.cat(
        [reference_pooled(arch, sd, m, sslt_normalise(torch.from_numpy(x), m), tiny) for m, x in (("s1", s1), ("s2", s2))],
        dim=1,
    ).numpy()
    assert ours.shape == ref.shape == (batch, model.embed_dim)
    diff = float(np.abs(ours - ref).max())
    assert diff <= TOL, f"{arch}: max |ours - original| = {diff}"
    assert float(np.abs(ref).mean()) > 0.05  # features are not trivially zero
    return diff


@pytest.fixture(scope="module")
def tiny_originals(tmp_path_factory):
    """Per architecture: the original-layout state dict and its .pth (trainer wrapper with optimizer)."""
    root = tmp_path_factory.mktemp("originals")
    out = {}
    for i, arch in enumerate(ARCHS):
        sd = original_state_dict(arch, tiny=True, seed=i)
        path = root / f"{arch}.pth"
        save_original(path, sd)
        out[arch] = (sd, path)
    return out


@pytest.fixture(scope="module")
def tiny_converted(tiny_originals, tmp_path_factory):
    root = tmp_path_factory.mktemp("converted")
    return {
        arch: convert_sslt_checkpoint(path, output=root / arch, config=tiny_registry_config(arch))
        for arch, (_, path) in tiny_originals.items()
    }


# --------------------------------------------------------------------------- the documented layout


def test_builder_writes_the_documented_real_size_swin_layout():
    sd = swin_tower(2)
    assert len(sd) == 190  # reference_facts.md §1.5: 190 keys per backbone
    rpi = [k for k in sd if k.endswith("relative_position_index")]
    masks = {k: tuple(v.shape) for k, v in sd.items() if k.endswith("attn_mask")}
    assert len(rpi) == 12 and all(tuple(sd[k].shape) == (49, 49) and sd[k].dtype == torch.int64 for k in rpi)
    assert masks == {
        "layers.0.blocks.1.attn_mask": (64, 49, 49), "layers.1.blocks.1.attn_mask": (16, 49, 49),
        "layers.2.blocks.1.attn_mask": (4, 49, 49), "layers.2.blocks.3.attn_mask": (4, 49, 49),
        "layers.2.blocks.5.attn_mask": (4, 49, 49),
    }
    assert sorted({k.rsplit(".downsample", 1)[0] for k in sd if ".downsample." in k}) == ["layers.0", "layers.1", "layers.2"]
    assert tuple(sd["head.weight"].shape) == (1000, 768) and tuple(sd["patch_embed.proj.weight"].shape) == (96, 2, 4, 4)
    assert tuple(sd["layers.0.blocks.0.attn.relative_position_bias_table"].shape) == (169, 3)
    # Masks allow exactly the same-region pairs: in the last window of stage 0 (bottom-right corner,
    # 4 regions of 4x4, 4x3, 3x4, 3x3 tokens), each token sees 16, 12, 12 or 9 tokens.
    last = sd["layers.0.blocks.1.attn_mask"][-1]
    assert sorted(set((last == 0).sum(1).tolist())) == [9, 12, 16] and set(last.unique().tolist()) == {0.0, -100.0}


def test_real_size_swin_mapping_agrees_with_timm_and_its_buffers():
    """The key mapping onto timm's swin_tiny tower is the one timm's own filter makes for Microsoft
    Swin checkpoints, and the dropped buffers are what timm recomputes (bit-exact)."""
    from timm.models.swin_transformer import checkpoint_filter_fn

    from s1s2_encoders.convert import _swin_buffers, _to_ours

    original = swin_tower(2, seed=5)
    tower = create_tower("swin-t", 2)
    ours = {_to_ours("swin-t", k): v for k, v in original.items()
            if not k.startswith("head.") and not k.endswith(("relative_position_index", "attn_mask"))}
    timm_filtered = {k: v for k, v in checkpoint_filter_fn(dict(original), tower).items() if not k.startswith("head.")}
    assert ours.keys() == timm_filtered.keys() == tower.state_dict().keys()
    assert all(torch.equal(ours[k], timm_filtered[k]) for k in ours)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    buffers = _swin_buffers(tower)
    assert buffers.keys() == {k for k in original if k.endswith(("relative_position_index", "attn_mask"))}
    assert all(torch.equal(buffers[k], original[k]) and buffers[k].dtype == original[k].dtype for k in buffers)


# --------------------------------------------------------------------------- parity and round trip


@pytest.mark.parametrize("arch", ARCHS)
def test_converted_checkpoint_loads_strictly_and_matches_the_original_architecture(arch, tiny_originals, tiny_converted):
    sd, _ = tiny_originals[arch]
    report = tiny_converted[arch]
    model = load_backbone(report.folder)  # strict: every key matched
    assert_embed_parity(model, arch, sd, tiny=True)
    # Tower level, on the same normalised tensor, both modalities.
    size = input_size(arch, tiny=True)
    for modality in ("s1", "s2"):
        x = torch.rand(1, IN_CHANS[modality], size, size, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            ours = model.tower(modality).eval()(x)
        ref = reference_pooled(arch, sd, modality, x, tiny=True)
        torch.testing.assert_close(ours, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_original_to_ours_to_original_is_the_identity(arch, tiny_originals, tiny_converted):
    sd, path = tiny_originals[arch]
    model = load_backbone(tiny_converted[arch].folder)
    heads = {k: v for k, v in sd.items() if k.endswith(("head.weight", "head.bias")) or ".fc." in k}
    back = to_original_layout(model, extra=heads)
    assert back.keys() == sd.keys()
    for key, value in sd.items():
        assert back[key].dtype == value.dtype, key
        assert torch.equal(back[key], value), key
    # And once more through a file: the rebuilt original converts to the same weights.
    again = path.with_name(f"{arch}-again.pth")
    save_original(again, back)
    second = convert_sslt_checkpoint(again, output=again.with_suffix(""), config=tiny_registry_config(arch))
    assert second.weights_sha256 == tiny_converted[arch].weights_sha256


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_real_size_conversion_parity(arch, tmp_path):
    """Real sizes: Swin-T 218 MiB (190 keys per tower), ResNet-50 214 MiB, ResNet-18 88 MiB of fp32."""
    sd = original_state_dict(arch, seed=21)
    save_original(tmp_path / "orig.pth", sd)
    report = convert_sslt_checkpoint(tmp_path / "orig.pth", output=tmp_path / "out")
    assert report.architecture == arch and report.architecture_inferred
    model = load_backbone(tmp_path / "out")
    assert model.embed_dim == {"swin-t": 1536, "resnet50": 4096, "resnet18": 1024}[arch]
    assert_embed_parity(model, arch, sd, tiny=False, batch=1)
    heads = {k: v for k, v in sd.items() if k.endswith(("head.weight", "head.bias")) or ".fc." in k}
    back = to_original_layout(model, extra=heads)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], v) for k, v in sd.items())


# --------------------------------------------------------------------------- the folder and the report


def test_report_lists_what_was_moved_dropped_and_ignored(tiny_converted, tiny_originals):
    swin = tiny_converted["swin-t"]
    assert swin.architecture == "swin-t" and swin.architecture_inferred and swin.name == "swin-s1s2"
    assert swin.dropped[DROP_SWIN_HEAD] == ("backbone1.head.weight", "backbone1.head.bias", "backbone2.head.weight", "backbone2.head.bias")
    buffers = swin.dropped[DROP_SWIN_BUFFERS]
    assert len(buffers) == 2 * (8 + 3)  # tiny Swin: 8 blocks (relative_position_index), 3 shifted ones (attn_mask)
    assert "backbone2.layers.2.blocks.1.attn_mask" in buffers
    assert ("backbone1.layers.0.downsample.reduction.weight", "s1.layers.1.downsample.reduction.weight") in swin.moved
    assert len(swin.moved) == 2 * 3 * 3  # 2 towers x 3 patch-merging layers x (reduction, norm weight, norm bias)
    assert swin.ignored_entries == ("arch", "epoch", "optimizer") and swin.epoch == 299
    for arch in ("resnet18", "resnet50"):
        report = tiny_converted[arch]
        assert report.dropped == {DROP_PROJECTION: tuple(f"backbone{i}.fc.{j}.{p}" for i in (1, 2) for j in (0, 2) for p in ("weight", "bias"))}
        assert report.moved == ()
    text = swin.summary()
    assert "inferred from the keys" in text and "dropped 4 key(s): classification head" in text
    assert "ignored top-level entries: arch, epoch, optimizer" in text and swin.weights_sha256 in text


def test_folder_has_config_provenance_licence_citation_and_card(tiny_converted, tiny_originals):
    report = tiny_converted["resnet50"]
    _, path = tiny_originals["resnet50"]
    config = read_config(report.folder)
    entry = REGISTRY["resnet50-s1s2"]
    assert config.name == "resnet50-s1s2" and config.architecture == "resnet50" and config.input_size == 128
    assert config.normalization.kind == "sslt_channel_max"
    assert config.license == entry.license and config.citation == entry.citation
    p = config.provenance
    assert p["converted_from"] == "resnet50.pth"
    assert p["converted_from_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == report.source_sha256
    assert p["source"] == ORIGINAL_REPO and p["source_commit"] == ORIGINAL_COMMIT
    assert p["original_weights"] == entry.original_weights and p["architecture"] == "resnet50"
    assert p["source_epoch"] == 299 and p["dropped"] == {DROP_PROJECTION: 8}
    assert p["converter"].startswith("s1s2-encoders 0.1.0")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", p["conversion_date"])
    card = (report.folder / "README.md").read_text()
    assert report.model_card == "model_cards/resnet50-s1s2.md"
    assert card.startswith((REPO / "model_cards" / "resnet50-s1s2.md").read_text().rstrip("\n"))
    assert "## Conversion provenance" in card and report.source_sha256 in card and "`resnet50.pth`" in card
    assert sorted(f.name for f in report.folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_existing_output_is_not_touched_unless_overwrite(tiny_originals, tmp_path):
    _, path = tiny_originals["resnet18"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"already exists and is not empty"):
        convert_sslt_checkpoint(path, output=out, config=tiny_registry_config("resnet18"))
    assert [f.name for f in out.iterdir()] == ["keep.txt"]
    report = convert_sslt_checkpoint(path, output=out, config=tiny_registry_config("resnet18"), overwrite=True)
    assert sorted(f.name for f in report.folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left behind


# --------------------------------------------------------------------------- refusals


def _refused(tmp_path, sd, arch=None, match="", name="bad.pth", wrapper=True):
    path = tmp_path / name
    save_original(path, sd, wrapper=wrapper, with_optimizer=False)
    arch_for_config = arch or infer_architecture(sd)
    with pytest.raises(CheckpointError, match=match) as info:
        convert_sslt_checkpoint(path, arch=arch, output=tmp_path / "out", config=tiny_registry_config(arch_for_config))
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == [name]
    return str(info.value)


def test_missing_key_is_refused_and_named(tiny_originals, tmp_path):
    sd = dict(tiny_originals["swin-t"][0])
    del sd["backbone2.layers.1.downsample.norm.bias"]
    del sd["backbone1.norm.weight"]
    message = _refused(tmp_path, sd, match=r"does not match the original swin-t layout \(architecture inferred from the keys\)")
    assert "2 missing key(s): backbone1.norm.weight, backbone2.layers.1.downsample.norm.bias" in message
    assert "unexpected" not in message


def test_extra_key_is_refused_and_named(tiny_originals, tmp_path):
    sd = dict(tiny_originals["resnet18"][0])
    sd["backbone1.layer5.0.conv1.weight"] = torch.zeros(3)
    sd["projector.weight"] = torch.zeros(3)  # no backbone prefix at all
    message = _refused(tmp_path, sd, arch="resnet18", match=r"2 unexpected key\(s\)")
    assert "2 unexpected key(s): backbone1.layer5.0.conv1.weight, projector.weight" in message
    assert "missing" not in message


def test_wrong_shape_is_refused_and_named(tiny_originals, tmp_path):
    sd = dict(tiny_originals["resnet50"][0])
    sd["backbone1.conv1.weight"] = torch.zeros(64, 3, 7, 7)  # an RGB stem instead of VV, VH
    message = _refused(tmp_path, sd, match=r"1 shape mismatch\(es\)")
    assert "backbone1.conv1.weight (file (64, 3, 7, 7), expected (64, 2, 7, 7))" in message
    assert "missing" not in message and "unexpected" not in message


def test_wrong_arch_is_refused_with_the_keys_and_a_hint(tiny_originals, tmp_path):
    message = _refused(tmp_path, dict(tiny_originals["resnet18"][0]), arch="resnet50", match=r"original resnet50 layout \(--arch resnet50\)")
    assert "missing key(s): backbone1.layer1.0.bn3.bias" in message
    assert "shape mismatch(es)" in message
    assert "hint: the keys look like a resnet18 checkpoint; try --arch resnet18" in message


def test_swin_checkpoint_with_resnet_arch_is_refused(tiny_originals, tmp_path):
    message = _refused(tmp_path, dict(tiny_originals["swin-t"][0]), arch="resnet18", match=r"missing key\(s\): backbone1.bn1")
    assert "unexpected key(s): backbone1.head.bias, backbone1.head.weight" in message  # Swin keys are not dropped for a ResNet
    assert "hint: the keys look like a swin-t checkpoint" in message


def test_buffers_made_for_another_configuration_are_refused(tiny_originals, tmp_path):
    sd = dict(tiny_originals["swin-t"][0])
    sd["backbone1.layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)  # a mask that masks nothing
    sd["backbone2.layers.3.blocks.1.attn_mask"] = torch.zeros(1, 49, 49)  # stage 3 is never shifted
    message = _refused(tmp_path, sd, match=r"1 buffer\(s\) differ from what timm computes")
    assert "backbone1.layers.0.blocks.1.attn_mask (values differ)" in message
    assert "1 unexpected key(s): backbone2.layers.3.blocks.1.attn_mask" in message


def test_non_finite_weights_are_refused(tiny_originals, tmp_path):
    sd = dict(tiny_originals["resnet18"][0])
    sd["backbone2.layer4.0.conv2.weight"] = sd["backbone2.layer4.0.conv2.weight"].clone()
    sd["backbone2.layer4.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    _refused(tmp_path, sd, match=r"1 tensor\(s\) with NaN or infinite values: backbone2.layer4.0.conv2.weight")


def test_a_pickle_with_python_objects_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"backbone1.conv1.weight": torch.zeros(1)}, "args": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"evil.pth: refused to load \(it contains a test_convert._touch object\).*weights_only=True"):
        convert_sslt_checkpoint(path, output=tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.load(path, weights_only=False)  # what a full unpickle would have done
    assert marker.exists()


def _touch(path: str) -> None:
    Path(path).touch()


class _Payload:
    """Unpickling this with a full unpickler would create a file (the kind of side effect weights_only prevents)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (_touch, (self.path,))


def test_unreadable_missing_and_non_state_dict_files(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"nope.pth: no such file"):
        convert_sslt_checkpoint(tmp_path / "nope.pth", output=tmp_path / "out")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match=r"garbage.pth is not a readable PyTorch checkpoint \(Unsupported operand 110\)"):
        convert_sslt_checkpoint(tmp_path / "garbage.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list.pth holds a list, not a state dict"):
        read_original_checkpoint(tmp_path / "list.pth")
    torch.save({"state_dict": {"backbone1.conv1.weight": torch.zeros(1), "backbone1.note": "text"}}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match=r"\['state_dict'\] is not a state dict: 1 entr\(y/ies\) are not tensors: backbone1.note \(str\)"):
        read_original_checkpoint(tmp_path / "mixed.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"cannot tell the architecture from the keys.*pass --arch \{swin-t,resnet50,resnet18\}. First keys: weights"):
        convert_sslt_checkpoint(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"unknown --arch 'vit'"):
        convert_sslt_checkpoint(tmp_path / "other.pth", arch="vit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.pth", "list.pth", "mixed.pth", "other.pth"]


@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_is_inferred_from_the_keys(arch, tiny_originals):
    assert infer_architecture(tiny_originals[arch][0]) == arch


# --------------------------------------------------------------------------- command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s1s2_encoders", *args], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_convert_command(tmp_path, capsys):
    """Real-size ResNet-18 (torchvision layout, bare state dict) through the installed entry point."""
    sd = original_state_dict("resnet18", seed=4)
    save_original(tmp_path / "resnet18.pth", sd, wrapper=False)
    result = run_cli("convert", str(tmp_path / "resnet18.pth"), "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "architecture: resnet18 (inferred from the keys) -> resnet18-s1s2 config" in result.stdout
    assert "dropped 8 key(s): SimCLR projection head fc.0 / fc.2" in result.stdout
    assert "ignored top-level entries" not in result.stdout  # a bare state dict has none
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["name"] == "resnet18-s1s2" and config["normalization"]["kind"] == "sslt_channel_max"
    assert "source_epoch" not in config["provenance"]
    model = load_backbone(tmp_path / "out")
    assert model.embed_dim == 1024
    assert_embed_parity(model, "resnet18", sd, tiny=False, batch=1)
    # Errors: one message naming the problem, exit status 2, nothing written.
    sd.pop("backbone2.layer3.0.downsample.0.weight")
    save_original(tmp_path / "broken.pth", sd)
    assert main(["convert", str(tmp_path / "broken.pth"), "--arch", "resnet18", "-o", str(tmp_path / "broken")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s1s2 convert: error: ")
    assert "1 missing key(s): backbone2.layer3.0.downsample.0.weight" in err
    assert not (tmp_path / "broken").exists()
