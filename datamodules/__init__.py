"""Lightning datamodules reading COCO and PASCAL VOC as distributed, custom folders, VOC XML
and YOLO exports of annotation tools, and the embedded shapes dataset, with the paper's
augmentations (albumentations); joint boxes + masks for the multi-task model (``.joint``).

Names are imported on first use, so ``python -m datamodules.shapes`` starts without
loading Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BaseDataModule": ".base",
    "UnpaddedDistributedSampler": ".base",
    "CocoDetectionDataModule": ".coco",
    "CocoSegmentationDataModule": ".coco",
    "detections_to_coco_results": ".coco",
    "detection_collate": ".collate",
    "ImageFolderPredictDataset": ".predict",
    "BaseJointDataModule": ".joint",
    "JointCocoDataModule": ".joint",
    "JointDataset": ".joint",
    "JointRecord": ".joint",
    "JointVOCDataModule": ".joint",
    "MixedJointDataModule": ".joint",
    "DataProblem": ".problems",
    "ProblemReport": ".problems",
    "VOC_CLASSES": ".voc",
    "VOCDetectionDataModule": ".voc",
    "VOCSegmentationDataModule": ".voc",
    "VOCFolderDetectionDataModule": ".voc_folder",
    "YoloDetectionDataModule": ".yolo",
    "generate_shapes": ".shapes",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
