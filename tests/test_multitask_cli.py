"""The ``multitask`` command: fit, validate, predict and export from the shapes config, tiny settings."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multitask import MultiTaskModel
from multitask.cli import main
from multitask.module import MultiTaskModule

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "multitask_shapes.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "multitask"
# A CPU-second run of the shapes config: width 0.35 without weights, 96 px, 2 iterations.
TINY = ["--model.width_mult", "0.35", "--model.pretrained_backbone", "false", "--data.num_workers", "0",
        "--data.image_size", "96", "--data.batch_size", "2", "--data.eval_batch_size", "2"]  # fmt: skip


def test_fit_validate_predict_export(shapes_root, tmp_path, monkeypatch):
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} is missing: install the package (make install)"
    monkeypatch.chdir(tmp_path)
    data = ["--config", str(CONFIG), "--data.root", str(shapes_root), *TINY]
    fit = main(["fit", *data, "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2",
                "--trainer.limit_val_batches", "2", "--trainer.check_val_every_n_epoch", "1"])  # fmt: skip
    metrics = fit.trainer.callback_metrics
    for key in ("val/map", "val/map_50", "val/mIoU", "val/pixel_accuracy", "val/score"):
        assert key in metrics, key
    torch.testing.assert_close(metrics["val/score"], (metrics["val/map"] + metrics["val/mIoU"]) / 2)
    checkpoint = tmp_path / "runs" / "multitask_shapes" / "checkpoints" / "last.ckpt"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["class_names"] == ["circle", "square", "triangle", "star", "hexagon"]
    assert saved["seg_class_names"] == ["background", "circle", "square", "triangle", "star", "hexagon"]

    validate = main(["validate", *data, "--ckpt_path", str(checkpoint), "--trainer.limit_val_batches", "2"])
    assert "val/mIoU" in validate.trainer.callback_metrics

    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((shapes_root / "coco" / "val2017").glob("*.jpg"))[:3]
    for source in sources:
        (images / source.name).write_bytes(source.read_bytes())
    main(["predict", *data, "--ckpt_path", str(checkpoint), "--data.predict_path", str(images),
          "--model.prediction_dir", "predictions"])  # fmt: skip
    for source in sources:
        size = Image.open(source).size
        label_map = Image.open(tmp_path / "predictions" / f"{source.stem}.png")
        assert label_map.mode == "P" and label_map.size == size
        assert np.array(label_map).max() < 6  # background + 5 shapes
        assert Image.open(tmp_path / "predictions" / f"{source.stem}_joint.jpg").size == size
        record = json.loads((tmp_path / "predictions" / f"{source.stem}.json").read_text())
        assert (record["width"], record["height"]) == size
        assert all(d["class_name"] in saved["class_names"] for d in record["detections"])

    parity = main(["export", "--ckpt_path", str(checkpoint), "--output", "joint.onnx", "--image", str(sources[0])])
    assert parity.passed, parity.summary
    assert "detection" in parity.summary and "segmentation" in parity.summary


def test_checkpoint_loads_without_imagenet_weights(shapes_root, tmp_path, monkeypatch):
    """A module built from hyperparameters that ask for pretrained weights loads from its
    checkpoint with an empty torch cache (the weights come from the checkpoint)."""
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
