"""``predict`` on a folder of odd images, both commands: grayscale, RGBA, large, tiny and
EXIF-rotated images each get a machine-readable result and a picture at their upright size;
files that are not images get an error naming them, and the rest still run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_mobile.cli import main as deeplab_main
from demo_run import REPO, tiny_demo_run
from ssdlite.cli import main as ssdlite_main

EXIF_ORIENTATION = 0x0112


def write_odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    """The odd images and two non-images in ``folder``; returns ``{stem: upright (width, height)}``."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    pixels = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(pixels(120, 90)[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([pixels(70, 100), np.full((70, 100), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(pixels(1500, 2000)).save(folder / "large.jpg", quality=80)
    Image.fromarray(pixels(9, 7)).save(folder / "tiny.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 80 wide x 50 high, shown rotated 90 degrees: 50 x 80
    Image.fromarray(pixels(50, 80)).save(folder / "rotated.jpg", exif=exif)
    (folder / "notes.txt").write_text("not an image")
    (folder / "fake.jpg").write_bytes(b"neither JPEG nor anything else")
    return {"gray": (90, 120), "rgba": (100, 70), "large": (2000, 1500), "tiny": (7, 9), "rotated": (50, 80)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory)


def test_ssdlite_predict_on_odd_images(demo, tmp_path, caplog):
    sizes = write_odd_images(tmp_path / "images")
    out = tmp_path / "predictions"
    with caplog.at_level(logging.WARNING):
        ssdlite_main([
            "predict", f"--config={REPO / 'configs' / 'ssdlite_shapes.yaml'}", f"--ckpt_path={demo['ssdlite']['checkpoint']}",
            f"--data.root={Path(demo['data']) / 'coco'}", "--data.image_size=96", "--data.num_workers=0",
            f"--data.predict_path={tmp_path / 'images'}", f"--model.prediction_dir={out}", "--model.predictions_json=null",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        ])  # fmt: skip
    for stem, size in sizes.items():
        result = json.loads((out / f"{stem}.json").read_text())
        assert result["file"].endswith(stem + (".jpg" if stem in ("large", "rotated") else ".png"))
        assert [result["width"], result["height"]] == list(size)
        for detection in result["detections"]:
            x0, y0, x1, y1 = detection["box_xyxy"]
            assert 0 <= x0 <= x1 <= size[0] and 0 <= y0 <= y1 <= size[1]
        assert Image.open(out / f"{stem}_boxes.jpg").size == size
    assert {p.name for p in out.iterdir()} == {f"{s}{suffix}" for s in sizes for suffix in (".json", "_boxes.jpg")}
    assert "notes.txt" in caplog.text and "fake.jpg" in caplog.text


def test_deeplab_predict_on_odd_images(demo, tmp_path, caplog):
    sizes = write_odd_images(tmp_path / "images")
    out = tmp_path / "predictions"
    with caplog.at_level(logging.WARNING):
        deeplab_main([
            "predict", f"--config={REPO / 'configs' / 'deeplab_shapes.yaml'}", f"--ckpt_path={demo['deeplab']['checkpoint']}",
            f"--data.root={demo['data']}", "--data.num_workers=0", "--data.eval_batch_size=2",
            f"--data.predict_path={tmp_path / 'images'}", f"--model.prediction_dir={out}",
            "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        ])  # fmt: skip
    for stem, size in sizes.items():
        palette = Image.open(out / f"{stem}.png")
        assert palette.mode == "P" and palette.size == size and np.array(palette).max() < 6
        assert Image.open(out / f"{stem}_overlay.jpg").size == size
    assert "notes.txt" in caplog.text and "fake.jpg" in caplog.text
