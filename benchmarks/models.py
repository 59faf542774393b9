"""Model rows: detection end to end, ONNX deployment, segmentation, training step, MAdds/s.

Every row runs ours and a torchvision peer with random weights in this process on the same
inputs (``harness.time_interleaved``). Ours runs through its inference fast path
(``core.fuse``) unless ``fast=False``, so the same code also measures the baseline.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import segmentation as tv_segmentation
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from core.constants import IMAGENET_MEAN, IMAGENET_STD
from core.fuse import optimize_for_inference
from benchmarks.harness import Row, time_interleaved
from deeplab_mobile import build_deeplab
from ssdlite import build_ssdlite
from ssdlite.postprocess import select_detections

NUM_CLASSES = 80  # COCO objects; torchvision counts the background too (81)
SCORE_THRESHOLD = 0.001
NMS_THRESHOLD = 0.6  # ours (TF OD API); torchvision's default 0.55 is set to it, for the same work
DETECTIONS_PER_IMAGE = 100
TOPK_PER_CLASS = 100


@dataclass
class Timing:
    """How long each case runs: ``harness.time_interleaved`` keyword arguments."""

    warmup: int = 3
    min_repeats: int = 10
    min_seconds: float = 5.0

    def heavy(self) -> "Timing":
        """For cases of a second or more per call (batch 16, training)."""
        return Timing(min(self.warmup, 2), max(2, self.min_repeats // 2), self.min_seconds)


def multiply_adds(fn: Callable[[], object]) -> float:
    """Multiply-adds of one call of ``fn`` (convolutions and matmuls), counted by torch."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 2


def uint8_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)


def our_detector(fast: bool) -> nn.Module:
    model = build_ssdlite(
        num_classes=NUM_CLASSES,
        score_threshold=SCORE_THRESHOLD,
        nms_threshold=NMS_THRESHOLD,
        topk_per_class=TOPK_PER_CLASS,
        detections_per_image=DETECTIONS_PER_IMAGE,
    ).eval()
    return optimize_for_inference(model) if fast else model


def torchvision_detector() -> nn.Module:
    return ssdlite320_mobilenet_v3_large(
        weights=None,
        weights_backbone=None,
        num_classes=NUM_CLASSES + 1,
        score_thresh=SCORE_THRESHOLD,
        nms_thresh=NMS_THRESHOLD,
        detections_per_img=DETECTIONS_PER_IMAGE,
        topk_candidates=TOPK_PER_CLASS,
    ).eval()


def detection_rows(timing: Timing, fast: bool, batches: tuple[int, ...] = (1, 16)) -> list[Row]:
    """uint8 images in, final detections out (NMS included), 320 x 320."""
    ours_model, peer_model = our_detector(fast), torchvision_detector()
    # counted on the model as built: torch's counter does not see the fast path's oneDNN kernels
    plain_model = our_detector(fast=False)
    ours_madds = multiply_adds(lambda: plain_model.predict_raw(torch.rand(1, 3, 320, 320)))
    peer_madds = multiply_adds(lambda: peer_model([torch.rand(3, 320, 320)]))
    rows = []
    for batch in batches:
        images = uint8_images(batch, 320)

        @torch.inference_mode()
        def ours() -> None:
            ours_model(images.float().div_(255))

        @torch.inference_mode()
        def peer() -> None:
            peer_model(list(images.float().div_(255)))

        t = timing.heavy() if batch > 1 else timing
        ours_s, peer_s = time_interleaved(ours, peer, warmup=t.warmup, min_repeats=t.min_repeats, min_seconds=t.min_seconds)
        rows.append(
            Row.timed(
                name=f"detection end to end, batch {batch}",
                ours="MobileNetV2 SSDLite" + (" (fast path)" if fast else ""),
                peer="torchvision ssdlite320_mobilenet_v3_large",
                ours_s=ours_s,
                peer_s=peer_s,
                target="<= 0.75" if batch == 1 else "",
                settings={
                    "batch": batch,
                    "size": 320,
                    "dtype": "uint8 in, float32",
                    "score thr": SCORE_THRESHOLD,
                    "nms": NMS_THRESHOLD,
                    "dets/img": DETECTIONS_PER_IMAGE,
                    "ours GMAdds": round(ours_madds / 1e9, 3),
                    "peer GMAdds": round(peer_madds / 1e9, 3),
                    "ours GMAdd/s": round(batch * ours_madds / ours_s / 1e9, 2),
                    "peer GMAdd/s": round(batch * peer_madds / peer_s / 1e9, 2),
                },
            )
        )
    if 16 in batches:
        row = rows[batches.index(16)]
        rows.append(
            Row(
                name="achieved multiply-adds per second, detection batch 16",
                ours="MobileNetV2 SSDLite",
                peer="torchvision ssdlite320_mobilenet_v3_large",
                ours_ms=row.settings["ours GMAdd/s"],
                peer_ms=row.settings["peer GMAdd/s"],
                ratio=row.settings["ours GMAdd/s"] / row.settings["peer GMAdd/s"],
                unit="GMAdd/s",
                settings={"batch": 16, "size": 320, "note": "higher is better; end to end incl. NMS"},
            )
        )
    return rows


def onnx_rows(timing: Timing, fast: bool, batch: int = 1) -> list[Row]:
    """Our ONNX graph (decode before NMS) in onnxruntime + our NMS vs torchvision eager."""
    import onnxruntime as ort

    from ssdlite.export import export_onnx

    ours_model, peer_model = our_detector(fast=False), torchvision_detector()
    images = uint8_images(batch, 320)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(ours_model, Path(tmp) / "ssdlite.onnx", 320)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    threads = torch.get_num_threads()

    @torch.inference_mode()
    def ours() -> None:
        # As deployed, onnxruntime owns the cores and the small host steps (scaling, NMS) run on
        # the calling thread: torch's OpenMP workers, spinning after each op, would otherwise
        # compete with onnxruntime's (14-19 ms per call instead of 13).
        torch.set_num_threads(1)
        try:
            boxes, scores = session.run(None, {"images": images.float().div_(255).numpy()})
            select_detections(
                torch.from_numpy(boxes), torch.from_numpy(scores), SCORE_THRESHOLD, NMS_THRESHOLD, TOPK_PER_CLASS,
                DETECTIONS_PER_IMAGE,
            )
        finally:
            torch.set_num_threads(threads)

    @torch.inference_mode()
    def peer() -> None:
        peer_model(list(images.float().div_(255)))

    ours_s, peer_s = time_interleaved(
        ours, peer, warmup=timing.warmup, min_repeats=timing.min_repeats, min_seconds=timing.min_seconds, block=6
    )
    return [
        Row.timed(
            name=f"detection deployment, batch {batch}",
            ours=f"ONNX in onnxruntime {ort.__version__} + our NMS",
            peer="torchvision ssdlite320_mobilenet_v3_large eager",
            ours_s=ours_s,
            peer_s=peer_s,
            target="<= 0.35",
            settings={
                "batch": batch,
                "size": 320,
                "dtype": "uint8 in, float32",
                "ort threads": threads,
                "host steps": "1 torch thread",
                "alternation": "runs of 6 calls, first of each dropped",
            },
        )
    ]


def our_segmenter(fast: bool) -> nn.Module:
    model = build_deeplab(num_classes=21, output_stride=16, head="reduced").eval()
    return optimize_for_inference(model) if fast else model


class NormalisedPeer(nn.Module):
    """A torchvision segmenter on [0, 1] images: normalises as ours does inside, returns ``out``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)["out"]


def segmentation_rows(timing: Timing, fast: bool, sizes: tuple[int, ...] = (512, 513)) -> list[Row]:
    """Batch 1 logits at the input size: ours (reduced head, OS16) vs LR-ASPP and DeepLabv3."""
    ours_model = our_segmenter(fast)
    plain_model = our_segmenter(fast=False)  # for the MAdds count (see detection_rows)
    peers = {
        "torchvision lraspp_mobilenet_v3_large": (
            tv_segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21),
            "<= 1.0",
        ),
        "torchvision deeplabv3_mobilenet_v3_large": (
            tv_segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21),
            "<= 0.3",
        ),
    }
    rows = []
    for size in sizes:
        images = uint8_images(1, size)
        ours_madds = multiply_adds(lambda: plain_model(torch.rand(1, 3, size, size)))

        @torch.inference_mode()
        def ours() -> None:
            ours_model(images.float().div_(255))

        for name, (model, target) in peers.items():
            peer_model = NormalisedPeer(model).eval()

            @torch.inference_mode()
            def peer() -> None:
                peer_model(images.float().div_(255))

            ours_s, peer_s = time_interleaved(
                ours, peer, warmup=timing.warmup, min_repeats=timing.min_repeats, min_seconds=timing.min_seconds
            )
            rows.append(
                Row.timed(
                    name=f"segmentation {size}x{size}, batch 1",
                    ours="Mobile DeepLabv3 reduced head OS16" + (" (fast path)" if fast else ""),
                    peer=name,
                    ours_s=ours_s,
                    peer_s=peer_s,
                    target=target,
                    settings={
                        "batch": 1,
                        "size": size,
                        "dtype": "uint8 in, float32",
                        "ours GMAdds": round(ours_madds / 1e9, 3),
                        "ours GMAdd/s": round(ours_madds / ours_s / 1e9, 2),
                    },
                )
            )
    if 512 in sizes and 513 in sizes:
        rows.append(size_step_row(ours_model, plain_model, timing))
    return rows


def size_step_row(model: nn.Module, plain_model: nn.Module, timing: Timing) -> Row:
    """Ours at 513 vs ours at 512, timed against each other in alternation (not taken from two
    peer rows, whose different partners shift each median by a few percent); MAdds counted on
    ``plain_model``, the model as built."""
    timed = {}
    for size in (513, 512):
        images = uint8_images(1, size)

        @torch.inference_mode()
        def forward(images: torch.Tensor = images) -> None:
            model(images.float().div_(255))

        timed[size] = forward
    t513, t512 = time_interleaved(
        timed[513], timed[512], warmup=timing.warmup, min_repeats=timing.min_repeats, min_seconds=timing.min_seconds
    )
    madds = {size: multiply_adds(lambda size=size: plain_model(torch.rand(1, 3, size, size))) for size in (512, 513)}
    return Row.timed(
        name="segmentation 513 vs 512 (ours)",
        ours="ours at 513",
        peer="ours at 512",
        ours_s=t513,
        peer_s=t512,
        target="<= 1.05",
        settings={
            "pixel ratio": round((513 / 512) ** 2, 4),
            "MAdds ratio": round(madds[513] / madds[512], 4),
            "note": "target: pixel ratio + 5% timing noise; 513 makes every stride-2 map one larger (33 x 33 at OS16)",
        },
    )


def random_targets(batch: int, size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """1-6 boxes per image, xyxy pixels, labels ``0..NUM_CLASSES-1`` (ours)."""
    generator = torch.Generator().manual_seed(seed)
    targets = []
    for _ in range(batch):
        k = int(torch.randint(1, 7, (1,), generator=generator))
        xy = torch.rand(k, 2, generator=generator) * size * 0.7
        wh = (torch.rand(k, 2, generator=generator) * 0.5 + 0.05) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        targets.append({"boxes": boxes, "labels": torch.randint(0, NUM_CLASSES, (k,), generator=generator)})
    return targets


# What our backward pass recomputes, by the name the training and memory rows give it: the
# ``build_ssdlite`` arguments, and what the row's ``ours`` says. The default recomputes
# MobileNetV2's 160x160 blocks.
RECOMPUTATION = {
    "default": ({}, "MobileNetV2 SSDLite (channels-last weights; default grad_checkpointing: features.0-2 recomputed)"),
    "none": ({"grad_checkpointing": 0}, "MobileNetV2 SSDLite (channels-last weights; grad_checkpointing=0: nothing recomputed)"),
}


def ours_train_step(
    batch: int, size: int = 320, channels_last: bool = True, recomputation: str = "default"
) -> Callable[[], None]:
    """Forward, loss, backward, SGD step of our SSDLite on fixed random images and targets.

    ``channels_last`` puts the weights (hence every activation) in NHWC: 0.81x the step time
    of NCHW at batch 16 on this machine (interleaved, 2 threads). ``recomputation`` names what
    the backward pass recomputes (``RECOMPUTATION``).
    """
    model = build_ssdlite(num_classes=NUM_CLASSES, **RECOMPUTATION[recomputation][0]).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    images = torch.rand(batch, 3, size, size)
    targets = random_targets(batch, size)

    def step() -> None:
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def peer_train_step(batch: int, size: int = 320) -> Callable[[], None]:
    """The same step for torchvision's SSDLite (labels shifted by one: its 0 is background)."""
    model = torchvision_detector().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
    images = list(torch.rand(batch, 3, size, size))
    targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in random_targets(batch, size)]

    def step() -> None:
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step
