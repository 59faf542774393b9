"""Datasets salted with every kind of bad input, shared by the data and the training tests.

``write_bad_coco``: COCO detection whose images are ``write_odd_images`` (unreadable JPEG,
truncated JPEG and PNG, a size that contradicts the annotation, grayscale, RGBA, 16-bit, CMYK,
EXIF-rotated), one listed file that does not exist, and annotations with a box outside the
image, a zero-area box and an unknown category id. ``write_bad_voc_segmentation``: VOC
segmentation with masks missing, of the wrong size, holding values outside the classes or in
colour, optionally with the odd images too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from core.constants import voc_palette

W, H = 64, 48
COCO_CATEGORY_ID = 3


def noise(w: int = W, h: int = H, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _exif_rotated(path: Path) -> None:
    """An upright 64 x 48 image (red top-left block) stored rotated, with EXIF orientation 6."""
    upright = np.full((H, W, 3), 200, np.uint8)
    upright[:16, :16] = (255, 0, 0)
    raw = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the camera stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    raw.save(path, exif=exif, quality=95)


def _truncated(path: Path, image: Image.Image) -> None:
    """``image`` saved in ``path``'s format, cut in half."""
    image.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_odd_images(folder: Path) -> dict[str, str]:
    """One file per kind; returns ``{kind: file name}``."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "good": "good.jpg",
        "good2": "good2.jpg",
        "truncated": "truncated.jpg",
        "truncated_png": "truncated.png",
        "not_an_image": "notes.jpg",
        "size_mismatch": "wrong_size.jpg",
        "grayscale": "gray.jpg",
        "rgba": "rgba.png",
        "16_bit": "deep.png",
        "cmyk": "cmyk.jpg",
        "exif": "exif.jpg",
    }
    noise().save(folder / files["good"])
    noise(seed=1).save(folder / files["good2"])
    _truncated(folder / files["truncated"], noise(seed=2))
    _truncated(folder / files["truncated_png"], noise(seed=3))
    (folder / files["not_an_image"]).write_text("these are my notes, not a photo\n")
    noise(w=50, h=50).save(folder / files["size_mismatch"])
    Image.new("L", (W, H), 77).save(folder / files["grayscale"])
    Image.new("RGBA", (W, H), (10, 20, 30, 40)).save(folder / files["rgba"])
    Image.fromarray(np.full((H, W), 32896, np.uint16)).save(folder / files["16_bit"])
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(folder / files["cmyk"])
    _exif_rotated(folder / files["exif"])
    return files


def write_bad_coco(root: Path) -> Path:
    """``root`` as a COCO dataset (``train2017``, ``val2017`` -> the same images, one json for
    both splits): the odd images, ``missing.jpg`` (listed, not on disk), and on ``good.jpg``
    a box outside the image, a zero-area box and a box of unknown category 99."""
    files = write_odd_images(root / "train2017")
    names = list(files.values()) + ["missing.jpg"]
    images = [{"id": i + 1, "file_name": n, "width": W, "height": H} for i, n in enumerate(names)]
    box = {"category_id": COCO_CATEGORY_ID, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0}
    anns = [{"id": i + 1, "image_id": i + 1, **box} for i in range(len(names))]
    good = names.index(files["good"]) + 1
    anns += [
        {**box, "id": 101, "image_id": good, "bbox": [40, 30, 40, 30]},  # 16 px past the right edge
        {**box, "id": 102, "image_id": good, "bbox": [10, 10, 0, 8], "area": 0},
        {**box, "id": 103, "image_id": good, "category_id": 99},
    ]
    (root / "annotations").mkdir()
    coco = {"images": images, "annotations": anns, "categories": [{"id": COCO_CATEGORY_ID, "name": "thing"}]}
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    (root / "val2017").symlink_to(root / "train2017")
    return root


def _save_mask(mask: np.ndarray, path: Path) -> None:
    png = Image.fromarray(mask, mode="P")
    png.putpalette(voc_palette())
    png.save(path)


def write_bad_voc_segmentation(root: Path, *, odd_images: bool = False) -> Path:
    """``root/VOCdevkit/VOC2012`` with ``train`` = ``val`` lists of 64 x 48 images (classes:
    background + one) whose masks are fine (``ok``), half size (``small``), hold 50
    (``values``), are RGB (``colour``) or do not exist (``absent``). ``odd_images`` adds the
    odd images with good masks, and ``missing.jpg``, listed but not on disk."""
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
        noise(seed=i).save(voc / "JPEGImages" / f"{stem}.jpg")
        if mask is not None:
            _save_mask(mask, voc / "SegmentationClass" / f"{stem}.png")
    Image.new("RGB", (W, H), (128, 0, 0)).save(voc / "SegmentationClass" / "colour.png")
    lines = [f"{stem}\n" for stem in masks]
    if odd_images:
        good_mask = np.zeros((H, W), np.uint8)
        good_mask[8:24, 8:24] = 1
        for name in [*write_odd_images(voc / "JPEGImages").values(), "missing.jpg"]:
            stem = Path(name).stem
            _save_mask(good_mask, voc / "SegmentationClass" / f"{stem}_mask.png")
            lines.append(f"/JPEGImages/{name} /SegmentationClass/{stem}_mask.png\n")
    for split in ("train", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(lines))
    return root
