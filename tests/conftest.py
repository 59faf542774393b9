"""Test-wide settings: the project-local torch cache (where `make weights` puts the file),
few threads and deterministic seeds, so tests behave the same on CI's 2 cores."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_HOME", str(REPO / ".cache" / "torch"))

import torch  # noqa: E402  (after TORCH_HOME is set)

torch.set_num_threads(2)

PRETRAINED_MOBILENET_V2 = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def pretrained_weights_available() -> Path:
    if not PRETRAINED_MOBILENET_V2.is_file():
        pytest.fail(f"{PRETRAINED_MOBILENET_V2} is missing: run `make weights` (make test does it)")
    return PRETRAINED_MOBILENET_V2


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded shapes dataset (96 train / 24 val images), in both COCO and VOC layouts."""
    from datamodules.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes"), num_train=96, num_val=24, seed=0)


@pytest.fixture(scope="session")
def bad_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A COCO dataset salted with every bad-input kind (``bad_data.write_bad_coco``)."""
    from bad_data import write_bad_coco

    return write_bad_coco(tmp_path_factory.mktemp("badcoco"))
