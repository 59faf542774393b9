"""Backbones with one feature interface: named taps, published channels and strides."""

from .base import Backbone, FeatureInfo
from .mobilenet_v2 import MobileNetV2, MobileNetV2Backbone
from .registry import backbone_mean, build_backbone, list_backbones, register_backbone
from .weights import load_checked

__all__ = [
    "Backbone",
    "FeatureInfo",
    "MobileNetV2",
    "MobileNetV2Backbone",
    "backbone_mean",
    "build_backbone",
    "list_backbones",
    "load_checked",
    "register_backbone",
]
