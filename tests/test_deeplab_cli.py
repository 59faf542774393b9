"""The ``deeplab-mobile`` command: fit, validate and predict from the shapes config, tiny settings."""

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "deeplab_shapes.yaml"
CONSOLE_SCRIPT = Path(sys.executable).parent / "deeplab-mobile"
# A CPU-second run of the shapes config: width 0.35 without weights, 64 px crops, 2 iterations.
TINY = ["--model.width_mult", "0.35", "--model.pretrained_backbone", "false", "--data.num_workers", "0"]


def run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_fit_validate_predict_from_the_command_line(shapes_root, tmp_path):
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT} is missing: install the package (make install)"
    data = ["--config", str(CONFIG), "--data.root", str(shapes_root), *TINY]
    run(
        [
            str(CONSOLE_SCRIPT), "fit", *data,
            "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
            "--trainer.check_val_every_n_epoch", "1", "--data.batch_size", "2", "--data.crop_size", "64",
        ],
        cwd=tmp_path,
    )  # fmt: skip
    checkpoint = tmp_path / "runs" / "deeplab_shapes" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    # Run-time options given on the command line win over the checkpoint's hyperparameters.
    output = run(
        [sys.executable, "-m", "deeplab_mobile", "validate", *data, "--ckpt_path", str(checkpoint),
         "--trainer.limit_val_batches", "2", "--data.eval_batch_size", "2",
         "--model.output_stride", "8", "--model.eval_scales", "[0.75, 1.0]"],
        cwd=tmp_path,
    )  # fmt: skip
    assert "val/mIoU" in output and "val/pixel_accuracy" in output

    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((shapes_root / "VOCdevkit" / "VOC2012" / "JPEGImages").glob("*.jpg"))[:3]
    for source in sources:
        (images / source.name).write_bytes(source.read_bytes())
    run(
        [str(CONSOLE_SCRIPT), "predict", *data, "--ckpt_path", str(checkpoint), "--data.predict_path", str(images),
         "--model.prediction_dir", "predictions", "--model.eval_flip", "true", "--data.eval_batch_size", "2"],
        cwd=tmp_path,
    )  # fmt: skip
    for source in sources:
        written = Image.open(tmp_path / "predictions" / f"{source.stem}.png")
        assert written.mode == "P" and written.size == Image.open(source).size
        assert np.array(written).max() < 6  # background + 5 shapes
