"""torch.hub entry points: the published S1 + S2 backbones.

    import torch
    model = torch.hub.load("s1s2-encoders/s1s2-encoders", "swin_s1s2")            # pretrained (default)
    model = torch.hub.load("s1s2-encoders/s1s2-encoders", "resnet50_s1s2", pretrained=False)
    emb = model.embed(s1, s2)   # S1 dB (2, H, W) + S2 L1C DN (13, H, W) -> (1, D)

Each entry point is :func:`s1s2_encoders.load_backbone` of a registry name: ``pretrained=True`` loads the
authors' weights (fetched and converted once, then cached; see ``s1s2 models``), other keyword arguments
(``local_files_only``, ``cache_dir``, ``device``, ``expected_sha256``, ...) are passed through.
"""

from __future__ import annotations

# Modules torch.hub checks for before it imports this file.
dependencies = ["torch", "timm", "huggingface_hub", "safetensors", "numpy"]

# Private names: torch.hub.list() offers every public callable of this file as an entry point.
from s1s2_encoders import S1S2Backbone as _Backbone  # noqa: E402  (after `dependencies`, as torch.hub expects)
from s1s2_encoders import load_backbone as _load_backbone  # noqa: E402


def swin_s1s2(pretrained: bool = True, **kwargs) -> _Backbone:
    """Dual Swin-T (S1 + S2), contrastive SSL on SEN12MS (Scheibenreif et al., CVPRW 2022); 1536-d embeddings."""
    return _load_backbone("swin-s1s2", pretrained=pretrained, **kwargs)


def resnet50_s1s2(pretrained: bool = True, **kwargs) -> _Backbone:
    """Dual ResNet-50 (S1 + S2), Dual-SimCLR on SEN12MS (Scheibenreif et al., ISPRS 2022); 4096-d embeddings."""
    return _load_backbone("resnet50-s1s2", pretrained=pretrained, **kwargs)


def resnet18_s1s2(pretrained: bool = True, **kwargs) -> _Backbone:
    """Dual ResNet-18 (S1 + S2), Dual-SimCLR on SEN12MS (Scheibenreif et al., ISPRS 2022); 1024-d embeddings."""
    return _load_backbone("resnet18-s1s2", pretrained=pretrained, **kwargs)
