"""Mobile export: ExecuTorch ``.pte`` files (float parity with PyTorch), int8 for both runtimes
with the JSON report, and the bad inputs (another task's checkpoint, unreadable calibration
images, a missing extra, an input size the file was not exported for)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from deeplab_mobile.cli import main as deeplab_main
from demo_run import tiny_demo_run
from engine.calibration import calibration_set
from engine.export_report import report_path
from engine.exported import InputSizeError, load_exported
from engine.parity import compare_detection_matches
from ssdlite.cli import main as ssdlite_main

REPORT_KEYS = {"format", "quantization", "size_bytes", "metric_name", "float", "quantized", "latency_ms"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory)


def run_config(demo, task: str) -> str:
    """The resolved config.yaml the tiny demo's fit wrote."""
    return str(sorted((Path(demo["run_folder"]) / task / "logs").glob("version_*/config.yaml"))[0])


def parity_image(demo) -> str:
    return str(sorted((Path(demo["run_folder"]) / "val_sample").glob("*.jpg"))[0])


@pytest.fixture(scope="module")
def ssdlite_pte(demo, tmp_path_factory):
    path = tmp_path_factory.mktemp("mobile") / "ssdlite.pte"
    result = ssdlite_main(
        ["export", "--ckpt_path", demo["ssdlite"]["checkpoint"], "--output", str(path), "--image", parity_image(demo),
         "--format", "executorch", "--config", run_config(demo, "ssdlite")]
    )  # fmt: skip
    return path, result


def test_ssdlite_executorch_float_matches_pytorch_and_reports(ssdlite_pte):
    path, result = ssdlite_pte
    assert result.passed and "OK" in result.summary
    report = json.loads(report_path(path).read_text())
    assert REPORT_KEYS <= set(report) and report["format"] == "executorch" and report["quantization"] is None
    assert report["size_bytes"] == path.stat().st_size and report["metric_name"] == "map_50"
    assert 0.0 <= report["float"] <= 1.0 and report["quantized"] is None and report["latency_ms"] > 0
    graph = load_exported(path)
    assert graph.batch == 1 and graph.image_size == (96, 96)
    boxes, scores = graph(torch.rand(3, 3, 96, 96))  # a static batch of 1: run one at a time
    assert boxes.shape[:2] == scores.shape[:2] and len(boxes) == 3


def test_exported_files_refuse_another_input_size(ssdlite_pte, demo):
    with pytest.raises(InputSizeError, match=r"exported for images N x 3 x 96 x 96; got 1 x 3 x 128 x 128"):
        load_exported(ssdlite_pte[0])(torch.rand(1, 3, 128, 128))
    with pytest.raises(InputSizeError, match="exported for images N x 3 x 96 x 128"):
        load_exported(demo["deeplab"]["onnx"])(torch.rand(2, 3, 64, 64))


def test_deeplab_executorch_int8_writes_its_report(demo, tmp_path, capsys):
    path = tmp_path / "deeplab_int8.pte"
    result = deeplab_main(
        ["export", "--ckpt_path", demo["deeplab"]["checkpoint"], "--output", str(path), "--image", parity_image(demo),
         "--format", "executorch", "--quantize", "int8", "--config", run_config(demo, "deeplab"),
         "--calibration_images", "4", "--image_size", "64", "96"]
    )  # fmt: skip
    report = json.loads(report_path(path).read_text())
    assert REPORT_KEYS <= set(report) and report["quantization"] == "int8" and report["metric_name"] == "mIoU"
    assert isinstance(report["float"], float) and isinstance(report["quantized"], float)
    assert report["calibration"] == {"images": 4, "requested": 4, "skipped": 0, "skipped_files": []}
    assert "98.0%" in result.summary and json.dumps(report) in capsys.readouterr().out
    assert load_exported(path).image_size == (64, 96)


def test_ssdlite_onnx_int8_is_qdq_and_runs(demo, tmp_path):
    import onnx

    path = tmp_path / "ssdlite_int8.onnx"
    ssdlite_main(
        ["export", "--ckpt_path", demo["ssdlite"]["checkpoint"], "--output", str(path), "--image", parity_image(demo),
         "--quantize", "int8", "--config", run_config(demo, "ssdlite"), "--calibration_images", "4"]
    )  # fmt: skip
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = json.loads(report_path(path).read_text())
    assert report["format"] == "onnx" and report["quantization"] == "int8" and isinstance(report["quantized"], float)
    boxes, scores = load_exported(path)(torch.rand(2, 3, 96, 96))  # the ONNX batch stays dynamic
    assert len(boxes) == 2


def test_export_refuses_a_checkpoint_of_another_task(demo, tmp_path):
    with pytest.raises(SystemExit, match="is a DeepLabModule checkpoint, not SSDLiteModule"):
        ssdlite_main(["export", "--ckpt_path", demo["deeplab"]["checkpoint"], "--output", str(tmp_path / "x.pte"),
                      "--image", parity_image(demo), "--format", "executorch"])  # fmt: skip


def test_int8_needs_a_config_and_the_suffix_fits_the_format(demo, tmp_path, capsys):
    common = ["export", "--ckpt_path", demo["ssdlite"]["checkpoint"], "--image", parity_image(demo)]
    with pytest.raises(SystemExit):
        ssdlite_main([*common, "--output", str(tmp_path / "x.pte"), "--format", "executorch", "--quantize", "int8"])
    assert "--quantize int8 needs --config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ssdlite_main([*common, "--output", str(tmp_path / "x.onnx"), "--format", "executorch"])
    assert "--format executorch writes a .pte file" in capsys.readouterr().err


def test_missing_mobile_extra_names_it(demo, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # an import of it now fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[mobile\]'"):
        ssdlite_main(["export", "--ckpt_path", demo["ssdlite"]["checkpoint"], "--output", str(tmp_path / "x.pte"),
                      "--image", parity_image(demo), "--format", "executorch"])  # fmt: skip


class _Images:
    """A training split of image paths (what ``calibration_set`` reads of a dataset)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, index: int) -> Path:
        return self.paths[index]


class _DataModule:
    def __init__(self, paths: list[Path]) -> None:
        self.datasets = {"train": _Images(paths)}

    def setup(self, stage: str) -> None:
        pass


def test_unreadable_calibration_images_are_skipped_and_counted(demo, tmp_path):
    good = sorted((Path(demo["run_folder"]) / "val_sample").glob("*.jpg"))[:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    calibration = calibration_set(_DataModule([good[0], broken, good[1], tmp_path / "gone.jpg", good[2]]), 5, (32, 48))
    assert calibration.images.shape == (3, 3, 32, 48) and calibration.requested == 5
    assert len(calibration.skipped) == 2 and str(broken) in calibration.skipped[0]
    assert "2 unreadable skipped" in calibration.summary()
    with pytest.raises(ValueError, match="none of the 1 calibration images"):
        calibration_set(_DataModule([broken]), 4, (32, 48))


def test_detection_matching_rule():
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    reference = [{"boxes": box.repeat(10, 1), "scores": torch.ones(10), "labels": torch.zeros(10, dtype=torch.long)}]
    shifted = box.clone()
    shifted[0, 2:] += 8.0  # IoU 0.69
    assert compare_detection_matches(reference, reference).passed
    assert not compare_detection_matches(reference, [{**reference[0], "boxes": shifted.repeat(10, 1)}]).passed
    assert not compare_detection_matches(reference, [{**reference[0], "labels": torch.ones(10, dtype=torch.long)}]).passed
