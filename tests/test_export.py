"""ONNX export round trips: both commands' files run in onnxruntime at other batch sizes and
agree with PyTorch (detections: top boxes within 1e-3 relative; segmentation: > 99.9% of labels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.parity import compare_label_maps, compare_top_detections, load_parity_batch, run_onnx
from deeplab_mobile import DeepLabModule
from deeplab_mobile.cli import main as deeplab_main
from demo_run import tiny_demo_run
from ssdlite import SSDLiteModule
from ssdlite.cli import main as ssdlite_main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory)


def real_batch(demo, size: tuple[int, int], count: int) -> torch.Tensor:
    """``count`` different val images (and mirrors) as ``count x 3 x H x W`` in [0, 1]."""
    images = sorted((Path(demo["run_folder"]) / "val_sample").glob("*.jpg"))
    return torch.cat([load_parity_batch(path, size) for path in images])[:count]


@pytest.mark.parametrize("batch", [1, 3])
def test_ssdlite_onnx_batch_is_dynamic_and_matches_pytorch(demo, batch):
    module = SSDLiteModule.load_from_checkpoint(demo["ssdlite"]["checkpoint"], map_location="cpu", pretrained_backbone=False)
    size = module.hparams.image_size
    images = real_batch(demo, (size, size), batch)
    with torch.no_grad():
        boxes, scores = module.model.eval().decode(images)
    onnx_boxes, onnx_scores = run_onnx(demo["ssdlite"]["onnx"], images)
    assert onnx_boxes.shape == (batch, *boxes.shape[1:])
    parity = compare_top_detections(boxes, scores, onnx_boxes, onnx_scores)
    assert parity.passed, parity.summary


@pytest.mark.parametrize("batch", [1, 3])
def test_deeplab_onnx_logits_batch_is_dynamic_and_matches_pytorch(demo, batch):
    module = DeepLabModule.load_from_checkpoint(demo["deeplab"]["checkpoint"], map_location="cpu", pretrained_backbone=False)
    (onnx_logits,) = run_onnx(demo["deeplab"]["onnx"], torch.zeros(1, 3, 96, 128))  # the demo's tiny export size
    images = real_batch(demo, onnx_logits.shape[-2:], batch)
    with torch.no_grad():
        labels = module.model.eval()(images).argmax(dim=1)
    (onnx_logits,) = run_onnx(demo["deeplab"]["onnx"], images)
    parity = compare_label_maps(labels, onnx_logits.argmax(axis=1))
    assert parity.passed, parity.summary


def test_deeplab_onnx_graph_resizes_the_logits_plainly(demo):
    """The demo's model has channels-last weights, whose logits the fast path resizes padded to
    a multiple of 8 channels (``resize_logits``); an exported graph keeps the plain resize (and
    crops the logits of its padded input back to the image's size: ``Slice``)."""
    import onnx

    model = DeepLabModule.load_from_checkpoint(demo["deeplab"]["checkpoint"], map_location="cpu", pretrained_backbone=False).model
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in model.parameters() if w.dim() == 4)
    ops = {node.op_type for node in onnx.load(demo["deeplab"]["onnx"]).graph.node}
    assert "Resize" in ops and not ops & {"ScatterND", "Transpose"}


def test_deeplab_export_command_writes_a_label_map_graph(demo, tmp_path, capsys):
    image = sorted((Path(demo["run_folder"]) / "val_sample").glob("*.jpg"))[0]
    parity = deeplab_main(
        ["export", "--ckpt_path", demo["deeplab"]["checkpoint"], "--output", str(tmp_path / "labels.onnx"),
         "--image", str(image), "--image_size", "64", "96", "--output_kind", "labels"]
    )  # fmt: skip
    assert parity.passed and parity.summary in capsys.readouterr().out
    (labels,) = run_onnx(tmp_path / "labels.onnx", real_batch(demo, (64, 96), 3))
    assert labels.shape == (3, 64, 96) and labels.dtype == np.int64


def test_export_command_names_a_missing_checkpoint(capsys):
    with pytest.raises(SystemExit) as exited:
        ssdlite_main(["export", "--ckpt_path", "missing.ckpt", "--output", "x.onnx", "--image", "x.jpg"])
    assert exited.value.code == 2 and "--ckpt_path missing.ckpt: no such file" in capsys.readouterr().err


def test_parity_checks_catch_a_disagreement():
    labels = torch.zeros(1, 100, 100, dtype=torch.int64)
    wrong = labels.clone().numpy()
    wrong[0, :2] = 1  # 2% of the pixels
    assert compare_label_maps(labels, labels.numpy()).passed and not compare_label_maps(labels, wrong).passed
    boxes = torch.tensor([[[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 5.0, 5.0]]])
    scores = torch.tensor([[[0.9], [0.1]]])
    shifted = boxes.clone().numpy()
    shifted[0, 0, 2] += 0.1  # 0.2% of 50 px on the best box
    assert compare_top_detections(boxes, scores, boxes.numpy(), scores.numpy()).passed
    assert not compare_top_detections(boxes, scores, shifted, scores.numpy()).passed
