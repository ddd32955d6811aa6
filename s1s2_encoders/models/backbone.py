"""The two-tower S1 + S2 backbone and its ``embed`` API."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import InputShapeError
from ..inputs import ArrayLike, NodataPolicy, prepare_pair
from ..preprocess import InputNormalizer
from .compute import ComputeChoice, choose_compute, parse_dtype
from .engine import EngineCache, InferenceEngine, check_batch_size, compute_device
from .towers import TowerOutput, create_tower, pyramid_channels, tower_output

Modality = Literal["s1", "s2"]
MODALITIES: tuple[Modality, Modality] = ("s1", "s2")
DTypeArg = str | torch.dtype

__all__ = ["MODALITIES", "Modality", "S1S2Backbone", "TowerOutput", "prepare_pair", "resolve_dtype"]


def resolve_dtype(dtype: DTypeArg) -> torch.dtype:
    """``"float32"`` -> float32; ``"bfloat16"``/``"bf16"`` -> bfloat16 (no ``"auto"``: that needs a
    device, see :func:`~s1s2_encoders.models.compute.choose_compute`)."""
    if isinstance(dtype, str) and dtype.lower() == "auto":
        raise ValueError("resolve_dtype cannot decide 'auto' without a device; use choose_compute(dtype, device)")
    return parse_dtype(dtype) or torch.float32


class S1S2Backbone(nn.Module):
    """Two independent towers, one for Sentinel-1 and one for Sentinel-2, with normalisation inside.

    State-dict keys are ``s1.<timm key>`` and ``s2.<timm key>``; the normalisation is rebuilt from
    the config and is not part of the weights.

    Use :meth:`embed` / :meth:`embed_dense` for raw numpy arrays or tensors; ``forward`` is the
    export-friendly tensor path (full band stacks in model order, finite values).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        kwargs = dict(config.tower_kwargs)
        self.s1 = create_tower(config.architecture, len(config.s1_bands), **kwargs)
        self.s2 = create_tower(config.architecture, len(config.s2_bands), **kwargs)
        norm = config.normalization
        self.s1_normalizer = InputNormalizer(norm.kind, norm.s1, len(config.s1_bands), norm.eps)
        self.s2_normalizer = InputNormalizer(norm.kind, norm.s2, len(config.s2_bands), norm.eps)
        # The engines of embed's own calls (a plain attribute: never in state_dict(), never pickled).
        self._engines = EngineCache()
        self.last_compute: ComputeChoice | None = None
        """How the last :meth:`embed` / :meth:`embed_dense` call computed (dtype, device, why)."""

    # ------------------------------------------------------------------ introspection
    @property
    def embed_dims(self) -> dict[str, int]:
        """Pooled embedding size per modality (768 for Swin-T, 512 ResNet-18, 2048 ResNet-50)."""
        return {"s1": self.s1.num_features, "s2": self.s2.num_features}

    @property
    def embed_dim(self) -> int:
        """Size of the concatenated S1 + S2 embedding."""
        return sum(self.embed_dims.values())

    @property
    def pyramid_channels(self) -> dict[str, tuple[int, ...]]:
        """Channels of the dense maps at strides 4, 8, 16, 32 per modality."""
        return {"s1": pyramid_channels(self.s1), "s2": pyramid_channels(self.s2)}

    def tower(self, modality: Modality) -> nn.Module:
        return self.s1 if modality == "s1" else self.s2

    def normalizer(self, modality: Modality) -> InputNormalizer:
        return self.s1_normalizer if modality == "s1" else self.s2_normalizer

    def bands(self, modality: Modality) -> tuple[str, ...]:
        return self.config.s1_bands if modality == "s1" else self.config.s2_bands

    # ------------------------------------------------------------------ tensor paths
    def encode(
        self,
        modality: Modality,
        x: torch.Tensor,
        valid: torch.Tensor | None = None,
        present: Sequence[int] | None = None,
        dense: bool = False,
    ) -> TowerOutput:
        """Normalise and encode one modality with the model's own tower (training and export path;
        autograd as the caller has it).

        Args:
            modality: ``"s1"`` or ``"s2"``.
            x: ``(B, C, H, W)`` raw values in model band order (only ``present`` bands if given).
            valid: optional ``(B, 1, H, W)`` bool mask of pixels with data.
            present: model positions of ``x``'s channels when bands are missing.
            dense: also return the feature pyramid.
        """
        normalized = self.normalizer(modality)(x, valid=valid, present=present)
        return tower_output(self.tower(modality), self.config.architecture, normalized, valid, dense=dense)

    def forward(self, s1: torch.Tensor | None = None, s2: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embedding from raw tensors.

        Args:
            s1: ``(B, 2, H, W)`` backscatter in dB (VV, VH), or None.
            s2: ``(B, 13, H, W)`` L1C digital numbers in model band order, or None.

        Returns:
            ``(B, D)``: S1 then S2 pooled features concatenated (only the given modalities).
        """
        parts = [self.encode(m, x).pooled for m, x in (("s1", s1), ("s2", s2)) if x is not None]
        if not parts:
            raise InputShapeError("pass at least one of s1 and s2")
        return torch.cat(parts, dim=1)

    # ------------------------------------------------------------------ user API
    def embed(
        self,
        s1: ArrayLike | None = None,
        s2: ArrayLike | None = None,
        *,
        s1_bands: Sequence[str] | None = None,
        s2_bands: Sequence[str] | None = None,
        s2_offset: float | None = None,
        per_modality: bool = False,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: DTypeArg = "auto",
        nodata: NodataPolicy = "raise",
        check_units: bool = True,
    ) -> Any:
        """Pooled embeddings of co-located Sentinel-1 / Sentinel-2 inputs.

        Args:
            s1: ``(2, H, W)`` or ``(B, 2, H, W)`` backscatter in **dB** (VV, VH), numpy or torch.
            s2: ``(13, H, W)`` or ``(B, 13, H, W)`` **L1C digital numbers** (reflectance x 10000).
                Either may be omitted: the towers are independent.
            s1_bands / s2_bands: band names of the arrays' channels when they are not exactly the
                model's bands in model order (they are then selected and re-ordered). Missing S2
                bands are allowed with a warning (their first-layer weights are dropped).
            s2_offset: digital numbers to subtract from S2 first: 1000 for products of processing
                baseline 04.00 or later (acquired from 25 January 2022 on). ``None`` means 0 and
                warns if the values look offset.
            per_modality: return ``{"s1": (B, D1), "s2": (B, D2)}`` instead of the concatenation.
            batch_size: samples per forward pass (bounds memory for large inputs).
            device: where to compute (default: where the model is). The model itself is not moved
                (another device computes with a copy) and keeps its train/eval mode.
            dtype: ``"auto"`` (default): bfloat16 where the hardware runs it natively (CUDA with
                compute capability >= 8.0, CPUs with AVX512-BF16 or AMX), else float32; the
                choice is logged once (logger ``s1s2_encoders``, INFO) and kept in
                :attr:`last_compute`; the environment variable ``S1S2_DTYPE`` overrides it.
                ``"auto"`` and ``"bfloat16"`` run inference copies of the towers in that dtype,
                refreshed from the model's current weights at every call (normalisation stays
                float32; see :mod:`s1s2_encoders.models.engine`); ``"float32"`` runs the model's
                own towers (the reference); ``"float16"`` autocast. Outputs are float32 whatever the
                compute dtype. bfloat16 embeddings agree with float32 to cosine similarity >= 0.999
                (README, "Performance"). For many small calls, :meth:`inference_engine` saves the
                per-call refresh.
            nodata: ``"raise"`` on NaN/inf input, or ``"mask"`` them: they are excluded from
                pooling, and a sample with no valid pixel in a modality gets NaN for it.
            check_units: raise :class:`~s1s2_encoders.errors.UnitsError` on values that look like
                S2 reflectance in 0-1 or S1 in linear power.

        The pooled vector is the mean of the stride-32 map with every cell weighted by the number of
        valid input pixels it covers (edge cells of sizes that are not multiples of 32 cover fewer),
        so a sample's embedding does not depend on the other samples of its batch.

        Returns:
            ``(B, D)`` float32 (always with a batch dimension): S1 features then S2 features,
            ``D = 1536`` for Swin-T, 1024 for ResNet-18, 4096 for ResNet-50 (half with one
            modality). numpy in -> numpy out; tensor in -> tensor out on the input's device.
        """
        return self._embed(s1, s2, s1_bands, s2_bands, s2_offset, per_modality, batch_size, device, dtype, nodata,
                           check_units, dense=False)

    def embed_dense(
        self,
        s1: ArrayLike | None = None,
        s2: ArrayLike | None = None,
        *,
        s1_bands: Sequence[str] | None = None,
        s2_bands: Sequence[str] | None = None,
        s2_offset: float | None = None,
        per_modality: bool = False,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        dtype: DTypeArg = "auto",
        nodata: NodataPolicy = "raise",
        check_units: bool = True,
    ) -> Any:
        """Dense feature pyramid, aligned with the input pixels.

        Same arguments as :meth:`embed`. Maps are ``ceil(H/s) x ceil(W/s)``. Where each cell sits
        (:func:`~s1s2_encoders.models.towers.cell_centre`, measured from the models in the tests):

        * Swin: cell ``(i, j)`` of the stride-``s`` map is the patch ``[i*s, (i+1)*s) x [j*s, (j+1)*s)``,
          centred on its middle;
        * ResNet: cell ``(i, j)`` is centred on input pixel ``(i*s, j*s)`` (its receptive field; the
          stride-2 layers pad by ``k // 2``), i.e. ``s/2 - 1/2`` pixels before the middle of
          ``[i*s, (i+1)*s)``.

        With ``nodata="mask"``, cells without any valid pixel are NaN.

        Returns:
            ``{4: (B, C4, H/4, W/4), 8: ..., 16: ..., 32: ...}`` in NCHW with S1 channels then S2
            channels; with ``per_modality=True``, ``{"s1": {...}, "s2": {...}}``. For Swin-T the
            channels per modality are 96, 192, 384, 768; the mean of the stride-32 map weighted by
            each cell's in-image pixel count is the pooled embedding.
        """
        return self._embed(s1, s2, s1_bands, s2_bands, s2_offset, per_modality, batch_size, device, dtype, nodata,
                           check_units, dense=True)

    def save_pretrained(self, folder: str | Path, model_card: str | None = None, overwrite: bool = False) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``folder`` atomically."""
        from ..checkpoint import write_checkpoint

        return write_checkpoint(folder, self.config, self.state_dict(), model_card=model_card, overwrite=overwrite)

    def inference_engine(self, dtype: DTypeArg = "auto", device: str | torch.device | None = None) -> InferenceEngine:
        """An :class:`~s1s2_encoders.models.engine.InferenceEngine` of this model: the fast path for
        many calls (``engine.embed`` / ``engine.embed_dense`` / ``engine.encode_batch``), with no
        per-call cost.

        Like the module ``timm.utils.reparameterize_model`` returns, it is yours and it is a snapshot:
        its copies keep the weights of the moment it was made (``dtype="float32"`` on the model's
        device computes with the model's own towers). After changing the model's weights, call
        ``engine.refresh()`` or make a new one. :meth:`embed` needs none of this: it refreshes its own
        engine at every call.

        Args:
            dtype: as for :meth:`embed`.
            device: where to compute (default: where the model is); the model is not moved.
        """
        return InferenceEngine(self, choose_compute(dtype, compute_device(self, device)))

    # ------------------------------------------------------------------ internals
    def _embed(
        self, s1: Any, s2: Any, s1_bands: Any, s2_bands: Any, s2_offset: float | None, per_modality: bool,
        batch_size: int, device: Any, dtype: DTypeArg, nodata: NodataPolicy, check_units: bool, dense: bool,
    ) -> Any:
        check_batch_size(batch_size)
        parse_dtype(dtype)  # reject a bad dtype before any work
        prepared = prepare_pair(self.config, s1, s2, s1_bands, s2_bands, s2_offset, nodata, check_units)
        engine = self._engines.fresh(self, dtype, device, lambda choice: InferenceEngine(self, choice))
        self.last_compute = engine.compute
        return engine.embed_prepared(prepared, batch_size=batch_size, dense=dense, per_modality=per_modality)
