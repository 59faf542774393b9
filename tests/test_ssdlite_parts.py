"""SSDLite pieces alone: anchors, box coder, matcher, hard negative mining, head, post-processing."""

import math

import pytest
import torch
from torchvision.ops import batched_nms, box_iou, nms

from ssdlite import BoxCoder, SSDAnchorGenerator, SSDLiteHead, decode_detections, match_anchors, pad_targets
from ssdlite.loss import MultiBoxLoss, hard_negative_mask
from ssdlite.matcher import BACKGROUND
import ssdlite.postprocess
from ssdlite.postprocess import rescale_boxes, rowwise_box_iou, select_detections

MAPS_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def test_anchor_count_at_320_matches_the_formula():
    anchors = SSDAnchorGenerator()((320, 320), MAPS_320)
    assert anchors.shape == (3 * 20**2 + 6 * (10**2 + 5**2 + 3**2 + 2**2 + 1**2), 4) == (2034, 4)


def test_anchor_centres_and_sizes_follow_the_scales():
    generator = SSDAnchorGenerator()
    anchors = generator((320, 320), MAPS_320)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert centres.min() > 0 and centres.max() < 320  # centres inside the image
    wh = anchors[:, 2:] - anchors[:, :2]
    # first layer: (0.1, 1), (0.2, 2), (0.2, 1/2) at the first cell centre (8, 8)
    torch.testing.assert_close(centres[:3], torch.full((3, 2), 8.0))
    expected = torch.tensor([[32.0, 32.0], [64 * math.sqrt(2), 64 / math.sqrt(2)], [64 / math.sqrt(2), 64 * math.sqrt(2)]])
    torch.testing.assert_close(wh[:3], expected)
    # last layer (1 x 1 map): scale 0.95 and the extra box sqrt(0.95 * 1.0), centred in the image
    last = wh[-6:] / 320
    s = 0.95
    expected_last = [(s, s), (s * math.sqrt(2), s / math.sqrt(2)), (s / math.sqrt(2), s * math.sqrt(2)),
                     (s * math.sqrt(3), s / math.sqrt(3)), (s / math.sqrt(3), s * math.sqrt(3)), (math.sqrt(s), math.sqrt(s))]
    torch.testing.assert_close(last, torch.tensor(expected_last), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(centres[-6:], torch.full((6, 2), 160.0))
    assert generator.scales[:6] == pytest.approx([0.2, 0.35, 0.5, 0.65, 0.8, 0.95])


def test_anchors_are_cached_and_clip_keeps_them_inside():
    generator = SSDAnchorGenerator()
    assert generator((320, 320), MAPS_320) is generator((320, 320), MAPS_320)
    clipped = SSDAnchorGenerator(clip=True)((320, 320), MAPS_320)
    assert clipped.min() >= 0 and clipped.max() <= 320


def test_anchors_on_a_non_square_input_scale_per_axis():
    anchors = SSDAnchorGenerator()((200, 400), [(10, 20), (5, 10), (3, 5), (2, 3), (1, 2), (1, 1)])
    wh = anchors[:3, 2:] - anchors[:3, :2]
    torch.testing.assert_close(wh[0], torch.tensor([40.0, 20.0]))  # scale 0.1 of each side


def test_encode_then_decode_returns_the_boxes():
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 50.0, 30.0]])
    boxes = torch.tensor([[[1.0, 2.0, 8.0, 12.0], [10.0, 0.0, 60.0, 40.0]]] * 3)  # N=3 x A=2 x 4
    offsets = coder.encode(boxes, anchors)
    assert offsets.shape == (3, 2, 4)
    torch.testing.assert_close(coder.decode(offsets, anchors), boxes)
    # scales (10, 10, 5, 5): a box shifted by 10% of its anchor's width gives t_x = 1
    shifted = torch.tensor([[1.0, 0.0, 11.0, 10.0]])
    torch.testing.assert_close(coder.encode(shifted, anchors[:1]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_matcher_gives_every_ground_truth_an_anchor():
    anchors = SSDAnchorGenerator()((320, 320), MAPS_320)
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 14.0, 13.0], [100.0, 100.0, 300.0, 300.0], [0, 0, 320.0, 320.0]]),
         "labels": torch.tensor([0, 1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
        {"boxes": torch.tensor([[50.0, 60.0, 90.0, 100.0]]), "labels": torch.tensor([4])},
    ]
    boxes, labels, valid = pad_targets(targets)
    assert boxes.shape == (3, 3, 4) and valid.sum() == 4
    matched = match_anchors(anchors, boxes, valid)
    assert matched.shape == (3, 2034)
    for i, target in enumerate(targets):
        assert set(matched[i][matched[i] >= 0].tolist()) == set(range(len(target["boxes"])))
    assert (matched[1] == BACKGROUND).all()
    # positives other than forced ones reach IoU 0.5; the tiny box got exactly its best anchor
    iou = box_iou(targets[0]["boxes"], anchors)
    assert (matched[0] == 0).sum() == 1 and matched[0, iou[0].argmax()] == 0
    pos = matched[0] == 1
    assert (iou[1, pos] >= 0.5).all() and pos.sum() == (iou[1] >= 0.5).sum()


def test_matcher_handles_an_all_empty_batch():
    anchors = SSDAnchorGenerator()((320, 320), MAPS_320)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    boxes, labels, valid = pad_targets([empty, empty])
    assert (match_anchors(anchors, boxes, valid) == BACKGROUND).all()


def test_hard_negative_mining_keeps_three_negatives_per_positive():
    loss = torch.rand(2, 100)
    positive = torch.zeros(2, 100, dtype=torch.bool)
    positive[0, [3, 7, 50]] = True
    positive[1, 10] = True
    negative = hard_negative_mask(loss, positive, 3.0)
    assert negative.sum(1).tolist() == [9, 3]
    assert not (negative & positive).any()
    # they are the hardest negatives
    for i in range(2):
        kept = loss[i][negative[i]].min()
        assert (loss[i][~positive[i] & ~negative[i]] <= kept).all()
    # too few negatives: all of them; an image without positives gets the minimum
    few = torch.ones(1, 5, dtype=torch.bool)
    few[0, 0] = False
    assert hard_negative_mask(torch.rand(1, 5), few, 3.0).sum() == 1
    none = torch.zeros(1, 50, dtype=torch.bool)
    assert hard_negative_mask(torch.rand(1, 50), none, 3.0, min_negatives=3).sum() == 3


@pytest.mark.parametrize("kind", ["softmax", "focal"])
def test_multibox_loss_is_zero_for_perfect_predictions_and_positive_otherwise(kind):
    coder = BoxCoder()
    anchors = SSDAnchorGenerator()((320, 320), MAPS_320)
    targets = [{"boxes": torch.tensor([[100.0, 100.0, 200.0, 220.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    boxes, labels, valid = pad_targets(targets)
    matched = match_anchors(anchors, boxes, valid)
    logits = torch.full((2, 2034, 4), -20.0)
    logits[..., 0] = 20.0
    logits[0, matched[0] == 0, 0] = -20.0
    logits[0, matched[0] == 0, 3] = 20.0  # label 2 -> column 3
    regression = coder.encode(boxes[0, 0].expand(2034, 4), anchors).expand(2, -1, -1).clone()
    criterion = MultiBoxLoss(coder, classification_loss=kind)
    perfect = criterion(logits, regression, anchors, boxes, labels, valid)
    assert perfect["bbox_regression"] < 1e-5 and perfect["classification"] < 1e-3
    noisy = criterion(torch.zeros_like(logits), torch.zeros_like(regression), anchors, boxes, labels, valid)
    assert noisy["bbox_regression"] > 0.1 and noisy["classification"] > 0.1


def test_head_output_layout_matches_the_anchor_order():
    head = SSDLiteHead([8, 16], [3, 6], num_classes=5).eval()
    maps = [torch.rand(2, 8, 4, 4), torch.rand(2, 16, 2, 2)]
    out = head(maps)
    assert out["cls_logits"].shape == (2, 3 * 16 + 6 * 4, 6)
    assert out["bbox_regression"].shape == (2, 72, 4)
    # anchor (row 1, column 2, box 1) of map 0 is index (1 * 4 + 2) * 3 + 1
    raw = head.classification[0](maps[0])  # N x (3*6) x 4 x 4
    torch.testing.assert_close(out["cls_logits"][:, (1 * 4 + 2) * 3 + 1], raw[:, 6:12, 1, 2])


def test_post_processing_thresholds_nms_and_caps():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 11.0], [50.0, 50.0, 90.0, 90.0], [-5, -5, 5, 5]])
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 3.0], [5.0, 0.0, 0.0]]])
    boxes, scores = decode_detections(logits, torch.zeros(1, 4, 4), anchors, BoxCoder(), (64, 64))
    assert boxes.shape == (1, 4, 4) and scores.shape == (1, 4, 2)
    assert boxes.min() >= 0 and boxes.max() <= 64  # clipped to the 64 x 64 input
    torch.testing.assert_close(scores.sum(-1) + logits.softmax(-1)[..., 0], torch.ones(1, 4))
    (det,) = select_detections(boxes, scores, score_threshold=0.3, nms_threshold=0.6)
    # anchor 1 is suppressed by anchor 0 (same class, IoU 0.91); anchor 3 is below the threshold
    assert det["labels"].tolist() == [0, 1]
    torch.testing.assert_close(det["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 64.0, 64.0]]))
    assert (det["scores"][:-1] >= det["scores"][1:]).all()
    (capped,) = select_detections(boxes, scores, score_threshold=0.0, nms_threshold=1.0, detections_per_image=3)
    assert len(capped["boxes"]) == 3
    torch.testing.assert_close(
        rescale_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (64, 64), (128, 32)),
        torch.tensor([[5.0, 40.0, 15.0, 80.0]]),
    )


def torchvision_select_detections(boxes, scores, score_threshold, nms_threshold, topk_per_class, detections, nms_fn):
    """The reference: per image, top-k per class, threshold, ``nms_fn`` (class-wise), cap."""
    results = []
    for image_boxes, image_scores in zip(boxes, scores):
        top_scores, top_anchors = image_scores.t().topk(min(topk_per_class, image_scores.shape[0]), dim=1)
        labels = torch.arange(image_scores.shape[1])[:, None].expand_as(top_scores).flatten()
        top_scores, top_anchors = top_scores.flatten(), top_anchors.flatten()
        above = top_scores > score_threshold
        top_scores, labels, candidate_boxes = top_scores[above], labels[above], image_boxes[top_anchors[above]]
        keep = nms_fn(candidate_boxes, top_scores, labels, nms_threshold)[:detections]
        results.append({"boxes": candidate_boxes[keep], "scores": top_scores[keep], "labels": labels[keep]})
    return results


def random_detection_case(generator, num_images, num_anchors, num_classes, spread):
    xy = torch.rand(num_images, num_anchors, 2, generator=generator) * spread
    wh = torch.rand(num_images, num_anchors, 2, generator=generator) * 40 + 0.5
    # distinct scores: NMS may order tied ones either way
    ranks = torch.randperm(num_images * num_anchors * num_classes, generator=generator) + 1
    scores = (ranks / ranks.numel()).pow(3).view(num_images, num_anchors, num_classes)
    return torch.cat([xy, xy + wh], dim=-1), scores


def nms_class_by_class(boxes, scores, labels, threshold):
    """``torchvision.ops.nms`` on each class alone: ``batched_nms`` above 1,000 boxes on CPU. (Below,
    it shifts each class's boxes apart and runs one ``nms``, which can round IoUs differently.)"""
    per_class = [(labels == c).nonzero().flatten() for c in labels.unique()]
    keep = torch.cat([index[nms(boxes[index], scores[index], threshold)] for index in per_class] or [labels[:0]])
    return keep[scores[keep].argsort(descending=True)]


@pytest.mark.parametrize(
    "one_call, prefix, chunk_elements, reference_nms, paths_taken",
    [(1000, 256, 1 << 18, batched_nms, ("one call", "prefix")), (0, 16, 1000, nms_class_by_class, ("prefix", "rows"))],
)
def test_fast_class_wise_nms_equals_torchvision(
    monkeypatch, one_call, prefix, chunk_elements, reference_nms, paths_taken
):
    """Every path of ``select_detections`` (``batched_nms`` itself, the best-candidates prefix,
    every class's row in chunks of IoU entries) gives exactly torchvision's class-wise NMS."""
    monkeypatch.setattr(ssdlite.postprocess, "ONE_CALL_CANDIDATES", one_call)
    monkeypatch.setattr(ssdlite.postprocess, "NMS_PREFIX", prefix)
    monkeypatch.setattr(ssdlite.postprocess, "NMS_CHUNK_ELEMENTS", chunk_elements)
    generator = torch.Generator().manual_seed(0)
    paths = {"one call": 0, "prefix": 0, "rows": 0}
    for case in range(120):
        num_images, num_anchors, num_classes = (int(torch.randint(1, n, (1,), generator=generator)) for n in (4, 400, 20))
        # spread 30: boxes pile up and suppress each other (few kept, the rows path); 300: mostly kept
        boxes, scores = random_detection_case(generator, num_images, num_anchors, num_classes, 30 if case % 2 else 300)
        score_threshold = 0.3 * float(torch.rand(1, generator=generator))
        nms_threshold = 0.1 + 0.8 * float(torch.rand(1, generator=generator))
        topk, cap = (int(torch.randint(1, n, (1,), generator=generator)) for n in (150, 300))
        ours = select_detections(boxes, scores, score_threshold, nms_threshold, topk, cap)
        reference = torchvision_select_detections(boxes, scores, score_threshold, nms_threshold, topk, cap, reference_nms)
        for image_ours, image_reference, image_scores in zip(ours, reference, scores):
            for key in ("boxes", "scores", "labels"):
                assert torch.equal(image_ours[key], image_reference[key]), (case, key)
            candidates = int((image_scores.t().topk(min(topk, num_anchors), dim=1).values > score_threshold).sum())
            if candidates <= one_call:
                paths["one call"] += 1
            else:
                paths["prefix" if len(image_ours["boxes"]) >= cap or candidates <= prefix else "rows"] += 1
    assert all(paths[path] >= 20 for path in paths_taken), paths  # each path really ran


def test_fast_class_wise_nms_at_coco_scale_equals_batched_nms():
    """80 classes x 100 candidates an image, random and one-object scenes: ``batched_nms`` itself."""
    generator = torch.Generator().manual_seed(1)
    random_scene = random_detection_case(generator, 2, 2034, 80, 280)
    one_object = torch.tensor([100.0, 100.0, 200.0, 200.0]) + 3 * torch.randn(2, 2034, 4, generator=generator)
    for boxes, scores in (random_scene, (one_object, random_scene[1])):
        ours = select_detections(boxes, scores, 0.001, 0.6, 100, 100)
        reference = torchvision_select_detections(boxes, scores, 0.001, 0.6, 100, 100, batched_nms)
        for image_ours, image_reference in zip(ours, reference):
            assert all(torch.equal(image_ours[key], image_reference[key]) for key in image_ours)


def test_rowwise_box_iou_is_torchvision_box_iou_bit_for_bit():
    boxes, _ = random_detection_case(torch.Generator().manual_seed(2), 5, 64, 1, 100)
    assert torch.equal(rowwise_box_iou(boxes), torch.stack([box_iou(row, row) for row in boxes]))
