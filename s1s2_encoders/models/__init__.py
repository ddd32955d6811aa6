"""Models: timm towers, the two-tower backbone, task heads and models, and the factories that load them."""

from .backbone import S1S2Backbone, TowerOutput
from .engine import InferenceEngine, ModalityBatch, TaskInferenceEngine
from .factory import create_backbone, load_backbone
from .task_factory import load_model
from .task import S1S2Classifier, S1S2Segmenter, S1S2TaskModel, create_model, task_config
from .towers import PYRAMID_STRIDES, TOTAL_STRIDE, cell_centre, create_tower

__all__ = [
    "InferenceEngine",
    "ModalityBatch",
    "PYRAMID_STRIDES",
    "S1S2Backbone",
    "S1S2Classifier",
    "S1S2Segmenter",
    "S1S2TaskModel",
    "TOTAL_STRIDE",
    "TaskInferenceEngine",
    "TowerOutput",
    "cell_centre",
    "create_backbone",
    "create_model",
    "create_tower",
    "load_backbone",
    "load_model",
    "task_config",
]
