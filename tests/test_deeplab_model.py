"""DeepLab model: the paper's Table 7 counts, output strides, heads on every backbone, MF."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbone import list_backbones
from deeplab_mobile import (
    ASPP,
    HEADS,
    PAPER_EVAL_SCALES,
    DeepLabV3PlusDecoder,
    ImagePooling,
    build_deeplab,
    default_atrous_rates,
    multi_scale_flip_probabilities,
)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_madds(model: nn.Module, images: torch.Tensor) -> float:
    """Multiply-adds of one forward pass (FLOPs / 2), on shapes only."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops() / 2


def build_on_meta(**kwargs) -> nn.Module:
    # The meta device carries shapes only: full-size counts cost no compute.
    with torch.device("meta"):
        return build_deeplab(**kwargs).eval()


def test_reduced_head_matches_paper_table7():
    model = build_on_meta(num_classes=21, head="reduced", output_stride=16)
    assert count_params(model) == pytest.approx(2.11e6, rel=0.02)
    assert count_madds(model, torch.empty(1, 3, 513, 513, device="meta")) == pytest.approx(2.75e9, rel=0.05)
    # The head reads the 320-channel last bottleneck; the 1280-channel layer is not built.
    assert model.head_tap == "features.17" and len(model.backbone.features) == 18


def test_reduced_head_os8_multi_scale_flip_madds_match_paper_table7():
    model = build_on_meta(num_classes=21, head="reduced", output_stride=8)
    image = torch.empty(1, 3, 513, 513, device="meta")
    madds = count_madds(lambda x: multi_scale_flip_probabilities(model, x, PAPER_EVAL_SCALES, flip=True), image)
    assert madds == pytest.approx(152.6e9, rel=0.05)


def test_full_aspp_with_regular_convs_matches_paper_table7():
    model = build_on_meta(num_classes=21, head="aspp", output_stride=16, separable=False)
    assert count_params(model) == pytest.approx(4.52e6, rel=0.02)
    rates = [branch[0].dilation[0] for branch in model.aspp.branches[1:]]
    assert rates == [6, 12, 18]


def test_separable_aspp_is_lighter_and_os8_doubles_the_rates():
    regular = build_on_meta(head="aspp", output_stride=8)
    separable = build_on_meta(head="aspp", output_stride=8, separable=True)
    assert count_params(separable) < count_params(regular) - 1.5e6
    assert [b[0].dilation[0] for b in regular.aspp.branches[1:]] == [12, 24, 36]
    assert [b[0][0].dilation[0] for b in separable.aspp.branches[1:]] == [12, 24, 36]
    assert default_atrous_rates(32) == (3, 6, 9)
    given = build_on_meta(head="aspp", atrous_rates=[2, 4])
    assert [b[0].dilation[0] for b in given.aspp.branches[1:]] == [2, 4]


@pytest.mark.parametrize("head", HEADS)
def test_output_stride_8_and_16_same_params_and_input_size_logits(head):
    images = torch.rand(2, 3, 70, 90)
    counts = set()
    for output_stride in (8, 16):
        model = build_deeplab(num_classes=4, head=head, output_stride=output_stride, width_mult=0.35).eval()
        counts.add(count_params(model))
        with torch.no_grad():
            assert model(images).shape == (2, 4, 70, 90)
    assert len(counts) == 1


def test_image_pooling_broadcasts_the_global_mean():
    pooling = ImagePooling(8, 4).eval()
    x = torch.rand(2, 8, 5, 7)
    out = pooling(x)
    assert out.shape == (2, 4, 5, 7)
    expected = pooling.conv(x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(out, expected.expand_as(out))


def test_image_pooling_makes_predictions_depend_on_the_whole_image(pretrained_weights_available):
    model = build_deeplab(num_classes=5, pretrained_backbone=True).eval()
    image = torch.rand(1, 3, 64, 1024)
    changed = image.clone()
    changed[..., 512:] = 1.0  # far outside the receptive field of the left-most columns
    with torch.no_grad():
        left = model(image)[..., :64]
        left_changed = model(changed)[..., :64]
        assert (left - left_changed).abs().max() > 1e-3
        # Without the image-pooling branch the left columns cannot see the change.
        model.aspp.image_pooling.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
        torch.testing.assert_close(model(image)[..., :64], model(changed)[..., :64], rtol=0, atol=0)


def test_decoder_fuses_at_stride_4():
    decoder = DeepLabV3PlusDecoder(low_level_channels=24, head_channels=32, out_channels=16).eval()
    out = decoder(torch.rand(2, 32, 5, 6), torch.rand(2, 24, 17, 21))
    assert out.shape == (2, 16, 17, 21)
    assert decoder.project_low_level[0].out_channels == 48


def test_aspp_branches():
    aspp = ASPP(16, 8, atrous_rates=(1, 2), separable=True).eval()
    assert len(aspp.branches) == 3 and aspp.project[0].in_channels == 4 * 8
    assert aspp(torch.rand(2, 16, 9, 9)).shape == (2, 8, 9, 9)


REGISTRY = [name for name in list_backbones() if not name.startswith("timm:")] + ["timm:mobilenetv3_large_100"]


@pytest.mark.parametrize("backbone", REGISTRY)
def test_every_registry_backbone_builds_all_heads(backbone):
    if backbone.startswith("timm:"):
        pytest.importorskip("timm", reason="the timm extra is not installed")
    width = 0.35 if backbone == "mobilenet_v2" else 1.0
    images = torch.rand(1, 3, 64, 80)
    for head in HEADS:
        model = build_deeplab(num_classes=3, backbone=backbone, head=head, width_mult=width).eval()
        with torch.no_grad():
            assert model(images).shape == (1, 3, 64, 80), (backbone, head)
        if head == "aspp_decoder":
            assert model.backbone.info(model.low_level_tap).stride == 4


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="unknown DeepLab head 'psp'"):
        build_deeplab(head="psp")
    with pytest.raises(ValueError, match="reduced head has no atrous branches"):
        build_deeplab(head="reduced", atrous_rates=[6, 12, 18])
    with pytest.raises(ValueError, match="only read by head='aspp_decoder'"):
        build_deeplab(head="aspp", low_level_tap="features.3")


def make_flip_equivariant(model: nn.Module) -> nn.Module:
    """Mirror-symmetric kernels: with odd sizes at every stride the net commutes with flips."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
    return model


def test_multi_scale_flip_of_a_flip_equivariant_model_changes_nothing():
    model = make_flip_equivariant(build_deeplab(num_classes=4, width_mult=0.35).eval())
    images = torch.rand(2, 3, 65, 65)  # 65 -> 33 -> 17 -> 9 -> 5: every stride-2 grid is symmetric
    with torch.no_grad():
        logits = model(images)
        torch.testing.assert_close(model(images.flip(-1)).flip(-1), logits)
        flipped = multi_scale_flip_probabilities(model, images, scales=[1.0], flip=True)
        torch.testing.assert_close(flipped, logits.softmax(dim=1))
        # The same averaging does change a model without mirror symmetry (the check is not vacuous).
        lopsided = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        averaged = multi_scale_flip_probabilities(lopsided, images, scales=[1.0], flip=True)
        assert (averaged - lopsided(images).softmax(dim=1)).abs().max() > 1e-3


def test_multi_scale_flip_returns_input_size_probabilities():
    model = build_deeplab(num_classes=4, width_mult=0.35).eval()
    images = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        probabilities = multi_scale_flip_probabilities(model, images, scales=[0.5, 0.75, 1.25], flip=True)
    assert probabilities.shape == (2, 4, 50, 70)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(2, 50, 70))
    with pytest.raises(ValueError, match="at least one scale"):
        multi_scale_flip_probabilities(model, images, scales=[])
