"""The joint model really learns both tasks from one backbone, and its masks sit on their objects.

Pretrained MobileNetV2 frozen up to stride 16 (as ``configs/multitask_shapes.yaml``), SSDLite
head + reduced DeepLab head on ``features.14.conv.0`` (through its depthwise adapter), 160 x 160
inputs, 144 iterations of batch 16 on the embedded dataset's VOC layout (boxes from the XML,
masks from the PNGs), about a CPU minute. Validation compares detections and label maps with the
annotations in each image's own pixels; the shift that best aligns the predicted label maps with
the masks is within 1.5 network-input pixels on average (a tenth of a stride-16 cell; 3-4.5
pixels of these 320-480 px images). Without the adapter it is (2.3, 3.2) here.
"""

import lightning as L
import numpy as np
import pytest
import torch

from datamodules import JointVOCDataModule
from datamodules.shapes import CLASS_NAMES
from multitask.module import MultiTaskModule
from test_alignment import best_shift

IMAGE_SIZE = 160
EPOCHS = 24  # 6 iterations each
MIN_MAP_50 = 0.3
MIN_MIOU = 0.3


@pytest.mark.timeout(900)
def test_joint_model_learns_boxes_and_masks(shapes_root, pretrained_weights_available):
    L.seed_everything(0)
    data = JointVOCDataModule(
        root=str(shapes_root), class_names=list(CLASS_NAMES), image_size=IMAGE_SIZE, zoom_out=False,
        photometric=False, batch_size=16, eval_batch_size=24, num_workers=0, pin_memory=False,
    )  # fmt: skip
    model = MultiTaskModule(
        num_det_classes=data.num_det_classes, num_seg_classes=data.num_seg_classes, image_size=IMAGE_SIZE,
        pretrained_backbone=True, freeze_backbone="features.14", lr=0.1, warmup_steps=10,
    )  # fmt: skip
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    L.Trainer(max_epochs=EPOCHS, limit_val_batches=0, enable_checkpointing=False, **quiet).fit(model, datamodule=data)
    (scores,) = L.Trainer(**quiet).validate(model, datamodule=data, verbose=False)
    print({name: round(value, 3) for name, value in scores.items() if "iou/" not in name})
    assert scores["val/map_50"] >= MIN_MAP_50 and scores["val/mIoU"] >= MIN_MIOU

    shifts = []
    model.eval()
    for images, targets in data.val_dataloader():
        with torch.no_grad():
            results = model.predict_batch(model.model, images, targets)
        for result, target in zip(results, targets):
            shift = best_shift(result["label_map"].numpy(), target["orig_mask"].numpy(), max_shift=8)
            shifts.append(np.array(shift) * IMAGE_SIZE / np.array(target["orig_mask"].shape))  # in input pixels
    mean_shift = np.abs(np.mean(shifts, axis=0))
    print("mean best-aligning shift (dy, dx) in input pixels:", np.mean(shifts, axis=0), "over", len(shifts), "images")
    assert len(shifts) == 24 and (mean_shift <= 1.5).all()
