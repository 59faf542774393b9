"""Every bad-input kind: caught by the check, a counted skip in training, an error when strict.
Unusual but valid images (grayscale, RGBA, 16-bit, CMYK, EXIF-rotated) are converted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import CocoDetectionDataModule, VOCSegmentationDataModule
from datamodules.check import main as check_main
from datamodules.io import load_image
from datamodules.shapes import voc_palette

W, H = 64, 48


def _noise(w: int = W, h: int = H, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _exif_rotated(path: Path) -> None:
    """An upright 64 x 48 image (red top-left block) stored rotated, with EXIF orientation 6."""
    upright = np.full((H, W, 3), 200, np.uint8)
    upright[:16, :16] = (255, 0, 0)
    raw = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the camera stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    raw.save(path, exif=exif, quality=95)


def write_odd_images(folder: Path) -> dict[str, str]:
    """One file per kind; returns ``{kind: file name}``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "good": "good.jpg",
        "good2": "good2.jpg",
        "truncated": "truncated.jpg",
        "not_an_image": "notes.jpg",
        "size_mismatch": "wrong_size.jpg",
        "grayscale": "gray.jpg",
        "rgba": "rgba.png",
        "16_bit": "deep.png",
        "cmyk": "cmyk.jpg",
        "exif": "exif.jpg",
    }
    _noise().save(folder / files["good"])
    _noise(seed=1).save(folder / files["good2"])
    _noise(seed=2).save(folder / "full.jpg")
    data = (folder / "full.jpg").read_bytes()
    (folder / "full.jpg").unlink()
    (folder / files["truncated"]).write_bytes(data[: len(data) // 2])
    (folder / files["not_an_image"]).write_text("these are my notes, not a photo\n")
    _noise(w=50, h=50).save(folder / files["size_mismatch"])
    Image.new("L", (W, H), 77).save(folder / files["grayscale"])
    Image.new("RGBA", (W, H), (10, 20, 30, 40)).save(folder / files["rgba"])
    Image.fromarray(np.full((H, W), 32896, np.uint16)).save(folder / files["16_bit"])
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(folder / files["cmyk"])
    _exif_rotated(folder / files["exif"])
    return files


@pytest.fixture(scope="module")
def bad_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("badcoco")
    files = write_odd_images(root / "train2017")
    names = list(files.values()) + ["missing.jpg"]
    images = [{"id": i + 1, "file_name": n, "width": W, "height": H} for i, n in enumerate(names)]
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": 3, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0}
        for i in range(len(names))
    ]
    (root / "annotations").mkdir()
    coco = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "thing"}]}
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    (root / "val2017").symlink_to(root / "train2017")
    return root


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
        "unreadable_image": 2,
        "size_mismatch": 1,
    }
    assert {k: len(v) for k, v in report.notes.items() if v} == {
        "grayscale": 2,
        "16_bit": 1,
        "alpha_dropped": 1,
        "cmyk": 1,
        "exif_rotated": 1,
    }
    unreadable = " ".join(report.problems["unreadable_image"])
    assert "notes.jpg" in unreadable and "truncated.jpg" in unreadable
    assert "wrong_size.jpg" in report.problems["size_mismatch"][0] and "50x50" in report.problems["size_mismatch"][0]


def test_training_epoch_skips_bad_samples_without_crashing(bad_coco: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = CocoDetectionDataModule(str(bad_coco), num_workers=0, batch_size=4, image_size=96)
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        seen = sum(len(targets) for _, targets in dm.train_dataloader())
    # 11 listed, the missing file never enters: 2 full batches of 4 (drop_last) are drawn
    # from the shuffled 10, and whatever bad file they hit is skipped.
    assert seen + dm.datasets["train"].skipped == 8 and seen >= 5
    assert any("skipping" in r.message for r in caplog.records)
    skipped = []
    for index in range(len(dm.datasets["train"])):
        if dm.datasets["train"][index] is None:
            skipped.append(dm.datasets["train"].records[index].image_path.name)
    assert sorted(skipped) == ["notes.jpg", "truncated.jpg", "wrong_size.jpg"]


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
    assert "unreadable_image: 2" in out and "missing_image: 1" in out and "exif_rotated: 1" in out
    config = tmp_path / "config.yaml"
    config.write_text(
        "data:\n  class_path: datamodules.CocoDetectionDataModule\n"
        f"  init_args:\n    root: {bad_coco}\n    val_annotations: annotations/instances_train2017.json\n"
        "    val_images: train2017\n"
    )
    assert check_main([str(config), "--splits", "val"]) == 1
    assert "size_mismatch: 1" in capsys.readouterr().out


def _seg_fixture(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    masks = {
        "ok": np.zeros((H, W), np.uint8),
        "small": np.zeros((H // 2, W // 2), np.uint8),
        "values": np.full((H, W), 50, np.uint8),
        "colour": None,
        "absent": None,
    }
    for i, (stem, mask) in enumerate(masks.items()):
        _noise(seed=i).save(voc / "JPEGImages" / f"{stem}.jpg")
        if mask is not None:
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette())
            png.save(voc / "SegmentationClass" / f"{stem}.png")
    Image.new("RGB", (W, H), (128, 0, 0)).save(voc / "SegmentationClass" / "colour.png")
    names = "".join(f"{s}\n" for s in masks)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text(names)
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(names)
    return root


def test_segmentation_bad_masks(tmp_path: Path) -> None:
    root = _seg_fixture(tmp_path)
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
    _noise(w=200, h=30).save(folder / "sub" / "wide.png")
    with caplog.at_level(logging.ERROR):
        dm = CocoDetectionDataModule(str(bad_coco), predict_path=str(folder), num_workers=0, batch_size=4, image_size=64)
        dm.setup("predict")
        batches = list(dm.predict_dataloader())
    assert "notes.jpg" in caplog.text and "truncated.jpg" in caplog.text
    metas = [m for _, ms in batches for m in ms]
    assert len(metas) == 9  # 11 files: the text file left out when listed, the truncated one skipped
    assert all(images.shape[1:] == (3, 64, 64) and images.dtype == torch.float32 for images, _ in batches)
    by_name = {Path(m["path"]).name: m for m in metas}
    assert by_name["wide.png"]["orig_size"] == [30, 200] and by_name["exif.jpg"]["orig_size"] == [H, W]
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
