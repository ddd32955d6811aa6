"""Imported by TerraTorch's command line through ``custom_modules_path``: registers the s1s2-encoders
backbones (``s1s2_swin``, ``s1s2_resnet50``, ``s1s2_resnet18``) in TerraTorch's backbone registry."""

import s1s2_encoders.terratorch  # noqa: F401
