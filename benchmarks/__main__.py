"""``python -m benchmarks`` (``make bench``): every row of issue 7, ours vs the peer.

Rows (``--only`` takes these names, comma-separated): ``detection`` (end to end, batch 1 and
16, with achieved multiply-adds per second), ``onnx`` (onnxruntime vs torchvision eager),
``segmentation`` (512 and 513, vs LR-ASPP and DeepLabv3-MobileNetV3), ``training`` (step at
batch 16 under each host-memory policy, each in a fresh process), ``memory`` (peak of a
training step at batch 32), ``coco`` (COCO evaluation of 5,000 images x 100 detections),
``data`` (the datamodule pipelines, one thread each), ``multitask`` (the joint model vs the two
single-task models: eval forward at 320 and 512, training step), ``mobile`` (each task's
ExecuTorch and onnxruntime files, fp32 and int8, vs its eager fast path; file sizes; vs
torchvision's SSDLite320 and LR-ASPP).
Writes ``benchmarks.md`` and ``benchmarks.json`` to ``--out`` (``runs/bench``).
``--quick`` is a smoke run: one repeat of everything, small COCO set, few data images, 4
calibration images.
``--no-fast-path`` times our models as built, without the inference fast path (the baseline).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import Row, write_report

ROWS = ("detection", "onnx", "segmentation", "training", "memory", "coco", "data", "finetune", "multitask", "mobile")


def run_row(name: str, args: argparse.Namespace) -> list[Row]:
    from benchmarks import models

    timing = models.Timing(1, 1, 0.0) if args.quick else models.Timing(3, 10, args.min_seconds)
    fast = not args.no_fast_path
    if name == "detection":
        return models.detection_rows(timing, fast)
    if name == "onnx":
        return models.onnx_rows(timing, fast)
    if name == "segmentation":
        return models.segmentation_rows(timing, fast)
    if name == "training":
        from benchmarks.training import training_rows

        return training_rows(timing.min_repeats, timing.min_seconds)
    if name == "memory":
        from benchmarks.memory import memory_rows

        return memory_rows()
    if name == "coco":
        from benchmarks.coco_eval import coco_eval_rows

        return coco_eval_rows(200 if args.quick else 5000, repeats=1 if args.quick else 2)
    if name == "data":
        return data_rows(args)
    if name == "multitask":
        from benchmarks.multitask import multitask_rows

        return multitask_rows(timing)
    if name == "mobile":
        from benchmarks.mobile import mobile_rows

        return mobile_rows(timing, calibration_images=4 if args.quick else 16)
    if name == "finetune":
        from benchmarks.finetune import finetune_rows
        from datamodules.shapes import generate_shapes

        with tempfile.TemporaryDirectory() as tmp:
            root = generate_shapes(tmp, num_train=96, num_val=24, seed=0)
            return finetune_rows(Path(root) / "coco", Path(tmp) / "run", steps=8 if args.quick else 30,
                                 seconds=20 if args.quick else 150, threads=args.threads)  # fmt: skip
    raise ValueError(f"unknown row {name!r}; rows: {ROWS}")


def data_rows(args: argparse.Namespace) -> list[Row]:
    """The datamodule benchmark at one thread (a DataLoader worker's), then threads restored."""
    import cv2

    from benchmarks import data_pipelines
    from datamodules.shapes import generate_shapes

    threads = torch.get_num_threads()
    num_images = 8 if args.quick else 48
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = generate_shapes(tmp, num_train=num_images, num_val=1, seed=0)
            rows = data_pipelines.run(
                Path(root), num_images, 0.0 if args.quick else args.min_seconds, Path(tmp) / "decoded_cache"
            )
    finally:
        torch.set_num_threads(threads)
    for row in rows:
        row.settings["threads"] = 1
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows of {ROWS}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--threads", type=int, default=2, help="torch (and onnxruntime) threads")
    parser.add_argument("--min-seconds", type=float, default=5.0, help="least time per case, both sides")
    parser.add_argument("--quick", action="store_true", help="smoke run: one repeat, small sets")
    parser.add_argument("--no-fast-path", action="store_true", help="our models without the inference fast path")
    parser.add_argument("--title", default="benchmarks", help="report file name (without suffix)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {ROWS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[Row] = []
    for name in names:
        start = time.perf_counter()
        new = run_row(name, args)
        for row in new:
            row.settings.setdefault("threads", args.threads)
            print(f"{row.name} | {row.ours}: {row.ours_ms:.2f} {row.unit} | {row.peer}: {row.peer_ms:.2f} {row.unit} | "
                  f"ratio {row.ratio:.3f} {row.target} {row.met}", flush=True)
        print(f"[{name}: {time.perf_counter() - start:.0f} s]", flush=True)
        rows += new
    print(f"report: {write_report(rows, args.out, args.title)}")


if __name__ == "__main__":
    main()
