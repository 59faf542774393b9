"""Quantization-aware fine-tuning (``engine.qat``, ``export --qat_steps``) of each task: SSDLite's
head outputs fake-quantized and trained with its own loss on the run's training batches,
converted to int8 around float box decoding (the predictors' 1x1 convs dynamically quantized); DeepLab's
logits and the joint model's outputs the same way under their own losses; the options it needs
and the training size it checks. The lowering is the post-training path's (``test_mobile_export``)."""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml

from datamodules import JointCocoDataModule, VOCSegmentationDataModule
from datamodules.check import datamodule_from_config
from datamodules.shapes import CLASS_NAMES, generate_shapes
from deeplab_mobile import DeepLabModule
from deeplab_mobile.export import DeepLabExport
from engine.qat import finetune_qat
from multitask import MultiTaskModule
from multitask.export import JointOutputs, MultiTaskExport
from ssdlite import SSDLiteModule
from ssdlite.cli import main as ssdlite_main
from ssdlite.export import DecodedDetections, SSDLiteExport
from ssdlite.qat import qat_plan

SIZE = 64
LOADER = {"batch_size": 2, "num_workers": 0}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes(tmp_path_factory.mktemp("qat_shapes"), num_train=4, num_val=1, seed=0, min_size=SIZE, max_size=80)


@pytest.fixture(scope="module")
def datamodule(shapes, tmp_path_factory):
    root, folder = shapes, tmp_path_factory.mktemp("qat_run")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "datamodules.CocoDetectionDataModule", "init_args": {
        "root": str(root / "coco"), "image_size": SIZE, "batch_size": 2, "num_workers": 0}}}))  # fmt: skip
    return datamodule_from_config(config)


def graph_targets(graph: torch.nn.Module) -> set[str]:
    return {str(node.target) for module in graph.modules() if isinstance(module, torch.fx.GraphModule)
            for node in module.graph.nodes}  # fmt: skip


def test_ssdlite_head_trains_fake_quantized_and_converts_to_int8(datamodule):
    model = SSDLiteModule(num_classes=len(CLASS_NAMES), width_mult=0.35, image_size=SIZE).model.eval()
    before = model.head.classification[0][1].weight.detach().clone()
    scope = SSDLiteExport().int8_scope(DecodedDetections(model), None)
    result = finetune_qat(qat_plan(model, (SIZE, SIZE)), datamodule, (SIZE, SIZE), steps=3, lr=0.01, scope=scope)

    assert result.summary["steps"] == 3 and result.summary["batch_size"] == 2 and result.summary["trained_parameters"] > 0
    assert torch.isfinite(torch.tensor([result.summary["first_loss"], result.summary["last_loss"]])).all()
    torch.testing.assert_close(model.head.classification[0][1].weight, before)  # the checkpoint's model is untouched
    targets = graph_targets(result.graph)
    assert any("quantize_per_channel" in target for target in targets)  # int8 weights
    assert any("quantize_per_tensor" in target for target in targets)  # int8 activations
    assert any("choose_qparams" in target for target in targets)  # the predictors' 1x1 convs: inputs quantized per call
    with torch.no_grad():
        boxes, scores = result.graph(torch.rand(1, 3, SIZE, SIZE))
        reference_boxes, reference_scores = model.decode(torch.rand(1, 3, SIZE, SIZE))
    assert boxes.shape == reference_boxes.shape and scores.shape == reference_scores.shape


def test_deeplab_logits_train_fake_quantized_and_convert_to_int8_labels(shapes):
    datamodule = VOCSegmentationDataModule(root=str(shapes), class_names=list(CLASS_NAMES), crop_size=SIZE, **LOADER)
    module = DeepLabModule(num_classes=len(CLASS_NAMES) + 1, width_mult=0.35).eval()
    plan = DeepLabExport().qat_plan(module, argparse.Namespace(output_kind="labels"))
    result = finetune_qat(plan, datamodule, (SIZE, SIZE), steps=2, lr=0.01)

    assert result.summary["steps"] == 2 and torch.isfinite(torch.tensor(result.summary["last_loss"]))
    targets = graph_targets(result.graph)
    assert any("quantize_per_channel" in t for t in targets) and any("quantize_per_tensor" in t for t in targets)
    with torch.no_grad():
        labels = result.graph(torch.rand(1, 3, SIZE, SIZE))
    assert labels.shape == (1, SIZE, SIZE) and labels.dtype == torch.int64


def test_joint_outputs_train_fake_quantized_under_both_losses(shapes):
    datamodule = JointCocoDataModule(root=str(shapes / "coco"), image_size=SIZE, **LOADER)
    module = MultiTaskModule(num_det_classes=len(CLASS_NAMES), num_seg_classes=len(CLASS_NAMES) + 1, width_mult=0.35,
                             image_size=SIZE).eval()  # fmt: skip
    export, args = MultiTaskExport(), argparse.Namespace(image_size=None, output_kind="logits")
    scope = export.int8_scope(JointOutputs(module.model), args)
    plan = export.qat_plan(module, args)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    with torch.no_grad():  # the loss reads both tasks' outputs: class 0 made certain changes each
        cls_logits, bbox_regression, logits = plan.graph(batch[0])
        loss = plan.loss((cls_logits, bbox_regression, logits), batch)
        class_0 = torch.tensor([0])
        assert loss != plan.loss((cls_logits, bbox_regression, logits.index_fill(1, class_0, 10.0)), batch)
        assert loss != plan.loss((cls_logits.index_fill(-1, class_0, 10.0), bbox_regression, logits), batch)
    result = finetune_qat(plan, datamodule, (SIZE, SIZE), steps=2, lr=0.01, scope=scope)

    assert result.summary["steps"] == 2 and torch.isfinite(torch.tensor(result.summary["last_loss"]))
    targets = graph_targets(result.graph)
    assert any("quantize_per_tensor" in t for t in targets) and any("choose_qparams" in t for t in targets)
    with torch.no_grad():
        outputs = result.graph(torch.rand(1, 3, SIZE, SIZE))
        reference = JointOutputs(module.model)(torch.rand(1, 3, SIZE, SIZE))
    assert [o.shape for o in outputs] == [r.shape for r in reference]


def test_qat_checks_the_training_size_and_its_options(datamodule, tmp_path, capsys):
    model = SSDLiteModule(num_classes=len(CLASS_NAMES), width_mult=0.35, image_size=SIZE).model.eval()
    with pytest.raises(ValueError, match=rf"trains on {SIZE} x {SIZE} images.*exported for 96 x 96"):
        finetune_qat(qat_plan(model, (96, 96)), datamodule, (96, 96), steps=1, lr=0.01)
    with pytest.raises(SystemExit):
        ssdlite_main(["export", "--ckpt_path", __file__, "--image", __file__, "--output", str(tmp_path / "x.pte"),
                      "--format", "executorch", "--qat_steps", "10"])  # fmt: skip
    assert "--qat_steps fine-tunes an int8 ExecuTorch program" in capsys.readouterr().err
