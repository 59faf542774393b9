"""Inference fast paths compute what the plain models compute."""

import pytest
import torch
from torch import nn

from core.fuse import PackedConv2d, fuse_conv_bn, optimize_for_inference, prepacking_available
from deeplab_mobile import DeepLabModule, build_deeplab
from deeplab_mobile.inference import class_softmax
from deeplab_mobile.resize import resize_bilinear, resize_logits
from ssdlite import SSDLiteModule, build_ssdlite


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so a wrong fold cannot go unnoticed."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for tensor in (m.running_mean, m.weight, m.bias):
                tensor.data = torch.randn(tensor.shape, generator=generator) * 0.1
            m.running_var.data = torch.rand(m.running_var.shape, generator=generator) + 0.5
            if m.weight is not None:
                m.weight.data += 1
    return model.eval()


def test_fused_ssdlite_equals_unfused():
    model = _randomise_bn(build_ssdlite(num_classes=5))
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert fast.state_dict().keys() - model.state_dict().keys() <= {
        k for k in fast.state_dict() if k.endswith(".bias")
    }  # same module names: only the folded biases are new
    images = torch.rand(2, 3, 128, 128)
    # The head outputs; post-processing is shared code (comparing final detections of a random
    # model would compare the order of near-tied scores).
    with torch.no_grad():
        want, got = model.predict_raw(images)[0], fast.predict_raw(images)[0]
    for key in ("cls_logits", "bbox_regression"):
        torch.testing.assert_close(got[key], want[key], atol=1e-4, rtol=1e-4)


def test_fused_deeplab_equals_unfused():
    model = _randomise_bn(build_deeplab(num_classes=4, output_stride=16, head="reduced"))
    fast = optimize_for_inference(model)
    images = torch.rand(1, 3, 97, 97)  # odd size: the resize back to the input must still match
    with torch.no_grad():
        torch.testing.assert_close(fast(images), model(images), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="prepacking needs oneDNN")
def test_prepacked_convolutions_run_any_input_shape_and_layout():
    """On a CPU with oneDNN, the fast path runs every conv of a Sequential, with the ReLU6 after
    it, as one oneDNN kernel on a weight packed per input shape: alternating sizes and batches
    (more shapes than are kept packed), NCHW or channels-last, all give the plain model's
    outputs."""
    model = _randomise_bn(build_deeplab(num_classes=4, width_mult=0.35, output_stride=16, head="reduced"))
    fast = optimize_for_inference(model)
    packed = [m for m in fast.modules() if isinstance(m, PackedConv2d)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(packed) >= len(convs) - 1  # all but the classifier, which is no Sequential's
    assert not any(isinstance(m, nn.ReLU6) for m in fast.modules())  # each one fused into its conv
    shapes = [(1, 65, 65), (2, 64, 96), (1, 65, 65), (1, 33, 40), (3, 48, 48), (1, 80, 72), (1, 65, 65)]
    for batch, height, width in shapes:
        images = torch.rand(batch, 3, height, width)
        with torch.no_grad():
            want = model(images)
            for layout in (torch.contiguous_format, torch.channels_last):
                torch.testing.assert_close(fast(images.contiguous(memory_format=layout)), want, atol=1e-4, rtol=1e-4)
    assert all(len(m._packed) <= PackedConv2d.KEPT_PACKINGS for m in packed)


def test_no_prepacking_where_onednn_cannot_run_the_weights():
    """float64 weights (like weights on a GPU) keep plain convs, and the fast path still folds BN."""
    model = _randomise_bn(build_deeplab(num_classes=4, width_mult=0.35, output_stride=16, head="reduced")).double()
    assert not prepacking_available(model)
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, (PackedConv2d, nn.BatchNorm2d)) for m in fast.modules())
    images = torch.rand(1, 3, 65, 65, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), model(images))


@pytest.mark.parametrize("channels", [3, 21, 24, 40])
def test_inference_logits_resize_in_the_faster_layout(channels):
    """Channels-last logits without autograd come back resized as ``resize_bilinear`` would,
    as a channels-last view of a buffer padded to a multiple of 8 channels (up to 24), or
    channels-last as they are (more channels); logits that need gradients take
    ``resize_bilinear`` itself."""
    logits = torch.randn(2, channels, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        resized = resize_logits(logits, (37, 29))
        torch.testing.assert_close(resized, resize_bilinear(logits, (37, 29)))
    assert resized.shape == (2, channels, 37, 29)
    if channels <= 24:
        assert resized.stride()[1] == 1 and resized.stride()[3] == -(-channels // 8) * 8
    else:
        assert resized.is_contiguous(memory_format=torch.channels_last)
    trained = logits.clone().requires_grad_()
    resized = resize_logits(trained, (37, 29))
    assert torch.equal(resized, resize_bilinear(trained, (37, 29)))
    resized.sum().backward()
    assert trained.grad is not None


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "padded_view"])
def test_class_softmax_is_the_softmax_over_classes_in_the_logits_layout(layout):
    logits = torch.randn(2, 21, 16, 12)
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    elif layout == "padded_view":
        logits = torch.zeros(2, 16, 12, 24).permute(0, 3, 1, 2)[:, :21].copy_(logits)
    probabilities = class_softmax(logits)
    torch.testing.assert_close(probabilities, logits.softmax(dim=1))
    assert probabilities.is_contiguous(memory_format=torch.contiguous_format if layout == "nchw" else torch.channels_last)


def test_fuse_leaves_the_model_alone_and_refuses_train_mode():
    model = build_ssdlite(num_classes=3).eval()
    fuse_conv_bn(model)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # a copy was fused
    with pytest.raises(ValueError, match="eval"):
        fuse_conv_bn(model.train())


@pytest.mark.parametrize("task", ["ssdlite", "deeplab"])
def test_predict_runs_the_fast_path_outside_the_state_dict(task):
    """Between ``on_predict_start`` and ``on_predict_end`` a module predicts with a fused copy
    of its model (equal outputs: the tests above), which never enters its state dict."""
    if task == "ssdlite":
        module = SSDLiteModule(num_classes=3, width_mult=0.35, image_size=64, pretrained_backbone=False)
        metas = [{"path": f"{i}.jpg", "orig_size": (64, 64)} for i in range(2)]
    else:
        module = DeepLabModule(num_classes=3, width_mult=0.35, pretrained_backbone=False)
        metas = [{"path": f"{i}.jpg", "size": (64, 64), "orig_size": (64, 64)} for i in range(2)]
    module.eval()
    keys = set(module.state_dict())
    calls = []
    module.on_predict_start()
    fast = module.predict_model
    assert fast is not module.model
    module.model.register_forward_hook(lambda *args: calls.append("trained"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    fast.register_forward_hook(lambda *args: calls.append("fast"))
    assert set(module.state_dict()) == keys
    with torch.no_grad():
        module.predict_step((torch.rand(2, 3, 64, 64), metas), 0)
        module.on_predict_end()
        module.predict_step((torch.rand(2, 3, 64, 64), metas), 0)
    assert calls == ["fast", "trained"]
