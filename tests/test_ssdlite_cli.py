"""``ssdlite fit`` then ``validate`` and ``predict`` on the checkpoint, from the command line,
with configs/ssdlite_shapes.yaml shrunk by command-line overrides (tiny model, few batches)."""

import json
import subprocess
import sys
from pathlib import Path

from pycocotools.coco import COCO

from datamodules.shapes import CATEGORY_IDS
from ssdlite.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ssdlite_shapes.yaml"


def tiny_overrides(shapes_root: Path, out: Path) -> list[str]:
    return [
        f"--data.root={shapes_root / 'coco'}",
        "--data.num_workers=0",
        "--data.batch_size=4",
        "--data.image_size=96",
        "--model.width_mult=0.35",
        "--model.pretrained_backbone=false",
        f"--data.image_ids_from={shapes_root / 'coco' / 'annotations' / 'instances_val2017.json'}",
        f"--model.predictions_json={out / 'predictions.json'}",
        f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}",
        f"--trainer.callbacks.init_args.dirpath={out / 'checkpoints'}",
        "--trainer.limit_val_batches=2",
        "--trainer.limit_test_batches=2",
        "--trainer.limit_predict_batches=2",
        "--trainer.enable_progress_bar=false",
    ]


def test_fit_validate_predict_from_the_command_line(shapes_root, tmp_path):
    overrides = tiny_overrides(shapes_root, tmp_path)
    fit = subprocess.run(
        [sys.executable, "-m", "ssdlite", "fit", f"--config={CONFIG}", *overrides,
         "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.check_val_every_n_epoch=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file(), sorted(p.name for p in tmp_path.rglob("*"))

    cli = main(["validate", f"--config={CONFIG}", *overrides, f"--ckpt_path={checkpoint}"])
    assert cli.datamodule.num_classes == cli.model.hparams.num_classes == 5  # linked from the data
    assert {"val/map", "val/map_50", "val/map_small"} <= set(cli.trainer.callback_metrics)

    cli = main(["predict", f"--config={CONFIG}", *overrides, f"--ckpt_path={checkpoint}",
                f"--data.predict_path={shapes_root / 'coco' / 'val2017'}"])
    results = json.loads((tmp_path / "predictions.json").read_text())
    assert results and {r["category_id"] for r in results} <= set(CATEGORY_IDS)
    gt = COCO(str(shapes_root / "coco" / "annotations" / "instances_val2017.json"))
    detections = gt.loadRes(results)  # an official results file: loadRes accepts it
    assert set(detections.getImgIds()) <= set(gt.getImgIds())
