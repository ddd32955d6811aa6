"""s1s2_encoders: pretrained multi-modal Sentinel-1 + Sentinel-2 encoders.

>>> from s1s2_encoders import load_backbone
>>> model = load_backbone("swin-s1s2", pretrained=False)
>>> emb = model.embed(s1, s2)          # S1 dB (2, H, W) + S2 L1C DN (13, H, W) -> (1, 1536)
>>> from s1s2_encoders import load_model
>>> seg = load_model("path/to/finetuned-segmenter")
>>> probs = seg.predict(s1, s2)        # (1, 8, H, W) class probabilities
"""

from .bands import S1_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from .classes import DFC2020_CLASS_COLORS, DFC2020_CLASS_NAMES, IGNORE_INDEX
from .config import ModelConfig
from .errors import (
    BandError,
    CheckpointError,
    ChecksumError,
    ConfigError,
    DownloadError,
    DriveDownloadError,
    GridMismatchError,
    InputShapeError,
    InvalidValueError,
    ModelNotCachedError,
    ModelNotFoundError,
    OptionError,
    OutputExistsError,
    RasterReadError,
    PublishError,
    S1S2Error,
    UnitsError,
    WeightsNotAvailableError,
)
from .hub import resolve_model
from .publish import push_to_hub
from .models import (
    S1S2Backbone,
    S1S2Classifier,
    S1S2Segmenter,
    S1S2TaskModel,
    create_backbone,
    create_model,
    load_backbone,
    load_model,
    task_config,
)
from .preprocess import Normalization, fixed_clip_scale, fixed_standardize, sslt_channel_max
from .registry import get_entry, list_models

__version__ = "0.1.0"

__all__ = [
    "BandError",
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DFC2020_CLASS_COLORS",
    "DFC2020_CLASS_NAMES",
    "DownloadError",
    "DriveDownloadError",
    "GridMismatchError",
    "IGNORE_INDEX",
    "InputShapeError",
    "InvalidValueError",
    "ModelConfig",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "Normalization",
    "OptionError",
    "OutputExistsError",
    "RasterReadError",
    "PublishError",
    "S1S2Backbone",
    "S1S2Classifier",
    "S1S2Error",
    "S1S2Segmenter",
    "S1S2TaskModel",
    "S1_BANDS",
    "S2_L1C_BANDS",
    "S2_L2A_BANDS",
    "UnitsError",
    "WeightsNotAvailableError",
    "__version__",
    "create_backbone",
    "create_model",
    "fixed_clip_scale",
    "fixed_standardize",
    "get_entry",
    "list_models",
    "load_backbone",
    "load_model",
    "push_to_hub",
    "resolve_model",
    "sslt_channel_max",
    "task_config",
]
