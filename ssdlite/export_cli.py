"""``ssdlite export``: a checkpoint to ONNX (decoded boxes + class scores, dynamic batch), then
an onnxruntime run on a real image checked against PyTorch.

    ssdlite export --ckpt_path runs/demo/ssdlite/checkpoints/last.ckpt --output ssdlite.onnx --image photo.jpg

LightningCLI has no place for a command without a Trainer, so ``ssdlite.cli.main`` hands
``export`` to this argparse command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from backbone.checkpoint_checks import load_module_checkpoint
from backbone.onnx_parity import Parity, compare_top_detections, describe_export, load_parity_batch, run_onnx

from .export import OUTPUT_NAMES, export_onnx
from .module import SSDLiteModule


def main(argv: list[str] | None = None) -> Parity:
    """Export, check, print the result; exits with status 1 when the parity check fails."""
    parser = argparse.ArgumentParser(prog="ssdlite export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="an SSDLiteModule checkpoint (ssdlite fit)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--image", required=True, help="a real image (any format datamodules reads) for the parity check")
    parser.add_argument("--image_size", type=int, default=None, help="square input size (default: the checkpoint's)")
    parser.add_argument("--top_k", type=int, default=20, help="top (anchor, class) pairs per image compared")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    for option in ("ckpt_path", "image"):
        if not Path(getattr(args, option)).is_file():
            parser.error(f"--{option} {getattr(args, option)}: no such file")

    # The checkpoint holds every weight: skip building the ImageNet backbone it started from.
    module = load_module_checkpoint(SSDLiteModule, args.ckpt_path, pretrained_backbone=False)
    model = module.model.eval()
    size = args.image_size or module.hparams.image_size
    path = export_onnx(model, args.output, size, opset_version=args.opset)
    print(describe_export(path, (3, size, size), [f"{OUTPUT_NAMES[0]} N x A x 4 (xyxy px)", f"{OUTPUT_NAMES[1]} N x A x C"]))

    images = load_parity_batch(args.image, (size, size))
    with torch.no_grad():
        boxes, scores = model.decode(images)
    onnx_boxes, onnx_scores = run_onnx(path, images)
    parity = compare_top_detections(boxes, scores, onnx_boxes, onnx_scores, top_k=args.top_k)
    print(f"onnxruntime vs PyTorch on {args.image} (+ mirror, batch 2): {parity.summary}")
    if not parity.passed:
        raise SystemExit(f"{path}: onnxruntime disagrees with PyTorch")
    return parity
