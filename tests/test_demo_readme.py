"""The README's training commands run against the embedded dataset (``fit`` for one batch
with the tiny overrides below; the full COCO / VOC configs only parse, as they read full
datasets). Its ``validate`` / ``predict`` / ``export`` commands, with the same options, are run
by the demo (``tests/test_demo.py``), ``tests/test_predict_folder.py`` and ``tests/test_export.py``.

Paths are substituted: ``data/coco`` and ``data/VOC`` by the shapes dataset's layouts,
``my_data`` by the shapes files rearranged as a user's own data, checkpoints by the tiny demo's.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from engine import cli as task_cli
from engine.host_memory import POLICY_ENV, training_default
from deeplab_mobile.cli import main as deeplab_main
from demo_run import REPO, tiny_demo_run
from multitask.cli import main as multitask_main
from ssdlite.cli import main as ssdlite_main

MAINS = {"ssdlite": ssdlite_main, "deeplab-mobile": deeplab_main, "multitask": multitask_main}
TINY = {
    "ssdlite": ["--model.width_mult=0.35", "--model.pretrained_backbone=false",
                "--data.image_size=96", "--data.batch_size=2", "--data.eval_batch_size=2", "--data.num_workers=0"],
    "deeplab-mobile": ["--model.width_mult=0.35", "--model.pretrained_backbone=false", "--data.crop_size=64",
                       "--data.batch_size=2", "--data.eval_batch_size=2", "--data.num_workers=0"],
    "multitask": ["--model.width_mult=0.35", "--model.pretrained_backbone=false",
                  "--data.image_size=96", "--data.batch_size=2", "--data.eval_batch_size=2", "--data.num_workers=0"],
}
QUIET = ["--trainer.enable_progress_bar=false"]  # logs go to runs/ under the test folder


# Launchers of many processes (README, "Many GPUs and nodes"), each running a console script's command.
LAUNCHED_MODULES = {"ssdlite": "ssdlite", "deeplab_mobile": "deeplab-mobile"}  # torchrun -m <module>
LAUNCHERS = ("torchrun", "srun")


def console_command(words: list[str]) -> list[str]:
    """The console script's command that ``torchrun ... -m <module> ...`` or ``srun <script> ...``
    starts on every process; any other command as it is."""
    if words[0] == "srun":
        return words[1:]
    if words[0] == "torchrun":
        module = words.index("-m") + 1
        return [LAUNCHED_MODULES[words[module]], *words[module + 1 :]]
    return words


def readme_commands() -> list[tuple[dict[str, str], list[str]]]:
    """The README's command lines that start with a console script (or a launcher of one),
    after any ``NAME=value`` environment settings, continuations joined: (settings, command)."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    commands = []
    for words in (shlex.split(line) for line in lines if line.strip()):
        leading = list(itertools.takewhile(lambda word: re.fullmatch(r"[A-Z_]+=\S*", word), words))
        settings = dict(word.split("=", 1) for word in leading)
        words = words[len(leading) :]
        if words[0] in (*MAINS, *LAUNCHERS):
            commands.append((settings, console_command(words)))
    return commands


def user_data(shapes: Path, out: Path) -> Path:
    """The shapes dataset rearranged as the README's ``my_data`` (both tasks' layouts), ``my_xml``
    (images with their VOC XML files in ``Annotations/``) and ``my_yolo`` (a YOLO export)."""
    voc = shapes / "VOCdevkit" / "VOC2012"
    coco = shapes / "coco"
    for link, target in [
        ("my_data/images/train", coco / "train2017"), ("my_data/images/val", coco / "val2017"),
        ("my_data/train.json", coco / "annotations" / "instances_train2017.json"),
        ("my_data/val.json", coco / "annotations" / "instances_val2017.json"),
        ("my_data/images_voc", voc / "JPEGImages"), ("my_data/masks", voc / "SegmentationClass"),
        ("my_data/splits", voc / "ImageSets" / "Segmentation"),
        ("my_xml/images", voc / "JPEGImages"), ("my_xml/Annotations", voc / "Annotations"),
    ]:  # fmt: skip
        (out / link).parent.mkdir(parents=True, exist_ok=True)
        (out / link).symlink_to(target)
    for split in ("train", "val"):  # YOLO labels from the COCO boxes: class cx cy w h, normalised
        (out / "my_yolo" / "images").mkdir(parents=True, exist_ok=True)
        (out / "my_yolo" / "images" / split).symlink_to(coco / f"{split}2017")
        labels = out / "my_yolo" / "labels" / split
        labels.mkdir(parents=True)
        annotations = json.loads((coco / "annotations" / f"instances_{split}2017.json").read_text())
        classes = {c["id"]: k for k, c in enumerate(annotations["categories"])}
        for image in annotations["images"]:
            w, h = image["width"], image["height"]
            lines = [f"{classes[a['category_id']]} {(a['bbox'][0] + a['bbox'][2] / 2) / w} {(a['bbox'][1] + a['bbox'][3] / 2) / h} "
                     f"{a['bbox'][2] / w} {a['bbox'][3] / h}" for a in annotations["annotations"] if a["image_id"] == image["id"]]  # fmt: skip
            (labels / image["file_name"]).with_suffix(".txt").write_text("\n".join(lines))
    names = [c["name"] for c in annotations["categories"]]
    (out / "my_yolo" / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {names}\n")
    return out / "my_data"


def substitute(command: list[str], demo: dict, my_data: Path) -> list[str]:
    shapes = Path(demo["data"])
    replacements = {
        "data/coco": str(shapes / "coco"), "data/VOC": str(shapes), "my_data": str(my_data),
        "my_xml": str(my_data.parent / "my_xml"), "my_yolo": str(my_data.parent / "my_yolo"),
        "runs/deeplab_coco/checkpoints/last.ckpt": demo["deeplab"]["checkpoint"],
    }
    args = [str(REPO / arg) if arg.startswith("configs/") else replacements.get(arg, arg) for arg in command]
    if command[0] == "deeplab-mobile" and "my_data" in command:  # the segmentation images sit apart here
        args[args.index("images")] = "images_voc"
    return args


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return tiny_demo_run(tmp_path_factory)


def test_readme_shows_both_tasks_every_step():
    commands = [" ".join(c[:2]) for _, c in readme_commands()]
    for tool in MAINS:
        assert {f"{tool} {step}" for step in ("fit", "validate", "predict", "export")} <= set(commands), commands


def test_readme_training_commands_run(demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    my_data = user_data(Path(demo["data"]), tmp_path / "user")
    ran, host_memory = [], []
    # mallopt would change this whole test process: record the policy (tests/test_host_memory.py applies it)
    monkeypatch.setattr(
        task_cli, "apply_host_memory_policy", lambda default: host_memory.append(os.environ.get(POLICY_ENV) or default)
    )
    for number, (settings, command) in enumerate(readme_commands()):
        tool, step, *args = substitute(command, demo, my_data)
        if step != "fit":
            continue  # run by the demo and the predict / export tests (see above)
        # Each in a folder of its own: `--ckpt_path last` must not find another command's run
        # (tests/test_resume.py resumes a killed run for real).
        (tmp_path / f"command_{number}").mkdir()
        monkeypatch.chdir(tmp_path / f"command_{number}")
        paper_config = any("mobilenetv2" in arg for arg in args)
        if paper_config:
            # Full COCO / VOC configs: check that the command line and config parse.
            with pytest.raises(SystemExit) as printed:
                MAINS[tool]([step, *args, "--print_config"])
            assert printed.value.code in (0, None)
            continue
        tiny = TINY[tool]
        if any(arg.startswith("--model.backbone") for arg in args):  # only MobileNetV2 has a width multiplier
            tiny = [arg for arg in tiny if not arg.startswith("--model.width_mult")]
        extra = [*tiny, *QUIET, "--trainer.fast_dev_run=1"]
        if not any(arg.startswith("--data.root") for arg in args):  # the shapes configs' relative data/shapes
            extra.append(f"--data.root={Path(demo['data']) / 'coco' if tool == 'ssdlite' else demo['data']}")
        with monkeypatch.context() as scoped:
            for name, value in settings.items():
                scoped.setenv(name, value)
            MAINS[tool]([step, *args, *extra])
        ran.append(f"{tool} {step}")
    # own data (COCO json, YOLO, VOC XML), another backbone, own segmentation data, the joint
    # model (shapes, own data), resume, gradient checkpointing, host memory, decoded cache
    expected = ["ssdlite fit"] * 4 + ["deeplab-mobile fit", "multitask fit", "multitask fit"] + ["ssdlite fit"] * 3
    assert ran == [*expected, "deeplab-mobile fit"], ran
    # one command asks for `lean` by the variable; the others take the machine's default
    others = [policy for policy in host_memory if policy != "lean"]
    assert "lean" in host_memory and others == [training_default()] * len(others), host_memory
