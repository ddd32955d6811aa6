"""A Hugging Face model card (``README.md``) generated from a model config.

Published checkpoints get hand-written cards (``model_cards/``); this renderer gives every other
saved folder a card that states what the model takes and how to load it, with correct metadata.
"""

from __future__ import annotations

import json

from .bands import UNITS
from .config import ModelConfig
from .registry import LICENSE_LINK_ORIGINAL, LICENSE_NAME_ORIGINAL, ORIGINAL_REPO

LIBRARY_NAME = "s1s2-encoders"
BASE_TAGS = ("remote-sensing", "earth-observation", "sentinel-1", "sentinel-2", "s1s2-encoders")


def card_metadata(config: ModelConfig) -> dict[str, object]:
    """YAML front matter for the Hub.

    The hand-written cards in ``model_cards/`` carry at least this metadata (a test checks it), so a
    converted folder gets the same licence, library and tags whichever card it ends up with.
    """
    tags = list(BASE_TAGS)
    if config.task == "backbone":
        tags.append("feature-extraction")
    tags.append(config.architecture)
    metadata: dict[str, object] = {"license": config.license or "other"}
    if metadata["license"] == "other" and config.provenance.get("source") == ORIGINAL_REPO:
        # Weights derived from the original repository, which states no licence.
        metadata["license_name"] = LICENSE_NAME_ORIGINAL
        metadata["license_link"] = LICENSE_LINK_ORIGINAL
    metadata.update(
        {
            "library_name": LIBRARY_NAME,
            "tags": tags,
            "pipeline_tag": "image-feature-extraction" if config.task == "backbone" else "image-segmentation"
            if config.task == "segmentation" else "image-classification",
        }
    )
    return metadata


def _yaml(metadata: dict[str, object]) -> str:
    lines = []
    for key, value in metadata.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _usage(config: ModelConfig) -> str:
    """Usage section: ``embed`` for backbones; ``predict`` and the class table for task models."""
    if config.task == "backbone":
        return """## Usage

```python
from s1s2_encoders import load_backbone
model = load_backbone("path/or/hf-hub:ORG/REPO")
emb = model.embed(s1, s2)   # s1: (2, H, W) dB, s2: (13, H, W) L1C DN -> (1, D)
```
"""
    head = config.head
    names = head.get("class_names", [])
    colors = head.get("class_colors", [[0, 0, 0]] * len(names))
    rows = "\n".join(
        f"| {i} | {name} | #{c[0]:02x}{c[1]:02x}{c[2]:02x} |" for i, (name, c) in enumerate(zip(names, colors))
    )
    if config.task == "segmentation":
        call = "probs = model.predict(s1, s2)   # (1, K, H, W) softmax probabilities, any H x W"
        kind = f"Per-pixel land-cover segmentation ({head.get('decoder', {}).get('kind', 'decoder')} decoder)"
    else:
        multi = head.get("multi_label", False)
        call = f"probs = model.predict(s1, s2)   # (1, K) {'sigmoid (multi-label)' if multi else 'softmax'} probabilities"
        kind = "Multi-label scene classification" if multi else "Single-label scene classification"
    return f"""## Task

{kind}, fusion `{head.get('fusion')}`. Output classes (index, name, legend colour):

| index | class | colour |
|---|---|---|
{rows}

## Usage

```python
from s1s2_encoders import load_model
model = load_model("path/or/hf-hub:ORG/REPO")
{call}
```
"""


def render_model_card(config: ModelConfig) -> str:
    """Markdown model card with YAML metadata for a checkpoint folder."""
    norm = config.normalization
    if norm.kind == "sslt_channel_max":
        norm_text = (
            "`sslt_channel_max` (the original SSLTransformerRS normalisation): S1 clipped to "
            f"[{norm.s1.clip[0]:g}, {norm.s1.clip[1]:g}] dB and shifted to start at 0, S2 clipped to "
            f"[{norm.s2.clip[0]:g}, {norm.s2.clip[1]:g}], then every channel divided by its own maximum in "
            "the sample. Values depend on the tile's content: whole-scene inference shows seams at tile borders."
        )
    else:
        norm_text = (
            "`fixed` (content-independent): clip, then per-band `(x - mean) / std` as recorded in "
            "`config.json`. Overlapping tiles of a scene agree."
        )
    name = config.name or f"{config.architecture} S1+S2 {config.task}"
    provenance = json.dumps(config.provenance, indent=2, sort_keys=True) if config.provenance else "{}"
    citation = f"\n## Citation\n\n```bibtex\n{config.citation}\n```\n" if config.citation else ""
    return f"""---
{_yaml(card_metadata(config))}
---

# {name}

A two-tower Sentinel-1 + Sentinel-2 {config.task} ({config.architecture}) for the
[s1s2-encoders](https://github.com/s1s2-encoders/s1s2-encoders) package.

## Inputs

| modality | bands (model order) | units |
|---|---|---|
| Sentinel-1 | {", ".join(config.s1_bands)} | {config.input_units.get("s1", UNITS["s1"])} |
| Sentinel-2 | {", ".join(config.s2_bands)} | {config.input_units.get("s2", UNITS["s2"])} |

Normalisation is applied inside the model: {norm_text}
Sentinel-2 products from processing baseline 04.00 on (25 January 2022) carry a +1000 offset:
pass `s2_offset=1000` for them. Trained on {config.input_size} x {config.input_size} pixel crops;
any size works.

{_usage(config)}
## Provenance

```json
{provenance}
```
{citation}"""
