"""DeepLabModule: poly schedule per iteration, whole-set mIoU in validate, predict at original size."""

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from deeplab_mobile import DeepLabModule, scores_from_confusion_matrix

TRAINER = dict(
    accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
)


def tiny_module(**kwargs) -> DeepLabModule:
    return DeepLabModule(num_classes=3, width_mult=0.35, **kwargs)


def segmentation_loader(count: int = 6, batch_size: int = 2, size: int = 33) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 3, size, size, generator=generator)
    masks = torch.randint(0, 3, (count, size, size), generator=generator)
    masks[:, :5] = 255
    return DataLoader(TensorDataset(images, masks), batch_size=batch_size)


class RecordLearningRate(L.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_poly_schedule_steps_per_iteration_and_decay_skips_norms():
    module, record = tiny_module(lr=0.01), RecordLearningRate()
    L.Trainer(max_steps=5, callbacks=[record], **TRAINER).fit(module, segmentation_loader(count=10))
    assert record.rates == pytest.approx([0.01 * (1 - k / 5) ** 0.9 for k in range(5)])
    decayed, plain = module.trainer.optimizers[0].param_groups
    assert decayed["weight_decay"] == 4e-5 and plain["weight_decay"] == 0.0
    assert all(p.ndim == 4 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])


def test_validate_miou_is_the_whole_set_confusion_matrix():
    module, loader = tiny_module().eval(), segmentation_loader()
    matrix = torch.zeros(3, 3, dtype=torch.long)
    with torch.no_grad():
        for images, masks in loader:
            predictions = module(images).argmax(dim=1)
            valid = masks != 255
            matrix += torch.bincount(masks[valid] * 3 + predictions[valid], minlength=9).view(3, 3)
    (logged,) = L.Trainer(**TRAINER).validate(module, loader)
    expected = scores_from_confusion_matrix(matrix)
    assert logged["val/mIoU"] == pytest.approx(expected["miou"].item(), abs=1e-6)
    assert logged["val/pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"].item(), abs=1e-6)
    for k in range(3):
        assert logged[f"val/iou/{k}"] == pytest.approx(expected["iou"][k].item(), abs=1e-6)


def test_predict_writes_palette_pngs_at_the_original_size(tmp_path):
    module = tiny_module(prediction_dir=str(tmp_path), eval_scales=[0.75, 1.0], eval_flip=True).eval()
    images = torch.rand(2, 3, 40, 48)
    sources = tmp_path / "images"
    metas = [
        {"path": str(sources / "a.jpg"), "orig_size": [80, 96], "size": [40, 48]},
        {"path": str(sources / "b.jpg"), "orig_size": [50, 30], "size": [40, 24]},  # padded on the right
    ]
    for meta in metas:  # the overlay picture is drawn on the decoded original the batch carries
        height, width = meta["orig_size"]
        meta["image"] = torch.full((3, height, width), 120, dtype=torch.uint8)
    with torch.no_grad():
        results = module.predict_step((images, metas), 0)
    for result, meta in zip(results, metas):  # what the prediction writer does after each batch
        module.write_prediction(result, meta, tmp_path)
    assert [r["labels"].shape for r in results] == [(80, 96), (50, 30)]
    for result, name in zip(results, ["a", "b"]):
        written = Image.open(tmp_path / f"{name}.png")
        assert written.mode == "P"
        np.testing.assert_array_equal(np.array(written), result["labels"].numpy())
        assert Image.open(tmp_path / f"{name}_overlay.jpg").size == written.size


def test_predicted_labels_are_the_argmax_of_the_resized_probabilities():
    """Resized to the original size when it differs, as is when it does not; the first of tied
    classes wins, as with argmax."""
    module = tiny_module().eval()
    images = torch.rand(2, 3, 40, 48)
    metas = [
        {"path": "a.jpg", "orig_size": [40, 48], "size": [40, 48]},
        {"path": "b.jpg", "orig_size": [57, 31], "size": [40, 24]},  # padded on the right
    ]
    with torch.no_grad():
        probabilities = module.probabilities(images)
        results = module.predict_step((images, metas), 0)
    resized = F.interpolate(probabilities[1:, :, :, :24], size=(57, 31), mode="bilinear", align_corners=False)
    expected = [probabilities[0].argmax(dim=0), resized[0].argmax(dim=0)]
    for result, labels in zip(results, expected):
        assert torch.equal(result["labels"], labels)
    # A classifier with zero weights and bias ties every class everywhere: class 0 wins.
    torch.nn.init.zeros_(module.model.classifier.weight)
    torch.nn.init.zeros_(module.model.classifier.bias)
    with torch.no_grad():
        for result in module.predict_step((images, metas), 0):
            assert not result["labels"].any()


def test_class_weights_must_cover_every_class():
    with pytest.raises(ValueError, match="2 entries for 3 classes"):
        tiny_module(class_weights=[1.0, 2.0])
    module = tiny_module(class_weights=[1.0, 2.0, 0.5])
    assert module.class_weights.tolist() == [1.0, 2.0, 0.5]


def test_init_from_starts_fit_from_another_runs_weights(tmp_path):
    source = tiny_module()
    torch.nn.init.normal_(source.model.classifier.weight)
    trainer = L.Trainer(max_steps=0, **TRAINER)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(tmp_path / "coco.ckpt")
    saved = torch.load(tmp_path / "coco.ckpt", weights_only=True)["hyper_parameters"]
    # Run-time choices are not hyperparameters: LightningCLI would let them override the command line.
    assert saved["num_classes"] == 3 and not {"output_stride", "eval_scales", "init_from"} & set(saved)
    fresh = tiny_module(init_from=str(tmp_path / "coco.ckpt"))
    fresh.setup("validate")  # only fit starts from it
    assert not torch.equal(fresh.model.classifier.weight, source.model.classifier.weight)
    fresh.setup("fit")
    for (name, mine), theirs in zip(fresh.model.state_dict().items(), source.model.state_dict().values()):
        assert torch.equal(mine, theirs), name
