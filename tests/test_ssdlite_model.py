"""The assembled SSDLite: the paper's counts, every registry backbone, API contract, metrics."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops.misc import Conv2dNormActivation

from ssdlite import build_ssdlite
from ssdlite.metrics import detection_metric

BACKBONES = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet18", "resnet50", "timm:mobilenetv3_large_100"]


def madds(fn) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 2


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_model():
    return build_ssdlite(num_classes=80).eval()


def test_paper_model_has_table_6_params_and_madds(paper_model):
    images = torch.rand(1, 3, 320, 320)
    total_params = params(paper_model)
    total_madds = madds(lambda: paper_model.predict_raw(images))
    assert total_params == pytest.approx(4.3e6, rel=0.03)  # measured 4,337,013
    assert total_madds == pytest.approx(0.8e9, rel=0.05)  # measured 0.789 B
    backbone = paper_model.features.backbone
    head_params = total_params - params(backbone)
    head_madds = total_madds - madds(lambda: backbone(images))
    assert head_params == pytest.approx(2.1e6, rel=0.03)  # Table 5: 2.1M; measured 2,113,141
    # Table 5 gives 0.35 B for the SSDLite head, but Table 6's 0.8 B total minus the 0.61 B
    # backbone at 320 leaves ~0.19 B. Counted the same way, the paper's *regular* SSD head
    # gives Table 5's 14.8M / 1.25B exactly (test below), so our 0.178 B is the consistent figure.
    assert head_madds == pytest.approx(0.178e9, rel=0.02)
    assert paper_model.anchor_generator((320, 320), [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]).shape[0] == 2034


def test_same_counting_gives_table_5_for_the_regular_ssd_head():
    """SSD's head with regular 3x3 convs (extras and predictors) on the same maps: 14.8M / 1.25B."""
    in_channels, anchors, sizes = [576, 1280, 512, 256, 256, 128], [3, 6, 6, 6, 6, 6], [20, 10, 5, 3, 2, 1]
    extras, depth_in = [], 1280
    for depth in (512, 256, 256, 128):
        extras.append(nn.Sequential(Conv2dNormActivation(depth_in, depth // 2, 1), Conv2dNormActivation(depth // 2, depth, 3, 2)))
        depth_in = depth
    predictors = [nn.Conv2d(c, a * (81 + 4), 3, padding=1) for c, a in zip(in_channels, anchors)]
    head = nn.ModuleList(extras + predictors).eval()

    def run():
        x = torch.rand(1, 1280, 10, 10)
        for layer in extras:
            x = layer(x)
        for predictor, c, s in zip(predictors, in_channels, sizes):
            predictor(torch.rand(1, c, s, s))

    assert params(head) == pytest.approx(14.8e6, rel=0.01)
    assert madds(run) == pytest.approx(1.25e9, rel=0.01)


def test_feature_maps_are_the_paper_taps(paper_model):
    features = paper_model.features
    assert features.taps == ["features.14.conv.0", "features.18"]
    assert features.out_channels == [576, 1280, 512, 256, 256, 128]
    maps = features(torch.rand(1, 3, 320, 320))
    assert [m.shape[-1] for m in maps] == [20, 10, 5, 3, 2, 1]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_registry_backbone_builds_an_ssdlite(name):
    if name.startswith("timm:"):
        pytest.importorskip("timm")
    width = 0.35 if name == "mobilenet_v2" else 1.0
    model = build_ssdlite(num_classes=3, backbone=name, width_mult=width, image_size=128).eval()
    detections = model(torch.rand(1, 3, 128, 128))
    assert len(detections) == 1 and detections[0]["boxes"].shape[1] == 4
    assert detections[0]["labels"].max() < 3


def test_train_mode_returns_losses_and_gradients_reach_the_backbone():
    model = build_ssdlite(num_classes=4, width_mult=0.35, image_size=160).train()
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 90.0, 120.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model(torch.rand(2, 3, 160, 160), targets)
    assert set(losses) == {"bbox_regression", "classification"}
    sum(losses.values()).backward()
    assert model.features.backbone.features[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs targets"):
        model(torch.rand(2, 3, 160, 160))


def test_eval_mode_returns_capped_detections_in_input_pixels():
    model = build_ssdlite(num_classes=5, width_mult=0.35, image_size=160, detections_per_image=50).eval()
    detections = model(torch.rand(3, 3, 160, 192))
    assert len(detections) == 3
    for det in detections:
        assert det["boxes"].shape[0] == det["scores"].shape[0] == det["labels"].shape[0] <= 50
        assert det["boxes"][:, 0::2].max() <= 192 and det["boxes"][:, 1::2].max() <= 160
        assert det["labels"].dtype == torch.int64 and 0 <= det["labels"].min() and det["labels"].max() < 5
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        model(torch.rand(3, 160, 160))


def test_decode_exports_as_one_graph():
    """Boxes and scores before NMS export with ``torch.export`` (what the ONNX exporter uses)."""
    model = build_ssdlite(num_classes=2, width_mult=0.35, image_size=128).eval()

    class Decode(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model.decode(images)

    images = torch.rand(1, 3, 128, 128)
    exported = torch.export.export(Decode(), (images,), strict=False)
    boxes, scores = exported.module()(images)
    assert boxes.shape == (1, 3 * 8**2 + 6 * (4**2 + 2**2 + 1 + 1 + 1), 4) and scores.shape[-1] == 2
    torch.testing.assert_close(scores, model.decode(images)[1])


def _fixed_detection_set(seed: int = 0):
    """Ground truths (with crowd) and noisy, partly wrong detections over 8 images, 3 classes."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(8):
        k = int(rng.integers(0, 7))
        xy = rng.uniform(0, 400, (k, 2))
        wh = rng.choice([12, 50, 140], k)[:, None] * rng.uniform(0.6, 1.4, (k, 2))  # small/medium/large
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, 3, k)
        crowd = (rng.uniform(size=k) < 0.1).astype(np.uint8)
        noisy = boxes + rng.normal(0, 4, boxes.shape)
        extra = rng.uniform(0, 400, (3, 2))
        pred_boxes = np.concatenate([noisy, np.concatenate([extra, extra + 60], 1)])
        pred_labels = np.concatenate([np.where(rng.uniform(size=k) < 0.8, labels, (labels + 1) % 3), rng.integers(0, 3, 3)])
        gts.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                    "iscrowd": torch.tensor(crowd)})
        preds.append({"boxes": torch.tensor(pred_boxes, dtype=torch.float32), "labels": torch.tensor(pred_labels),
                      "scores": torch.tensor(rng.uniform(0.05, 1.0, len(pred_boxes)), dtype=torch.float32)})
    return gts, preds


def test_coco_metric_equals_pycocotools():
    gts, preds = _fixed_detection_set()
    metric = detection_metric("coco")
    metric.update(preds, gts)
    ours = metric.compute()

    images, annotations, results = [], [], []
    for image_id, (gt, pred) in enumerate(zip(gts, preds), start=1):
        images.append({"id": image_id, "height": 640, "width": 640})
        for box, label, crowd in zip(gt["boxes"].tolist(), gt["labels"].tolist(), gt["iscrowd"].tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": crowd})
        for box, label, score in zip(pred["boxes"].tolist(), pred["labels"].tolist(), pred["scores"].tolist()):
            results.append({"image_id": image_id, "category_id": label, "score": score,
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": annotations,
                        "categories": [{"id": c, "name": str(c)} for c in range(3)]}
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    keys = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
            "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
    assert 0.1 < evaluator.stats[0] < 0.9  # a non-trivial set
    for key, reference in zip(keys, evaluator.stats):
        assert float(ours[key]) == pytest.approx(reference, abs=1e-6), key


def test_voc07_metric_is_11_point_ap_at_half_iou():
    # one class, 4 ground truths; detections TP, FP, TP, TP in score order: precision at the
    # 11 recall points 0..1 is [1]*8 (recall reaches 0.75) then 0 -> AP = 8/11... with the
    # envelope: recall 0.25 at p=1, 0.5 at p=2/3, 0.75 at p=3/4.
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]),
           "labels": torch.zeros(4, dtype=torch.int64), "iscrowd": torch.zeros(4, dtype=torch.uint8)}]
    pred = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [20, 0, 30, 10], [40, 0, 50, 10]]),
             "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]), "labels": torch.zeros(4, dtype=torch.int64)}]
    metric = detection_metric("voc07")
    metric.update(pred, gt)
    # recall points 0, .1, .2 -> 1.0; .3 .. .7 -> 0.75 (envelope); .8, .9, 1.0 -> 0
    expected = (3 * 1.0 + 5 * 0.75) / 11
    assert float(metric.compute()["map"]) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_module_optimizer_skips_decay_on_bn_and_bias_and_warms_up_then_cosine(optimizer):
    from types import SimpleNamespace

    from ssdlite import SSDLiteModule

    module = SSDLiteModule(num_classes=3, width_mult=0.35, image_size=128, optimizer=optimizer, lr=0.1,
                           warmup_steps=10, warmup_factor=0.01)
    module._trainer = SimpleNamespace(estimated_stepping_batches=100)
    config = module.configure_optimizers()
    opt, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(module.parameters()))
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.001) and lrs[10] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11])) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] < 0.001
