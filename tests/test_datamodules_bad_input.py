"""Every bad-input kind: caught by the check, a counted skip in training, an error when strict.
Unusual but valid images (grayscale, RGBA, 16-bit, CMYK, EXIF-rotated) are converted."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bad_data import H, W, noise, write_bad_voc_segmentation, write_odd_images
from datamodules import CocoDetectionDataModule, VOCSegmentationDataModule
from datamodules.check import main as check_main
from datamodules.image_io import load_image


def test_conversions_and_exif_orientation(tmp_path: Path) -> None:
    files = write_odd_images(tmp_path)
    exif = load_image(tmp_path / files["exif"])
    assert exif.array.shape == (H, W, 3) and exif.conversions == ["exif_rotated"]
    assert exif.array[2:14, 2:14, 0].mean() > 230 and exif.array[2:14, 2:14, 1].mean() < 40  # red is top-left
    deep = load_image(tmp_path / files["16_bit"])
    assert deep.array.shape == (H, W, 3) and deep.array.dtype == np.uint8
    assert np.all(deep.array == 128) and set(deep.conversions) == {"16_bit", "grayscale"}
    assert load_image(tmp_path / files["grayscale"]).conversions == ["grayscale"]
    assert load_image(tmp_path / files["rgba"]).conversions == ["alpha_dropped"]
    cmyk = load_image(tmp_path / files["cmyk"])
    assert cmyk.conversions == ["cmyk"] and cmyk.array.shape == (H, W, 3)
    assert cmyk.array[..., 0].mean() > 200 and cmyk.array[..., 1:].mean() < 60  # C=0 M=Y=1: red


def test_check_counts_every_kind_and_names_the_files(bad_coco: Path) -> None:
    dm = CocoDetectionDataModule(str(bad_coco), num_workers=0)
    report = dm.check(("train",))
    assert {k: len(v) for k, v in report.problems.items() if v} == {
        "missing_image": 1,
        "unreadable_image": 3,
        "size_mismatch": 1,
        "box_outside_image": 1,
        "zero_area_box": 1,
        "unknown_category": 1,
    }
    assert {k: len(v) for k, v in report.notes.items() if v} == {
        "grayscale": 2,
        "16_bit": 1,
        "alpha_dropped": 1,
        "cmyk": 1,
        "exif_rotated": 1,
    }
    unreadable = " ".join(report.problems["unreadable_image"])
    assert "notes.jpg" in unreadable and "truncated.jpg" in unreadable and "truncated.png" in unreadable
    assert "wrong_size.jpg" in report.problems["size_mismatch"][0] and "50x50" in report.problems["size_mismatch"][0]


def test_training_epoch_skips_bad_samples_without_crashing(bad_coco: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = CocoDetectionDataModule(str(bad_coco), num_workers=0, batch_size=4, image_size=96)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        seen = sum(len(targets) for _, targets in dm.train_dataloader())
    # 12 listed, the missing file never enters: 2 full batches of 4 (drop_last) are drawn
    # from the shuffled 11, and whatever bad file they hit is skipped, logged and counted.
    report = dm.problem_log.report
    skipped_files = [item.split(":")[0] for kind in ("unreadable_image", "size_mismatch") for item in report.problems[kind]]
    assert seen + len(skipped_files) == 8 and seen >= 4
    assert all(any(f"] {name}:" in r.message for r in caplog.records) for name in skipped_files)
    skipped = []
    for index in range(len(dm.datasets["train"])):
        if dm.datasets["train"][index] is None:
            skipped.append(dm.datasets["train"].items[index].image_path.name)
    assert sorted(skipped) == ["notes.jpg", "truncated.jpg", "truncated.png", "wrong_size.jpg"]


def test_strict_mode_raises_before_training_naming_the_files(bad_coco: Path) -> None:
    dm = CocoDetectionDataModule(str(bad_coco), num_workers=0, strict=True)
    with pytest.raises(ValueError) as error:
        dm.setup("fit")
    message = str(error.value)
    for expected in ("missing.jpg", "notes.jpg", "truncated.jpg", "wrong_size.jpg", "size_mismatch", "unreadable_image"):
        assert expected in message


def test_check_command_on_a_folder_and_on_a_config(bad_coco: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert check_main([str(bad_coco / "annotations" / "instances_train2017.json")]) == 1
    out = capsys.readouterr().out
    assert "unreadable_image: 3" in out and "missing_image: 1" in out and "exif_rotated: 1" in out
    config = tmp_path / "config.yaml"
    config.write_text(
        "data:\n  class_path: datamodules.CocoDetectionDataModule\n"
        f"  init_args:\n    root: {bad_coco}\n    val_annotations: annotations/instances_train2017.json\n"
        "    val_images: train2017\n"
    )
    assert check_main([str(config), "--splits", "val"]) == 1
    assert "size_mismatch: 1" in capsys.readouterr().out


def test_segmentation_bad_masks(tmp_path: Path) -> None:
    root = write_bad_voc_segmentation(tmp_path)
    dm = VOCSegmentationDataModule(str(root), num_workers=0, batch_size=2, crop_size=32)
    report = dm.check(("val",))
    assert report.counts() == {"missing_mask": 1, "mask_size_mismatch": 1, "mask_bad_values": 1, "mask_not_indexed": 1}
    assert "small.png" in report.problems["mask_size_mismatch"][0] and "[50]" in report.problems["mask_bad_values"][0]
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    assert sum(len(images) for images, _ in batches) == 1  # only "ok" survives, nothing crashed
    strict = VOCSegmentationDataModule(str(root), num_workers=0, strict=True)
    with pytest.raises(ValueError, match="colour.png"):
        strict.setup("fit")


def test_predict_folder_of_arbitrary_images(bad_coco: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "photos"
    write_odd_images(folder)
    (folder / "sub").mkdir()
    noise(w=200, h=30).save(folder / "sub" / "wide.png")
    with caplog.at_level(logging.WARNING):
        dm = CocoDetectionDataModule(str(bad_coco), predict_path=str(folder), num_workers=0, batch_size=4, image_size=64)
        dm.setup("predict")
        batches = list(dm.predict_dataloader())
    assert "notes.jpg" in caplog.text and "truncated.jpg" in caplog.text
    # both reach the run's summary, as skips in fit / validate do
    problems = dm.problem_log.report.problems
    assert len(problems["not_an_image"]) == 1 and "notes.jpg" in problems["not_an_image"][0]
    assert any("truncated.jpg" in problem for problem in problems["unreadable_image"])
    metas = [m for _, ms in batches for m in ms]
    assert len(metas) == 9  # 11 files: the text file left out when listed, the truncated one skipped
    assert all(images.shape[1:] == (3, 64, 64) and images.dtype == torch.float32 for images, _ in batches)
    by_name = {Path(m["path"]).name: m for m in metas}
    assert by_name["wide.png"]["orig_size"] == [30, 200] and by_name["exif.jpg"]["orig_size"] == [H, W]
    # the decoded original rides along (pictures are drawn on it) and, with no COCO file names, no id
    assert by_name["wide.png"]["image"].shape == (3, 30, 200) and by_name["wide.png"]["image_id"] is None
    seg = VOCSegmentationDataModule(str(tmp_path), predict_path=str(folder), predict_max_size=100, num_workers=0, batch_size=16)
    seg.setup("predict")
    images, metas = next(iter(seg.predict_dataloader()))
    assert len(metas) == 9 and images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0
    wide = next(m for m in metas if m["path"].endswith("wide.png"))
    assert wide["size"] == [15, 100] and wide["orig_size"] == [30, 200]


def test_fast_jpeg_path_gives_pillows_pixels(tmp_path: Path) -> None:
    files = write_odd_images(tmp_path)
    for name in (files["good"], files["grayscale"]):
        expected = np.array(Image.open(tmp_path / name).convert("RGB"))
        np.testing.assert_array_equal(load_image(tmp_path / name).array, expected)
    # Bytes after the end-of-image marker (some cameras append data): still decoded, by Pillow.
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes((tmp_path / files["good"]).read_bytes() + b"\x00camera-data")
    np.testing.assert_array_equal(load_image(trailing).array, np.array(Image.open(tmp_path / files["good"])))
