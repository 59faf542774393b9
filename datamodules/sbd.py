"""The Semantic Boundaries Dataset (Hariharan et al. 2011), as released.

``benchmark_RELEASE/dataset/`` holds ``cls/<stem>.mat`` (a MATLAB struct ``GTcls`` whose
``Segmentation`` field is the ``H x W`` class-index mask, VOC's 20 classes, no 255 border),
``img/<stem>.jpg`` and the ``train.txt`` / ``val.txt`` lists. The DeepLab "trainaug" set is
(VOC train ∪ SBD train ∪ SBD val) minus VOC val: 10,582 images for the full releases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io

from .image_io import read_list
from .problems import DataProblem


def sbd_dataset_dir(root: str | Path) -> Path:
    """``root`` itself or its ``dataset/`` sub-folder, whichever holds ``cls/``."""
    root = Path(root)
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            return candidate
    raise FileNotFoundError(f"{root}: no SBD release here (expected cls/ under it or under dataset/)")


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """``H x W`` uint8 class indices from an SBD ``cls/*.mat`` file."""
    path = Path(path)
    if not path.is_file():
        raise DataProblem("missing_mask", path, "mask file does not exist")
    try:
        gt = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)["GTcls"]
        return np.asarray(gt.Segmentation, dtype=np.uint8)
    except (ValueError, KeyError, AttributeError, OSError) as error:
        raise DataProblem("unreadable_mask", path, f"not an SBD GTcls .mat file ({error})") from error


def trainaug_stems(voc_train: list[str], voc_val: list[str], sbd_dir: str | Path) -> list[str]:
    """(VOC train ∪ SBD train ∪ SBD val) minus VOC val, in a stable sorted order."""
    sbd = sbd_dataset_dir(sbd_dir)
    stems = set(voc_train) | set(read_list(sbd / "train.txt")) | set(read_list(sbd / "val.txt"))
    return sorted(stems - set(voc_val))
