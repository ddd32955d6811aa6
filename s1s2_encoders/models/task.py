"""Task models: land-cover classifiers and segmenters on top of the S1 / S2 towers.

One class per task, each with four fusion variants (``config.head["fusion"]``), which are the
models of the ISPRS 2022 comparison (reference_facts.md §2.1, §5.1) and of the CVPRW 2022 heads:

``"late"``   two towers (S1, S2), features concatenated: the SSL models and the *LateFusion*
             supervised baseline (same architecture, trained from scratch).
``"early"``  one tower on the 15 stacked channels (S1 then S2, each normalised as configured):
             the *EarlyFusion* baseline.
``"s1"``     one S1 tower: *OnlySen-1*.
``"s2"``     one S2 tower: *OnlySen-2*.

State-dict layout (strict loading checks every key): ``towers.<branch>.<timm key>`` with branch
``s1``, ``s2`` or ``s1s2`` (early fusion); ``head.fc.*`` for classifiers; ``decoders.<branch>.*`` and
``head.{expand,norm,classifier}.*`` for segmenters. The input normalisation is rebuilt from the config
and is not part of the weights, as for backbones.

``predict`` is the user path (raw numpy / tensors, any size, band names, nodata masking, batching);
``forward`` is the export path (full band stacks in model order, finite values, logits).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import nn

from ..classes import DFC2020_CLASS_COLORS, DFC2020_CLASS_NAMES, default_class_colors
from ..config import ModelConfig
from ..errors import ConfigError, InputShapeError
from ..inputs import ArrayLike, NodataPolicy, prepare_pair
from ..preprocess import InputNormalizer
from .backbone import MODALITIES, DTypeArg, Modality, S1S2Backbone
from .compute import choose_compute, parse_dtype
from .engine import EngineCache, TaskInferenceEngine, check_batch_size, compute_device
from .factory import load_backbone
from .heads import FusionSegmentationHead, LinearClassifier, SwinUNetDecoder, UNetDecoder, swin_skip_features
from .towers import create_tower, feature_pyramid, is_swin, pad_to_stride, pyramid_channels, tower_output

Fusion = Literal["late", "early", "s1", "s2"]
FUSIONS: tuple[str, ...] = ("late", "early", "s1", "s2")
TASK_TASKS: tuple[str, ...] = ("classification", "segmentation")

_COMMON_HEAD_KEYS = {"class_names", "class_colors", "fusion"}
_HEAD_KEYS = {
    "classification": _COMMON_HEAD_KEYS | {"multi_label"},
    "segmentation": _COMMON_HEAD_KEYS | {"decoder"},
}
_DECODER_KEYS = {
    "swin-unet": {"kind", "depths", "num_heads", "window_size", "drop_path_rate"},
    "unet": {"kind", "channels"},
}
DEFAULT_UNET_CHANNELS: tuple[int, int, int] = (256, 128, 64)
DEFAULT_DECODER_DROP_PATH = 0.1  # the original decoder's drop_path_rate (§1.4)


# ---------------------------------------------------------------------------------------- head spec
@dataclass(frozen=True)
class HeadSpec:
    """The validated ``config.head`` of a task model.

    Attributes:
        class_names: one name per output index.
        class_colors: ``(r, g, b)`` in 0-255 per class, for map legends.
        fusion: ``"late"``, ``"early"``, ``"s1"`` or ``"s2"``.
        multi_label: classification only: sigmoid per class instead of a softmax.
        decoder: segmentation only: ``{"kind": "swin-unet", "depths", "num_heads", "window_size",
            "drop_path_rate"}`` or ``{"kind": "unet", "channels"}`` (possibly partial before the
            model resolves the defaults from its towers).
    """

    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    fusion: str
    multi_label: bool = False
    decoder: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, config: ModelConfig) -> "HeadSpec":
        task = config.task
        if task not in TASK_TASKS:
            raise ConfigError(
                f"config describes a {task!r} model, not a task model; use load_backbone() for backbones"
            )
        head = config.head
        if not isinstance(head, dict):
            raise ConfigError(f"head must be an object, got {type(head).__name__}")
        unknown = sorted(set(head) - _HEAD_KEYS[task])
        if unknown:
            raise ConfigError(f"head of a {task} model has unknown field(s) {unknown}; known: {sorted(_HEAD_KEYS[task])}")
        names = head.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"head.class_names must be a non-empty list of class names, got {names!r}")
        if len(set(names)) != len(names):
            raise ConfigError(f"head.class_names has duplicates: {names}")
        multi_label = head.get("multi_label", False)
        if not isinstance(multi_label, bool):
            raise ConfigError(f"head.multi_label must be true or false, got {multi_label!r}")
        if len(names) < 2 and not multi_label:
            raise ConfigError(f"a {task} model needs at least 2 classes, got {names}")
        colors = head.get("class_colors")
        if colors is None:
            raise ConfigError("head.class_colors is missing: one [r, g, b] (0-255) per class")
        if not isinstance(colors, list) or len(colors) != len(names):
            raise ConfigError(
                f"head.class_colors must list one [r, g, b] per class ({len(names)} classes), got {colors!r}"
            )
        for name, color in zip(names, colors):
            if (
                not isinstance(color, list) or len(color) != 3
                or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
            ):
                raise ConfigError(f"head.class_colors entry of {name!r} must be [r, g, b] with integers 0-255, got {color!r}")
        fusion = head.get("fusion")
        if fusion not in FUSIONS:
            raise ConfigError(f"head.fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        decoder = head.get("decoder")
        if task == "segmentation":
            decoder = _check_decoder(decoder, config.architecture)
        return cls(
            class_names=tuple(names), class_colors=tuple(tuple(c) for c in colors), fusion=fusion,  # type: ignore[misc]
            multi_label=multi_label, decoder=decoder,
        )

    def to_dict(self, task: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "class_names": list(self.class_names),
            "class_colors": [list(c) for c in self.class_colors],
            "fusion": self.fusion,
        }
        if task == "classification":
            out["multi_label"] = self.multi_label
        else:
            out["decoder"] = dict(self.decoder or {})
        return out


def _check_decoder(decoder: Any, architecture: str) -> dict[str, Any]:
    expected = "swin-unet" if is_swin(architecture) else "unet"
    if decoder is None:
        return {"kind": expected}
    if not isinstance(decoder, dict):
        raise ConfigError(f"head.decoder must be an object, got {decoder!r}")
    kind = decoder.get("kind", expected)
    if kind != expected:
        raise ConfigError(f"head.decoder.kind {kind!r} does not fit a {architecture} model; use {expected!r}")
    unknown = sorted(set(decoder) - _DECODER_KEYS[kind])
    if unknown:
        raise ConfigError(f"head.decoder ({kind}) has unknown field(s) {unknown}; known: {sorted(_DECODER_KEYS[kind])}")
    for key in ("depths", "num_heads", "channels"):
        if key in decoder:
            value = decoder[key]
            if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, int) and v > 0 for v in value):
                raise ConfigError(
                    f"head.decoder.{key} must be 3 positive integers (decoder stages at strides 16, 8, 4), got {value!r}"
                )
    rate = decoder.get("drop_path_rate", 0.0)
    if not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ConfigError(f"head.decoder.drop_path_rate must be in [0, 1), got {rate!r}")
    return {**decoder, "kind": kind}


def task_config(
    base: ModelConfig,
    task: str,
    *,
    class_names: Sequence[str] = DFC2020_CLASS_NAMES,
    class_colors: Sequence[Sequence[int]] | None = None,
    multi_label: bool = False,
    fusion: str = "late",
    decoder: dict[str, Any] | None = None,
    name: str | None = None,
) -> ModelConfig:
    """A task-model config from a backbone config (architecture, bands, normalisation, tower sizes).

    Args:
        base: the backbone's config (its ``task`` may be anything; it is replaced).
        task: ``"classification"`` or ``"segmentation"``.
        class_names: output classes (default: the 8 DFC2020 classes).
        class_colors: ``[r, g, b]`` per class; default: the DFC2020 palette for the DFC2020 classes,
            else :func:`~s1s2_encoders.classes.default_class_colors`.
        multi_label: classification only.
        fusion: ``"late"`` (default), ``"early"``, ``"s1"`` or ``"s2"``.
        decoder: segmentation only: overrides of the decoder (e.g. ``{"channels": [64, 32, 16]}``
            for a UNet, ``{"drop_path_rate": 0.0}`` for a SwinUNet); the rest is derived from the towers.
        name: the new model's name.
    """
    if task not in TASK_TASKS:
        raise ConfigError(f"task must be 'classification' or 'segmentation', got {task!r}")
    names = [str(n) for n in class_names]
    if class_colors is None:
        class_colors = DFC2020_CLASS_COLORS if tuple(names) == DFC2020_CLASS_NAMES else default_class_colors(len(names))
    head: dict[str, Any] = {
        "class_names": names,
        "class_colors": [[int(v) for v in c] for c in class_colors],
        "fusion": fusion,
    }
    if task == "classification":
        head["multi_label"] = bool(multi_label)
    else:
        if multi_label:
            raise ConfigError("multi_label applies to classification only")
        head["decoder"] = dict(decoder or {})
    config = base.replace(task=task, head=head, name=name if name is not None else base.name)
    HeadSpec.from_config(config)  # validate now, with the caller's values in the message
    return config


# ---------------------------------------------------------------------------------------- models
class S1S2TaskModel(nn.Module):
    """Common part of classifiers and segmenters: towers per fusion branch, normalisers, inputs.

    Not used directly: build :class:`S1S2Classifier` / :class:`S1S2Segmenter`, or call
    :func:`~s1s2_encoders.load_model` on a fine-tuned folder.
    """

    task: str = ""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.task != self.task:
            raise ConfigError(f"{type(self).__name__} needs a {self.task} config, got task {config.task!r}")
        spec = HeadSpec.from_config(config)
        self.spec = spec
        self.config = config
        kwargs = dict(config.tower_kwargs)
        n1, n2 = len(config.s1_bands), len(config.s2_bands)
        channels = {"s1": n1, "s2": n2, "s1s2": n1 + n2}
        self.towers = nn.ModuleDict({b: create_tower(config.architecture, channels[b], **kwargs) for b in self.branches})
        norm = config.normalization
        self.s1_normalizer = InputNormalizer(norm.kind, norm.s1, n1, norm.eps)
        self.s2_normalizer = InputNormalizer(norm.kind, norm.s2, n2, norm.eps)
        self._backbone_frozen = False
        self._engines = EngineCache()  # predict's own engines (never in state_dict(), never pickled)

    # ------------------------------------------------------------------ introspection
    @property
    def fusion(self) -> str:
        return self.spec.fusion

    @property
    def branches(self) -> tuple[str, ...]:
        """Tower names: ``("s1", "s2")`` (late), ``("s1s2",)`` (early), ``("s1",)`` or ``("s2",)``."""
        return {"late": ("s1", "s2"), "early": ("s1s2",), "s1": ("s1",), "s2": ("s2",)}[self.spec.fusion]

    @property
    def modalities(self) -> tuple[Modality, ...]:
        """The inputs this model reads: ``("s1", "s2")``, ``("s1",)`` or ``("s2",)``."""
        return {"s1": ("s1",), "s2": ("s2",)}.get(self.spec.fusion, MODALITIES)  # type: ignore[return-value]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        """RGB (0-255) legend colour per class."""
        return self.spec.class_colors

    @property
    def num_classes(self) -> int:
        return len(self.spec.class_names)

    # ------------------------------------------------------------------ backbone freezing
    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    def freeze_backbone(self, frozen: bool = True) -> "S1S2TaskModel":
        """Freeze (``requires_grad=False``, eval mode) or unfreeze the towers.

        A frozen backbone stays in eval mode even under ``model.train()``: no BatchNorm statistic
        updates, no stochastic depth, so a linear probe sees the pretrained features unchanged.
        """
        self._backbone_frozen = bool(frozen)
        for parameter in self.towers.parameters():
            parameter.requires_grad_(not frozen)
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> "S1S2TaskModel":
        super().train(mode)
        if self._backbone_frozen:
            self.towers.eval()
        return self

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the towers (the pretrained part)."""
        return self.towers.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the towers (classifier, decoders, fusion head)."""
        backbone = {id(p) for p in self.towers.parameters()}
        return (p for p in self.parameters() if id(p) not in backbone)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_backbone(
        cls,
        backbone: "S1S2Backbone | str | os.PathLike[str]",
        *,
        class_names: Sequence[str] = DFC2020_CLASS_NAMES,
        class_colors: Sequence[Sequence[int]] | None = None,
        fusion: str = "late",
        name: str | None = None,
        **head: Any,
    ) -> "S1S2TaskModel":
        """A task model whose towers start from a pretrained backbone; the head is random.

        Args:
            backbone: an :class:`S1S2Backbone`, or anything :func:`load_backbone` accepts.
            class_names / class_colors / fusion / name: see :func:`task_config`. ``fusion`` must
                be ``"late"``, ``"s1"`` or ``"s2"``: an early-fusion tower (15 input channels) has no
                pretrained counterpart.
            head: ``multi_label=`` (classifier) or ``decoder=`` (segmenter).
        """
        if not isinstance(backbone, S1S2Backbone):
            backbone = load_backbone(backbone)
        if fusion == "early":
            raise ConfigError(
                "an early-fusion model has one tower on the 15 stacked S1+S2 channels; a two-tower "
                "backbone cannot initialise it. Use fusion='late', 's1' or 's2', or train early fusion from scratch."
            )
        config = task_config(
            backbone.config, cls.task, class_names=class_names, class_colors=class_colors, fusion=fusion, name=name,
            **head,
        )
        config.provenance = {
            "backbone": {"name": backbone.config.name, "provenance": backbone.config.provenance},
        }
        model = cls(config)
        for branch in model.branches:
            model.towers[branch].load_state_dict(backbone.tower(branch).state_dict(), strict=True)  # type: ignore[arg-type]
        return model

    def to_backbone(self) -> S1S2Backbone:
        """The (fine-tuned) towers as an :class:`S1S2Backbone` for ``embed``; late fusion only."""
        if self.spec.fusion != "late":
            raise ConfigError(f"only late-fusion models have the two towers of a backbone (this one: {self.spec.fusion!r})")
        backbone = S1S2Backbone(self.config.replace(task="backbone", head={}))
        backbone.s1.load_state_dict(self.towers["s1"].state_dict())
        backbone.s2.load_state_dict(self.towers["s2"].state_dict())
        return backbone.eval()

    def save_pretrained(self, folder: str | Path, model_card: str | None = None, overwrite: bool = False) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``folder`` atomically;
        :func:`~s1s2_encoders.load_model` loads it back."""
        from ..checkpoint import write_checkpoint

        return write_checkpoint(folder, self.config, self.state_dict(), model_card=model_card, overwrite=overwrite)

    # ------------------------------------------------------------------ tensor paths
    def normalize(
        self, modality: Modality, x: torch.Tensor, valid: torch.Tensor | None = None, present: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Raw ``(B, C, H, W)`` -> normalised ``(B, n_bands, H, W)`` float32 (see :class:`InputNormalizer`)."""
        normalizer = self.s1_normalizer if modality == "s1" else self.s2_normalizer
        return normalizer(x, valid=valid, present=present)

    def branch_inputs(self, normalized: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalised modalities -> the input of each tower (early fusion stacks S1 then S2)."""
        if self.spec.fusion == "early":
            return {"s1s2": torch.cat([normalized["s1"], normalized["s2"]], dim=1)}
        return {branch: normalized[branch] for branch in self.branches}

    def logits(
        self, normalized: dict[str, torch.Tensor], valid: dict[str, torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """Class logits from normalised inputs (see subclasses for the shape)."""
        raise NotImplementedError

    def forward(
        self, s1: torch.Tensor | None = None, s2: torch.Tensor | None = None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits from raw tensors (export and training path).

        Args:
            s1: ``(B, 2, H, W)`` backscatter in dB (VV, VH), when the model reads S1.
            s2: ``(B, 13, H, W)`` L1C digital numbers in model band order, when it reads S2.
            valid: optional ``(B, 1, H, W)`` bool mask of pixels with data in every modality
                (training with ``nan_policy: mask``); invalid pixels are zero after normalisation
                and left out of a classifier's pooling.

        Returns:
            Classifier: ``(B, K)``; segmenter: ``(B, K, H, W)``.
        """
        given = {"s1": s1, "s2": s2}
        for modality in self.modalities:
            if given[modality] is None:
                raise InputShapeError(f"this {self.spec.fusion}-fusion model needs {modality}")
        normalized = {m: self.normalize(m, given[m], valid=valid) for m in self.modalities}  # type: ignore[arg-type]
        masks = None if valid is None else {m: valid for m in self.modalities}
        return self.logits(normalized, masks)

    # ------------------------------------------------------------------ user API
    def predict(
        self,
        s1: ArrayLike | None = None,
        s2: ArrayLike | None = None,
        *,
        s1_bands: Sequence[str] | None = None,
        s2_bands: Sequence[str] | None = None,
        s2_offset: float | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: DTypeArg = "auto",
        nodata: NodataPolicy = "raise",
        check_units: bool = True,
    ) -> Any:
        """Class probabilities for co-located Sentinel-1 / Sentinel-2 inputs.

        Args:
            s1: ``(2, H, W)`` or ``(B, 2, H, W)`` backscatter in **dB** (VV, VH), numpy or torch.
            s2: ``(13, H, W)`` or ``(B, 13, H, W)`` **L1C digital numbers**. Pass exactly the
                modalities the model reads (:attr:`modalities`).
            s1_bands / s2_bands / s2_offset / check_units: as for :meth:`S1S2Backbone.embed`.
            batch_size: samples per forward pass.
            device: where to compute (default: where the model is). The model itself is not moved
                (another device computes with a copy) and keeps its train/eval mode.
            dtype: ``"auto"`` (default: bfloat16 autocast where the device runs it natively, else
                float32), ``"float32"`` (the reference), ``"bfloat16"`` or ``"float16"`` (autocast);
                outputs are float32.
            nodata: ``"raise"`` on NaN/inf input, or ``"mask"``: invalid pixels are zero after
                normalisation; a segmenter gives NaN probabilities at every pixel where a modality
                it reads has no valid data, a classifier pools each modality over its valid pixels
                and gives NaN for a sample with no valid pixel in a modality it reads.

        Returns:
            Classifier: ``(B, K)`` softmax probabilities, or per-class sigmoid probabilities when
            ``multi_label``. Segmenter: ``(B, K, H, W)`` softmax probabilities for any H x W.
            float32, always with a batch dimension; numpy in -> numpy out, tensor in -> tensor out
            on the input's device.
        """
        check_batch_size(batch_size)
        parse_dtype(dtype)  # reject a bad dtype before any work
        given = {"s1": s1, "s2": s2}
        for modality in MODALITIES:
            if modality in self.modalities and given[modality] is None:
                raise InputShapeError(
                    f"this model ({self.spec.fusion} fusion) reads {' and '.join(self.modalities)}; {modality} is missing"
                )
            if modality not in self.modalities and given[modality] is not None:
                raise InputShapeError(
                    f"this model ({self.spec.fusion} fusion) reads only {' and '.join(self.modalities)}; "
                    f"do not pass {modality}"
                )
        prepared = prepare_pair(self.config, s1, s2, s1_bands, s2_bands, s2_offset, nodata, check_units)
        engine = self._engines.fresh(self, dtype, device, lambda choice: TaskInferenceEngine(self, choice))
        return engine.predict_prepared(prepared, batch_size=batch_size)

    def inference_engine(self, dtype: DTypeArg = "auto", device: str | torch.device | None = None) -> TaskInferenceEngine:
        """A :class:`~s1s2_encoders.models.engine.TaskInferenceEngine` of this model for many batches
        (``engine.predict_batch``): on the model's device it computes with the model itself; on another
        device with a copy, a snapshot until ``engine.refresh()``. The model is not moved."""
        return TaskInferenceEngine(self, choose_compute(dtype, compute_device(self, device)))

    def probabilities(self, logits: torch.Tensor, valid: dict[str, torch.Tensor | None] | None = None) -> torch.Tensor:
        """Logits -> probabilities (softmax over classes; sigmoid for multi-label classifiers)."""
        raise NotImplementedError


class S1S2Classifier(S1S2TaskModel):
    """Scene classifier: pooled tower features, concatenated (S1 then S2), ``Linear(D -> K)``.

    Single-label: softmax over the K classes; multi-label (``head.multi_label``): one sigmoid per class
    (the papers threshold at 0.5, reference_facts.md §3.3).
    """

    task = "classification"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        features = sum(self.towers[b].num_features for b in self.branches)
        self.head = LinearClassifier(features, self.num_classes)

    @property
    def multi_label(self) -> bool:
        return self.spec.multi_label

    def pooled_features(
        self, normalized: dict[str, torch.Tensor], valid: dict[str, torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """``(B, D)``: each tower's pooled feature, as the backbone's (:func:`~.towers.tower_output`: the
        stride-32 map averaged with every cell weighted by its valid input pixels), in branch order."""
        valid = valid or {}
        architecture = self.config.architecture
        pooled = [tower_output(self.towers[branch], architecture, x, _branch_mask(branch, valid)).pooled
                  for branch, x in self.branch_inputs(normalized).items()]
        return torch.cat(pooled, dim=1)

    def logits(
        self, normalized: dict[str, torch.Tensor], valid: dict[str, torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """``(B, K)`` logits."""
        return self.head(self.pooled_features(normalized, valid))

    def probabilities(self, logits: torch.Tensor, valid: dict[str, torch.Tensor | None] | None = None) -> torch.Tensor:
        return torch.sigmoid(logits) if self.spec.multi_label else torch.softmax(logits, dim=1)


class S1S2Segmenter(S1S2TaskModel):
    """Per-pixel land-cover segmenter: one decoder per tower, stride-4 maps fused by concatenation,
    x4 expansion and a 1x1 classifier (reference_facts.md §1.4). Swin towers get a SwinUNet decoder
    whose skips are the patch-embedding and patch-merging outputs; ResNet towers a UNet decoder over
    their stage outputs. Any input size works (padded to a multiple of 32, cropped back)."""

    task = "segmentation"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        decoder_spec = self._resolve_decoder(self.spec.decoder or {})
        # Record the resolved decoder so that config.json describes the architecture completely.
        self.config = config.replace(head={**config.head, "decoder": decoder_spec})
        self.spec = HeadSpec.from_config(self.config)
        self.decoders = nn.ModuleDict({b: self._build_decoder(self.towers[b], decoder_spec) for b in self.branches})
        fused = sum(d.out_channels for d in self.decoders.values())
        self.head = FusionSegmentationHead(fused, self.num_classes)

    def _resolve_decoder(self, spec: dict[str, Any]) -> dict[str, Any]:
        tower = next(iter(self.towers.values()))
        if spec["kind"] == "swin-unet":
            stages = list(tower.layers)
            if len(stages) != 4:
                raise ConfigError(f"the SwinUNet decoder needs a 4-stage Swin tower, this one has {len(stages)}")
            mirrored = (2, 1, 0)  # decoder stages at strides 16, 8, 4 mirror encoder stages 2, 1, 0
            return {
                "kind": "swin-unet",
                "depths": list(spec.get("depths") or [len(stages[i].blocks) for i in mirrored]),
                "num_heads": list(spec.get("num_heads") or [stages[i].blocks[0].attn.num_heads for i in mirrored]),
                "window_size": int(spec.get("window_size") or self.config.tower_kwargs.get("window_size", 7)),
                "drop_path_rate": float(spec.get("drop_path_rate", DEFAULT_DECODER_DROP_PATH)),
            }
        return {"kind": "unet", "channels": list(spec.get("channels") or DEFAULT_UNET_CHANNELS)}

    @staticmethod
    def _build_decoder(tower: nn.Module, spec: dict[str, Any]) -> nn.Module:
        if spec["kind"] == "swin-unet":
            grid = tuple(tower.patch_embed.grid_size)
            return SwinUNetDecoder(
                tower.embed_dim, spec["depths"], spec["num_heads"], grid=grid,  # type: ignore[arg-type]
                window_size=spec["window_size"], drop_path_rate=spec["drop_path_rate"],
            )
        return UNetDecoder(pyramid_channels(tower), spec["channels"])

    def decoded_maps(self, normalized: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-branch decoder outputs ``(B, H_pad/4, W_pad/4, C)`` channels-last (inputs padded to 32)."""
        maps = {}
        for branch, x in self.branch_inputs(normalized).items():
            padded = pad_to_stride(x)
            tower = self.towers[branch]
            if is_swin(self.config.architecture):
                skips, bottleneck = swin_skip_features(tower, padded)
                maps[branch] = self.decoders[branch](skips, bottleneck)
            else:
                maps[branch] = self.decoders[branch](feature_pyramid(tower, self.config.architecture, padded))
        return maps

    def logits(
        self, normalized: dict[str, torch.Tensor], valid: dict[str, torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """``(B, K, H, W)`` logits at the input's size."""
        h, w = next(iter(normalized.values())).shape[-2:]
        fused = torch.cat(list(self.decoded_maps(normalized).values()), dim=-1)
        return self.head(fused)[..., :h, :w]

    def probabilities(self, logits: torch.Tensor, valid: dict[str, torch.Tensor | None] | None = None) -> torch.Tensor:
        probs = torch.softmax(logits, dim=1)
        masks = [m for m in (valid or {}).values() if m is not None]
        if masks:
            usable = torch.stack(masks).all(dim=0)  # (B, 1, H, W): every modality read has data
            probs = torch.where(usable, probs, torch.full((), math.nan, device=probs.device))
        return probs


def _branch_mask(branch: str, valid: dict[str, torch.Tensor | None]) -> torch.Tensor | None:
    """Valid-pixel mask of one tower's input: its modality's, or both for early fusion."""
    if branch != "s1s2":
        return valid.get(branch)
    masks = [m for m in (valid.get("s1"), valid.get("s2")) if m is not None]
    if not masks:
        return None
    return masks[0] if len(masks) == 1 else masks[0] & masks[1]


TASK_MODELS: dict[str, type[S1S2TaskModel]] = {"classification": S1S2Classifier, "segmentation": S1S2Segmenter}


def create_model(config: ModelConfig) -> S1S2TaskModel:
    """Build a task model with random weights from a classification / segmentation config."""
    try:
        cls = TASK_MODELS[config.task]
    except KeyError:
        raise ConfigError(
            f"config describes a {config.task!r} model, not a task model; use load_backbone() for backbones"
        ) from None
    return cls(config)


__all__ = [
    "FUSIONS",
    "HeadSpec",
    "S1S2Classifier",
    "S1S2Segmenter",
    "S1S2TaskModel",
    "TASK_MODELS",
    "create_model",
    "task_config",
]
