"""Inference fast path: fold every BatchNorm that directly follows a conv into that conv, then
(on CPU) run each conv, and the ReLU6 after it, as one oneDNN kernel on a prepacked weight.

In eval mode a BatchNorm is a per-channel affine map, so ``BN(conv(x))`` equals one conv with
rescaled weights and a bias: one pass over the activations fewer per layer. Every conv + BN
pair in this toolkit (torchvision's ``Conv2dNormActivation``, MobileNetV2's linear
projection, the SSDLite and DeepLab heads) sits next to each other inside an
``nn.Sequential``, which is all this looks for; so do the ReLU6s that follow those convs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_conv_bn(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (in eval mode) with each ``Conv2d`` -> ``BatchNorm2d`` pair of a ``Sequential``
    folded into one conv (the BN becomes ``nn.Identity``, so module names are unchanged).

    For inference only: the folded model computes the same outputs (to float rounding) as the
    original in eval mode, but has no BN statistics left to train. A copy unless ``inplace``.
    """
    if model.training:
        raise ValueError("fuse_conv_bn folds BN running statistics: call model.eval() first")
    if not inplace:
        model = copy.deepcopy(model)
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequential) - 1):
            conv, bn = sequential[i], sequential[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                sequential[i] = fuse_conv_bn_eval(conv, bn)
                sequential[i + 1] = nn.Identity()
    return model


class PackedConv2d(nn.Module):
    """An inference-only ``Conv2d``, with the ReLU6 that follows it when ``relu6``, run by oneDNN's
    fused convolution + post-op kernel (the one torch.compile emits on CPU) on a weight that
    oneDNN reordered into its own blocked layout once for the input shape it sees.

    A plain conv + ``clamp_`` lets oneDNN reorder the weight on every call and passes over the
    activations twice. The same arithmetic, so outputs equal the plain conv's (tested). The layout oneDNN picks depends on the input shape (a weight
    packed for 64 x 64 maps made SSDLite's 1 x 1 to 3 x 3 head convs slower than unpacked), so
    the weight is packed at the first call with each input shape (the last few are kept). Weight
    and bias are no state-dict entries: this lives only in the fast-path copy of a model, which
    is never saved. Float32, CPU, no autograd; outputs channels-last.
    """

    KEPT_PACKINGS = 4  # input shapes a model alternates between (513 and 512, batch 1 and 16)

    def __init__(self, conv: nn.Conv2d, relu6: bool) -> None:
        super().__init__()
        self.conv_args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.weight = conv.weight.detach()
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.post_op = ("hardtanh", [0.0, 6.0]) if relu6 else ("none", [])
        self._packed: dict[torch.Size, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The kernel keeps its input's memory format: an NCHW image would make every later layer
        # run NCHW.
        x = x.contiguous(memory_format=torch.channels_last)
        packed = self._packed.get(x.shape)
        if packed is None:
            if len(self._packed) >= self.KEPT_PACKINGS:
                self._packed.pop(next(iter(self._packed)))  # the oldest
            reorder = torch.ops.mkldnn._reorder_convolution_weight
            packed = reorder(self.weight, *self.conv_args, list(x.shape))
            self._packed[x.shape] = packed
        attr, scalars = self.post_op
        return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, *self.conv_args, attr, scalars, "")


def prepacking_available(model: nn.Module) -> bool:
    """Whether ``PackedConv2d`` can run ``model``: oneDNN present, float32 weights on the CPU."""
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
        and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    )


def prepack_convolutions(model: nn.Module) -> nn.Module:
    """``model`` with, in place, each zero-padded ``Conv2d`` of a ``Sequential`` replaced by a
    ``PackedConv2d`` that also applies the ``nn.ReLU6`` following it (past any ``nn.Identity``
    left by a folded BN); that ReLU6 becomes ``nn.Identity``, so module names are unchanged."""
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i, conv in enumerate(sequential):
            zero_padded = isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros"
            if not zero_padded or isinstance(conv.padding, str):  # "same" / "valid": no explicit padding
                continue
            after = i + 1
            while after < len(sequential) and isinstance(sequential[after], nn.Identity):
                after += 1
            relu6 = after < len(sequential) and isinstance(sequential[after], nn.ReLU6)
            sequential[i] = PackedConv2d(conv, relu6)
            if relu6:
                sequential[after] = nn.Identity()
    return model


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """The inference fast path: a copy of ``model`` (in eval mode) with BN folded into convs and
    the weights in channels-last order; on a CPU with oneDNN, each conv and its ReLU6 run as one
    kernel on a prepacked weight (``PackedConv2d``).

    Channels-last weights make oneDNN run every conv (and pass activations between them) in
    NHWC, without converting each depthwise conv's input and output; prepacking saves the
    weight reorder of every call (figures: ``benchmarks/models.py``, README).
    Inputs may stay NCHW; outputs equal the model's, up to float rounding. Inference only:
    call it under ``torch.no_grad`` or ``torch.inference_mode``.
    """
    fast = fuse_conv_bn(model).to(memory_format=torch.channels_last)
    return prepack_convolutions(fast) if prepacking_available(fast) else fast
