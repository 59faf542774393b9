"""Training data pipelines: ours (albumentations) vs torchvision ``transforms.v2``, per worker.

``python -m benchmarks.data_pipelines [--root SHAPES_DIR] [--num-images 48] [--out runs/benchmarks]``

Both sides run in this process, one thread each (what one DataLoader worker has), on the
same files of the embedded shapes dataset (generated into a temporary folder unless
``--root`` is given), decode included:

- SSD (320): ours = ``DetectionDataset`` with ``ssd_train_transform`` (zoom-out, min-IoU
  crop, flip, resize, photometric); peer = ``decode_jpeg`` + v2 ``RandomPhotometricDistort``,
  ``RandomZoomOut`` (mean fill), ``RandomIoUCrop``, ``RandomHorizontalFlip``, ``Resize``,
  ``SanitizeBoundingBoxes``, in torchvision's reference order.
- DeepLab (513): ours = ``SegmentationDataset`` with ``deeplab_train_transform`` (step scale
  0.5-2.0, pad mean / 255, crop, flip); peer = ``decode_jpeg`` / ``decode_png`` + the same
  steps with v2 (``Resize`` by a drawn step scale, ``RandomCrop(pad_if_needed)``, flip).

Target: ours at least 3x the peer's images/s (time ratio ours / peer <= 0.333).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import cv2
import torch
from torchvision import tv_tensors
from torchvision.io import decode_jpeg, decode_png, read_file
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from benchmarks.harness import Row, time_interleaved, write_report
from core.constants import IGNORE_INDEX, mean_fill
from datamodules.coco import CocoDetectionDataModule
from datamodules.shapes import CLASS_NAMES, generate_shapes
from datamodules.transforms import DEEPLAB_SCALES
from datamodules.voc import VOCSegmentationDataModule

MEAN_FILL = mean_fill()


def torchvision_ssd(image_size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill={tv_tensors.Image: MEAN_FILL, "others": 0}, side_range=(1.0, 4.0), p=0.5),
            v2.RandomIoUCrop(),
            v2.RandomHorizontalFlip(p=0.5),
            v2.Resize((image_size, image_size), antialias=True),
            v2.SanitizeBoundingBoxes(),
        ]
    )


class TorchvisionStepScale(v2.Transform):
    """v2 has no discrete random scale: resize image (bilinear) and mask (nearest) by a drawn step."""

    def __init__(self, scales: tuple[float, ...]) -> None:
        super().__init__()
        self.scales = scales

    def make_params(self, flat_inputs: list) -> dict:
        height, width = v2.query_size(flat_inputs)
        scale = random.choice(self.scales)
        return {"size": [int(height * scale + 0.5), int(width * scale + 0.5)]}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        return F.resize(inpt, params["size"], antialias=True)


def torchvision_deeplab(crop_size: int) -> v2.Compose:
    return v2.Compose(
        [
            TorchvisionStepScale(DEEPLAB_SCALES),
            v2.RandomCrop(
                crop_size, pad_if_needed=True, fill={tv_tensors.Image: MEAN_FILL, tv_tensors.Mask: IGNORE_INDEX}
            ),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    )


def run(root: Path, num_images: int, min_seconds: float, cache_dir: Path) -> list[Row]:
    coco = CocoDetectionDataModule(str(root / "coco"), num_workers=0)
    det, _ = coco._build_dataset("train")
    det.records = det.records[:num_images]
    det.reseed(0)
    ssd_peer = torchvision_ssd(320)
    files = [(read_file(str(r.image_path)), r) for r in det.records]

    def ours_ssd() -> None:
        for index in range(len(det)):
            det[index]

    def peer_ssd() -> None:
        for _, record in files:
            image = tv_tensors.Image(decode_jpeg(read_file(str(record.image_path))))
            boxes = tv_tensors.BoundingBoxes(
                torch.from_numpy(record.boxes), format="XYXY", canvas_size=tuple(image.shape[-2:])
            )
            ssd_peer(image, {"boxes": boxes, "labels": torch.from_numpy(record.labels)})

    voc = VOCSegmentationDataModule(str(root), class_names=list(CLASS_NAMES), num_workers=0)
    seg, _ = voc._build_dataset("train")
    seg.items = seg.items[:num_images]
    seg.reseed(0)
    deeplab_peer = torchvision_deeplab(513)
    # The same dataset reading through the decoded cache, as from the second epoch on.
    cached_voc = VOCSegmentationDataModule(
        str(root), class_names=list(CLASS_NAMES), num_workers=0, decoded_cache_dir=str(cache_dir)
    )
    seg_cached, _ = cached_voc._build_dataset("train")
    seg_cached.items = seg_cached.items[:num_images]
    seg_cached.reseed(0)
    for index in range(len(seg_cached)):  # the first epoch: decodes and fills the cache
        seg_cached[index]

    def ours_deeplab() -> None:
        for index in range(len(seg)):
            seg[index]

    def ours_deeplab_cached() -> None:
        for index in range(len(seg_cached)):
            seg_cached[index]

    def peer_deeplab() -> None:
        for item in seg.items:
            image = tv_tensors.Image(decode_jpeg(read_file(str(item.image_path))))
            # decode_png gives a palette PNG's indices, as our reader does.
            mask = tv_tensors.Mask(decode_png(read_file(str(item.mask)))[0])
            deeplab_peer(image, mask)

    # The same pipelines on images decoded beforehand: what the augmentation alone costs.
    det_arrays = [(det.load(i).array, det.records[i]) for i in range(len(det))]
    det_tensors = [(tv_tensors.Image(decode_jpeg(data)), record) for data, record in files]
    seg_arrays = [seg.load(i) for i in range(len(seg))]
    seg_tensors = [
        (tv_tensors.Image(decode_jpeg(read_file(str(i.image_path)))), tv_tensors.Mask(decode_png(read_file(str(i.mask)))[0]))
        for i in seg.items
    ]

    def ours_ssd_augment() -> None:
        for image, r in det_arrays:
            det.transform(image=image, bboxes=r.boxes, labels=r.labels, iscrowd=r.iscrowd)

    def peer_ssd_augment() -> None:
        for image, r in det_tensors:
            boxes = tv_tensors.BoundingBoxes(torch.from_numpy(r.boxes), format="XYXY", canvas_size=tuple(image.shape[-2:]))
            ssd_peer(image, {"boxes": boxes, "labels": torch.from_numpy(r.labels)})

    def ours_deeplab_augment() -> None:
        for loaded, mask in seg_arrays:
            seg.transform(image=loaded.array, mask=mask)

    def peer_deeplab_augment() -> None:
        for image, mask in seg_tensors:
            deeplab_peer(image, mask)

    rows = []
    ours_label = "albumentations (datamodules)"
    for name, ours_name, ours, peer, size in (
        ("SSD train pipeline (decode + augment)", ours_label, ours_ssd, peer_ssd, 320),
        ("SSD augmentation only", ours_label, ours_ssd_augment, peer_ssd_augment, 320),
        ("DeepLab train pipeline (decode + augment)", ours_label, ours_deeplab, peer_deeplab, 513),
        (
            "DeepLab train pipeline, epochs after the first (decode + augment)",
            "albumentations + decoded_cache_dir (datamodules)",
            ours_deeplab_cached,
            peer_deeplab,
            513,
        ),
        ("DeepLab augmentation only", ours_label, ours_deeplab_augment, peer_deeplab_augment, 513),
    ):
        ours_s, peer_s = time_interleaved(ours, peer, warmup=1, min_repeats=3, min_seconds=min_seconds)
        rows.append(
            Row(
                name=name,
                ours=ours_name,
                peer="torchvision transforms.v2",
                ours_ms=1000 * ours_s / num_images,
                peer_ms=1000 * peer_s / num_images,
                ratio=ours_s / peer_s,
                target="<= 0.333",
                settings={
                    "size": size,
                    "images": num_images,
                    "ours img/s": round(num_images / ours_s, 1),
                    "peer img/s": round(num_images / peer_s, 1),
                    "speed-up": round(peer_s / ours_s, 2),
                },
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="shapes dataset (generated if absent)")
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks"))
    args = parser.parse_args(argv)
    # One thread each, as in one DataLoader worker.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or generate_shapes(tmp, num_train=args.num_images, num_val=1, seed=0)
        rows = run(Path(root), args.num_images, args.min_seconds, Path(tmp) / "decoded_cache")
    for row in rows:
        print(f"{row.name}: ours {row.settings['ours img/s']} img/s, torchvision {row.settings['peer img/s']} img/s, "
              f"speed-up x{row.settings['speed-up']} (target >= 3: {row.met})")
    print(f"report: {write_report(rows, args.out, 'data_pipelines')}")


if __name__ == "__main__":
    main()
