"""The ``multitask`` command as the demo runs it (``scripts/demo.py --tiny``: fit, validate,
predict, export of the shapes config): what each step leaves behind."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from demo_run import tiny_demo_run
from multitask import MultiTaskModel
from multitask.module import MultiTaskModule

CONSOLE_SCRIPT = Path(sys.executable).parent / "multitask"
DET_CLASSES = ["circle", "square", "triangle", "star", "hexagon"]


def test_fit_validate_predict_export(tmp_path_factory):
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} is missing: install the package (make install)"
    demo = tiny_demo_run(tmp_path_factory)
    joint, run = demo["multitask"], Path(demo["run_folder"])
    metrics = joint["metrics"]
    for key in ("val/map", "val/map_50", "val/mIoU", "val/pixel_accuracy", "val/score"):
        assert key in metrics, key
    assert abs(metrics["val/score"] - (metrics["val/map"] + metrics["val/mIoU"]) / 2) < 1e-3
    saved = torch.load(joint["checkpoint"], map_location="cpu", weights_only=False)
    assert saved["class_names"] == DET_CLASSES and saved["seg_class_names"] == ["background", *DET_CLASSES]

    for source in sorted((run / "val_sample").glob("*.jpg")):
        size = Image.open(source).size
        label_map = Image.open(run / "multitask" / "predictions" / f"{source.stem}.png")
        assert label_map.mode == "P" and label_map.size == size
        assert np.array(label_map).max() < 6  # background + 5 shapes
        record = json.loads((run / "multitask" / "predictions" / f"{source.stem}.json").read_text())
        assert (record["width"], record["height"]) == size
        assert all(d["class_name"] in DET_CLASSES for d in record["detections"])
    assert "detection: top" in joint["onnx_parity"] and "segmentation: same label" in joint["onnx_parity"]


def test_checkpoint_loads_without_imagenet_weights(tmp_path, monkeypatch):
    """A module whose hyperparameters ask for pretrained weights loads from its checkpoint with
    an empty torch cache (the weights come from the checkpoint)."""
    from engine.checkpoint_checks import MODULE_CLASSES_KEY, load_module_checkpoint, task_classes

    module = MultiTaskModule(num_det_classes=3, num_seg_classes=4, width_mult=0.35, image_size=96)
    module.hparams.pretrained_backbone = True
    path = tmp_path / "joint.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.6", MODULE_CLASSES_KEY: task_classes(MultiTaskModule)}, path)  # fmt: skip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    loaded = load_module_checkpoint(MultiTaskModule, path)
    assert isinstance(loaded.model, MultiTaskModel)
    torch.testing.assert_close(loaded.model.segmenter.classifier.weight, module.model.segmenter.classifier.weight)


def test_python_predictor_gives_boxes_and_masks_in_image_pixels(tmp_path_factory):
    from multitask import load_predictor

    demo = tiny_demo_run(tmp_path_factory)
    predictor = load_predictor(demo["multitask"]["checkpoint"])
    image = next((Path(demo["run_folder"]) / "val_sample").glob("*.jpg"))
    result = predictor(str(image))
    width, height = Image.open(image).size
    assert result["label_map"].shape == (height, width)
    assert result["seg_class_names"] == ["background", *DET_CLASSES]
    assert result["boxes"].shape[1] == 4 and len(result["class_names"]) == len(result["labels"])
    written = np.array(Image.open(Path(demo["run_folder"]) / "multitask" / "predictions" / f"{image.stem}.png"))
    assert (result["label_map"].numpy() == written).mean() > 0.999  # as `multitask predict` wrote it
