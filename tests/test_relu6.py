"""``core.relu6.ReLU6``: nn.ReLU6's outputs and gradients, one saved copy less per layer."""

import copy
import sys
from typing import Callable

import pytest
import torch
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

import core.relu6 as relu6_module
from backbone import build_backbone
from core.relu6 import ReLU6, _only_reference
from ssdlite import build_ssdlite


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


def with_plain_relu6(model: nn.Module) -> nn.Module:
    """``model`` with, in place, each of our ``ReLU6`` replaced by ``nn.ReLU6(inplace=True)``."""
    for module in list(model.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, ReLU6):
                setattr(module, child_name, nn.ReLU6(inplace=True))
    return model


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
    reference = with_plain_relu6(build_backbone("mobilenet_v2", width_mult=0.35).train())
    for model in (backbone, reference):  # every block's activations kept, none recomputed
        model.set_grad_checkpointing(0)
    x = torch.randn(2, 3, 64, 64)
    ours, plain = saved_bytes(backbone, x), saved_bytes(reference, x)
    assert ours < 0.8 * plain, (ours, plain)


def relu6_graphs() -> dict[str, Callable[[Callable, torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Ways a ReLU6 output's gradient reaches the ReLU6: fresh from a conv, or shared with
    other nodes (an add hands one tensor to both inputs), or a view of a larger gradient."""
    conv = nn.Conv2d(4, 4, 1)
    return {
        "conv": lambda relu6, a, b: conv(relu6(a)).pow(2).sum(),
        "add with a leaf": lambda relu6, a, b: (relu6(a) + b).pow(2).sum(),
        "add of two relu6": lambda relu6, a, b: (relu6(a) + relu6(b)).pow(2).sum(),
        "add to itself": lambda relu6, a, b: (lambda y: (y + y).pow(2).sum())(relu6(a)),
        "view": lambda relu6, a, b: conv(relu6(a).view(2, 4, 25, 1)).pow(2).sum(),
        "cat": lambda relu6, a, b: conv(torch.cat([relu6(a), relu6(b)])).pow(2).sum(),
        "two convs": lambda relu6, a, b: (lambda y: (conv(y) * conv(y)).sum())(relu6(a)),
        "sum": lambda relu6, a, b: relu6(a).sum() * 3,
    }


@pytest.mark.parametrize("graph", list(relu6_graphs()))
def test_gradient_written_in_place_only_where_nothing_else_reads_it(graph):
    torch.manual_seed(0)
    f = relu6_graphs()[graph]
    values = [torch.randn(2, 4, 5, 5) * 4 for _ in range(2)]
    grads = []
    for relu6 in (ReLU6(inplace=True), nn.ReLU6()):
        a, b = (v.clone().requires_grad_() for v in values)
        # ReLU6(inplace) must not clamp the leaves themselves
        f(lambda t: relu6(t * 1), a, b).backward()
        grads.append((a.grad, b.grad))
    for ours, reference in zip(*grads):
        assert (ours is None and reference is None) or torch.equal(ours, reference)


def test_a_gradient_a_hook_keeps_is_not_overwritten():
    kept, reference = [], []
    for relu6, store in ((ReLU6(inplace=True), kept), (nn.ReLU6(), reference)):
        torch.manual_seed(0)
        x = (torch.randn(2, 4, 5, 5) * 4).requires_grad_()
        y = relu6(x * 1)
        y.register_hook(store.append)
        y.retain_grad()
        nn.Conv2d(4, 4, 1)(y).pow(2).sum().backward()
        store.append(y.grad)
    assert all(torch.equal(a, b) for a, b in zip(kept, reference))


def test_ownership_check_sees_fresh_and_shared_gradients():
    """Pins the reference counts ``_only_reference`` reads: a gradient fresh from a conv is
    owned by the backward alone, one an add hands to two nodes is not."""
    seen = []

    class Probe(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            references = sys.getrefcount(grad)
            seen.append(_only_reference(grad, references))
            return grad

    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    nn.Conv2d(4, 4, 1)(Probe.apply(x)).sum().backward()
    (Probe.apply(x) + x).pow(2).sum().backward()
    Probe.apply(x).view(4, 9).pow(2).sum().backward()
    kept = []
    y = Probe.apply(x)
    y.register_hook(kept.append)
    nn.Conv2d(4, 4, 1)(y).sum().backward()
    assert seen == [True, False, False, False]


def test_ssdlite_gradients_bit_identical_to_nn_relu6(monkeypatch):
    """A whole SSDLite training backward, channels-last as ``SSDLiteModule`` trains it, 1 x 1
    maps included (whose gradients arrive with other strides than the ReLU6 outputs): every
    parameter's gradient equals, to the bit, the one of the same model with plain ``nn.ReLU6``.
    A gradient masked in place in another layout than the out-of-place op's would change the
    next BN's summation order, and with it the rounding (a 24-step fit then ends elsewhere)."""
    torch.manual_seed(0)
    ours = build_ssdlite(num_classes=3, width_mult=0.35, image_size=128).train()
    ours.to(memory_format=torch.channels_last)
    plain = with_plain_relu6(copy.deepcopy(ours))
    images = torch.rand(4, 3, 128, 128) * 255
    targets = [
        {"boxes": torch.tensor([[8.0 * i, 10.0, 60.0 + 8 * i, 90.0]]), "labels": torch.tensor([1 + i % 2])}
        for i in range(4)
    ]
    masked_in_place = []
    check = relu6_module._only_reference

    def counted_check(*args) -> bool:
        masked_in_place.append(check(*args))
        return masked_in_place[-1]

    monkeypatch.setattr(relu6_module, "_only_reference", counted_check)
    grads = []
    for model in (ours, plain):
        sum(model(images, targets).values()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    assert all(torch.equal(grads[0][name], grads[1][name]) for name in grads[1])
    # The saving is real: every gradient in its ReLU6 output's layout was masked in place; the
    # others are those of the 1 x 1 maps (here 14 of 59).
    relu6_count = sum(isinstance(m, ReLU6) for m in ours.modules())
    assert all(masked_in_place) and len(masked_in_place) > relu6_count // 2, (masked_in_place, relu6_count)
