"""``make demo`` in reduced form: ``scripts/demo.py --tiny`` generates data, runs fit / validate /
predict of the three commands, draws grids, exports ONNX and float / int8 ExecuTorch programs and
summarises; the run folder holds it all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from demo_run import tiny_demo_run
from engine.exported import InputSizeError, load_exported


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory)


@pytest.mark.parametrize("task, metric", [("ssdlite", "val/map"), ("deeplab", "val/mIoU"), ("multitask", "val/score")])
def test_run_folder_holds_checkpoints_logs_config_and_pictures(demo, task, metric):
    run = Path(demo["run_folder"])
    result = demo[task]
    assert 0.0 <= result["metrics"][metric] <= 1.0
    assert Path(result["checkpoint"]).is_file() and (run / task / "checkpoints" / "last.ckpt").is_file()
    assert list((run / task / "logs").glob("version_*/metrics.csv")), "no CSV metrics"
    assert list((run / task / "logs").glob("version_*/config.yaml")), "no resolved config"
    assert list((run / task / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard events"

    samples = sorted((run / "val_sample").glob("*.jpg"))
    suffix = {"ssdlite": "_boxes.jpg", "deeplab": "_overlay.jpg", "multitask": "_joint.jpg"}[task]
    for sample in samples:  # one picture per image, at the image's own size
        assert Image.open(run / task / "predictions" / f"{sample.stem}{suffix}").size == Image.open(sample).size
    grid = Image.open(result["grid"])
    assert grid.format == "JPEG" and grid.width > 256
    assert result["onnx_parity"].endswith("OK") and Path(result["onnx"]).is_file()
    fp32 = result["executorch"]["float"]
    assert fp32["parity"].endswith("OK") and fp32["path"] == str(run / f"{task}.pte") and fp32["quantized"] is None
    report = json.loads(Path(fp32["report"]).read_text())  # each file with its report beside it
    assert report["size_bytes"] == Path(fp32["path"]).stat().st_size == fp32["size_bytes"]


def test_int8_program_is_calibrated_evaluated_and_reported(demo):
    # The tiny demo lowers the joint model's int8 program only (the full demo: every task's).
    run, fp32, int8 = Path(demo["run_folder"]), demo["multitask"]["executorch"]["float"], demo["multitask"]["executorch"]["int8"]
    assert int8["path"] == str(run / "multitask_int8.pte") and isinstance(int8["quantized"], float)
    report = json.loads(Path(int8["report"]).read_text())
    assert report["size_bytes"] == Path(int8["path"]).stat().st_size == int8["size_bytes"]
    assert report["calibration"]["images"] == 4 and set(report["quantized_metrics"]) == set(report["float_metrics"])
    assert int8["size_bytes"] < 0.35 * fp32["size_bytes"]


def test_executorch_detector_runs_one_image_at_a_time_and_refuses_other_sizes(demo):
    graph = load_exported(demo["ssdlite"]["executorch"]["float"]["path"])
    height, width = graph.image_size
    assert graph.batch == 1
    boxes, scores = graph(torch.rand(3, 3, height, width))  # a static batch of 1: run one at a time
    assert boxes.shape[:2] == scores.shape[:2] and len(boxes) == 3
    with pytest.raises(InputSizeError, match=rf"exported for images N x 3 x {height} x {width}; got 1 x 3 x 128 x 160"):
        graph(torch.rand(1, 3, 128, 160))


def test_detection_results_are_an_official_coco_results_file(demo):
    run = Path(demo["run_folder"])
    results = json.loads((run / "ssdlite" / "predictions" / "coco_results.json").read_text())
    ground_truth = COCO(str(Path(demo["data"]) / "coco" / "annotations" / "instances_val2017.json"))
    assert results and set(ground_truth.loadRes(results).getImgIds()) <= set(ground_truth.getImgIds())


def test_summary_names_metrics_and_where_the_outputs_are(demo):
    summary = demo["stdout"].split("Demo finished")[-1]
    assert "val mAP" in summary and "val mIoU" in summary
    assert all(demo[task]["grid"] in summary for task in ("ssdlite", "deeplab", "multitask"))
    programs = [demo[task]["executorch"]["float"]["path"] for task in ("ssdlite", "deeplab")]
    assert all(path in summary for path in [*programs, demo["multitask"]["executorch"]["int8"]["path"]])
    written = json.loads((Path(demo["run_folder"]) / "summary.json").read_text())
    assert written["wall_seconds"] == demo["wall_seconds"]
    assert f"Demo finished in {demo['wall_seconds'] / 60:.1f} min" in demo["stdout"]
