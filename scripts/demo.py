"""``make demo``: the three models trained, evaluated, shown and exported on the embedded dataset.

Everything goes through the commands a user runs (``ssdlite`` / ``deeplab-mobile`` /
``multitask`` with the shapes configs, called in-process through their ``main``) and lands in
one run folder::

    runs/demo/data/shapes/            the embedded dataset (COCO + VOC layouts), made once
    runs/demo/<task>/checkpoints/     best and last checkpoints
    runs/demo/<task>/logs/version_*/  metrics.csv and the resolved config.yaml (per command)
    runs/demo/<task>/tensorboard/     TensorBoard events (tensorboard --logdir runs/demo)
    runs/demo/<task>/predictions/     pictures + machine-readable predictions on val images
    runs/demo/<task>_val_grid.jpg     a grid of those pictures
    runs/demo/<task>.onnx             the exported model (checked against PyTorch)
    runs/demo/<task>.pte, <task>_int8.pte  ExecuTorch programs, float and int8, each with its
                                      report (<file>.json: size, latency, validation metric)
    runs/demo/summary.json            metrics, timings, parity and paths

``--tiny`` runs the same steps in seconds (few images, width 0.35 without ImageNet weights,
a few steps): the test suite uses it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torchvision.io import decode_jpeg, read_file, write_jpeg
from torchvision.transforms.v2.functional import resize
from torchvision.utils import make_grid

from datamodules.shapes import generate_shapes
from deeplab_mobile import cli as deeplab_cli
from engine.export_report import report_path, write_report
from engine.exported import load_exported
from multitask import cli as multitask_cli
from ssdlite import cli as ssdlite_cli

REPO = Path(__file__).resolve().parents[1]
TASKS = ("ssdlite", "deeplab", "multitask")
COMMANDS = {"ssdlite": ssdlite_cli.main, "deeplab": deeplab_cli.main, "multitask": multitask_cli.main}
CONFIGS = {task: REPO / "configs" / f"{task}_shapes.yaml" for task in TASKS}
MONITOR = {"ssdlite": "val/map", "deeplab": "val/mIoU", "multitask": "val/score"}
PICTURE_SUFFIX = {"ssdlite": "_boxes.jpg", "deeplab": "_overlay.jpg", "multitask": "_joint.jpg"}
GRID_IMAGES = 8
GRID_CELL = 256  # pictures differ in size: each is resized to a square cell of the grid
EXPORT_WORKERS = 2  # processes exporting at once: one per core of the 2-core machine the demo is sized for
LATENCY_ROUNDS = 5  # rounds over all exported files, after the exports, for the reports' latencies

# The joint model's training (configs/multitask_shapes.yaml, shortened): what fits the demo's
# 15 minutes beside the single-task runs.
MULTITASK_EPOCHS = 18
# The shapes configs' recipes (SSDLite at 224 px with its backbone frozen up to stride 16,
# DeepLab with its backbone frozen up to stride 8, in bf16), run for 648 and 288 iterations.
FULL = {
    "num_train": 192,
    "num_val": 48,
    "image_sizes": (320, 480),  # shortest and longest side of the generated images
    "ssdlite": {"trainer": {"max_epochs": 54, "check_val_every_n_epoch": 18}, "model": {}},
    "deeplab": {"trainer": {"max_steps": 288, "check_val_every_n_epoch": 3}, "model": {}},
    "multitask": {"trainer": {"max_epochs": MULTITASK_EPOCHS, "check_val_every_n_epoch": MULTITASK_EPOCHS}, "model": {}},
    "ssdlite_export_size": None,  # the checkpoint's training size
    "deeplab_export_size": [513, 513],  # 16 k + 1: the model's own geometry, no padding inside
    # Chosen while the backbone's stem was still int8 (DeepLab's int8 mIoU then fell 0.012 with
    # 64 images, 0.008 with 128; 128 cost each detector export 10-14 s); not re-measured since.
    "calibration_images": {"ssdlite": 64, "deeplab": 128, "multitask": 64},
    "int8_tasks": TASKS,
}
TINY = {
    "num_train": 8,
    "num_val": 4,
    "image_sizes": (96, 128),
    "ssdlite": {"trainer": {"max_epochs": 1, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0},
                "model": {"width_mult": 0.35, "pretrained_backbone": False},
                "data": {"image_size": 96, "batch_size": 4, "num_workers": 0}},
    "deeplab": {"trainer": {"max_steps": 2, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0},
                "model": {"width_mult": 0.35, "pretrained_backbone": False},
                "data": {"crop_size": 64, "batch_size": 4, "num_workers": 0}},
    "multitask": {"trainer": {"max_epochs": 1, "check_val_every_n_epoch": 1, "num_sanity_val_steps": 0},
                  "model": {"width_mult": 0.35, "pretrained_backbone": False},
                  "data": {"image_size": 96, "batch_size": 4, "num_workers": 0}},
    "ssdlite_export_size": None,
    "deeplab_export_size": [96, 128],
    "calibration_images": {task: 4 for task in TASKS},
    # An int8 lowering takes most of a minute even at this size; the joint model's covers both
    # heads' int8 parts (the detector's static and dynamic, the segmenter's).
    "int8_tasks": ("multitask",),
}


def task_overrides(task: str, out: Path, data_root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The demo's config layered over the task's shapes config: its paths, two loggers, its length."""
    task_dir = out / task
    monitor = MONITOR[task]
    callbacks = [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": str(task_dir / "checkpoints"), "filename": "best", "monitor": monitor,
                       "mode": "max", "save_last": True}},
    ]
    if task == "deeplab":  # keep the shapes config's learning-rate curve in the logs
        callbacks.append({"class_path": "lightning.pytorch.callbacks.LearningRateMonitor",
                          "init_args": {"logging_interval": "step"}})
    overrides: dict[str, Any] = {
        "trainer": {
            "default_root_dir": str(task_dir),
            "logger": [
                {"class_path": "lightning.pytorch.loggers.CSVLogger",
                 "init_args": {"save_dir": str(task_dir), "name": "logs"}},
                {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                 "init_args": {"save_dir": str(task_dir), "name": "tensorboard"}},
            ],
            "callbacks": callbacks,
            **settings[task]["trainer"],
        },
        "model": {"prediction_dir": str(task_dir / "predictions"), **settings[task]["model"]},
        "data": {"init_args": {"root": str(data_root / "coco" if task == "ssdlite" else data_root),  # others: VOC layout
                               **settings[task].get("data", {})}},
    }
    if task == "ssdlite":
        overrides["model"]["predictions_json"] = str(task_dir / "predictions" / "coco_results.json")
        overrides["data"]["init_args"]["image_ids_from"] = str(data_root / "coco" / "annotations" / "instances_val2017.json")
    return overrides


def val_sample(data_root: Path, out: Path, count: int) -> Path:
    """A folder with the first ``count`` validation images (the same files in both layouts)."""
    folder = out / "val_sample"
    folder.mkdir(parents=True, exist_ok=True)
    for image in sorted((data_root / "coco" / "val2017").glob("*.jpg"))[:count]:
        shutil.copyfile(image, folder / image.name)
    return folder


def save_grid(pictures: list[Path], path: Path) -> Path:
    """The JPEG ``pictures`` resized to square cells and tiled four to a row into one JPEG at ``path``."""
    cells = [resize(decode_jpeg(read_file(str(p))), [GRID_CELL, GRID_CELL], antialias=True) for p in pictures]
    write_jpeg(make_grid(cells, nrow=4, padding=4, pad_value=255), str(path), quality=90)
    return path


def run_task(
    task: str,
    main: Callable[[list[str]], Any],
    out: Path,
    data_root: Path,
    sample: Path,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """``fit``, ``validate`` (best checkpoint) and ``predict`` (``sample`` folder) through the
    task's command; returns the validation metrics, timings and output paths."""
    task_dir = out / task
    overrides = task_dir / "demo_overrides.yaml"
    overrides.parent.mkdir(parents=True, exist_ok=True)
    overrides.write_text(yaml.safe_dump(task_overrides(task, out, data_root, settings), sort_keys=False))
    configs = [f"--config={CONFIGS[task]}", f"--config={overrides}"]

    start = time.perf_counter()
    fitted = main(["fit", *configs])
    fit_seconds = time.perf_counter() - start
    checkpoint = task_dir / "checkpoints" / "best.ckpt"
    if not checkpoint.is_file():  # no validation ran, so nothing was "best": use the last weights
        checkpoint = task_dir / "checkpoints" / "last.ckpt"

    cli = main(["validate", *configs, f"--ckpt_path={checkpoint}"])
    metrics = {k: round(float(v), 4) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    main(["predict", *configs, f"--ckpt_path={checkpoint}", f"--data.predict_path={sample}"])

    pictures = sorted((task_dir / "predictions").glob(f"*{PICTURE_SUFFIX[task]}"))
    grid = save_grid(pictures[:GRID_IMAGES], out / f"{task}_val_grid.jpg")
    return {
        "fit_seconds": round(fit_seconds, 1),
        "checkpoint": str(checkpoint),
        "config": str(Path(fitted.trainer.log_dir) / "config.yaml"),  # the run's, as fit saved it
        "metrics": metrics,
        "predictions": str(task_dir / "predictions"),
        "grid": str(grid),
        "tensorboard": str(task_dir / "tensorboard"),
        "logs": str(task_dir / "logs"),
    }


def export_jobs(
    task: str, result: dict[str, Any], out: Path, parity_image: str, size: list[str], settings: dict[str, Any]
) -> dict[str, list[str]]:
    """The task's ``export`` command lines, by what they write: ``onnx`` and ``float`` (an
    ExecuTorch program), each checked against PyTorch on ``parity_image``, and (for the
    ``int8_tasks``) ``int8``, an ExecuTorch program calibrated on the run's training images and
    evaluated, float vs int8, on its validation set."""
    common = ["export", "--ckpt_path", result["checkpoint"], "--image", parity_image, *size]
    jobs = {
        "onnx": [*common, "--output", str(out / f"{task}.onnx")],
        "float": [*common, "--output", str(out / f"{task}.pte"), "--format", "executorch"],
    }
    if task in settings["int8_tasks"]:
        jobs["int8"] = [*common, "--output", str(out / f"{task}_int8.pte"), "--format", "executorch", "--quantize", "int8",
                        "--config", result["config"], "--calibration_images", str(settings["calibration_images"][task])]  # fmt: skip
    return jobs


def start_export_worker() -> None:
    # Two exports at a time on two cores: one thread each (lowering is single-threaded Python).
    torch.set_num_threads(1)


def export_one(task: str, argv: list[str]) -> dict[str, Any]:
    """One ``export`` command of ``task`` (in a worker process): what the demo keeps of it."""
    export = COMMANDS[task](argv)
    report = export.report
    return {"path": str(export.path), "report": str(report_path(export.path)), "size_bytes": report["size_bytes"],
            "latency_ms": report["latency_ms"], "metric_name": report["metric_name"], "float": report["float"],
            "quantized": report["quantized"], "parity": export.summary}  # fmt: skip


def export_all(jobs: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Run the ``export`` command lines ``jobs`` ((task, kind) -> argv) two at a time, longest
    (int8) first, then measure every written file's latency again, alone and interleaved
    (median of ``LATENCY_ROUNDS`` rounds over all files), and write that into its report: a
    latency measured beside another export is not the file's."""
    order = sorted(jobs, key=lambda key: key[1] != "int8")
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds thread pools
    with ProcessPoolExecutor(EXPORT_WORKERS, mp_context=context, initializer=start_export_worker) as pool:
        futures = {key: pool.submit(export_one, key[0], jobs[key]) for key in order}
        entries = {key: future.result() for key, future in futures.items()}
    reports = {key: json.loads(Path(entry["report"]).read_text()) for key, entry in entries.items()}
    graphs = {key: load_exported(entry["path"], threads=reports[key]["threads"]) for key, entry in entries.items()}
    rounds = [{key: graph.latency_ms() for key, graph in graphs.items()} for _ in range(LATENCY_ROUNDS)]
    for key, entry in entries.items():
        entry["latency_ms"] = round(statistics.median(timings[key] for timings in rounds), 2)
        write_report(entry["path"], {**reports[key], "latency_ms": entry["latency_ms"]})
    return entries


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo", help="the run folder")
    parser.add_argument("--tiny", action="store_true", help="seconds instead of minutes (tests)")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else FULL
    out = args.out.resolve()
    started = time.perf_counter()

    data_root = out / "data" / "shapes"
    if not (data_root / "classes.txt").is_file():
        min_size, max_size = settings["image_sizes"]
        generate_shapes(data_root, num_train=settings["num_train"], num_val=settings["num_val"], seed=0,
                        min_size=min_size, max_size=max_size)
    for task in TASKS:  # a re-run starts its models afresh; the (deterministic) data stays
        shutil.rmtree(out / task, ignore_errors=True)
    sample = val_sample(data_root, out, GRID_IMAGES)
    parity_image = str(sorted(sample.glob("*.jpg"))[0])

    summary: dict[str, Any] = {"run_folder": str(out), "data": str(data_root)}
    for task in TASKS:
        summary[task] = run_task(task, COMMANDS[task], out, data_root, sample, settings)

    export_sizes = {
        "ssdlite": ["--image_size", str(settings["ssdlite_export_size"])] if settings["ssdlite_export_size"] else [],
        "deeplab": ["--image_size", *map(str, settings["deeplab_export_size"])],
        "multitask": [],
    }
    jobs = {(task, kind): argv for task in TASKS
            for kind, argv in export_jobs(task, summary[task], out, parity_image, export_sizes[task], settings).items()}
    exported = export_all(jobs)
    for task in TASKS:
        onnx = exported[task, "onnx"]
        executorch = {kind: exported[task, kind] for kind in ("float", "int8") if (task, kind) in exported}
        summary[task].update({"onnx": onnx["path"], "onnx_parity": onnx["parity"], "executorch": executorch})

    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    ssd, seg, joint = summary["ssdlite"], summary["deeplab"], summary["multitask"]
    lines = [
        "",
        f"Demo finished in {summary['wall_seconds'] / 60:.1f} min; everything is under {summary['run_folder']}",
        f"  SSDLite          val mAP {ssd['metrics'].get('val/map', float('nan')):.3f}, "
        f"mAP@0.5 {ssd['metrics'].get('val/map_50', float('nan')):.3f} (training {ssd['fit_seconds'] / 60:.1f} min)",
        f"  Mobile DeepLabv3 val mIoU {seg['metrics'].get('val/mIoU', float('nan')):.3f}, "
        f"pixel accuracy {seg['metrics'].get('val/pixel_accuracy', float('nan')):.3f} (training {seg['fit_seconds'] / 60:.1f} min)",
        f"  Joint (one pass) val mAP {joint['metrics'].get('val/map', float('nan')):.3f}, "
        f"mAP@0.5 {joint['metrics'].get('val/map_50', float('nan')):.3f}, "
        f"mIoU {joint['metrics'].get('val/mIoU', float('nan')):.3f} (training {joint['fit_seconds'] / 60:.1f} min)",
        f"  pictures         {ssd['grid']}, {seg['grid']}, {joint['grid']} (one per image in <task>/predictions/)",
        f"  ONNX             {ssd['onnx']}: {ssd['onnx_parity']}",
        f"                   {seg['onnx']}: {seg['onnx_parity']}",
        f"                   {joint['onnx']}: {joint['onnx_parity']}",
        *(mobile_line(name, summary[task]["executorch"]) for name, task in
          (("SSDLite", "ssdlite"), ("DeepLab", "deeplab"), ("joint", "multitask"))),
        f"  metrics          <task>/logs/version_*/metrics.csv; tensorboard --logdir {summary['run_folder']}",
        f"  summary          {summary['run_folder']}/summary.json",
    ]
    print("\n".join(lines))


def mobile_line(name: str, executorch: dict[str, Any]) -> str:
    """``.pte`` float vs int8: size, latency (batch 1, 2 threads) and validation metric."""
    fp32, int8 = executorch["float"], executorch.get("int8")
    line = f"  ExecuTorch       {name}: float {fp32['size_bytes'] / 1e6:.2f} MB {fp32['latency_ms']:.1f} ms"
    if int8 is None:
        return f"{line} ({fp32['path']})"
    return (
        f"{line}, int8 {int8['size_bytes'] / 1e6:.2f} MB ({int8['size_bytes'] / fp32['size_bytes']:.2f}x) "
        f"{int8['latency_ms']:.1f} ms, {int8['metric_name']} {int8['float']} -> {int8['quantized']} ({int8['path']})"
    )


if __name__ == "__main__":
    main()
