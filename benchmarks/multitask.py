"""The joint model against the two single-task models it replaces, same input, same process.

Rows: the eval forward (boxes after NMS and segmentation logits at the input size) of the joint
model vs SSDLite's plus Mobile DeepLabv3's (OS16, reduced head), at 320 and 512, batch 1,
each on the inference fast path; and a training step (forward, losses, backward, SGD) of the
joint model vs SSDLite's step plus DeepLab's step on the same images and labels.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from core.fuse import optimize_for_inference
from deeplab_mobile import build_deeplab
from multitask import build_multitask
from ssdlite import build_ssdlite

from .harness import Row, time_interleaved
from .models import NUM_CLASSES, Timing, multiply_adds, random_targets, uint8_images

SEG_CLASSES = 21


def _models(image_size: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    joint = build_multitask(num_det_classes=NUM_CLASSES, num_seg_classes=SEG_CLASSES, image_size=image_size)
    detector = build_ssdlite(num_classes=NUM_CLASSES, image_size=image_size)
    segmenter = build_deeplab(num_classes=SEG_CLASSES, output_stride=16, head="reduced")
    return joint, detector, segmenter


def eval_rows(timing: Timing, sizes: tuple[int, ...] = (320, 512)) -> list[Row]:
    rows = []
    for size in sizes:
        joint, detector, segmenter = (m.eval() for m in _models(size))
        madds = {
            "joint": multiply_adds(lambda: joint(torch.rand(1, 3, size, size))),
            "pair": multiply_adds(lambda: (detector(torch.rand(1, 3, size, size)), segmenter(torch.rand(1, 3, size, size)))),
        }
        joint, detector, segmenter = (optimize_for_inference(m) for m in (joint, detector, segmenter))
        images = uint8_images(1, size)

        @torch.inference_mode()
        def ours() -> None:
            joint(images.float().div_(255))

        @torch.inference_mode()
        def peer() -> None:
            x = images.float().div_(255)
            detector(x)
            segmenter(x)

        ours_s, peer_s = time_interleaved(
            ours, peer, warmup=timing.warmup, min_repeats=timing.min_repeats, min_seconds=timing.min_seconds
        )
        rows.append(Row.timed(
            name=f"joint eval forward {size}x{size}, batch 1",
            ours="multitask: SSDLite + reduced DeepLab head on one MobileNetV2 pass (fast path)",
            peer="SSDLite + Mobile DeepLabv3 OS16 (two networks, fast path)",
            ours_s=ours_s, peer_s=peer_s, target="<= 0.65",
            settings={"size": size, "ours GMAdds": round(madds["joint"] / 1e9, 3), "peer GMAdds": round(madds["pair"] / 1e9, 3)},
        ))  # fmt: skip
    return rows


def _train_step(model: nn.Module, loss: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)

    def step() -> None:
        losses = loss()
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def training_row(timing: Timing, batch: int = 8, size: int = 320) -> Row:
    joint, detector, segmenter = (m.train().to(memory_format=torch.channels_last) for m in _models(size))
    images = torch.rand(batch, 3, size, size)
    boxes = random_targets(batch, size)
    masks = torch.randint(0, SEG_CLASSES, (batch, size, size))
    joint_targets = [{**t, "mask": m} for t, m in zip(boxes, masks)]
    joint_step = _train_step(joint, lambda: joint(images, joint_targets))
    detector_step = _train_step(detector, lambda: detector(images, boxes))
    segmenter_step = _train_step(
        segmenter, lambda: {"loss": nn.functional.cross_entropy(segmenter(images), masks, ignore_index=255)}
    )

    def pair() -> None:
        detector_step()
        segmenter_step()

    heavy = timing.heavy()
    ours_s, peer_s = time_interleaved(
        joint_step, pair, warmup=heavy.warmup, min_repeats=heavy.min_repeats, min_seconds=heavy.min_seconds
    )
    return Row.timed(
        name=f"joint training step {size}x{size}, batch {batch}",
        ours="multitask step (both losses, one backbone)",
        peer="SSDLite step + Mobile DeepLabv3 OS16 step",
        ours_s=ours_s, peer_s=peer_s, target="<= 0.7",
        settings={"batch": batch, "size": size, "channels_last": True},
    )  # fmt: skip


def multitask_rows(timing: Timing) -> list[Row]:
    return [*eval_rows(timing), training_row(timing)]
