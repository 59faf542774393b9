"""Mobile export: int8 ONNX with the JSON report (every task's float ``.pte`` and the joint
model's int8 one: the tiny demo, tests/test_demo.py), and the bad inputs (another task's
checkpoint, unreadable calibration images, a missing extra, an input size the file was not
exported for).

One end-to-end command per path, on random-weight width-0.35 checkpoints at 64 px and a
shapes dataset of a few 64-80 px images (one training image unreadable), made once for the
module: lowering dominates the time, so each graph is lowered once.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.shapes import CLASS_NAMES, generate_shapes
from deeplab_mobile import DeepLabModule
from engine.calibration import calibration_set
from engine.export_report import report_path
from engine.exported import InputSizeError, load_exported
from engine.parity import compare_detection_matches
from mobile_checkpoints import save_checkpoint
from ssdlite import SSDLiteModule
from ssdlite.cli import main as ssdlite_main

REPORT_KEYS = {"format", "quantization", "size_bytes", "metric_name", "float", "quantized", "latency_ms"}
SIZE = 64
CALIBRATION = 4  # of 6 training images, spread evenly: the first, the unreadable one, is among them


@dataclass(frozen=True)
class Run:
    """What a training run leaves for ``export``: checkpoints, the resolved configs and a val image."""

    ssdlite: str
    deeplab: str
    ssdlite_config: str
    image: str
    unreadable: Path


def save_config(data_class: str, init_args: dict, path: Path) -> str:
    """A run's config.yaml, of which export reads the ``data`` section."""
    path.write_text(yaml.safe_dump({"data": {"class_path": data_class, "init_args": init_args}}))
    return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    folder = tmp_path_factory.mktemp("mobile_run")
    root = generate_shapes(folder / "shapes", num_train=6, num_val=2, seed=0, min_size=SIZE, max_size=80)
    unreadable = sorted((root / "coco" / "train2017").glob("*.jpg"))[0]
    unreadable.write_bytes(b"not a jpeg")
    loader = {"batch_size": 2, "eval_batch_size": 2, "num_workers": 0, "pin_memory": False}
    return Run(
        ssdlite=save_checkpoint(SSDLiteModule(num_classes=len(CLASS_NAMES), width_mult=0.35, image_size=SIZE),
                                folder / "ssdlite.ckpt"),
        deeplab=save_checkpoint(DeepLabModule(num_classes=len(CLASS_NAMES) + 1, width_mult=0.35), folder / "deeplab.ckpt"),
        ssdlite_config=save_config("datamodules.CocoDetectionDataModule",
                                   {"root": str(root / "coco"), "image_size": SIZE, **loader}, folder / "ssdlite.yaml"),
        image=str(sorted((root / "coco" / "val2017").glob("*.jpg"))[0]),
        unreadable=unreadable,
    )  # fmt: skip


def test_ssdlite_onnx_int8_is_qdq_reports_counts_unreadable_calibration_images_and_refuses_other_sizes(
    run, tmp_path, capsys
):
    import onnx

    path = tmp_path / "ssdlite_int8.onnx"
    result = ssdlite_main(["export", "--ckpt_path", run.ssdlite, "--output", str(path), "--image", run.image,
                           "--quantize", "int8", "--config", run.ssdlite_config, "--calibration_images", str(CALIBRATION)])  # fmt: skip
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = json.loads(report_path(path).read_text())
    assert REPORT_KEYS <= set(report) and report["format"] == "onnx" and report["quantization"] == "int8"
    assert isinstance(report["float"], float) and isinstance(report["quantized"], float)
    calibration = report["calibration"]
    assert (calibration["images"], calibration["requested"], calibration["skipped"]) == (CALIBRATION - 1, CALIBRATION, 1)
    assert run.unreadable.name in calibration["skipped_files"][0]
    out = capsys.readouterr().out
    assert "need 8 of 10" in result.summary and json.dumps(report) in out and "1 unreadable skipped" in out
    graph = load_exported(path)
    boxes, scores = graph(torch.rand(2, 3, SIZE, SIZE))  # the ONNX batch stays dynamic
    assert len(boxes) == 2
    with pytest.raises(InputSizeError, match=rf"exported for images N x 3 x {SIZE} x {SIZE}"):
        graph(torch.rand(2, 3, 32, 32))


def test_export_refuses_a_checkpoint_of_another_task(run, tmp_path):
    with pytest.raises(SystemExit, match="is a DeepLabModule checkpoint, not SSDLiteModule"):
        ssdlite_main(["export", "--ckpt_path", run.deeplab, "--output", str(tmp_path / "x.pte"), "--image", run.image,
                      "--format", "executorch"])  # fmt: skip


def test_int8_needs_a_config_and_the_suffix_fits_the_format(run, tmp_path, capsys):
    common = ["export", "--ckpt_path", run.ssdlite, "--image", run.image]
    with pytest.raises(SystemExit):
        ssdlite_main([*common, "--output", str(tmp_path / "x.pte"), "--format", "executorch", "--quantize", "int8"])
    assert "--quantize int8 needs --config" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ssdlite_main([*common, "--output", str(tmp_path / "x.onnx"), "--format", "executorch"])
    assert "--format executorch writes a .pte file" in capsys.readouterr().err


def test_missing_mobile_extra_names_it(run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # an import of it now fails
    with pytest.raises(ImportError, match=r"pip install -e '\.\[mobile\]'"):
        ssdlite_main(["export", "--ckpt_path", run.ssdlite, "--output", str(tmp_path / "x.pte"), "--image", run.image,
                      "--format", "executorch"])  # fmt: skip


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


def test_unreadable_calibration_images_are_skipped_and_counted(run, tmp_path):
    good = sorted(Path(run.image).parent.glob("*.jpg"))[:2]
    calibration = calibration_set(_DataModule([good[0], run.unreadable, good[1], tmp_path / "gone.jpg"]), 4, (32, 48))
    assert calibration.images.shape == (2, 3, 32, 48) and calibration.requested == 4
    assert len(calibration.skipped) == 2 and str(run.unreadable) in calibration.skipped[0]
    assert "2 unreadable skipped" in calibration.summary()
    with pytest.raises(ValueError, match="none of the 1 calibration images"):
        calibration_set(_DataModule([run.unreadable]), 4, (32, 48))


def test_detection_matching_rule():
    box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    reference = [{"boxes": box.repeat(10, 1), "scores": torch.ones(10), "labels": torch.zeros(10, dtype=torch.long)}]
    shifted = box.clone()
    shifted[0, 2:] += 8.0  # IoU 0.69
    assert compare_detection_matches(reference, reference).passed
    assert not compare_detection_matches(reference, [{**reference[0], "boxes": shifted.repeat(10, 1)}]).passed
    assert not compare_detection_matches(reference, [{**reference[0], "labels": torch.ones(10, dtype=torch.long)}]).passed


def test_a_program_the_runtime_cannot_load_is_named(tmp_path):
    path = tmp_path / "broken.pte"
    path.write_bytes(b"not an ExecuTorch program")
    with pytest.raises(RuntimeError, match=r"broken\.pte: the ExecuTorch runtime could not load this program"):
        load_exported(path)


def test_int8_keeps_every_backbones_stem_float():
    from deeplab_mobile.export import DeepLabExport
    from engine.executorch_export import deployable_copy
    from engine.export import command_int8_scope
    from engine.quantize import quantize_pt2e

    graph = DeepLabModule(num_classes=3, width_mult=0.35).model.eval()
    scope = command_int8_scope(DeepLabExport(), graph, argparse.Namespace(output_kind="logits"))
    assert scope.static is None and list(scope.kept_float) == ["backbone.features.0", "backbone.features.1"]
    converted = quantize_pt2e(deployable_copy(graph, (64, 64)), torch.rand(2, 3, 64, 64), scope)
    int8_weights = {}
    for node in converted.graph.nodes:
        if node.target == torch.ops.aten.conv2d.default:
            layer = ".".join(list(node.meta["nn_module_stack"].values())[-1][0].split(".")[:3])  # backbone.features.<i>
            int8_weights.setdefault(layer, []).append("dequantize" in str(node.args[1].target))
    assert not any(int8_weights["backbone.features.0"] + int8_weights["backbone.features.1"])
    assert all(int8_weights["backbone.features.2"]) and all(int8_weights["classifier"])
