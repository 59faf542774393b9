"""Boxes and masks in one pass: SSDLite and Mobile DeepLabv3 heads on one MobileNetV2."""

from .loss_weighting import LossWeighting
from .model import MultiTaskModel, build_multitask

__all__ = ["LossWeighting", "MultiTaskModel", "build_multitask"]
