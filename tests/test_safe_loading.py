"""Checkpoints and configs that do not fit are refused in one line naming the file or key:
another task's checkpoint, another class count, a cut file, an unsafe pickle (both commands,
``--ckpt_path`` and ``export``); unknown config keys and wrong types; and every ``torch.load`` of
the packages is ``weights_only=True``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from engine.checkpoint_io import AtomicCheckpointIO, CheckpointError, read_checkpoint
from deeplab_mobile.cli import main as deeplab_main
from ssdlite import SSDLiteModule
from ssdlite.cli import main as ssdlite_main

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("backbone", "ssdlite", "deeplab_mobile", "datamodules", "scripts")
TINY = ["--model.width_mult=0.35", "--model.pretrained_backbone=false", "--data.num_workers=0", "--data.batch_size=2"]
FIT_ONE_STEP = ["--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]


def ssdlite_args(command: str, shapes_root: Path, *extra: str) -> list[str]:
    return [command, f"--config={REPO / 'configs' / 'ssdlite_shapes.yaml'}", f"--data.root={shapes_root / 'coco'}",
            "--data.image_size=64", *TINY, *extra]  # fmt: skip


def deeplab_args(command: str, shapes_root: Path, *extra: str) -> list[str]:
    return [command, f"--config={REPO / 'configs' / 'deeplab_shapes.yaml'}", f"--data.root={shapes_root}",
            "--data.crop_size=64", *TINY, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(shapes_root, tmp_path_factory) -> dict[str, Path]:
    """One ``last.ckpt`` per task, from one training step through its command (config paths are
    relative to the working directory)."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        ssdlite = ssdlite_main(ssdlite_args("fit", shapes_root, *FIT_ONE_STEP))
        deeplab = deeplab_main(deeplab_args("fit", shapes_root, *FIT_ONE_STEP))
    for cli in (ssdlite, deeplab):
        assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # the commands' default
    return {
        "ssdlite": folder / "runs" / "ssdlite_shapes" / "checkpoints" / "last.ckpt",
        "deeplab": folder / "runs" / "deeplab_shapes" / "checkpoints" / "last.ckpt",
    }


def refusal(main, args: list[str]) -> str:
    """The one-line error a command exits with."""
    with pytest.raises(SystemExit) as exited:
        main(args)
    return str(exited.value.code)


@pytest.fixture(scope="module")
def truncated(checkpoints, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cut") / "last.ckpt"
    path.write_bytes(checkpoints["deeplab"].read_bytes()[:100_000])  # a copy cut short
    return path


def test_a_checkpoint_of_the_other_task_is_named(checkpoints, shapes_root):
    detection, segmentation = checkpoints["ssdlite"], checkpoints["deeplab"]
    message = refusal(deeplab_main, deeplab_args("validate", shapes_root, f"--ckpt_path={detection}"))
    assert message == f"error: {detection} is a SSDLiteModule checkpoint, not DeepLabModule"
    message = refusal(ssdlite_main, ssdlite_args("validate", shapes_root, f"--ckpt_path={segmentation}"))
    assert message == f"error: {segmentation} is a DeepLabModule checkpoint, not SSDLiteModule"
    image = next((shapes_root / "coco" / "val2017").glob("*.jpg"))
    message = refusal(ssdlite_main, ["export", f"--ckpt_path={segmentation}", "--output=x.onnx", f"--image={image}"])
    assert message == f"error: {segmentation} is a DeepLabModule checkpoint, not SSDLiteModule"


def test_a_checkpoint_of_a_task_from_before_the_stamp_is_judged_by_its_hyperparameters(checkpoints, tmp_path, shapes_root):
    unstamped = tmp_path / "old.ckpt"
    checkpoint = read_checkpoint(checkpoints["deeplab"])
    del checkpoint["module_classes"]
    torch.save(checkpoint, unstamped)
    message = refusal(ssdlite_main, ssdlite_args("validate", shapes_root, f"--ckpt_path={unstamped}"))
    assert message.startswith(f"error: {unstamped} is not a SSDLiteModule checkpoint: its hyperparameters atrous_rates,")
    assert message.endswith("are not SSDLiteModule arguments")


def test_a_checkpoint_with_another_class_count_is_named(checkpoints, shapes_root):
    segmentation = checkpoints["deeplab"]  # background + 5 shapes; the datamodule below has 3 classes
    message = refusal(
        deeplab_main, deeplab_args("validate", shapes_root, "--data.class_names=[circle,square]", f"--ckpt_path={segmentation}")
    )
    assert message == (
        f"error: {segmentation} has 6 classes, the model 3 (model.num_classes comes from the datamodule's num_classes): "
        "shapes differ at model.classifier.weight (file (6, 256, 1, 1), model (3, 256, 1, 1)), "
        "model.classifier.bias (file (6,), model (3,))"
    )
    # SSDLite's hook, called as Lightning calls it before loading the weights.
    module = SSDLiteModule(num_classes=3, width_mult=0.35, image_size=64)
    with pytest.raises(CheckpointError, match=r"^the checkpoint has 5 classes, the model 3 .*: shapes differ at model\.head\."):
        module.on_load_checkpoint(read_checkpoint(checkpoints["ssdlite"]))


def test_a_truncated_checkpoint_is_named(truncated, shapes_root):
    expected = (
        f"error: checkpoint {truncated} (100000 bytes) is truncated or not a torch checkpoint: "
        "PytorchStreamReader failed reading zip archive: failed finding central directory"
    )
    assert refusal(deeplab_main, deeplab_args("validate", shapes_root, f"--ckpt_path={truncated}")) == expected
    image = next((shapes_root / "coco" / "val2017").glob("*.jpg"))
    assert refusal(deeplab_main, ["export", f"--ckpt_path={truncated}", "--output=x.onnx", f"--image={image}"]) == expected


class NotPlainData:
    """Not a tensor, container or number: ``weights_only=True`` refuses to unpickle it."""


def test_a_checkpoint_holding_arbitrary_objects_is_refused(checkpoints, tmp_path, shapes_root):
    unsafe = tmp_path / "unsafe.ckpt"
    checkpoint = read_checkpoint(checkpoints["deeplab"])
    checkpoint["extra"] = NotPlainData()
    torch.save(checkpoint, unsafe)
    message = refusal(deeplab_main, deeplab_args("validate", shapes_root, f"--ckpt_path={unsafe}"))
    assert message.startswith(f"error: checkpoint {unsafe} cannot be loaded safely (weights_only=True): ")
    assert "Unsupported global: GLOBAL test_safe_loading.NotPlainData" in message


def test_every_torch_load_in_the_packages_is_weights_only():
    loads = [
        f"{path.relative_to(REPO)}: {call}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text())
    ]
    assert loads and all("weights_only=True" in call for call in loads), loads


@pytest.mark.parametrize(
    "option, named",
    [
        ("--model.widht_mult=0.35", "model.widht_mult"),  # a typo under model
        ("--data.batch_sizee=2", "'batch_sizee' is not accepted"),  # a typo under data (its init_args)
        ("--data.batch_size=two", 'Parser key "batch_size":\n'),  # a string for an int
        ("--trainer.max_step=3", "--trainer.max_step"),  # a prefix of trainer.max_steps: not taken for it
    ],
)
@pytest.mark.parametrize("main, config", [(ssdlite_main, "ssdlite_shapes.yaml"), (deeplab_main, "deeplab_shapes.yaml")])
def test_the_commands_reject_an_unknown_key_or_a_wrong_type(main, config, option, named, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["fit", f"--config={REPO / 'configs' / config}", option])
    assert exited.value.code == 2 and named in capsys.readouterr().err


@pytest.mark.parametrize(
    "config_text, named",
    [
        ("model:\n  widht_mult: 0.35\n", "model.widht_mult"),
        ("data:\n  init_args:\n    batch_sizee: 2\n", "'batch_sizee' is not accepted"),
        ("data:\n  init_args:\n    batch_size: two\n", "Expected a <class 'int'>. Got value: two"),
        ("model:\n  num_classes: 10\n", "model.num_classes comes from the datamodule (data.num_classes)"),
    ],
)
def test_a_config_file_with_an_unknown_key_or_a_wrong_type_is_rejected(config_text, named, tmp_path, capsys):
    """In a config file too; a model.num_classes there (the datamodule sets it) used to be dropped silently."""
    override = tmp_path / "override.yaml"
    override.write_text(config_text)
    with pytest.raises(SystemExit) as exited:
        deeplab_main(["fit", f"--config={REPO / 'configs' / 'deeplab_shapes.yaml'}", f"--config={override}"])
    assert exited.value.code == 2 and named in capsys.readouterr().err
