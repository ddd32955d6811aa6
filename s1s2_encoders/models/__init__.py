"""Models: timm towers, the two-tower backbone, and the factory that loads them."""

from .backbone import S1S2Backbone, TowerOutput
from .factory import create_backbone, load_backbone
from .towers import PYRAMID_STRIDES, TOTAL_STRIDE, create_tower

__all__ = [
    "PYRAMID_STRIDES",
    "S1S2Backbone",
    "TOTAL_STRIDE",
    "TowerOutput",
    "create_backbone",
    "create_tower",
    "load_backbone",
]
