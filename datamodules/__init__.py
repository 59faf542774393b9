"""Lightning datamodules reading COCO and PASCAL VOC as distributed, custom folders, and the
embedded shapes dataset, with the paper's augmentations (albumentations)."""

from .base import BaseDataModule, UnpaddedDistributedSampler
from .coco import CocoDetectionDataModule, CocoSegmentationDataModule, detections_to_coco_results
from .collate import detection_collate
from .predict import ImageFolderPredictDataset
from .problems import DataProblem, ProblemReport
from .voc import VOC_CLASSES, VOCDetectionDataModule, VOCSegmentationDataModule

__all__ = [
    "VOC_CLASSES",
    "BaseDataModule",
    "CocoDetectionDataModule",
    "CocoSegmentationDataModule",
    "DataProblem",
    "ImageFolderPredictDataset",
    "ProblemReport",
    "UnpaddedDistributedSampler",
    "VOCDetectionDataModule",
    "VOCSegmentationDataModule",
    "detection_collate",
    "detections_to_coco_results",
]
