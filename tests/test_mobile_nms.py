"""``ssdlite export --nms``: NMS inside the ONNX graph gives ``select_detections``' detections
(same boxes, scores, labels and order) with the checkpoint's thresholds and counts."""

from __future__ import annotations

import pytest
import torch
from torchvision.io import write_png

from engine.exported import load_exported
from mobile_checkpoints import randomize_batch_norms, save_checkpoint
from ssdlite import SSDLiteModule
from ssdlite.cli import main as ssdlite_main
from ssdlite.export_nms import DetectionsWithNMS, as_detections

SIZE = 64
# Not the defaults; the score threshold leaves fewer than 20 detections in an image, so rows are padded.
SETTINGS = {"score_threshold": 0.7, "nms_threshold": 0.45, "detections_per_image": 20}


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """A 64 px random-weight SSDLite with scores free of ties, its checkpoint and an image file."""
    folder = tmp_path_factory.mktemp("nms")
    module = SSDLiteModule(num_classes=5, width_mult=0.35, image_size=SIZE, **SETTINGS)
    randomize_batch_norms(module.model)
    for parameter in module.model.head.parameters():  # the head starts near zero: every score alike
        parameter.data.normal_(0.0, 0.3)
    image = folder / "image.png"
    write_png((torch.rand(3, 80, 96) * 255).to(torch.uint8), str(image))
    return module.model.eval(), save_checkpoint(module, folder / "ssdlite.ckpt"), str(image)


def assert_same_detections(reference: list[dict], detections: list[dict], exact: bool) -> None:
    for ref, det in zip(reference, detections, strict=True):
        assert torch.equal(det["labels"], ref["labels"])
        check = torch.equal if exact else lambda a, b: torch.allclose(a, b, rtol=1e-4, atol=1e-4)
        assert check(det["boxes"], ref["boxes"]) and check(det["scores"], ref["scores"])


def test_onnx_nms_graph_gives_select_detections(detector, tmp_path):
    import onnx

    model, checkpoint, image = detector
    path = tmp_path / "ssdlite_nms.onnx"
    result = ssdlite_main(["export", "--ckpt_path", checkpoint, "--output", str(path), "--image", image, "--nms"])
    assert result.passed, result.summary
    assert "NonMaxSuppression" in {node.op_type for node in onnx.load(str(path)).graph.node}

    images = torch.rand(3, 3, SIZE, SIZE)
    with torch.no_grad():
        reference = model.select(*model.decode(images))  # the checkpoint's thresholds and counts
        assert_same_detections(reference, as_detections(DetectionsWithNMS(model)(images)), exact=True)
    boxes, scores, labels, num_detections = load_exported(path)(images)
    assert boxes.shape == (3, SETTINGS["detections_per_image"], 4) and scores.shape == labels.shape == (3, 20)
    assert_same_detections(reference, as_detections([boxes, scores, labels, num_detections]), exact=False)
    counts = [len(ref["labels"]) for ref in reference]
    assert num_detections.tolist() == counts and 0 < min(counts) < 20
    padded = torch.arange(20)[None] >= num_detections[:, None]
    assert (labels[padded] == -1).all() and (scores[padded] == 0).all() and (boxes[padded] == 0).all()
    assert (scores[~padded] > SETTINGS["score_threshold"]).all()


def test_nms_needs_onnx(detector, tmp_path):
    _, checkpoint, image = detector
    with pytest.raises(SystemExit, match="--nms writes ONNX"):
        ssdlite_main(["export", "--ckpt_path", checkpoint, "--output", str(tmp_path / "x.pte"), "--image", image,
                      "--format", "executorch", "--nms"])  # fmt: skip
