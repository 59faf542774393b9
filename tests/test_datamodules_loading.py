"""DataLoader settings: no padded duplicates under DDP, distinct augmentation per worker,
LightningCLI-buildable arguments, and the embedded dataset through both readers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import torch
from jsonargparse import ArgumentParser
from torch.utils.data import DistributedSampler

from datamodules import (
    CocoDetectionDataModule,
    UnpaddedDistributedSampler,
    VOCDetectionDataModule,
    VOCSegmentationDataModule,
)
from datamodules.shapes import CATEGORY_IDS, CLASS_NAMES, generate_shapes


def test_unpadded_sampler_gives_every_index_exactly_once() -> None:
    dataset = list(range(10))
    parts = [list(UnpaddedDistributedSampler(dataset, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for p in parts for i in p) == dataset
    assert [len(p) for p in parts] == [4, 3, 3]
    assert [len(UnpaddedDistributedSampler(dataset, 3, r)) for r in range(3)] == [4, 3, 3]


def test_evaluation_loaders_use_it_under_ddp(shapes_root: Path) -> None:
    dm = VOCSegmentationDataModule(str(shapes_root), class_names=list(CLASS_NAMES), num_workers=0, batch_size=4)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=3, global_rank=2)  # what Lightning sets under DDP
    loader = dm.val_dataloader()
    # A DistributedSampler subclass: Lightning keeps it instead of injecting a padding one.
    assert isinstance(loader.sampler, DistributedSampler) and isinstance(loader.sampler, UnpaddedDistributedSampler)
    assert list(loader.sampler) == list(range(2, 24, 3))
    assert not isinstance(dm.train_dataloader().sampler, UnpaddedDistributedSampler)


class _RecordImageIds(L.LightningModule):
    """Writes the image ids each rank validated to ``<out>/rank<r>.json``."""

    def __init__(self, out: str) -> None:
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.ids: list[int] = []

    def validation_step(self, batch, batch_idx: int) -> None:
        self.ids += [int(t["image_id"]) for t in batch[1]]

    def on_validation_epoch_end(self) -> None:
        Path(self.out, f"rank{self.global_rank}.json").write_text(json.dumps(self.ids))

    def teardown(self, stage: str) -> None:
        # Lightning leaves the gloo group to interpreter exit, where its threads can abort the
        # spawned worker ("terminate called without an active exception"); as the task CLI does.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_real_ddp_validation_sees_every_image_exactly_once(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path / "data", num_train=2, num_val=7, min_size=64, max_size=80)  # val ids 3..9
    dm = CocoDetectionDataModule(str(root / "coco"), num_workers=0, batch_size=2, image_size=32)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.validate(_RecordImageIds(str(tmp_path)), datamodule=dm)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(3, 10))  # 7 images over 2 ranks, no repeat
    assert [len(ids) for ids in per_rank] == [4, 3]


def test_workers_augment_differently(shapes_root: Path) -> None:
    dm = CocoDetectionDataModule(str(shapes_root / "coco"), num_workers=2, batch_size=1, image_size=64)
    dm.setup("fit")
    dataset = dm.datasets["train"]
    dataset.items = dataset.items[:1] * 6  # the same image six times
    images = [batch[0] for batch in dm.train_dataloader()]
    flat = torch.stack(images).flatten(1)
    assert len({tuple(row[:4096].tolist()) for row in flat}) == 6


def test_arguments_build_from_a_lightningcli_style_parser(tmp_path: Path) -> None:
    parser = ArgumentParser()
    parser.add_class_arguments(VOCSegmentationDataModule, "data")
    config = parser.parse_args(["--data.root", str(tmp_path), "--data.class_names", "[a, b]", "--data.crop_size", "321"])
    dm = parser.instantiate(config).data
    assert dm.num_classes == 3 and dm.augment["crop_size"] == 321


def test_shapes_through_the_coco_and_voc_readers(shapes_root: Path) -> None:
    coco = CocoDetectionDataModule(str(shapes_root / "coco"), num_workers=0, batch_size=8)
    assert coco.class_names == list(CLASS_NAMES) and coco.label_to_category_id == list(CATEGORY_IDS)
    voc = VOCDetectionDataModule(
        str(shapes_root), train_sets=["VOC2012/train"], val_sets=["VOC2012/val"], class_names=list(CLASS_NAMES), num_workers=0
    )
    coco_val, coco_report = coco._build_dataset("val")
    voc_val, voc_report = voc._build_dataset("val")
    assert len(coco_val) == len(voc_val) == 24 and coco_report.num_problems == voc_report.num_problems == 0
    for a, b in zip(coco_val.items, voc_val.items):
        assert a.image_path.name == b.image_path.name and a.size == b.size
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
    coco.setup("fit")
    images, targets = next(iter(coco.train_dataloader()))
    assert images.shape == (8, 3, 320, 320) and len(targets) == 8
    assert all(t["boxes"].shape[0] == t["labels"].shape[0] for t in targets)
    seg = VOCSegmentationDataModule(str(shapes_root), class_names=list(CLASS_NAMES), num_workers=0, batch_size=2, crop_size=257)
    seg.setup("fit")
    images, masks = next(iter(seg.train_dataloader()))
    assert images.shape == (2, 3, 257, 257) and masks.shape == (2, 257, 257) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) <= set(range(6)) | {255}
