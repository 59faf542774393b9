"""Checkpoints for the mobile export tests, written without training (random weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import LightningModule
from torch import nn

from engine.checkpoint_checks import MODULE_CLASSES_KEY, task_classes


def save_checkpoint(module: LightningModule, path: Path) -> str:
    """``module`` as ``fit`` saves it: state dict, hyperparameters, task classes; returns the path."""
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.6", MODULE_CLASSES_KEY: task_classes(type(module))}, path)  # fmt: skip
    return str(path)


def randomize_batch_norms(model: nn.Module) -> nn.Module:
    """Random BN statistics and affine parameters, in place: a freshly built network's identity
    BNs leave its deep feature maps constant, and so many scores tie exactly."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.2, 1.0)
            module.bias.data.normal_(0.0, 0.3)
    return model
