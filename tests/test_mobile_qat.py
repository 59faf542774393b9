"""Quantization-aware fine-tuning (``engine.qat``, ``export --qat_steps``): SSDLite's head
outputs fake-quantized and trained with its own loss on the run's training batches, converted
to int8 around float box decoding; the options it needs and the training size it checks. The
lowering is the post-training path's (``test_mobile_export``)."""

from __future__ import annotations

import pytest
import torch
import yaml

from datamodules.check import datamodule_from_config
from datamodules.shapes import CLASS_NAMES, generate_shapes
from engine.qat import finetune_qat
from ssdlite import SSDLiteModule
from ssdlite.cli import main as ssdlite_main
from ssdlite.export import DecodedDetections, SSDLiteExport
from ssdlite.qat import qat_plan

SIZE = 64


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qat_run")
    root = generate_shapes(folder / "shapes", num_train=4, num_val=1, seed=0, min_size=SIZE, max_size=80)
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "datamodules.CocoDetectionDataModule", "init_args": {
        "root": str(root / "coco"), "image_size": SIZE, "batch_size": 2, "num_workers": 0}}}))  # fmt: skip
    return datamodule_from_config(config)


def test_ssdlite_head_trains_fake_quantized_and_converts_to_int8(datamodule):
    model = SSDLiteModule(num_classes=len(CLASS_NAMES), width_mult=0.35, image_size=SIZE).model.eval()
    before = model.head.classification[0][1].weight.detach().clone()
    modules = SSDLiteExport().quantized_modules(DecodedDetections(model), None)
    result = finetune_qat(qat_plan(model, (SIZE, SIZE)), datamodule, (SIZE, SIZE), steps=3, lr=0.01, modules=modules)

    assert result.summary["steps"] == 3 and result.summary["batch_size"] == 2 and result.summary["trained_parameters"] > 0
    assert torch.isfinite(torch.tensor([result.summary["first_loss"], result.summary["last_loss"]])).all()
    torch.testing.assert_close(model.head.classification[0][1].weight, before)  # the checkpoint's model is untouched
    targets = {str(node.target) for node in result.graph.head_outputs.graph.nodes}
    assert any("quantize_per_channel" in target for target in targets)  # int8 weights
    assert any("quantize_per_tensor" in target for target in targets)  # int8 activations
    with torch.no_grad():
        boxes, scores = result.graph(torch.rand(1, 3, SIZE, SIZE))
        reference_boxes, reference_scores = model.decode(torch.rand(1, 3, SIZE, SIZE))
    assert boxes.shape == reference_boxes.shape and scores.shape == reference_scores.shape


def test_qat_checks_the_training_size_and_its_options(datamodule, tmp_path, capsys):
    model = SSDLiteModule(num_classes=len(CLASS_NAMES), width_mult=0.35, image_size=SIZE).model.eval()
    with pytest.raises(ValueError, match=rf"trains on {SIZE} x {SIZE} images.*exported for 96 x 96"):
        finetune_qat(qat_plan(model, (96, 96)), datamodule, (96, 96), steps=1, lr=0.01)
    with pytest.raises(SystemExit):
        ssdlite_main(["export", "--ckpt_path", __file__, "--image", __file__, "--output", str(tmp_path / "x.pte"),
                      "--format", "executorch", "--qat_steps", "10"])  # fmt: skip
    assert "--qat_steps fine-tunes an int8 ExecuTorch program" in capsys.readouterr().err
