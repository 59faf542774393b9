"""MobileNetV2 against the paper and torchvision; the registry's uniform feature interface."""

import re

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from backbone import Backbone, MobileNetV2, build_backbone, list_backbones, register_backbone
from backbone.registry import _REGISTRY


def multiply_adds(model: torch.nn.Module, *inputs: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    return counter.get_total_flops() / 2


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_classifier_matches_paper_and_torchvision():
    model = MobileNetV2().eval()
    assert num_params(model) == 3_504_872
    assert list(model.state_dict()) == list(torchvision.models.mobilenet_v2().state_dict())
    madds = multiply_adds(model, torch.randn(1, 3, 224, 224))
    assert madds == pytest.approx(300e6, rel=0.01)


@pytest.mark.parametrize("width", [0.35, 0.5, 0.75, 1.0, 1.4])
def test_width_multipliers_build_like_torchvision(width):
    ours = MobileNetV2(width_mult=width)
    theirs = torchvision.models.mobilenet_v2(width_mult=width)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_features_equal_torchvision_random_init():
    reference = torchvision.models.mobilenet_v2().eval()
    ours = build_backbone("mobilenet_v2").eval()
    ours.load_state_dict({k: v for k, v in reference.state_dict().items() if k.startswith("features.")})
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = reference.features(images)
        taps = ours(images)
    torch.testing.assert_close(taps["features.18"], expected, atol=1e-5, rtol=0)
    # The expansion tap is torchvision's features.14.conv.0 output.
    with torch.no_grad():
        trunk = reference.features[:14](images)
        expansion = reference.features[14].conv[0](trunk)
    torch.testing.assert_close(taps["features.14.conv.0"], expansion, atol=1e-5, rtol=0)


def test_pretrained_features_match_torchvision_on_a_photo(pretrained_weights_available):
    skimage_data = pytest.importorskip("skimage.data")
    photo = torch.from_numpy(np.ascontiguousarray(skimage_data.chelsea())).permute(2, 0, 1).float() / 255
    images = photo[None, :, :224, :224]
    reference = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
    ours = build_backbone("mobilenet_v2", pretrained=True).eval()
    with torch.no_grad():
        normalized = ours.normalize(images)
        torch.testing.assert_close(ours(normalized)["features.18"], reference.features(normalized), atol=1e-5, rtol=0)
        # A real photo through real weights: the classifier's top class is a cat (ImageNet 281-285).
        assert reference(normalized).argmax().item() in range(281, 286)


def test_local_weights_file_and_key_errors(tmp_path):
    reference = torchvision.models.mobilenet_v2()
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(reference.state_dict(), path)
    ours = build_backbone("mobilenet_v2", pretrained=str(path))
    torch.testing.assert_close(ours.state_dict()["features.5.conv.1.0.weight"], reference.features[5].conv[1][0].weight)

    broken = reference.state_dict()
    del broken["features.3.conv.0.0.weight"]
    broken["features.2.conv.0.1.bias"] = torch.zeros(7)
    torch.save(broken, path)
    with pytest.raises(ValueError, match=r"missing keys: features\.3\.conv\.0\.0\.weight.*shape mismatches: features\.2"):
        build_backbone("mobilenet_v2", pretrained=str(path))

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        build_backbone("mobilenet_v2", pretrained=str(path))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_strides_keep_weights_and_sizes(output_stride, pretrained_weights_available):
    backbone = build_backbone("mobilenet_v2", output_stride=output_stride, pretrained=True).eval()
    assert backbone.output_stride == output_stride
    with torch.no_grad():
        taps = backbone(torch.randn(1, 3, 96, 128))
    for info in backbone.feature_info:
        expected_stride = min(info.stride, output_stride)
        assert info.stride == expected_stride
        assert taps[info.name].shape[-2:] == (96 // info.stride, 128 // info.stride), info


def test_dilation_follows_deeplab_convention():
    backbone = build_backbone("mobilenet_v2", output_stride=8)
    depthwise = {i: backbone.features[i].conv[1][0] for i in (7, 8, 14, 15)}
    # Block 7 would reach stride 16: it keeps rate 1 with stride 1; later blocks dilate.
    assert depthwise[7].stride == (1, 1) and depthwise[7].dilation == (1, 1)
    assert depthwise[8].dilation == (2, 2)
    assert depthwise[14].stride == (1, 1) and depthwise[14].dilation == (2, 2)
    assert depthwise[15].dilation == (4, 4) and depthwise[15].padding == (4, 4)


def test_feature_info_of_mobilenet_v2_follows_width():
    info = {i.name: (i.channels, i.stride) for i in build_backbone("mobilenet_v2").feature_info}
    assert info["features.3"] == (24, 4)
    assert info["features.14.conv.0"] == (576, 16)
    assert info["features.17"] == (320, 32)
    assert info["features.18"] == (1280, 32)
    narrow = {i.name: i.channels for i in build_backbone("mobilenet_v2", width_mult=0.5).feature_info}
    assert narrow["features.3"] == 16 and narrow["features.17"] == 160 and narrow["features.18"] == 1280


def test_selected_taps_drop_later_layers():
    backbone = build_backbone("mobilenet_v2", taps=["features.3", "features.17"])
    assert len(backbone.features) == 18
    out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["features.3", "features.17"]


def test_frozen_layers_keep_weights_and_bn_statistics_through_a_training_step():
    backbone = build_backbone("mobilenet_v2", width_mult=0.35)
    backbone.freeze("features.7")  # MobileNetV2 up to stride 8
    backbone.train()
    trainable = {name.split(".")[1] for name, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {str(i) for i in range(7, 19)}
    frozen_before = {k: v.clone() for k, v in backbone.state_dict().items() if int(k.split(".")[1]) < 7}
    trained_before = backbone.features[8].conv[0][1].running_mean.clone()
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)
    sum(m.square().mean() for m in backbone(torch.randn(2, 3, 64, 64)).values()).backward()
    optimizer.step()
    assert all(torch.equal(frozen_before[k], v) for k, v in backbone.state_dict().items() if k in frozen_before)
    assert not torch.equal(trained_before, backbone.features[8].conv[0][1].running_mean)
    assert not backbone.features[3].conv[0][1].training and backbone.features[8].conv[0][1].training

    whole = build_backbone("resnet18")
    whole.freeze(True)
    whole.train()
    assert not any(p.requires_grad for p in whole.parameters())
    assert not any(m.training for m in whole.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="starts no parameter"):
        build_backbone("mobilenet_v2").freeze("layer9")


def build_task_model(task: str, freeze: str) -> torch.nn.Module:
    from deeplab_mobile import build_deeplab
    from multitask import build_multitask
    from ssdlite import build_ssdlite

    if task == "ssdlite":
        return build_ssdlite(num_classes=3, width_mult=0.35, image_size=128, freeze_backbone=freeze)
    if task == "deeplab":
        return build_deeplab(num_classes=3, width_mult=0.35, freeze_backbone=freeze)
    return build_multitask(num_det_classes=3, num_seg_classes=4, width_mult=0.35, image_size=128, freeze_backbone=freeze)


@pytest.mark.parametrize("task", ["ssdlite", "deeplab", "multitask"])
def test_every_task_freezes_exactly_its_backbone_layers_before_the_prefix(task):
    model = build_task_model(task, "features.14").train()

    def before_14(name: str) -> bool:
        layer = re.search(r"(?:^|\.)features\.(\d+)\.", name)
        return layer is not None and int(layer.group(1)) < 14

    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if before_14(name)}
    assert all(m.training != before_14(f"{name}.") for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))


REGISTERED = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet18", "resnet50", "timm:mobilenetv3_large_100"]


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("output_stride", [16, 32])
def test_every_backbone_publishes_true_channels_and_strides(name, output_stride):
    if name.startswith("timm:"):
        pytest.importorskip("timm", reason="the timm extra is not installed")
    backbone = build_backbone(name, output_stride=output_stride).eval()
    assert isinstance(backbone, Backbone)
    with torch.no_grad():
        taps = backbone(torch.randn(1, 3, 64, 96))
    assert list(taps) == [i.name for i in backbone.feature_info]
    for info in backbone.feature_info:
        assert taps[info.name].shape[1] == info.channels, info
        assert taps[info.name].shape[-2:] == (-(-64 // info.stride), -(-96 // info.stride)), info
    assert backbone.info(backbone.seg_tap).stride == output_stride
    assert backbone.deepest_tap(4).stride == 4


def test_registry_lists_and_rejects_clearly():
    names = list_backbones()
    assert set(REGISTERED[:-1]) <= set(names) and "timm:<model name>" in names
    with pytest.raises(ValueError, match="unknown backbone 'mobilenet_v9'; known: .*mobilenet_v2"):
        build_backbone("mobilenet_v9")
    with pytest.raises(ValueError, match="cannot give output_stride=4"):
        build_backbone("mobilenet_v2", output_stride=4)
    with pytest.raises(ValueError, match="no width multiplier"):
        build_backbone("resnet18", width_mult=0.5)
    with pytest.raises(KeyError, match="no tap 'features.99'"):
        build_backbone("mobilenet_v2", taps=["features.99"])


def test_user_backbone_registers_in_two_lines():
    @register_backbone("tiny_test_net")
    def tiny(*, output_stride: int = 32, **_) -> Backbone:
        return build_backbone("mobilenet_v2", width_mult=0.35, output_stride=output_stride)

    try:
        assert "tiny_test_net" in list_backbones()
        assert build_backbone("tiny_test_net", output_stride=16).output_stride == 16
    finally:
        del _REGISTRY["tiny_test_net"]


def test_missing_timm_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"mobiledet\[timm\]"):
        build_backbone("timm:resnet18")
