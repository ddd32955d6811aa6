"""The hand-written model cards in model_cards/: they parse as Hugging Face model cards and agree with
the registry, with the config the converter writes, and with the generic card of model_card.py; their
code runs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from drive_server import DriveServer
from original_layout import REGISTRY_NAMES, original_state_dict, save_original, tiny_registry_config, tiny_registry_entry

from s1s2_encoders import load_backbone
from s1s2_encoders.checkpoint import read_config, sha256_file
from s1s2_encoders.convert import convert_sslt_checkpoint
from s1s2_encoders.model_card import LIBRARY_NAME, card_metadata, render_model_card
from s1s2_encoders.original import cache_folder
from s1s2_encoders.registry import (
    CITATION_CVPRW2022,
    CITATION_ISPRS2022,
    LICENSE_LINK_ORIGINAL,
    LICENSE_NAME_ORIGINAL,
    REGISTRY,
)

CARDS = Path(__file__).resolve().parents[1] / "model_cards"
ARCH_OF = {name: arch for arch, name in REGISTRY_NAMES.items()}
EMBED_DIM = {"swin-t": 1536, "resnet50": 4096, "resnet18": 1024}
REQUIRED_TAGS = {"remote-sensing", "sentinel-1", "sentinel-2", "self-supervised"}


def card_text(name: str) -> str:
    return (CARDS / f"{name}.md").read_text(encoding="utf-8")


def test_there_is_one_card_per_registry_entry():
    assert sorted(p.stem for p in CARDS.glob("*.md")) == sorted(REGISTRY)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_card_metadata_agrees_with_the_registry(name):
    entry = REGISTRY[name]
    text = card_text(name)
    card = ModelCard(text)
    meta = card.data.to_dict()
    assert meta["license"] == entry.license == "other"
    assert meta["license_name"] == LICENSE_NAME_ORIGINAL and meta["license_link"] == LICENSE_LINK_ORIGINAL
    assert meta["library_name"] == LIBRARY_NAME
    assert meta["datasets"] == ["SEN12MS"]
    assert REQUIRED_TAGS <= set(meta["tags"]) and entry.architecture in meta["tags"]
    # Everything the generic card would say is said here too (model_card.py stays consistent).
    generic = card_metadata(entry.config())
    assert set(generic["tags"]) <= set(meta["tags"])
    assert {k: v for k, v in generic.items() if k != "tags"} == {k: meta[k] for k in generic if k != "tags"}
    # Body: title names the entry; the registry's citation verbatim, and both papers.
    assert re.search(rf"^# {re.escape(name)}: ", card.text, flags=re.M)
    assert entry.citation in text and CITATION_CVPRW2022 in text and CITATION_ISPRS2022 in text
    assert entry.original_weights.split("/d/")[1].split("/")[0] in text  # Drive file id
    assert f"({1}, {EMBED_DIM[entry.architecture]})" in text
    assert f"{entry.input_size} x {entry.input_size}" in text
    for needed in ("s2_offset=1000", "25 January 2022", "sslt_channel_max", "each channel is divided by its own",
                   "UNVERIFIED", "no licence file", "CC BY 4.0", "B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12"):
        assert needed in text, f"{name}: card does not mention {needed!r}"


def test_cards_state_the_recipe_facts_of_their_model():
    swin, r50, r18 = card_text("swin-s1s2"), card_text("resnet50-s1s2"), card_text("resnet18-s1s2")
    assert "5e-7 throughout" in swin and "No projection head" in swin and "temperature 0.2" in swin
    assert "epoch299" in swin and "not mIoU" in swin
    assert "**128 x 128** crop" in r50 and "temperature **0.07**" in r50 and "epoch100" in r50
    assert "| **Dual-SimCLR (this backbone)** | **70 +- 2** | **70 +- 1** | **67 +- 1** | **69 +- 1** |" in r18


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Each architecture converted (small towers) into a folder named like the registry entry."""
    root = tmp_path_factory.mktemp("cards")
    out = {}
    for arch, name in REGISTRY_NAMES.items():
        save_original(root / f"{arch}.pth", original_state_dict(arch, tiny=True, seed=5))
        out[name] = convert_sslt_checkpoint(root / f"{arch}.pth", output=root / "folders" / name, config=tiny_registry_config(arch))
    return out


@pytest.mark.parametrize("name", list(REGISTRY))
def test_converted_folder_card_agrees_with_its_config(name, converted):
    report = converted[name]
    config = read_config(report.folder)
    card = ModelCard((report.folder / "README.md").read_text(encoding="utf-8"))
    meta = card.data.to_dict()
    assert meta == ModelCard(card_text(name)).data.to_dict()  # the hand-written card, not the generic one
    assert meta["license"] == config.license and config.name == name
    assert config.architecture == ARCH_OF[name] and config.architecture in meta["tags"]
    assert config.citation in card.text
    generic = card_metadata(config)
    assert set(generic["tags"]) <= set(meta["tags"]) and generic["license_link"] == meta["license_link"]
    section = card.text.split("## Conversion provenance", 1)[1]
    p = config.provenance
    for value in (p["converted_from"], p["converted_from_sha256"], p["source_commit"], p["conversion_date"], p["converter"]):
        assert str(value) in section


@pytest.mark.parametrize("name", list(REGISTRY))
def test_card_code_runs_as_written(name, converted, tmp_path, monkeypatch):
    """The card's Python block, verbatim: `load_backbone(NAME)` fetches the original checkpoint (here from a
    loopback server that behaves as Google Drive, serving the file the `converted` folder was made from), converts
    it and loads it; the weights are those of the folder `s1s2 convert` wrote."""
    blocks = re.findall(r"```python\n(.*?)```", card_text(name), flags=re.S)
    assert len(blocks) == 1 and f'load_backbone("{name}")' in blocks[0]
    arch = ARCH_OF[name]
    with DriveServer() as server:
        server.drive.add(REGISTRY[name].original_file_id, f"{arch}.pth", converted[name].source.read_bytes())
        monkeypatch.setenv("S1S2_GDRIVE_ENDPOINT", server.url)
        monkeypatch.setenv("S1S2_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setitem(REGISTRY, name, tiny_registry_entry(arch))
        namespace: dict = {}
        exec(compile(blocks[0], f"model_cards/{name}.md", "exec"), namespace)
    model = namespace["model"]
    assert namespace["emb"].shape == (1, model.embed_dim)
    assert set(namespace["parts"]) == {"s1", "s2"} and sorted(namespace["dense"]) == [4, 8, 16, 32]
    assert np.allclose(np.concatenate([namespace["parts"]["s1"], namespace["parts"]["s2"]], axis=1), namespace["emb"])
    assert model.config.name == name
    assert sha256_file(cache_folder(name) / "model.safetensors") == converted[name].weights_sha256


def test_generic_card_parses_and_names_the_original_licence(tmp_path):
    config = REGISTRY["swin-s1s2"].config()
    card = ModelCard(render_model_card(config))
    assert card.data.license == "other" and card.data.license_name == LICENSE_NAME_ORIGINAL
    assert card.data.library_name == LIBRARY_NAME and "swin-t" in card.data.tags
    # A folder saved by this project's own training (no original provenance) gets no such licence name.
    own = config.replace(license="apache-2.0", provenance={"recipe": "test"})
    assert ModelCard(render_model_card(own)).data.to_dict().get("license_name") is None
    saved = load_backbone(own.replace(tower_kwargs={"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1)})).save_pretrained(tmp_path / "m")
    assert ModelCard((saved / "README.md").read_text()).data.license == "apache-2.0"


def test_without_the_card_files_the_converter_writes_the_generic_card(tmp_path, monkeypatch):
    """A wheel that does not ship model_cards/ still gets a card whose metadata agrees with the config."""
    import s1s2_encoders.convert as convert

    monkeypatch.setattr(convert, "model_card_path", lambda name: None)
    save_original(tmp_path / "r18.pth", original_state_dict("resnet18", tiny=True, seed=2))
    report = convert_sslt_checkpoint(tmp_path / "r18.pth", output=tmp_path / "out", config=tiny_registry_config("resnet18"))
    assert report.model_card == "generated (model_cards/ not found next to the package)"
    card = ModelCard((report.folder / "README.md").read_text())
    config = read_config(report.folder)
    assert card.data.to_dict() == card_metadata(config)
    assert config.citation in card.text and config.provenance["converted_from_sha256"] in card.text
