"""The model trained by contrastive pretraining and its step function.

:class:`ContrastivePretrainModel` holds the exported part, an
:class:`~s1s2_encoders.models.S1S2Backbone` (towers ``s1`` and ``s2``, normalisation inside), plus
what belongs to training only: projection heads. ``forward(batch)`` returns the embeddings the
objective needs, so DistributedDataParallel sees the whole computation:

``dual_simclr``
    pooled S1 and S2 embeddings of co-located crops (-> optional MLP heads), NT-Xent between them.
``simclr``
    for each modality in ``simclr_modalities``: two augmented views through the same tower
    (-> head), NT-Xent between the views. Towers not listed are frozen.
``mma``
    dense maps of both towers at the chosen pyramid strides (the backbone's feature pyramid, i.e.
    the stage outputs of the timm tower, NCHW; the original MMA used VGG encoders with a 1/8 map),
    symmetric InfoNCE on mean per-pixel cosine similarity, averaged over the strides.
``dual_simclr_mma``
    both: the Dual-SimCLR loss on the pooled embeddings (-> optional heads) plus ``mma_weight``
    times the MMA loss on the dense maps, from one forward pass per tower (the pooled embedding is
    the pooled stride-32 map of the same pyramid). The image-level term shapes what classification
    reads (the pooled embedding), the dense term what a segmentation decoder reads (the pyramid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from s1s2_encoders.errors import ConfigError
from s1s2_encoders.models import S1S2Backbone
from s1s2_encoders.models.towers import PYRAMID_STRIDES

from .losses import mma_logits, nt_xent_logits, top1_accuracy
from .trainer import StepOutput

Objective = Literal["dual_simclr", "simclr", "mma", "dual_simclr_mma"]
MODALITIES = ("s1", "s2")


@dataclass
class ProjectionConfig:
    """Projection head (training only; not exported).

    Attributes:
        kind: ``none`` (loss on the pooled features, as the published Swin code) or ``mlp``
            (``Linear(d, hidden) -> ReLU -> Linear(hidden, out_dim)``, as the published ResNet code).
        hidden_dim: hidden width (``null``: the tower's feature size d).
        out_dim: output size (128 in the published ResNet recipe).
        batch_norm: BatchNorm after the hidden layer (SimCLR v2). It keeps a freshly initialised
            tower from collapsing all embeddings onto one vector (a stationary point of NT-Xent) at
            higher learning rates; on several GPUs it becomes SyncBatchNorm (``train.sync_batchnorm``).
    """

    kind: Literal["none", "mlp"] = "none"
    hidden_dim: int | None = None
    out_dim: int = 128
    batch_norm: bool = False


@dataclass
class ObjectiveConfig:
    """The ``objective`` section.

    Attributes:
        kind: ``dual_simclr``, ``simclr``, ``mma`` or ``dual_simclr_mma`` (both losses added).
        temperature: softmax temperature (0.2 published Swin, 0.07 published ResNet, 0.1 MMA code),
            of every loss term.
        projection: projection head (of the pooled embeddings; the dense maps are never projected).
        simclr_modalities: towers trained by ``simclr`` (each on its own two views).
        mma_strides: pyramid levels (4, 8, 16, 32) aligned by ``mma`` and ``dual_simclr_mma``.
        mma_weight: weight of the dense term in ``dual_simclr_mma`` (the image-level term has 1).
        gather: use the global batch (all processes) as negatives.
    """

    kind: Objective = "dual_simclr"
    temperature: float = 0.1
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    simclr_modalities: tuple[str, ...] = ("s1", "s2")
    mma_strides: tuple[int, ...] = (32,)
    mma_weight: float = 1.0
    gather: bool = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"objective.temperature must be > 0, got {self.temperature}")
        bad = [m for m in self.simclr_modalities if m not in MODALITIES]
        if bad or not self.simclr_modalities:
            raise ConfigError(f"objective.simclr_modalities must be a non-empty subset of {list(MODALITIES)}, got {list(self.simclr_modalities)}")
        bad_strides = [s for s in self.mma_strides if s not in PYRAMID_STRIDES]
        if bad_strides or not self.mma_strides:
            raise ConfigError(f"objective.mma_strides must be among {list(PYRAMID_STRIDES)}, got {list(self.mma_strides)}")
        if not self.mma_weight > 0:
            raise ConfigError(f"objective.mma_weight must be > 0, got {self.mma_weight}")
        if self.kind == "mma" and self.projection.kind != "none":
            raise ConfigError("objective: mma aligns the backbone's dense maps directly; use projection.kind: none")


class ProjectionHead(nn.Sequential):
    """``Linear(d, hidden) [-> BatchNorm1d] -> ReLU -> Linear(hidden, out)`` (SimCLR's head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False):
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        super().__init__(*layers, nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


class ContrastivePretrainModel(nn.Module):
    """Backbone + projection heads; ``forward(batch)`` returns the embeddings of the objective.

    Args:
        backbone: the two-tower backbone to train (exported afterwards).
        objective: the objective section.

    State-dict keys: ``backbone.s1.*``, ``backbone.s2.*`` (exported) and ``heads.<modality>.*``.
    """

    def __init__(self, backbone: S1S2Backbone, objective: ObjectiveConfig):
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        self.heads = nn.ModuleDict()
        if objective.projection.kind == "mlp":
            for m, dim in backbone.embed_dims.items():
                hidden = objective.projection.hidden_dim or dim
                self.heads[m] = ProjectionHead(dim, hidden, objective.projection.out_dim, objective.projection.batch_norm)
        if objective.kind == "simclr":
            for m in MODALITIES:
                if m not in objective.simclr_modalities:
                    backbone.tower(m).requires_grad_(False)  # type: ignore[arg-type]
                    if m in self.heads:
                        self.heads[m].requires_grad_(False)

    def _project(self, modality: str, pooled: torch.Tensor) -> torch.Tensor:
        return self.heads[modality](pooled) if modality in self.heads else pooled

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        kind = self.objective.kind
        valid = batch.get("valid")
        if kind == "dual_simclr":
            return {m: self._project(m, self.backbone.encode(m, batch[m], valid=valid).pooled) for m in MODALITIES}  # type: ignore[arg-type]
        if kind == "simclr":
            out: dict[str, Any] = {}
            for m in self.objective.simclr_modalities:
                x = torch.cat([batch[m], batch[f"{m}_view2"]])
                v = torch.cat([batch["valid"], batch["valid_view2"]]) if valid is not None else None
                z = self._project(m, self.backbone.encode(m, x, valid=v).pooled)  # type: ignore[arg-type]
                out[m], out[f"{m}_view2"] = z.chunk(2)
            return out
        encoded = {m: self.backbone.encode(m, batch[m], dense=True) for m in MODALITIES}  # type: ignore[arg-type]
        out = {
            f"{m}@{s}": encoded[m].pyramid[PYRAMID_STRIDES.index(s)]  # type: ignore[index]
            for m in MODALITIES for s in self.objective.mma_strides
        }
        if kind == "dual_simclr_mma":
            out.update({m: self._project(m, encoded[m].pooled) for m in MODALITIES})
        return out


def contrastive_step(objective: ObjectiveConfig):
    """The :data:`~training.trainer.StepFn` of an objective (loss, top-1 retrieval accuracy in the
    batch, NaN replacement counts)."""

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        out = model(batch)
        t, gather = objective.temperature, objective.gather
        metrics: dict[str, torch.Tensor | float] = {}
        if objective.kind == "dual_simclr":
            logits = nt_xent_logits(out["s1"], out["s2"], t, gather)
            loss = nn.functional.cross_entropy(logits.logits, logits.targets)
            metrics["top1"] = top1_accuracy(logits.logits, logits.targets)
        elif objective.kind == "simclr":
            losses = []
            for m in objective.simclr_modalities:
                logits = nt_xent_logits(out[m], out[f"{m}_view2"], t, gather)
                losses.append(nn.functional.cross_entropy(logits.logits, logits.targets))
                metrics[f"top1_{m}"] = top1_accuracy(logits.logits, logits.targets)
                metrics[f"loss_{m}"] = losses[-1].detach()
            loss = torch.stack(losses).mean()
        else:
            losses = []
            for s in objective.mma_strides:
                rows, cols = mma_logits(out[f"s1@{s}"], out[f"s2@{s}"], t, gather)
                level = 0.5 * (nn.functional.cross_entropy(rows.logits, rows.targets) + nn.functional.cross_entropy(cols.logits, cols.targets))
                losses.append(level)
                metrics[f"top1_s1_to_s2@{s}"] = top1_accuracy(rows.logits, rows.targets)
            loss = torch.stack(losses).mean()
            if objective.kind == "dual_simclr_mma":
                logits = nt_xent_logits(out["s1"], out["s2"], t, gather)
                image_level = nn.functional.cross_entropy(logits.logits, logits.targets)
                metrics["top1"] = top1_accuracy(logits.logits, logits.targets)
                metrics["loss_dual_simclr"], metrics["loss_mma"] = image_level.detach(), loss.detach()
                loss = image_level + objective.mma_weight * loss
        counts: dict[str, torch.Tensor] = {}
        if "n_nan_replaced" in batch:  # samples redrawn because of NaN/inf (nan_policy: skip)
            counts["nan_replaced"] = batch["n_nan_replaced"].sum()
        if "valid" in batch:  # pixels masked out (nan_policy: mask)
            counts["masked_pixels"] = (~batch["valid"]).sum()
        return StepOutput(loss, metrics, counts)

    return step
