"""SSDLite (MobileNetV2 paper, section 6.2): the detector, its parts and its Lightning module."""

from .anchors import SSDAnchorGenerator
from .box_coder import BoxCoder
from .extras import SSDLiteFeatures
from .head import SSDLiteHead
from .loss import MultiBoxLoss
from .matcher import match_anchors, pad_targets
from .model import SSDLite, build_ssdlite
from .module import SSDLiteModule
from .postprocess import decode_detections, rescale_boxes, select_detections
from .predictor import load_predictor

__all__ = [
    "BoxCoder",
    "MultiBoxLoss",
    "SSDAnchorGenerator",
    "SSDLite",
    "SSDLiteFeatures",
    "SSDLiteHead",
    "SSDLiteModule",
    "build_ssdlite",
    "decode_detections",
    "load_predictor",
    "match_anchors",
    "pad_targets",
    "rescale_boxes",
    "select_detections",
]
