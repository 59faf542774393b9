"""Bad data during training, through the real ``fit`` commands (in-process, tiny model, a
worker process loading the data): a dataset salted with every bad-input kind trains to the end,
each problem is logged once with its file, and the run summary (log and logger metrics)
counts each kind; ``--data.strict true`` fails before the first step, naming the files.

Validation reads the training images (same paths), so every file is decoded, in every epoch;
each is still logged and counted once.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest
import torch

from bad_data import write_bad_voc_segmentation
from deeplab_mobile.cli import main as deeplab_main
from ssdlite.cli import main as ssdlite_main
from ssdlite.module import SSDLiteModule

REPO = Path(__file__).resolve().parents[1]
# Conversions are logged and counted too, but are no problems (the image is trained on).
CONVERSIONS = {
    "grayscale": ["gray.jpg", "deep.png"],
    "alpha_dropped": ["rgba.png"],
    "16_bit": ["deep.png"],
    "cmyk": ["cmyk.jpg"],
    "exif_rotated": ["exif.jpg"],
}
COCO_PROBLEMS = {
    "missing_image": ["missing.jpg"],
    "unreadable_image": ["notes.jpg", "truncated.jpg", "truncated.png"],
    "size_mismatch": ["wrong_size.jpg"],
    "box_outside_image": ["good.jpg"],
    "zero_area_box": ["good.jpg"],
    "unknown_category": ["good.jpg"],
}
VOC_PROBLEMS = {
    "missing_image": ["missing.jpg"],
    "missing_mask": ["absent.png"],
    "unreadable_image": ["notes.jpg", "truncated.jpg", "truncated.png"],
    "mask_size_mismatch": ["small.png", "wrong_size_mask.png"],
    "mask_bad_values": ["values.png"],
    "mask_not_indexed": ["colour.png"],
}
TRAINER = [
    "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1", "--trainer.num_sanity_val_steps=0",
    "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
    "--data.batch_size=4", "--data.num_workers=1", "--model.width_mult=0.35", "--model.pretrained_backbone=false",
]


def ssdlite_args(root: Path, out: Path) -> list[str]:
    return [
        f"--config={REPO / 'configs' / 'ssdlite_shapes.yaml'}", *TRAINER,
        f"--trainer.default_root_dir={out}", f"--trainer.logger.init_args.save_dir={out}",
        f"--data.root={root}", "--data.val_images=train2017", "--data.val_annotations=annotations/instances_train2017.json",
        "--data.image_size=64", "--model.warmup_steps=1",
        "--model.predictions_json=null",
    ]


def logged_entries(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """``(kind, file name)`` of every per-problem and per-conversion log line."""
    entries = []
    for record in caplog.records:
        match = re.match(r"(?:data problem|converted) \[(\w+)\] (\S+?)(?::|$)", record.getMessage())
        if match:
            entries.append((match[1], Path(match[2]).name))
    return entries


def check_run_report(caplog: pytest.LogCaptureFixture, out: Path, problems: dict[str, list[str]]) -> None:
    """Each problem and conversion logged once with its file; the summary and the logger's
    metrics count each kind."""
    expected = {**problems, **CONVERSIONS}
    assert sorted(logged_entries(caplog)) == sorted((kind, name) for kind, names in expected.items() for name in names)
    summaries = [r.getMessage() for r in caplog.records if re.match(r"\w+DataModule fit: \d+ problem", r.getMessage())]
    assert len(summaries) == 1, summaries
    for kind, names in problems.items():
        assert f"[problem] {kind}: {len(names)}" in summaries[0]
    for kind, names in CONVERSIONS.items():
        assert f"[converted] {kind}: {len(names)}" in summaries[0]
    rows = list(csv.DictReader(next(out.rglob("metrics.csv")).open()))
    counts = {key: float(value) for row in rows for key, value in row.items() if key.startswith("data/") and value}
    assert counts == {
        "data/problems": sum(len(names) for names in problems.values()),
        **{f"data/problems/{kind}": len(names) for kind, names in problems.items()},
        **{f"data/converted/{kind}": len(names) for kind, names in CONVERSIONS.items()},
    }


def test_ssdlite_trains_through_bad_coco_and_reports_each_problem_once(
    bad_coco: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="datamodules"):
        cli = ssdlite_main(["fit", *ssdlite_args(bad_coco, tmp_path)])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 4  # 11 samples: 2 batches of 4 per epoch
    check_run_report(caplog, tmp_path, COCO_PROBLEMS)


def test_deeplab_trains_through_bad_voc_masks_and_reports_each_problem_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_bad_voc_segmentation(tmp_path / "data", odd_images=True)
    args = [
        f"--config={REPO / 'configs' / 'deeplab_shapes.yaml'}", *TRAINER, "--trainer.max_steps=-1",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--data.root={root}", "--data.class_names=[thing]", "--data.val_split=train", "--data.crop_size=64",
    ]
    with caplog.at_level(logging.INFO, logger="datamodules"):
        cli = deeplab_main(["fit", *args])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 6  # 15 samples: 3 batches of 4 per epoch
    check_run_report(caplog, tmp_path, VOC_PROBLEMS)


def test_strict_fails_before_training_naming_the_files(bad_coco: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as error:
        ssdlite_main(["fit", *ssdlite_args(bad_coco, tmp_path), "--data.strict=true"])
    for kind, names in COCO_PROBLEMS.items():
        assert kind in str(error.value) and all(name in str(error.value) for name in names)
    logged = [row for path in tmp_path.rglob("metrics.csv") for row in csv.DictReader(path.open())]
    assert not any(row.get("train/loss") for row in logged)  # no step ran


@pytest.mark.parametrize("kept", [0, 1])
def test_ssdlite_step_on_a_batch_emptied_by_skips_is_a_zero_loss_on_the_graph(kept: int) -> None:
    """No sample, or one (too few for BatchNorm on 1x1 maps), left in a batch by skips."""
    module = SSDLiteModule(num_classes=2, width_mult=0.35, image_size=64, pretrained_backbone=False)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * kept
    loss = module.training_step((torch.rand((kept, 3, 64, 64)), targets), 0)
    loss.backward()  # every process runs backward: DDP's gradient all-reduce stays in step
    assert loss.item() == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters() if p.requires_grad)
