"""Quantization-aware fine-tuning (PT2E) for when post-training int8 loses too much accuracy.

A task says which part of its model runs on the device, how its training loss reads that
part's outputs, and how the exported graph is built around it (``QATPlan``); the loss itself
runs in eager code around the graph, as a fake-quantized graph has no train-mode forward of
the model to call. Steps:

1. the part's deployable copy (``engine.executorch_export.deployable_copy``: BN folded into the
   convs), so the weights fine-tuned are the ones int8 quantizes; BN statistics stay fixed and
   the folded biases train with their weights (layers the checkpoint froze stay frozen);
2. ``torch.export`` with a dynamic batch and ``prepare_qat_pt2e`` with the XNNPACK quantizer
   (per-channel weights, ``is_qat``): fake-quant on the weights and activations that XNNPACK's
   int8 kernels will see, inside the task's ``int8_scope``;
3. ``steps`` SGD steps on the run's training batches (its datamodule's ``train_dataloader``,
   augmentations included), the task's training loss on the fake-quantized outputs;
4. ``convert_pt2e``, then the task's graph around it, lowered as the post-training file is.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from lightning import LightningDataModule
from torch import nn

from .executorch_export import deployable_copy
from .extras import require_extra
from .quantize import Int8Scope, xnnpack_quantizer


@dataclass
class QATPlan:
    """A task's part in quantization-aware fine-tuning.

    ``graph``: images ``N x 3 x H x W`` in [0, 1] -> the tensors ``loss`` reads, with its
    quantized submodules at the names ``TaskExport.int8_scope`` gives; ``loss(outputs,
    batch)``: the training loss (a scalar) of ``graph``'s outputs on a training ``batch`` of the
    run's datamodule (images first); ``finish(converted)``: the export graph (images -> the
    task's exported outputs) around the converted int8 ``graph``."""

    graph: nn.Module
    loss: Callable[[Sequence[torch.Tensor], Any], torch.Tensor]
    finish: Callable[[nn.Module], nn.Module]


@dataclass
class QATResult:
    """The export graph (int8, ready to lower) and what the fine-tuning did, for the report."""

    graph: nn.Module
    summary: dict[str, Any]


# Steps averaged for the first and last loss in the summary.
LOSS_WINDOW = 10


def finetune_qat(
    plan: QATPlan,
    datamodule: LightningDataModule,
    image_size: tuple[int, int],
    steps: int,
    lr: float,
    scope: Int8Scope = Int8Scope(),
) -> QATResult:
    """Fine-tune ``plan.graph`` with fake quantization for ``steps`` SGD steps (momentum 0.9, ``lr``)
    on ``datamodule``'s training batches, whose images must be ``image_size = (H, W)``; convert
    ``scope`` to int8 and return ``plan.finish`` of it."""
    require_extra("mobile", "torchao.quantization.pt2e.quantize_pt2e", "--qat_steps")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    if steps < 1:
        raise ValueError(f"--qat_steps must be at least 1, got {steps}")
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    batches = (batch for batch in itertools.chain.from_iterable(itertools.repeat(loader)) if len(batch[0]))
    first = next(batches)
    if tuple(first[0].shape[-2:]) != tuple(image_size):
        height, width = image_size
        raise ValueError(
            f"{type(datamodule).__name__} trains on {' x '.join(map(str, first[0].shape[-2:]))} images; quantization-aware "
            f"fine-tuning runs the graph exported for {height} x {width}: export at the training size"
        )
    graph = deployable_copy(plan.graph, image_size)
    for conv in graph.modules():
        if isinstance(conv, nn.Conv2d) and conv.bias is not None:
            conv.bias.requires_grad_(conv.weight.requires_grad)  # a folded BN's shift trains with its conv
    with torch.no_grad():  # traced outside autograd (the in-place ReLU6 Function is F.relu6 there)
        exported = torch.export.export(graph, (first[0],), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    prepared = prepare_qat_pt2e(exported.module(), xnnpack_quantizer(scope, is_qat=True))
    parameters = [parameter for parameter in prepared.parameters() if parameter.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    losses = []
    for batch in itertools.islice(itertools.chain([first], batches), steps):
        outputs = prepared(batch[0])
        loss = plan.loss(outputs if isinstance(outputs, (tuple, list)) else (outputs,), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        converted = convert_pt2e(prepared)
    window = min(LOSS_WINDOW, len(losses))
    summary = {
        "steps": steps, "lr": lr, "batch_size": len(first[0]), "trained_parameters": sum(p.numel() for p in parameters),
        "first_loss": round(statistics.fmean(losses[:window]), 4), "last_loss": round(statistics.fmean(losses[-window:]), 4),
    }  # fmt: skip
    return QATResult(plan.finish(converted), summary)
