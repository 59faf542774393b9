"""Boxes and masks in one pass: SSDLite and Mobile DeepLabv3 heads on one MobileNetV2."""

from .loss_weighting import LossWeighting
from .model import MultiTaskModel, build_multitask
from .module import MultiTaskModule
from .predictor import load_predictor

__all__ = ["LossWeighting", "MultiTaskModel", "MultiTaskModule", "build_multitask", "load_predictor"]
