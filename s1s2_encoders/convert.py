"""Convert the original SSLTransformerRS checkpoints (``.pth`` pickles) into checkpoint folders.

The three published backbones (dual Swin-T, dual ResNet-50, dual ResNet-18) exist only as
``torch.save`` pickles (reference_facts.md §1.5, §2.2, §4.2). This module reads them with
``torch.load(weights_only=True)`` -- never a full unpickle -- maps their keys onto this package's
timm towers and writes a folder that :func:`~s1s2_encoders.load_backbone` loads strictly.

The original layout (what :func:`original_to_ours` accepts):

* top level: ``{"epoch", "arch", "state_dict", "optimizer"}`` (only ``state_dict`` is required; the
  other entries are reported and ignored) or a bare state dict;
* keys ``backbone1.<key>`` (Sentinel-1 tower, 2 input channels) and ``backbone2.<key>`` (Sentinel-2
  tower, 13 input channels);
* **Swin-T** (Microsoft Swin code vendored in ``Transformer_SSL/models/swin_transformer.py``):
  timm's key names except that patch merging sits at the *end* of a stage
  (``layers.N.downsample.*`` for N = 0..2) where timm puts it at the *start* of the next one
  (``layers.N+1.downsample.*``); plus the buffers ``layers.S.blocks.B.attn.relative_position_index``
  (49 x 49, every block) and ``layers.S.blocks.B.attn_mask`` (shifted blocks only:
  (64, 49, 49), (16, 49, 49), (4, 49, 49) for stages 0, 1, 2), and a classification head
  ``head.{weight,bias}`` (1000 x 768) that the SSL objective never used;
* **ResNet-18/50** (torchvision ResNet with ``conv1`` replaced by a 2-/13-channel 7x7 stride-2 conv):
  torchvision key names, which are timm's, plus the SimCLR projection head
  ``fc.0.{weight,bias}`` (d x d) and ``fc.2.{weight,bias}`` (128 x d).

What is dropped is reported: the Swin head, the ResNet projection head, and the Swin buffers.
The buffers are *verified* first: they must equal the ones the timm tower computes itself
(same window size, same 224-pixel grid), otherwise the checkpoint was made for another
configuration and is refused. Everything else must match the architecture key by key and shape by
shape, or a :class:`~s1s2_encoders.errors.CheckpointError` lists the missing, unexpected and
mis-shaped keys under their original names. A half-matched load is impossible.

Why the key mapping is done here and not with ``timm.models.swin_transformer.checkpoint_filter_fn``:
that filter silently *resamples* a patch embedding or relative-position table whose shape differs
from the model's, which would turn a wrong checkpoint into a wrong model instead of an error, and
it has no inverse. The mapping here is a bijection on the kept keys (see :func:`to_original_layout`);
a test checks that it agrees with timm's filter on a real-size checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .checkpoint import load_state_dict_strict, sha256_file, write_checkpoint
from .config import WEIGHTS_FILENAME, ModelConfig
from .errors import CheckpointError, ModelNotFoundError
from .registry import LICENSE_NOTE_ORIGINAL, ORIGINAL_REPO, REGISTRY

ARCHITECTURES: tuple[str, ...] = ("swin-t", "resnet50", "resnet18")
"""Architectures of the published original checkpoints."""

REGISTRY_NAME: dict[str, str] = {"swin-t": "swin-s1s2", "resnet50": "resnet50-s1s2", "resnet18": "resnet18-s1s2"}
"""Architecture -> registry entry whose config, licence, citation and model card a conversion gets."""

ORIGINAL_PREFIX: dict[str, str] = {"s1": "backbone1.", "s2": "backbone2."}
"""Key prefix of each modality's tower in the original checkpoints (DoubleSwinTransformer /
DoubleResNetSimCLR attribute names)."""

WRAPPER_ENTRIES = ("epoch", "arch", "optimizer")
"""Top-level entries next to ``state_dict`` in the original training checkpoints (ignored)."""

DROP_SWIN_HEAD = "classification head head.* (Linear 768 -> 1000), not used by the SSL objective in the original code"
DROP_SWIN_BUFFERS = "buffers relative_position_index / attn_mask, verified equal to what timm recomputes"
DROP_PROJECTION = "SimCLR projection head fc.0 / fc.2 (not part of the backbone; embeddings are taken before it)"

_MAX_LISTED = 25
_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
_BUFFER_SUFFIXES = (".attn.relative_position_index", ".attn_mask")
_PROJECTION_KEYS = ("fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias")
_SWIN_HEAD_KEYS = ("head.weight", "head.bias")


# --------------------------------------------------------------------------- reading


@dataclass
class OriginalCheckpoint:
    """What :func:`read_original_checkpoint` found in a ``.pth`` file.

    Attributes:
        state_dict: the tensors, original key names (``backbone1.*`` / ``backbone2.*``).
        ignored_entries: top-level entries other than ``state_dict`` (``epoch``, ``arch``, ``optimizer``).
        epoch: the ``epoch`` entry when it is an integer.
    """

    state_dict: dict[str, torch.Tensor]
    ignored_entries: tuple[str, ...] = ()
    epoch: int | None = None


def read_original_checkpoint(path: str | Path) -> OriginalCheckpoint:
    """Read an original checkpoint with ``torch.load(weights_only=True)``.

    Accepts ``{"state_dict": {...}, "epoch": ..., "arch": ..., "optimizer": ...}`` or a bare state
    dict (every value a tensor).

    Raises:
        ModelNotFoundError: the file does not exist.
        CheckpointError: the file is not a readable PyTorch checkpoint, holds Python objects that
            ``weights_only`` refuses (named), or is not a state dict.
    """
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file (expected an original SSLTransformerRS .pth checkpoint)")
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is not a file (expected an original SSLTransformerRS .pth checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            raise CheckpointError(
                f"{path}: refused to load (it contains a {found.group(1)} object). The file holds Python objects "
                "other than tensors and plain containers, and loading them could run arbitrary code; s1s2 convert "
                "reads checkpoints only with torch.load(weights_only=True). The original SSLTransformerRS "
                "checkpoints contain only tensors, numbers and dicts; re-save just the state_dict if you trust "
                "this file."
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", text, flags=re.S)
        reason = detail.group(1).strip() if detail else text.strip().splitlines()[0]
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({reason})") from None
    except Exception as exc:  # zip / legacy-format errors surface as RuntimeError, KeyError, EOFError...
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc

    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state dict or a {{'state_dict': ...}} checkpoint"
        )
    ignored: tuple[str, ...] = ()
    epoch = None
    if "state_dict" in obj:
        state_dict = obj["state_dict"]
        ignored = tuple(sorted(str(k) for k in obj if k != "state_dict"))
        if isinstance(obj.get("epoch"), int) and not isinstance(obj.get("epoch"), bool):
            epoch = int(obj["epoch"])
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"{path}: 'state_dict' holds a {type(state_dict).__name__}, not a dict of tensors")
        where = f"{path} ['state_dict']"
    else:
        state_dict = obj
        where = str(path)
    not_tensors = sorted(f"{k} ({type(v).__name__})" for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(
            f"{where} is not a state dict: {len(not_tensors)} entr(y/ies) are not tensors: {_listing(not_tensors)}"
            + ("" if "state_dict" in obj else "; expected a bare state dict or {'state_dict': ..., 'epoch': ...}")
        )
    return OriginalCheckpoint(state_dict={str(k): v for k, v in state_dict.items()}, ignored_entries=ignored, epoch=epoch)


# --------------------------------------------------------------------------- architecture


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Guess ``swin-t`` / ``resnet50`` / ``resnet18`` from original-layout keys.

    Swin has ``patch_embed.proj.weight``; ResNets have ``conv1.weight`` and ResNet-50's bottleneck
    blocks have a third convolution (``layer1.0.conv3.weight``).

    Raises:
        CheckpointError: none of these patterns is present.
    """
    towers = [{k[len(p):] for k in state_dict if k.startswith(p)} for p in ORIGINAL_PREFIX.values()]
    keys = towers[0] | towers[1]
    if "patch_embed.proj.weight" in keys:
        return "swin-t"
    if "conv1.weight" in keys:
        return "resnet50" if "layer1.0.conv3.weight" in keys else "resnet18"
    sample = _listing(sorted(state_dict)[:8])
    raise CheckpointError(
        "cannot tell the architecture from the keys (no backbone1./backbone2. patch_embed.proj.weight or "
        f"conv1.weight); pass --arch {{{','.join(ARCHITECTURES)}}}. First keys: {sample or '(none)'}"
    )


def default_config(architecture: str) -> ModelConfig:
    """The registry config of the published model with this architecture."""
    if architecture not in REGISTRY_NAME:
        raise CheckpointError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    return REGISTRY[REGISTRY_NAME[architecture]].config()


def _is_swin(architecture: str) -> bool:
    return architecture.startswith("swin")


def _swin_blocks(tower: nn.Module) -> list[tuple[int, int, nn.Module]]:
    """``(stage, block, module)`` for every transformer block of a timm Swin tower."""
    return [(s, b, block) for s, layer in enumerate(tower.layers) for b, block in enumerate(layer.blocks)]


def _swin_buffers(tower: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers the original Microsoft Swin code saves, as timm's tower computes them.

    ``layers.S.blocks.B.attn.relative_position_index`` for every block and
    ``layers.S.blocks.B.attn_mask`` for shifted-window blocks (the original registers ``None`` for the
    others, which ``state_dict`` leaves out). Keys in the original layout, without prefix.
    """
    out: dict[str, torch.Tensor] = {}
    for s, b, block in _swin_blocks(tower):
        out[f"layers.{s}.blocks.{b}.attn.relative_position_index"] = block.attn.relative_position_index.detach().clone()
        mask = block.attn_mask if isinstance(getattr(block, "attn_mask", None), torch.Tensor) else block.get_attn_mask()
        if mask is not None:
            out[f"layers.{s}.blocks.{b}.attn_mask"] = mask.detach().to(torch.float32).clone()
    return out


def _to_ours(architecture: str, key: str) -> str:
    """Original tower key -> timm tower key (the two differ only in where Swin's patch merging sits)."""
    if _is_swin(architecture):
        match = _DOWNSAMPLE.match(key)
        if match:
            return f"layers.{int(match.group(1)) + 1}.downsample.{match.group(2)}"
    return key


def _to_original(architecture: str, key: str) -> str:
    """Inverse of :func:`_to_ours`."""
    if _is_swin(architecture):
        match = _DOWNSAMPLE.match(key)
        if match:
            return f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
    return key


def _drop_reason(architecture: str, key: str) -> str | None:
    if _is_swin(architecture):
        if key in _SWIN_HEAD_KEYS:
            return DROP_SWIN_HEAD
        if key.endswith(_BUFFER_SUFFIXES):
            return DROP_SWIN_BUFFERS
    elif key in _PROJECTION_KEYS:
        return DROP_PROJECTION
    return None


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


# --------------------------------------------------------------------------- mapping


@dataclass
class ConvertedStateDict:
    """Result of :func:`original_to_ours`.

    Attributes:
        state_dict: tensors under this package's keys (``s1.<timm key>``, ``s2.<timm key>``).
        dropped: reason -> original keys that were left out.
        moved: ``(original key, our key)`` for keys whose name changed beyond the prefix
            (Swin patch merging).
        dropped_tensors: the dropped tensors by original key (to rebuild the original file exactly,
            see :func:`to_original_layout`).
    """

    state_dict: dict[str, torch.Tensor]
    dropped: dict[str, list[str]] = field(default_factory=dict)
    moved: list[tuple[str, str]] = field(default_factory=list)
    dropped_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def original_to_ours(
    state_dict: Mapping[str, torch.Tensor],
    backbone: nn.Module,
    *,
    source: str = "checkpoint",
    architecture_note: str = "",
) -> ConvertedStateDict:
    """Map an original-layout state dict onto ``backbone``'s keys, refusing anything that does not fit.

    Args:
        state_dict: original keys (``backbone1.*``, ``backbone2.*``).
        backbone: an :class:`~s1s2_encoders.S1S2Backbone` whose towers define the expected keys,
            shapes and (for Swin) buffers. It is not modified.
        source: how errors name the checkpoint (usually its path).
        architecture_note: appended to the first error line (e.g. "inferred from the keys").

    Raises:
        CheckpointError: listing, under their original names, the missing keys, the unexpected
            keys, the shape mismatches, Swin buffers that differ from timm's, and tensors with
            NaN or infinite values.
    """
    architecture = backbone.config.architecture
    out: dict[str, torch.Tensor] = {}
    result = ConvertedStateDict(state_dict=out)
    missing: list[str] = []
    unexpected: list[str] = sorted(k for k in state_dict if not k.startswith(tuple(ORIGINAL_PREFIX.values())))
    mismatched: list[str] = []
    bad_buffers: list[str] = []

    for modality, prefix in ORIGINAL_PREFIX.items():
        tower = getattr(backbone, modality)
        expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
        buffers = _swin_buffers(tower) if _is_swin(architecture) else {}
        produced: set[str] = set()
        for full_key, tensor in state_dict.items():
            if not full_key.startswith(prefix):
                continue
            key = full_key[len(prefix):]
            reason = _drop_reason(architecture, key)
            if reason == DROP_SWIN_BUFFERS:
                reference = buffers.get(key)
                if reference is None:
                    unexpected.append(full_key)
                    continue
                if tuple(tensor.shape) != tuple(reference.shape) or not torch.equal(tensor.to(reference.dtype), reference):
                    bad_buffers.append(
                        f"{full_key} (file {tuple(tensor.shape)}, timm {tuple(reference.shape)})"
                        if tuple(tensor.shape) != tuple(reference.shape) else f"{full_key} (values differ)"
                    )
                    continue
            if reason is not None:
                result.dropped.setdefault(reason, []).append(full_key)
                result.dropped_tensors[full_key] = tensor
                continue
            ours = _to_ours(architecture, key)
            if ours not in expected:
                unexpected.append(full_key)
                continue
            if tuple(tensor.shape) != expected[ours]:
                mismatched.append(f"{full_key} (file {tuple(tensor.shape)}, expected {expected[ours]})")
                produced.add(ours)  # present, reported as a shape mismatch rather than as missing
                continue
            if ours != key:
                result.moved.append((full_key, f"{modality}.{ours}"))
            out[f"{modality}.{ours}"] = tensor
            produced.add(ours)
        missing.extend(prefix + _to_original(architecture, k) for k in expected if k not in produced)

    non_finite = sorted(
        k for k, v in state_dict.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    )
    if missing or unexpected or mismatched or bad_buffers or non_finite:
        parts = [f"{source} does not match the original {architecture} layout{architecture_note}:"]
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(sorted(missing))}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(sorted(unexpected))}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(sorted(mismatched))}")
        if bad_buffers:
            parts.append(
                f"{len(bad_buffers)} buffer(s) differ from what timm computes for this architecture (another window "
                f"size or input size?): {_listing(sorted(bad_buffers))}"
            )
        if non_finite:
            parts.append(f"{len(non_finite)} tensor(s) with NaN or infinite values: {_listing(non_finite)}")
        try:
            guess = infer_architecture(state_dict)
        except CheckpointError:
            guess = None
        if guess is not None and guess != architecture:
            parts.append(f"hint: the keys look like a {guess} checkpoint; try --arch {guess} (or leave --arch out)")
        raise CheckpointError("\n  ".join(parts))
    return result


def to_original_layout(backbone: nn.Module, extra: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict of ``backbone`` in the original SSLTransformerRS layout (inverse of the conversion).

    Swin patch-merging weights move back to the end of the previous stage and the buffers
    ``relative_position_index`` / ``attn_mask`` are recomputed (by timm) and added. Heads that the
    conversion dropped cannot be recomputed: pass them in ``extra`` (original keys) to rebuild an
    original file exactly.

    Returns:
        ``{"backbone1.<key>": tensor, "backbone2.<key>": tensor, ...}``.
    """
    architecture = backbone.config.architecture
    out: dict[str, torch.Tensor] = {}
    for modality, prefix in ORIGINAL_PREFIX.items():
        tower = getattr(backbone, modality)
        for key, tensor in tower.state_dict().items():
            out[prefix + _to_original(architecture, key)] = tensor.detach().clone()
        if _is_swin(architecture):
            out.update({prefix + k: v for k, v in _swin_buffers(tower).items()})
    for key, tensor in (extra or {}).items():
        if key in out and not torch.equal(out[key], tensor):
            raise ValueError(f"extra tensor {key} conflicts with the backbone's own value")
        out[key] = tensor
    return out


# --------------------------------------------------------------------------- folder


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_sslt_checkpoint` did.

    Attributes:
        source: the original file.
        source_sha256: its sha256.
        architecture: ``swin-t``, ``resnet50`` or ``resnet18``.
        architecture_inferred: whether it was inferred from the keys (no ``arch`` given).
        name: registry entry whose config and card the folder got.
        folder: the checkpoint folder written.
        num_tensors: tensors in ``model.safetensors``.
        weights_sha256: sha256 of ``model.safetensors``.
        dropped: reason -> original keys left out.
        moved: ``(original key, our key)`` renamed beyond the prefix.
        ignored_entries: top-level entries of the file other than ``state_dict``.
        epoch: the file's ``epoch`` entry, if any.
        model_card: where ``README.md`` came from (``model_cards/<name>.md`` or ``generated``).
    """

    source: Path
    source_sha256: str
    architecture: str
    architecture_inferred: bool
    name: str
    folder: Path
    num_tensors: int
    weights_sha256: str
    dropped: dict[str, tuple[str, ...]]
    moved: tuple[tuple[str, str], ...]
    ignored_entries: tuple[str, ...]
    epoch: int | None
    model_card: str

    def summary(self) -> str:
        """Human-readable lines for the command line."""
        how = "inferred from the keys" if self.architecture_inferred else "given"
        lines = [
            f"converted {self.source.name} (sha256 {self.source_sha256})",
            f"  architecture: {self.architecture} ({how}) -> {self.name} config, normalisation sslt_channel_max",
            f"  wrote {self.folder}: {self.num_tensors} tensors, {WEIGHTS_FILENAME} sha256 {self.weights_sha256}",
            f"  model card: {self.model_card}",
        ]
        if self.moved:
            lines.append(f"  moved {len(self.moved)} key(s) (patch merging: end of stage N -> start of stage N+1), e.g. "
                         f"{self.moved[0][0]} -> {self.moved[0][1]}")
        for reason, keys in self.dropped.items():
            lines.append(f"  dropped {len(keys)} key(s): {reason}")
            lines.append(f"    {_listing(list(keys))}")
        if self.ignored_entries:
            lines.append(f"  ignored top-level entries: {', '.join(self.ignored_entries)}")
        lines.append(f"  load it with: load_backbone({str(self.folder)!r})")
        return "\n".join(lines)


def model_card_path(name: str) -> Path | None:
    """The hand-written card ``model_cards/<name>.md``, looked up in the installed package
    (``s1s2_encoders/model_cards``, if the wheel ships it) and next to the package (source checkout)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "model_cards", here.parent / "model_cards"):
        candidate = folder / f"{name}.md"
        if candidate.is_file():
            return candidate
    return None


def conversion_card_section(config: ModelConfig) -> str:
    """The section appended to the model card of a converted folder: where exactly its weights came from."""
    p = config.provenance
    rows = [("source file", f"`{p.get('converted_from')}`")]
    if p.get("downloaded_from"):
        rows += [
            ("downloaded from", f"{p.get('downloaded_from')} on {p.get('downloaded_at')}"),
            ("size of the source file", f"{p.get('downloaded_bytes'):,} bytes"),
        ]
    rows += [
        ("sha256 of the source file", f"`{p.get('converted_from_sha256')}`"),
        ("original architecture", f"`{p.get('architecture')}`"),
        ("epoch recorded in the file", str(p.get("source_epoch", "not recorded"))),
        ("original weights", str(p.get("original_weights"))),
        ("original code", f"{p.get('source')} @ `{p.get('source_commit')}`"),
        ("converted on", str(p.get("conversion_date"))),
        ("converter", str(p.get("converter"))),
        ("licence", LICENSE_NOTE_ORIGINAL),
    ]
    dropped = "; ".join(f"{n} x {reason}" for reason, n in p.get("dropped", {}).items()) or "nothing"
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "\n## Conversion provenance\n\n"
        f"Converted from the authors' original checkpoint by {p.get('converter')}; the same facts are in "
        "`config.json` under `provenance`.\n\n| | |\n|---|---|\n"
        f"{table}\n| dropped keys | {dropped} |\n"
    )


def convert_sslt_checkpoint(
    path: str | Path,
    arch: str | None = None,
    output: str | Path | None = None,
    *,
    overwrite: bool = False,
    config: ModelConfig | None = None,
    original: OriginalCheckpoint | None = None,
    tool: str = "s1s2 convert",
) -> ConversionReport:
    """Convert an original SSLTransformerRS ``.pth`` into a checkpoint folder.

    Args:
        path: the original checkpoint (``swin_t.pth``, ``resnet50.pth``, ``resnet18.pth`` from the
            Google Drive links in the original README).
        arch: ``"swin-t"``, ``"resnet50"`` or ``"resnet18"``; inferred from the keys when ``None``.
        output: folder to write (default: the registry name, e.g. ``swin-s1s2``, next to ``path``).
        overwrite: replace an existing folder (atomically).
        config: the config to write; defaults to the registry entry's (normalisation
            ``sslt_channel_max``, bands, licence, citation). Tests pass smaller towers here. Its
            provenance is kept and extended.
        original: ``path`` as :func:`read_original_checkpoint` already read it (saves a second read).
        tool: what did the conversion, recorded in ``provenance.converter``.

    Returns:
        A :class:`ConversionReport` (what was converted, moved, dropped and written).

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        CheckpointError: unreadable or refused file, or keys that do not fit (listed).
        FileExistsError: ``output`` exists and ``overwrite`` is false.
    """
    from . import __version__
    from .models.factory import create_backbone

    path = Path(path)
    if original is None:
        original = read_original_checkpoint(path)
    inferred = arch is None
    if arch is None:
        arch = infer_architecture(original.state_dict)
    elif arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown --arch {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    name = REGISTRY_NAME[arch]
    base = config if config is not None else default_config(arch)
    if base.architecture != arch:
        raise CheckpointError(f"config architecture {base.architecture!r} differs from --arch {arch!r}")
    backbone = create_backbone(base)
    note = " (architecture inferred from the keys)" if inferred else f" (--arch {arch})"
    converted = original_to_ours(original.state_dict, backbone, source=str(path), architecture_note=note)
    # The package's own strict gate, on our key names: nothing is written unless this loads.
    load_state_dict_strict(backbone, converted.state_dict, f"{path} (converted)")

    source_sha = sha256_file(path)
    entry = REGISTRY[name]
    provenance: dict[str, Any] = dict(base.provenance)
    provenance.update(
        {
            "source": provenance.get("source", ORIGINAL_REPO),
            "original_weights": entry.original_weights,
            "converted_from": path.name,
            "converted_from_sha256": source_sha,
            "architecture": arch,
            "conversion_date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "converter": f"s1s2-encoders {__version__} ({tool})",
            "dropped": {reason: len(keys) for reason, keys in converted.dropped.items()},
        }
    )
    if original.epoch is not None:
        provenance["source_epoch"] = original.epoch
    out_config = base.replace(provenance=provenance)

    card_file = model_card_path(name)
    if card_file is not None:
        card = card_file.read_text(encoding="utf-8").rstrip("\n") + "\n" + conversion_card_section(out_config)
        card_source = f"model_cards/{name}.md"
    else:
        from .model_card import render_model_card

        card = render_model_card(out_config)
        card_source = "generated (model_cards/ not found next to the package)"

    folder = Path(output) if output is not None else path.parent / name
    write_checkpoint(folder, out_config, converted.state_dict, model_card=card, overwrite=overwrite)
    return ConversionReport(
        source=path,
        source_sha256=source_sha,
        architecture=arch,
        architecture_inferred=inferred,
        name=name,
        folder=folder,
        num_tensors=len(converted.state_dict),
        weights_sha256=sha256_file(folder / WEIGHTS_FILENAME),
        dropped={reason: tuple(keys) for reason, keys in converted.dropped.items()},
        moved=tuple(converted.moved),
        ignored_entries=original.ignored_entries,
        epoch=original.epoch,
        model_card=card_source,
    )


__all__ = [
    "ARCHITECTURES",
    "ConversionReport",
    "ConvertedStateDict",
    "OriginalCheckpoint",
    "convert_sslt_checkpoint",
    "infer_architecture",
    "original_to_ours",
    "read_original_checkpoint",
    "to_original_layout",
]
