"""Inference fast paths compute what the plain models compute."""

import pytest
import torch
from torch import nn

from backbone.fuse import fuse_conv_bn, optimize_for_inference
from deeplab_mobile import DeepLabModule, build_deeplab
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
