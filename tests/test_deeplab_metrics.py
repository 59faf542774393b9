"""Segmentation scores from one confusion matrix, DDP de-duplication, palette PNGs."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchmetrics.classification import MulticlassJaccardIndex

from core.constants import voc_palette
from datamodules.image_io import save_palette_png
from deeplab_mobile import SegmentationScores
from engine.distributed import unrepeated_samples

NUM_CLASSES = 6


def random_batches(generator: torch.Generator, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Prediction and label maps ``N x H x W``; labels carry 255 blocks; class 5 never occurs."""
    batches = []
    for _ in range(count):
        labels = torch.randint(0, NUM_CLASSES - 1, (2, 31, 37), generator=generator)
        predictions = torch.where(
            torch.rand(labels.shape, generator=generator) < 0.6,
            labels,
            torch.randint(0, NUM_CLASSES - 1, labels.shape, generator=generator),
        )
        top, left = torch.randint(0, 20, (2,), generator=generator).tolist()
        labels[:, top : top + 10, left : left + 15] = 255
        batches.append((predictions, labels))
    return batches


def reference_scores(batches) -> tuple[float, np.ndarray, float]:
    """Independent numpy computation: confusion matrix by bincount, IoU per present class."""
    predictions = np.concatenate([p.numpy().ravel() for p, _ in batches])
    labels = np.concatenate([t.numpy().ravel() for _, t in batches])
    valid = labels != 255
    matrix = np.bincount(
        labels[valid] * NUM_CLASSES + predictions[valid], minlength=NUM_CLASSES**2
    ).reshape(NUM_CLASSES, NUM_CLASSES)
    iou = []
    for k in range(NUM_CLASSES):
        intersection = matrix[k, k]
        union = matrix[k, :].sum() + matrix[:, k].sum() - intersection
        iou.append(intersection / union if union else np.nan)
    iou = np.array(iou)
    return float(np.nanmean(iou)), iou, float(np.trace(matrix) / matrix.sum())


def test_scores_equal_an_independent_confusion_matrix_computation():
    batches = random_batches(torch.Generator().manual_seed(1))
    scores, jaccard = SegmentationScores(NUM_CLASSES), MulticlassJaccardIndex(NUM_CLASSES, ignore_index=255)
    for predictions, labels in batches:
        scores.update(predictions, labels)
        jaccard.update(predictions, labels)
    result = scores.compute()
    miou, iou, accuracy = reference_scores(batches)
    assert np.isnan(iou[-1]) and result["iou"][-1].isnan()  # the absent class is skipped
    assert result["miou"].item() == pytest.approx(miou, abs=1e-12)
    np.testing.assert_allclose(result["iou"].numpy(), iou, rtol=1e-12)
    assert result["pixel_accuracy"].item() == pytest.approx(accuracy, abs=1e-12)
    assert result["miou"].item() == pytest.approx(jaccard.compute().item(), abs=1e-6)


def test_unrepeated_samples_count_every_image_once_over_all_processes():
    dataset, replicas, batch_size = list(range(10)), 4, 2
    counted = []
    for rank in range(replicas):
        sampler = DistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=3)
        indices = list(sampler)  # 3 per process: 12 positions for 10 images
        for first in range(0, len(indices), batch_size):
            batch = indices[first : first + batch_size]
            keep = unrepeated_samples(sampler, first, len(batch))
            counted += [i for i, kept in zip(batch, keep) if kept]
    assert sorted(counted) == dataset
    assert unrepeated_samples(None, 0, 3).all()


def test_palette_png_round_trip(tmp_path):
    labels = torch.tensor([[0, 1, 2], [15, 20, 255]])
    path = save_palette_png(labels, tmp_path / "sub" / "map.png")
    image = Image.open(path)
    assert image.mode == "P"
    np.testing.assert_array_equal(np.array(image), labels.numpy())
    rgb = image.convert("RGB")
    assert rgb.getpixel((1, 0)) == (128, 0, 0)  # aeroplane
    assert rgb.getpixel((0, 1)) == (192, 128, 128)  # person
    assert rgb.getpixel((2, 1)) == (224, 224, 192)  # ignore
    assert len(voc_palette()) == 768
    with pytest.raises(ValueError, match="bad.png"):
        save_palette_png(torch.full((2, 2), 300), tmp_path / "bad.png")
