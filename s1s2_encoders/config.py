"""The model config: a dataclass that round-trips with a checkpoint folder's ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from .bands import S1_BANDS, S2_L1C_BANDS, UNITS, canonical_band_name
from .errors import ConfigError
from .preprocess import Normalization, sslt_channel_max

CONFIG_FORMAT_VERSION = 1
CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"
MODEL_CARD_FILENAME = "README.md"

# Our architecture names -> timm model names. The towers are plain timm models.
TIMM_NAMES: dict[str, str] = {
    "swin-t": "swin_tiny_patch4_window7_224",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
}

TASKS = ("backbone", "classification", "segmentation")

N_STAGES = 4
"""Stages of every tower: the package's strides 4, 8, 16, 32 (one pyramid level per stage)."""

# What timm's swin_tiny_patch4_window7_224 uses when a config leaves a key out (for the checks
# that relate two keys, e.g. heads dividing the width).
_SWIN_T_EMBED_DIM = 96
_SWIN_T_NUM_HEADS = (3, 6, 12, 24)


def _positive_int(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return "a positive integer"
    return None


def _multiple_of_32(value: Any) -> str | None:
    if _positive_int(value) or value % 32:
        return "a positive multiple of 32 (pixels)"
    return None


def _stage_ints(value: Any) -> str | None:
    expected = f"a list of {N_STAGES} positive integers (one per stage)"
    if not isinstance(value, (list, tuple)) or len(value) != N_STAGES:
        return expected
    return expected if any(_positive_int(v) for v in value) else None


def _rate(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < 1):
        return "a number in [0, 1)"
    return None


# The timm keyword arguments a config may pass to each tower: the architecture (sizes of the
# layers) and the regularisation rates training sets. Nothing else: a checkpoint folder is data,
# and timm's other options load things (pretrained, pretrained_cfg, pretrained_cfg_overlay,
# checkpoint_path, ...) or change what the package's code relies on (num_classes, in_chans,
# strict_img_size, features_only ...). Weights only ever come from the folder's model.safetensors.
_SWIN_TOWER_KWARGS: dict[str, Callable[[Any], str | None]] = {
    "embed_dim": _positive_int,
    "depths": _stage_ints,
    "num_heads": _stage_ints,
    "window_size": _positive_int,
    # The size timm plans the windows for (stages whose grid fits in one window do not shift);
    # inputs of any size still work.
    "img_size": _multiple_of_32,
    "drop_rate": _rate,
    "proj_drop_rate": _rate,
    "attn_drop_rate": _rate,
    "drop_path_rate": _rate,
}
_RESNET_TOWER_KWARGS: dict[str, Callable[[Any], str | None]] = {
    "layers": _stage_ints,
    "channels": _stage_ints,
    "stem_width": _positive_int,
    "drop_rate": _rate,
    "drop_path_rate": _rate,
}
TOWER_KWARGS: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "swin-t": _SWIN_TOWER_KWARGS,
    "resnet18": _RESNET_TOWER_KWARGS,
    "resnet50": _RESNET_TOWER_KWARGS,
}
"""Per architecture: the ``tower_kwargs`` keys a config may set, each with its value check."""


def check_tower_kwargs(architecture: str, tower_kwargs: Any) -> None:
    """Refuse ``tower_kwargs`` that are not plain architecture settings of ``architecture``'s towers.

    Called when a :class:`ModelConfig` is made (so when ``config.json`` is parsed, before any weights
    are read or any tower is built) and again by :func:`~s1s2_encoders.models.towers.create_tower`.

    Raises:
        ConfigError: a key the architecture does not accept (named, with the accepted ones), or a
            value of the wrong type or range.
    """
    if not isinstance(tower_kwargs, dict):
        raise ConfigError(f"tower_kwargs must be a JSON object, got {type(tower_kwargs).__name__}")
    accepted = TOWER_KWARGS[architecture]
    for key, value in tower_kwargs.items():
        if key not in accepted:
            raise ConfigError(
                f"tower_kwargs key {key!r} is not accepted for {architecture} towers; accepted keys: "
                f"{', '.join(sorted(accepted))}. A config describes the architecture only: weights come "
                "from the checkpoint's model.safetensors, never from timm's pretrained or checkpoint options"
            )
        expected = accepted[key](value)
        if expected is not None:
            raise ConfigError(f"tower_kwargs {key!r} must be {expected}, got {value!r}")
    if architecture == "swin-t":
        width = tower_kwargs.get("embed_dim", _SWIN_T_EMBED_DIM)
        heads = tower_kwargs.get("num_heads", _SWIN_T_NUM_HEADS)
        # Stage i works at embed_dim * 2**i channels, split evenly over its heads.
        for stage, n_heads in enumerate(heads):
            if (width << stage) % n_heads:
                raise ConfigError(
                    f"tower_kwargs: stage {stage} has {width << stage} channels (embed_dim {width} x "
                    f"{1 << stage}), which its {n_heads} attention heads (num_heads {list(heads)}) do not divide"
                )


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and feed it correctly.

    Attributes:
        architecture: ``"swin-t"``, ``"resnet18"`` or ``"resnet50"`` (one tower per modality).
        task: ``"backbone"`` for embedding models; task models (classification, segmentation)
            add their head description in ``head``.
        s1_bands / s2_bands: band names in model (channel) order.
        input_units: human-readable units per modality.
        normalization: how raw inputs are normalised inside the model.
        input_size: side length (pixels) of the crops the model was trained on. Any size works;
            this records what the weights saw.
        tower_kwargs: timm architecture arguments of the towers (e.g. a smaller ``embed_dim`` for
            tests); only the keys in :data:`TOWER_KWARGS` (sizes and regularisation rates), checked
            by :func:`check_tower_kwargs`.
        head: task head description (empty for backbones).
        name: registry name or free-form label.
        license / citation: licence identifier of the weights and BibTeX of the work(s).
        provenance: where the weights came from (source file, sha256, recipe, date, ...).
    """

    architecture: str = "swin-t"
    task: str = "backbone"
    s1_bands: tuple[str, ...] = S1_BANDS
    s2_bands: tuple[str, ...] = S2_L1C_BANDS
    input_units: dict[str, str] = field(default_factory=lambda: dict(UNITS))
    normalization: Normalization = field(default_factory=sslt_channel_max)
    input_size: int = 224
    tower_kwargs: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    license: str | None = None
    citation: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.architecture not in TIMM_NAMES:
            raise ConfigError(
                f"unknown architecture {self.architecture!r}; known: {', '.join(TIMM_NAMES)}"
            )
        if self.task not in TASKS:
            raise ConfigError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if self.format_version > CONFIG_FORMAT_VERSION:
            raise ConfigError(
                f"config format_version {self.format_version} is newer than this version of "
                f"s1s2_encoders understands ({CONFIG_FORMAT_VERSION}); upgrade the package"
            )
        self.s1_bands = self._bands(self.s1_bands, "s1")
        self.s2_bands = self._bands(self.s2_bands, "s2")
        if isinstance(self.normalization, dict):
            self.normalization = Normalization.from_dict(self.normalization)
        self.normalization.validate_bands(self.s1_bands, self.s2_bands)
        # JSON-normal form (tuples -> lists), so a config equals itself after a save/load round trip.
        for name in ("tower_kwargs", "head", "provenance", "input_units"):
            try:
                setattr(self, name, json.loads(json.dumps(getattr(self, name))))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{name} must be JSON-serialisable: {exc}") from exc
        if not isinstance(self.input_size, int) or self.input_size <= 0:
            raise ConfigError(f"input_size must be a positive integer, got {self.input_size!r}")
        check_tower_kwargs(self.architecture, self.tower_kwargs)

    @staticmethod
    def _bands(bands: Any, modality: str) -> tuple[str, ...]:
        if isinstance(bands, str) or not bands:
            raise ConfigError(f"{modality}_bands must be a non-empty list of band names, got {bands!r}")
        names = tuple(canonical_band_name(b, modality) for b in bands)  # type: ignore[arg-type]
        if len(set(names)) != len(names):
            raise ConfigError(f"{modality}_bands has duplicates: {list(names)}")
        return names

    @property
    def timm_name(self) -> str:
        """The timm model each tower is built from."""
        return TIMM_NAMES[self.architecture]

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Normalization):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"config has unknown field(s) {unknown}; it may come from a newer s1s2_encoders"
            )
        kwargs = dict(data)
        for key in ("s1_bands", "s2_bands"):
            if key in kwargs and isinstance(kwargs[key], list):
                kwargs[key] = tuple(kwargs[key])
        try:
            return cls(**kwargs)
        except TypeError as exc:  # wrong value types end up here
            raise ConfigError(f"invalid config: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
