"""``backbone.relu6.ReLU6``: nn.ReLU6's outputs and gradients, one saved copy less per layer."""

import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from backbone import build_backbone
from backbone.relu6 import ReLU6


def conv_bn_relu6(activation: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        Conv2dNormActivation(8, 16, kernel_size=3, activation_layer=activation), nn.Conv2d(16, 4, 1)
    ).train()


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct tensors autograd keeps for the backward pass of ``model(x)``."""
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x)
    return sum(storages.values())


def test_same_outputs_and_gradients_as_nn_relu6_with_one_copy_less():
    x = torch.randn(4, 8, 12, 12) * 4  # many values beyond 0 and 6 after BN
    results = []
    for activation in (nn.ReLU6, ReLU6):
        model, inputs = conv_bn_relu6(activation), x.clone().requires_grad_()
        out = model(inputs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append([out.detach(), inputs.grad, *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    activation_bytes = 4 * 16 * 12 * 12 * 4
    assert saved_bytes(conv_bn_relu6(nn.ReLU6), x) - saved_bytes(conv_bn_relu6(ReLU6), x) == activation_bytes


def test_without_autograd_it_is_nn_relu6():
    x = torch.randn(2, 3, 5, 5) * 8
    with torch.no_grad():
        assert torch.equal(ReLU6(inplace=True)(x.clone()), nn.ReLU6()(x))
    assert torch.equal(ReLU6()(x), nn.ReLU6()(x))


def test_mobilenet_v2_training_keeps_a_fifth_less():
    """Every ReLU6 of the backbone is the output-saving one: MobileNetV2's kept activations
    shrink by the ReLU6 inputs' copies (23% here)."""
    backbone = build_backbone("mobilenet_v2", width_mult=0.35).train()
    activations = [m for m in backbone.modules() if isinstance(m, nn.ReLU6)]
    assert activations and all(isinstance(m, ReLU6) for m in activations)
    reference = build_backbone("mobilenet_v2", width_mult=0.35).train()
    for module in list(reference.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, ReLU6):
                setattr(module, child_name, nn.ReLU6(inplace=True))
    x = torch.randn(2, 3, 64, 64)
    ours, plain = saved_bytes(backbone, x), saved_bytes(reference, x)
    assert ours < 0.8 * plain, (ours, plain)
