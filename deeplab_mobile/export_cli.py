"""``deeplab-mobile export``: a checkpoint to ONNX (logits or label map, dynamic batch), then an
onnxruntime run on a real image checked against PyTorch.

    deeplab-mobile export --ckpt_path runs/demo/deeplab/checkpoints/last.ckpt --output deeplab.onnx --image photo.jpg

LightningCLI has no place for a command without a Trainer, so ``deeplab_mobile.cli.main``
hands ``export`` to this argparse command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from backbone.checkpoint_checks import load_module_checkpoint
from backbone.onnx_parity import Parity, compare_label_maps, describe_export, load_parity_batch, run_onnx

from .export import export_onnx
from .module import DeepLabModule


def main(argv: list[str] | None = None) -> Parity:
    """Export, check, print the result; exits with status 1 when the parity check fails."""
    parser = argparse.ArgumentParser(prog="deeplab-mobile export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a DeepLabModule checkpoint (deeplab-mobile fit)")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--image", required=True, help="a real image (any format datamodules reads) for the parity check")
    parser.add_argument("--image_size", type=int, nargs=2, default=[513, 513], metavar=("H", "W"))
    parser.add_argument("--output_kind", choices=["logits", "labels"], default="logits",
                        help="logits N x C x H x W (float) or labels N x H x W (int64 argmax)")
    parser.add_argument("--output_stride", type=int, default=16, choices=[8, 16, 32])
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    for option in ("ckpt_path", "image"):
        if not Path(getattr(args, option)).is_file():
            parser.error(f"--{option} {getattr(args, option)}: no such file")

    # The checkpoint holds every weight: skip building the ImageNet backbone it started from.
    module = load_module_checkpoint(
        DeepLabModule, args.ckpt_path, pretrained_backbone=False, output_stride=args.output_stride
    )
    model = module.model.eval()
    size = tuple(args.image_size)
    path = export_onnx(model, args.output, size, output=args.output_kind, opset_version=args.opset)
    shape = "N x C x H x W (float)" if args.output_kind == "logits" else "N x H x W (int64)"
    print(describe_export(path, (3, *size), [f"{args.output_kind} {shape}"]))

    images = load_parity_batch(args.image, size)
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    (onnx_output,) = run_onnx(path, images)
    onnx_labels = onnx_output.argmax(axis=1) if args.output_kind == "logits" else onnx_output
    parity = compare_label_maps(labels, onnx_labels)
    print(f"onnxruntime vs PyTorch on {args.image} (+ mirror, batch 2): {parity.summary}")
    if not parity.passed:
        raise SystemExit(f"{path}: onnxruntime disagrees with PyTorch")
    return parity
