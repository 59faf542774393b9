"""Reading images, index masks and split lists the way every dataset here needs them, and
writing label maps in the same index-PNG format.

Images come back as ``H x W x 3`` uint8 RGB whatever the file holds: grayscale, palette,
RGBA (alpha dropped), 16-bit (scaled to 8 bits) and CMYK are converted, and the EXIF
orientation of JPEGs is applied (so boxes drawn on the upright photo stay right). Each
conversion is reported so the dataset check can list it. Anything unreadable raises
``DataProblem`` naming the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.constants import voc_palette

from .problems import DataProblem

# OpenCV's own thread pool: a DataLoader worker forked while its threads are busy can hang on
# it, and on a few cores it only competes with torch's threads. One thread per process.
cv2.setNumThreads(0)

EXIF_ORIENTATION = 0x0112
# EXIF orientations that turn the stored image by 90 degrees: its upright size is (w, h).
EXIF_TRANSPOSED = (5, 6, 7, 8)
# File endings listed as images in annotation folders (as annotation tools and Ultralytics do).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class LoadedImage:
    """An ``H x W x 3`` uint8 RGB image and the conversions applied to get it."""

    array: np.ndarray
    conversions: list[str] = field(default_factory=list)


def load_image(path: str | Path) -> LoadedImage:
    """Decode ``path`` to RGB uint8, honouring EXIF orientation; lists what was converted.

    Conversions reported: ``exif_rotated``, ``grayscale``, ``palette``, ``alpha_dropped``,
    ``16_bit``, ``cmyk``. Raises ``DataProblem('unreadable_image' | 'missing_image')``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataProblem("missing_image", path, "image file does not exist")
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:  # reads the header only
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            if _plain_complete_jpeg(img, orientation, data):
                # OpenCV decodes these twice as fast as Pillow + a numpy copy, same pixels.
                array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
                if array is not None:
                    return LoadedImage(array, ["grayscale"] if img.mode == "L" else [])
            img.load()
            conversions = []
            if orientation not in (0, 1):
                img = ImageOps.exif_transpose(img)
                conversions.append("exif_rotated")
            return LoadedImage(to_rgb(img, conversions), conversions)
    except DataProblem:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataProblem("unreadable_image", path, f"cannot decode image ({error})") from error


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of ``path`` as ``load_image`` returns it (EXIF orientation applied),
    from the file's header only. Raises ``DataProblem('missing_image' | 'unreadable_image')``."""
    path = Path(path)
    if not path.is_file():
        raise DataProblem("missing_image", path, "image file does not exist")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(EXIF_ORIENTATION, 1) in EXIF_TRANSPOSED:
                width, height = height, width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataProblem("unreadable_image", path, f"cannot read the image header ({error})") from error
    return height, width


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """The files of ``folder`` (with ``recursive``, of its subfolders too) whose ending is one of
    ``IMAGE_SUFFIXES`` (any case), sorted; hidden files and folders are left out."""
    folder = Path(folder)
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in files
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _plain_complete_jpeg(img: Image.Image, orientation: int, data: bytes) -> bool:
    """An upright RGB / grayscale JPEG ending with its end-of-image marker. Anything else
    (and a truncated file, which OpenCV would decode half-gray without an error) goes
    through Pillow, which converts, rotates, or raises."""
    return img.format == "JPEG" and img.mode in ("RGB", "L") and orientation in (0, 1) and data.endswith(b"\xff\xd9")


def read_image(path: str | Path) -> np.ndarray:
    """``H x W x 3`` uint8 RGB pixels of ``path`` (see ``load_image``)."""
    return load_image(path).array


def to_rgb(img: Image.Image, conversions: list[str]) -> np.ndarray:
    """``img`` as ``H x W x 3`` uint8 RGB (grayscale, palette, RGBA, 16-bit and CMYK converted),
    appending the name of each conversion to ``conversions``."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img)
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale (Pillow opens 16-bit PNGs as I or I;16): 0..65535 down to 0..255.
        values = np.asarray(img).astype(np.float32)
        conversions += ["16_bit", "grayscale"]
        gray = np.clip(values / 257.0, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("L", "1", "LA"):
        conversions.append("grayscale")
    elif mode in ("P", "PA"):
        conversions.append("palette")
    elif mode == "CMYK":
        conversions.append("cmyk")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        conversions.append("alpha_dropped")
    return np.array(img.convert("RGB"))


def read_index_mask(path: str | Path) -> np.ndarray:
    """``H x W`` uint8 class indices of a palette or grayscale PNG (the VOC ``SegmentationClass`` format).

    Palette images are read as their indices, never their colours. Colour (RGB) masks are
    refused with a clear error, since their colours would need a palette to mean classes.
    """
    path = Path(path)
    if not path.is_file():
        raise DataProblem("missing_mask", path, "mask file does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L"):
                return np.array(img)
            if mode in ("I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(img.convert("I"))
                if values.min() < 0 or values.max() > 255:
                    raise DataProblem("mask_bad_values", path, f"16-bit mask holds values outside 0..255 ({values.max()})")
                return values.astype(np.uint8)
    except DataProblem:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DataProblem("unreadable_mask", path, f"cannot decode mask ({error})") from error
    raise DataProblem(
        "mask_not_indexed", path, f"mask has mode {mode}; expected a palette (P) or grayscale (L) PNG of class indices"
    )


def read_list(path: str | Path) -> list[str]:
    """Non-empty lines of a split list, stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def is_image_file(path: str | Path) -> bool:
    """True when Pillow recognises ``path`` as an image (reads the header only)."""
    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def save_palette_png(labels: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """Write an ``H x W`` label map (values 0..255) as an 8-bit VOC palette PNG (the
    ``SegmentationClass`` format ``read_index_mask`` reads); returns the path."""
    array = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if array.ndim != 2 or array.min(initial=0) < 0 or array.max(initial=0) > 255:
        raise ValueError(f"{path}: a palette PNG needs an H x W label map in 0..255, got shape {array.shape}")
    image = Image.fromarray(array.astype(np.uint8))
    image.putpalette(voc_palette())  # turns the "L" image into "P" with the VOC colours
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
