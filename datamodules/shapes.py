"""The embedded "shapes" dataset: a deterministic generator writing COCO and VOC layouts.

``generate_shapes(out_dir, num_train=..., num_val=..., seed=0)`` draws simple objects
(circle, square, triangle, star, hexagon) in random colours, sizes and rotations, with some
overlap and occlusion, on textured backgrounds (noise, gradients, stripes, checkers), and
writes the very same objects in both official layouts::

    out_dir/classes.txt                               one class name per line, no background
    out_dir/coco/{train2017,val2017}/<stem>.jpg
    out_dir/coco/annotations/instances_{train,val}2017.json
    out_dir/VOCdevkit/VOC2012/JPEGImages/<stem>.jpg   (the same JPEG bytes)
    out_dir/VOCdevkit/VOC2012/Annotations/<stem>.xml
    out_dir/VOCdevkit/VOC2012/SegmentationClass/<stem>.png   VOC palette, 255 on borders
    out_dir/VOCdevkit/VOC2012/ImageSets/{Main,Segmentation}/{train,val,trainval}.txt

Boxes and polygons describe the *visible* part of each object (as COCO and VOC annotate
occluded objects). COCO category ids are deliberately not contiguous (``CATEGORY_IDS``), so
the id <-> label mapping of the datamodules is exercised. Each image is drawn from its own
random stream ``(seed, split, index)``, so the output depends only on the arguments.

Command line: ``python -m datamodules.shapes --out DIR [--num-train N] [--num-val N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import cv2
import numpy as np
from PIL import Image

from core.constants import IGNORE_INDEX

from .image_io import save_palette_png

CLASS_NAMES = ("circle", "square", "triangle", "star", "hexagon")
# Non-contiguous on purpose (COCO's own ids run 1..90 with gaps).
CATEGORY_IDS = (1, 3, 4, 7, 12)
JPEG_QUALITY = 92
# Objects keep at least this fraction of their area visible once later objects are drawn.
MIN_VISIBLE_FRACTION = 0.6


@dataclass
class ShapeObject:
    """One drawn object: its class index (0-based, no background) and visible pixel mask."""

    label: int
    mask: np.ndarray  # H x W bool, visible pixels only

    def box(self) -> tuple[int, int, int, int]:
        """Tight box of the visible pixels, ``(x0, y0, x1, y1)`` with x1/y1 exclusive."""
        ys, xs = np.nonzero(self.mask)
        return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _shape_polygon(label: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Vertices (``V x 2`` float, x/y pixels) of the shape ``CLASS_NAMES[label]``."""
    name = CLASS_NAMES[label]
    if name == "circle":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        r = np.full_like(t, radius)
    elif name == "square":
        t = angle + np.arange(4) * math.pi / 2 + math.pi / 4
        r = np.full(4, radius)
    elif name == "triangle":
        t = angle + np.arange(3) * 2 * math.pi / 3
        r = np.full(3, radius)
    elif name == "star":
        t = angle + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    elif name == "hexagon":
        t = angle + np.arange(6) * math.pi / 3
        r = np.full(6, radius)
    else:  # pragma: no cover - CLASS_NAMES and this function change together
        raise ValueError(name)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured ``H x W x 3`` uint8 background: smooth noise, gradient, stripes or checkers."""
    kind = rng.integers(4)
    base = rng.uniform(40, 215, size=3)
    if kind == 0:  # smooth colour noise
        small = rng.uniform(-60, 60, size=(rng.integers(3, 12), rng.integers(3, 12), 3))
        img = base + cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # linear gradient between two colours
        other = rng.uniform(40, 215, size=3)
        theta = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
        img = base + t[..., None] * (other - base)
    elif kind == 2:  # stripes at a random angle and period
        other = base + rng.uniform(-50, 50, size=3)
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(8, 40)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / period
        t = (np.sin(2 * math.pi * phase) > 0).astype(np.float32)
        img = base + t[..., None] * (other - base)
    else:  # checkers
        other = base + rng.uniform(-50, 50, size=3)
        cell = int(rng.integers(10, 50))
        yy, xx = np.mgrid[0:height, 0:width]
        t = (((yy // cell) + (xx // cell)) % 2).astype(np.float32)
        img = base + t[..., None] * (other - base)
    img = img + 6 * rng.standard_normal(size=(height, width, 3), dtype=np.float32)  # sensor-like grain
    return np.clip(img, 0, 255).astype(np.uint8)


def _object_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A saturated colour that stands out from the background's mean colour."""
    mean = background.reshape(-1, 3).mean(0)
    for _ in range(20):
        hsv = np.uint8([[[rng.integers(180), rng.integers(150, 256), rng.integers(120, 256)]]])
        colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
        if np.abs(colour - mean).sum() > 120:
            return colour
    return 255 - mean


def draw_image(
    rng: np.random.Generator,
    *,
    min_size: int = 320,
    max_size: int = 480,
    max_objects: int = 5,
    min_scale: float = 0.1,
    max_scale: float = 0.5,
) -> tuple[np.ndarray, list[ShapeObject]]:
    """One ``H x W x 3`` uint8 RGB image and its objects, in drawing order (later on top).

    Sides are drawn in ``[min_size, max_size]``; object sizes (bounding-circle diameter) in
    ``[min_scale, max_scale]`` of the shorter side; 1 to ``max_objects`` objects, each
    accepted only if every object keeps ``MIN_VISIBLE_FRACTION`` of its area visible.
    """
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    image = _background(rng, height, width).astype(np.float32)
    side = min(height, width)
    wanted = int(rng.integers(1, max_objects + 1))
    objects: list[ShapeObject] = []
    full_areas: list[int] = []
    for _ in range(wanted * 4):  # a few tries per object
        if len(objects) == wanted:
            break
        label = int(rng.integers(len(CLASS_NAMES)))
        radius = rng.uniform(min_scale, max_scale) * side / 2
        cx = rng.uniform(radius, width - radius)
        cy = rng.uniform(radius, height - radius)
        poly = _shape_polygon(label, cx, cy, radius, rng.uniform(0, 2 * math.pi))
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        mask = mask.astype(bool)
        if mask.sum() < 64:
            continue
        remaining = [o.mask & ~mask for o in objects]
        if any(r.sum() < MIN_VISIBLE_FRACTION * a for r, a in zip(remaining, full_areas)):
            continue
        # COCO polygons cannot hold holes: no object may be drawn inside another one.
        if any(_has_hole(r) for o, r in zip(objects, remaining) if (o.mask & mask).any()):
            continue
        for obj, rem in zip(objects, remaining):
            obj.mask = rem
        colour = _object_colour(rng, image.astype(np.uint8))
        # Slight shading so objects are not flat colour cards.
        yy, xx = np.nonzero(mask)
        shade = 1.0 + 0.25 * ((xx - cx) * rng.uniform(-1, 1) + (yy - cy) * rng.uniform(-1, 1)) / radius
        image[yy, xx] = np.clip(colour[None, :] * shade[:, None], 0, 255)
        objects.append(ShapeObject(label, mask))
        full_areas.append(int(mask.sum()))
    image += 3 * rng.standard_normal(size=image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), objects


def _has_hole(mask: np.ndarray) -> bool:
    _, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0, :, 3] >= 0).any())


def class_mask(objects: list[ShapeObject], height: int, width: int) -> np.ndarray:
    """VOC ``SegmentationClass`` indices: 0 background, label+1 objects, 255 on object borders.

    Like real VOC, a thin band of 255 ("void") separates every object from what surrounds it
    (pixels whose 3x3 neighbourhood holds another instance or the background).
    """
    instances = np.zeros((height, width), np.uint8)
    classes = np.zeros((height, width), np.uint8)
    for i, obj in enumerate(objects, start=1):
        instances[obj.mask] = i
        classes[obj.mask] = obj.label + 1
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)
    classes[border] = IGNORE_INDEX
    return classes


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons (flat ``[x0, y0, x1, y1, ...]`` lists) of a binary mask's outer contours."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if len(contour) < 3:
            continue
        # Contours run through pixel centres; +0.5 puts vertices on the pixels' centres in
        # COCO's continuous coordinates, so the polygon rasterises back onto the mask.
        polygons.append([round(float(v) + 0.5, 2) for v in contour.reshape(-1)])
    return polygons


def _voc_xml(stem: str, height: int, width: int, objects: list[ShapeObject]) -> bytes:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{stem}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "shapes (generated)"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        x0, y0, x1, y1 = obj.box()
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = CLASS_NAMES[obj.label]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        # VOC boxes are 1-based inclusive pixel indices.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def generate_shapes(
    out_dir: str | Path,
    *,
    num_train: int = 320,
    num_val: int = 80,
    seed: int = 0,
    min_size: int = 320,
    max_size: int = 480,
    max_objects: int = 5,
) -> Path:
    """Write the shapes dataset under ``out_dir`` in the COCO and VOC layouts; returns it."""
    out = Path(out_dir)
    coco_root = out / "coco"
    voc_root = out / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (voc_root / sub).mkdir(parents=True, exist_ok=True)
    (coco_root / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    categories = [
        {"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, CLASS_NAMES)
    ]
    image_id = ann_id = 0
    stems: dict[str, list[str]] = {}
    for split_index, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        image_dir = coco_root / f"{split}2017"
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        stems[split] = []
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            image, objects = draw_image(rng, min_size=min_size, max_size=max_size, max_objects=max_objects)
            height, width = image.shape[:2]
            image_id += 1
            stem = f"shapes_{split}_{index:06d}"
            stems[split].append(stem)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
            (image_dir / f"{stem}.jpg").write_bytes(buffer.getvalue())
            (voc_root / "JPEGImages" / f"{stem}.jpg").write_bytes(buffer.getvalue())
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": height, "width": width})
            for obj in objects:
                ann_id += 1
                x0, y0, x1, y1 = obj.box()
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": CATEGORY_IDS[obj.label],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": int(obj.mask.sum()),
                        "segmentation": mask_polygons(obj.mask),
                        "iscrowd": 0,
                    }
                )
            (voc_root / "Annotations" / f"{stem}.xml").write_bytes(_voc_xml(stem, height, width, objects))
            save_palette_png(class_mask(objects, height, width), voc_root / "SegmentationClass" / f"{stem}.png")
        coco = {
            "info": {"description": "shapes: generated by datamodules.shapes", "version": "1.0", "year": 2026},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        (coco_root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    stems["trainval"] = stems["train"] + stems["val"]
    for split, names in stems.items():
        text = "".join(f"{s}\n" for s in names)
        (voc_root / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
        (voc_root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(text)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--num-train", type=int, default=320)
    parser.add_argument("--num-val", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-size", type=int, default=320)
    parser.add_argument("--max-size", type=int, default=480)
    parser.add_argument("--max-objects", type=int, default=5)
    args = parser.parse_args(argv)
    out = generate_shapes(
        args.out,
        num_train=args.num_train,
        num_val=args.num_val,
        seed=args.seed,
        min_size=args.min_size,
        max_size=args.max_size,
        max_objects=args.max_objects,
    )
    print(f"wrote {args.num_train} train + {args.num_val} val images to {out}")


if __name__ == "__main__":
    main()
