"""The decoded cache: the same samples as decoding, files decoded once, edits and bad files honoured."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.datasets
from bad_data import write_bad_voc_segmentation
from datamodules import CocoSegmentationDataModule, VOCSegmentationDataModule
from datamodules.shapes import CLASS_NAMES


def samples(dm, split: str, seeds: range) -> list:
    dataset = dm.datasets[split]
    return [dataset.fetch(index, seed) for index, seed in zip(range(len(dataset)), seeds)]


def assert_same_samples(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.sample, y.sample, rtol=0, atol=0)
        assert x.notes == y.notes


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(datamodules.datasets, "load_image", fail)
    monkeypatch.setattr(datamodules.datasets, "read_index_mask", fail)


@pytest.mark.parametrize("layout", ["voc", "coco"])
def test_cached_samples_equal_decoded_ones_and_are_read_back_without_decoding(
    layout: str, shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def datamodule(cache_dir):
        if layout == "voc":
            return VOCSegmentationDataModule(
                str(shapes_root), class_names=list(CLASS_NAMES), crop_size=97, decoded_cache_dir=cache_dir
            )
        return CocoSegmentationDataModule(
            str(shapes_root / "coco"), class_names=list(CLASS_NAMES), coco_names=list(CLASS_NAMES),
            crop_size=97, decoded_cache_dir=cache_dir,
        )

    plain, cached = datamodule(None), datamodule(str(tmp_path / "cache"))
    plain.setup("fit")
    cached.setup("fit")
    reference = {split: samples(plain, split, range(100, 200)) for split in ("train", "val")}
    first = {split: samples(cached, split, range(100, 200)) for split in ("train", "val")}  # fills the cache
    forbid_decoding(monkeypatch)
    again = {split: samples(cached, split, range(100, 200)) for split in ("train", "val")}
    for split in ("train", "val"):
        assert_same_samples(reference[split], first[split])
        assert_same_samples(reference[split], again[split])
    entries = list((tmp_path / "cache").glob("*/*.image.npy"))
    assert len(entries) == len(cached.datasets["train"]) + len(cached.datasets["val"])
    assert not list((tmp_path / "cache").glob("*/.*.tmp"))


def test_an_edited_file_is_decoded_again_and_bad_files_still_skip(tmp_path: Path) -> None:
    root = write_bad_voc_segmentation(tmp_path / "voc")
    dm = VOCSegmentationDataModule(str(root), num_workers=0, crop_size=32, decoded_cache_dir=str(tmp_path / "cache"))
    dm.setup("validate")
    dataset = dm.datasets["val"]
    before = [dataset.fetch(i) for i in range(len(dataset))]
    good = [i for i, f in enumerate(before) if f.problem is None]
    assert len(good) == 1 and len(before) > 1
    assert all(f.problem is not None for i, f in enumerate(before) if i not in good)  # never cached
    assert [dataset.fetch(i).problem is None for i in range(len(dataset))] == [f.problem is None for f in before]

    mask_path = dataset.items[good[0]].mask
    from PIL import Image

    mask = np.array(Image.open(mask_path))
    edited = Image.fromarray(np.ones_like(mask), mode="P")
    edited.putpalette(Image.open(mask_path).getpalette())
    edited.save(mask_path)
    os.utime(mask_path, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    _, new_mask = dataset.fetch(good[0]).sample
    assert mask.max() == 0 and new_mask.min() == 1
