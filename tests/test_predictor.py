"""``ssdlite.load_predictor`` / ``deeplab_mobile.load_predictor`` (``engine.predictor.Predictor``):
a checkpoint as a Python callable gives the ``predict`` command's results (``trainer.predict``
through the datamodule) on paths, PIL images, numpy arrays and tensors, one or a list, in each
image's own pixels, named with the run's classes, without ImageNet weights on the machine.

The checkpoints are those of tiny random-weight modules (width 0.35), saved by the Trainer that
ran their reference predictions with the shapes datamodules attached, and marked as runs that
started from ImageNet weights (as the shapes configs' runs are).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import deeplab_mobile
import ssdlite
from core.fuse import PackedConv2d, prepacking_available
from datamodules import CocoDetectionDataModule, VOCSegmentationDataModule
from datamodules.shapes import CLASS_NAMES, generate_shapes
from deeplab_mobile import DeepLabModule
from engine.predictor import Predictor, checkpoint_class_names, rgb_array
from ssdlite import SSDLiteModule

TRAINER = dict(
    accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
    enable_model_summary=False,
)  # fmt: skip
EXIF_ORIENTATION = 0x0112
# name -> (height, width). DeepLab's datamodule here shrinks images longer than 96 and pads to
# 32s: a stays 70 x 50 in a 96 x 64 input, b -> 36 x 96 in 64 x 96, c stays 60 x 40 in 64 x 64.
SIZES = {"a": (70, 50), "b": (45, 120), "c": (60, 40)}


def noise_and_patches(height: int, width: int, seed: int) -> np.ndarray:
    """Noise under three flat patches: the random-weight models here label it with more than one class."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, height), rng.integers(0, width)
        image[y : y + height // 2, x : x + width // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The shapes dataset (its class names) and a folder of the PNGs in ``SIZES``."""
    root = tmp_path_factory.mktemp("data")
    shapes = generate_shapes(root / "shapes", num_train=1, num_val=1, min_size=64, max_size=96)
    images = root / "images"
    images.mkdir()
    for seed, (name, (height, width)) in enumerate(SIZES.items()):
        Image.fromarray(noise_and_patches(height, width, seed)).save(images / f"{name}.png")
    return {"shapes": shapes, "images": images}


def calibrated(module: L.LightningModule) -> L.LightningModule:
    """``module`` in eval mode with BatchNorm statistics of random images: a fresh module's
    outputs are nearly constant (detection scores all tie, label maps hold one class), these vary."""
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches seen
    # SSDLite in train mode wants targets; its raw head outputs run the same layers.
    forward = module.model.predict_raw if isinstance(module, SSDLiteModule) else module.model
    with torch.no_grad():
        module.train()
        forward(torch.rand(4, 3, 64, 64))
    for norm in norms:
        norm.momentum = 0.1
    return module.eval()


def predicted_and_saved(module: L.LightningModule, datamodule: L.LightningDataModule, path: Path) -> dict[str, dict]:
    """``trainer.predict`` results (the ``predict`` command's path: datamodule, collate, fast
    path, ``predict_batch``) by file name; the same Trainer then saves ``path``."""
    trainer = L.Trainer(**TRAINER)
    batches = trainer.predict(module, datamodule=datamodule)
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"]["pretrained_backbone"] = True  # the shapes configs' runs start from ImageNet
    torch.save(checkpoint, path)
    return {Path(result["path"]).stem: result for batch in batches for result in batch}


@pytest.fixture(scope="module")
def detection(data, tmp_path_factory) -> dict:
    datamodule = CocoDetectionDataModule(
        str(data["shapes"] / "coco"), image_size=64, predict_path=str(data["images"]), num_workers=0, pin_memory=False
    )
    torch.manual_seed(0)  # module fixtures start before the test-wide seeding
    module = calibrated(SSDLiteModule(num_classes=datamodule.num_classes, width_mult=0.35, image_size=64))
    checkpoint = tmp_path_factory.mktemp("ssdlite") / "last.ckpt"
    reference = predicted_and_saved(module, datamodule, checkpoint)
    return {"checkpoint": checkpoint, "reference": reference, "predictor": ssdlite.load_predictor(checkpoint)}


@pytest.fixture(scope="module")
def segmentation(data, tmp_path_factory) -> dict:
    datamodule = VOCSegmentationDataModule(
        str(data["shapes"]), class_names=list(CLASS_NAMES), predict_max_size=96, eval_batch_size=1,
        predict_path=str(data["images"]), num_workers=0, pin_memory=False,
    )  # fmt: skip
    torch.manual_seed(0)
    module = calibrated(DeepLabModule(num_classes=datamodule.num_classes, width_mult=0.35))
    checkpoint = tmp_path_factory.mktemp("deeplab") / "last.ckpt"
    reference = predicted_and_saved(module, datamodule, checkpoint)
    return {"checkpoint": checkpoint, "reference": reference, "predictor": deeplab_mobile.load_predictor(checkpoint)}


def assert_same_detections(result: dict, expected: dict) -> None:
    assert torch.equal(result["labels"], expected["labels"])
    torch.testing.assert_close(result["boxes"], expected["boxes"], atol=1e-4, rtol=0)
    torch.testing.assert_close(result["scores"], expected["scores"], atol=1e-5, rtol=0)


def image_forms(path: Path) -> dict[str, object]:
    """One image as every input the predictors take."""
    array = np.array(Image.open(path).convert("RGB"))
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return {
        "str": str(path), "Path": path, "PIL": Image.open(path), "numpy": array, "uint8 tensor": tensor,
        "float tensor": tensor.float() / 255, "non-contiguous float tensor": (tensor.float() / 255).transpose(1, 2).mT,
    }  # fmt: skip


def test_detections_equal_the_predict_commands(data, detection):
    predictor = detection["predictor"]
    paths = [data["images"] / f"{name}.png" for name in SIZES]
    results = predictor(paths)
    assert isinstance(results, list) and len(results) == len(SIZES)
    for name, result in zip(SIZES, results):
        expected = detection["reference"][name]
        assert len(expected["scores"].unique()) > 10  # no ties
        assert_same_detections(result, expected)
        assert result["boxes"].dtype == torch.float32 and result["labels"].dtype == torch.int64
        assert result["class_names"] == [CLASS_NAMES[label] for label in result["labels"].tolist()]
        height, width = SIZES[name]
        boxes = result["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 0] <= boxes[:, 2]).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all() and (boxes[:, 1] <= boxes[:, 3]).all()


def test_label_maps_equal_the_predict_commands(data, segmentation):
    predictor = segmentation["predictor"]
    assert (predictor.max_size, predictor.size_divisor) == (96, 32)  # the run's datamodule settings
    results = predictor([data["images"] / f"{name}.png" for name in SIZES])
    for name, result in zip(SIZES, results):
        expected = segmentation["reference"][name]["labels"]
        assert len(expected.unique()) > 1  # class borders to misplace
        assert result["labels"].dtype == torch.int64 and tuple(result["labels"].shape) == SIZES[name]
        assert torch.equal(result["labels"], expected)
        assert result["class_names"] == ["background", *CLASS_NAMES]


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_every_input_form_gives_the_same_result(task, data, request):
    predictor = request.getfixturevalue(task)["predictor"]
    forms = image_forms(data["images"] / "a.png")
    expected = predictor(forms.pop("str"))
    assert isinstance(expected, dict)
    for form, image in forms.items():
        result = predictor(image)
        assert result.keys() == expected.keys(), form
        assert torch.equal(result["labels"], expected["labels"]), form
        if task == "detection":
            assert torch.equal(result["boxes"], expected["boxes"]) and result["class_names"] == expected["class_names"]


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_a_list_gives_each_images_own_result_whatever_the_batch(task, data, request):
    predictor = request.getfixturevalue(task)["predictor"]
    images = [np.array(Image.open(data["images"] / f"{name}.png")) for name in (*SIZES, "a")]
    one_by_one = [predictor(image) for image in images]
    for batched in (predictor(images), predictor(tuple(images), batch_size=2)):
        assert len(batched) == len(images)
        for result, expected in zip(batched, one_by_one):
            if task == "detection":
                assert_same_detections(result, expected)
            else:
                assert torch.equal(result["labels"], expected["labels"])
    assert predictor([]) == []


def test_results_are_in_the_pixels_of_the_image_given(tmp_path, detection, segmentation):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 80 wide x 50 high, upright 50 x 80
    Image.fromarray(noise_and_patches(50, 80, seed=3)).save(tmp_path / "rotated.jpg", exif=exif)
    # A file is read upright, as the predict command reads it; a PIL image is taken as it is.
    cases = {
        "file": (tmp_path / "rotated.jpg", (80, 50)),
        "PIL": (Image.open(tmp_path / "rotated.jpg"), (50, 80)),
        "larger than max_size": (noise_and_patches(150, 200, seed=4), (150, 200)),  # DeepLab: 72 x 96 inside
    }
    for image, (height, width) in cases.values():
        assert tuple(segmentation["predictor"](image)["labels"].shape) == (height, width)
        boxes = detection["predictor"](image)["boxes"]
        assert len(boxes) > 0
        assert boxes[:, 0::2].min() >= 0 and boxes[:, 2].max() <= width and boxes[:, 1::2].min() >= 0
        assert boxes[:, 3].max() <= height


def test_checkpoints_load_without_imagenet_weights(tmp_path, monkeypatch, detection, segmentation, data):
    """The checkpoints' hyperparameters say ``pretrained_backbone=True``; with an empty torch cache
    and downloads failing, building their modules as saved fails, the predictors load."""

    def no_download(*args, **kwargs):
        raise OSError("no ImageNet weights may be fetched here")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    image = data["images"] / "a.png"
    for task, load, module_class in (
        (detection, ssdlite.load_predictor, SSDLiteModule),
        (segmentation, deeplab_mobile.load_predictor, DeepLabModule),
    ):
        with pytest.raises(RuntimeError, match="ImageNet weights may be fetched"):
            module_class.load_from_checkpoint(task["checkpoint"], weights_only=True)  # the check bites
        predictor = load(task["checkpoint"])
        assert torch.equal(predictor(image)["labels"], task["predictor"](image)["labels"])


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_the_predictor_runs_the_fast_path_made_at_load(task, request, data, monkeypatch):
    predictor: Predictor = request.getfixturevalue(task)["predictor"]
    modules = list(predictor.model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)  # folded into the convs
    if prepacking_available(predictor.module.model):
        assert any(isinstance(m, PackedConv2d) for m in modules)
    fast = predictor.model

    def not_this_one(*args, **kwargs):
        raise AssertionError("the predictor ran the module's own model, not the fast path")

    monkeypatch.setattr(predictor.module.model, "forward", not_this_one)
    predictor(data["images"] / "a.png")
    assert predictor.model is fast


def test_class_names_come_from_the_checkpoint_else_its_datamodule_else_indices(segmentation, tmp_path):
    names = ["background", *CLASS_NAMES]
    data_hparams = {"class_names": list(CLASS_NAMES), "background_name": "background"}
    assert checkpoint_class_names({"class_names": names, "datamodule_hyper_parameters": {}}, 6) == names
    assert checkpoint_class_names({"datamodule_hyper_parameters": data_hparams}, 6) == names
    assert checkpoint_class_names({"datamodule_hyper_parameters": {"class_names": names[1:]}}, 5) == names[1:]
    assert checkpoint_class_names({"class_names": ["x"], "datamodule_hyper_parameters": {"class_names": None}}, 3) == [
        "0", "1", "2"
    ]  # fmt: skip
    assert checkpoint_class_names({}, 2) == ["0", "1"]
    # A checkpoint saved before class names were: from its datamodule's hyperparameters.
    checkpoint = torch.load(segmentation["checkpoint"], weights_only=True)
    assert checkpoint["class_names"] == names
    del checkpoint["class_names"]
    torch.save(checkpoint, tmp_path / "older.ckpt")
    assert deeplab_mobile.load_predictor(tmp_path / "older.ckpt").class_names == names


def test_float_tensors_round_to_the_nearest_uint8_and_bad_inputs_are_refused_saying_what_is_expected():
    assert rgb_array(torch.tensor([0.6, 254.4, 1.0]).view(3, 1, 1) / 255).ravel().tolist() == [1, 254, 1]
    for image, error, message in (
        (np.zeros((8, 8), np.uint8), ValueError, "H x W x 3 uint8"),
        (np.zeros((8, 8, 3), np.float32), ValueError, "H x W x 3 uint8"),
        (torch.zeros(1, 3, 8, 8), ValueError, "pass a batch as a list"),
        (torch.full((3, 8, 8), 2.0), ValueError, r"values in \[0, 1\]"),
        (torch.zeros(3, 8, 8, dtype=torch.int32), ValueError, "uint8 or float"),
        (42, TypeError, "cannot predict on a int"),
    ):
        with pytest.raises(error, match=message):
            rgb_array(image)
