"""Training really learns: Mobile DeepLabv3 on the embedded dataset's VOC layout.

Pretrained MobileNetV2 (channels-last) frozen up to stride 8 (the shapes config's recipe), the
paper's reduced head at OS16, SGD + poly; 140 iterations of batch 8 at 224x224 crops (images
scaled by 0.5 or 0.75) on two CPU cores, under a minute. Validation runs on the whole 320-480 px images scaled by 0.75, the scale training saw
(measured: mIoU 0.759 over background and the five shapes, pixel accuracy 0.972). Its
predictions sit on their objects: on whole validation images of any size, the shift that best
aligns the predicted label maps with the masks is under a pixel on average.
"""

import lightning as L
import numpy as np
import torch

from datamodules import VOCSegmentationDataModule
from datamodules.shapes import CLASS_NAMES
from deeplab_mobile import DeepLabModule
from test_alignment import best_shift

MIN_MIOU = 0.6


def test_reduced_head_learns_the_shapes_dataset(shapes_root, pretrained_weights_available):
    L.seed_everything(0)
    data = VOCSegmentationDataModule(
        root=str(shapes_root),
        class_names=list(CLASS_NAMES),
        crop_size=224,
        scales=[0.5, 0.75],
        batch_size=8,
        num_workers=0,
        pin_memory=False,
    )
    model = DeepLabModule(
        num_classes=data.num_classes, pretrained_backbone=True, freeze_backbone="features.7", lr=0.05, eval_scales=[0.75]
    )
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    L.Trainer(max_steps=140, limit_val_batches=0, enable_checkpointing=False, **quiet).fit(model, datamodule=data)
    (scores,) = L.Trainer(**quiet).validate(model, datamodule=data, verbose=False)
    print({name: round(value, 3) for name, value in scores.items()})
    ious = [scores[f"val/iou/{name}"] for name in data.class_names]
    assert len(ious) == 6  # every class is present in the validation images
    assert scores["val/mIoU"] >= MIN_MIOU
    assert scores["val/pixel_accuracy"] >= 0.9

    shifts = []
    for images, masks in data.val_dataloader():
        with torch.no_grad():
            labels = model.eval().probabilities(images).argmax(1)
        for predicted, mask in zip(labels.numpy(), masks.numpy()):
            shifts.append(best_shift(predicted, mask, max_shift=6))
    mean_shift = np.abs(np.mean(shifts, axis=0))
    print("mean best-aligning shift (dy, dx):", np.mean(shifts, axis=0), "over", len(shifts), "images")
    assert len(shifts) >= 16 and (mean_shift <= 1.0).all()
