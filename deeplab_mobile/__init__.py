"""Mobile DeepLabv3 (MobileNetV2 paper §6.3) and its ASPP / DeepLabv3+ variants."""

from .aspp import ASPP, ImagePooling
from .decoder import DeepLabV3PlusDecoder
from .inference import PAPER_EVAL_SCALES, multi_scale_flip_probabilities
from .metrics import SegmentationScores, scores_from_confusion_matrix
from .model import HEADS, DeepLab, build_deeplab, default_atrous_rates
from .module import DeepLabModule
from .predictor import load_predictor

__all__ = [
    "ASPP",
    "HEADS",
    "PAPER_EVAL_SCALES",
    "DeepLab",
    "DeepLabModule",
    "DeepLabV3PlusDecoder",
    "ImagePooling",
    "SegmentationScores",
    "build_deeplab",
    "default_atrous_rates",
    "load_predictor",
    "multi_scale_flip_probabilities",
    "scores_from_confusion_matrix",
]
