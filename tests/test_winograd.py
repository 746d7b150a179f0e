"""Winograd F(2x2, 3x3) convolutions against the direct convolution: the layer on its own (odd
sizes, batches, bias, activation), which convolutions a folded backbone hands over, the whole
body and FPN eager and compiled, and the refusals."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d
from detectron2.modeling import build_backbone

from resnet_backbones.benchmark.models import backbone_cfg
from resnet_backbones.modeling import winograd
from resnet_backbones.modeling.fold import fold_norms
from resnet_backbones.modeling.inference import compile_for_inference
from resnet_backbones.modeling.layers import ConvNorm
from resnet_backbones.modeling.winograd import WinogradConv2d, has_winograd, winograd_convolutions

from conftest import randomize_norms

CPU = torch.device("cpu")


def conv3x3(c_in, c_out, bias=True, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias).eval().requires_grad_(False)


@pytest.mark.parametrize("shape", [(1, 8, 14, 14), (2, 5, 15, 17), (1, 16, 63, 20), (3, 4, 14, 21)])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_equals_the_direct_convolution(shape, bias):
    n, c, h, w = shape
    conv = conv3x3(c, 7, bias)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    assert winograd.MIN_PIXELS <= h * w <= winograd.MAX_PIXELS  # the transformed path runs
    reference = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=1)
    for layout in (torch.contiguous_format, torch.channels_last):
        out = WinogradConv2d(conv)(x.contiguous(memory_format=layout))
        assert out.shape == reference.shape and out.dtype == torch.float32
        assert torch.allclose(out.double(), reference, rtol=0, atol=2e-6 * reference.abs().max().item())
    # the bound is float32's own rounding: the direct float32 convolution stays within it too
    assert (conv(x).double() - reference).abs().max() < 2e-6 * reference.abs().max()


def test_maps_outside_the_range_run_the_direct_convolution(monkeypatch):
    conv = conv3x3(6, 6)
    calls = []
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or torch.ops.aten.bmm(*a))
    layer = WinogradConv2d(conv)
    for size in (7, 13, 65, 80):
        x = torch.randn(1, 6, size, size)
        assert torch.equal(layer(x), conv(x))
    assert calls == []
    layer(torch.randn(1, 6, 14, 14))
    assert calls == [1]


def test_wide_convolutions_are_transformed_on_large_maps_too(monkeypatch):
    conv = conv3x3(winograd.WIDE_CHANNELS, winograd.WIDE_CHANNELS)
    layer = WinogradConv2d(conv)
    calls = []
    monkeypatch.setattr(torch, "bmm", lambda *a: calls.append(1) or torch.ops.aten.bmm(*a))
    x = torch.randn(1, winograd.WIDE_CHANNELS, 70, 66, generator=torch.Generator().manual_seed(2))
    assert 70 * 66 > winograd.MAX_PIXELS and layer.transforms(70, 66)
    reference = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    assert torch.allclose(layer(x).double(), reference, rtol=0, atol=2e-6 * reference.abs().max().item())
    assert calls == [1]
    narrow = WinogradConv2d(conv3x3(winograd.WIDE_CHANNELS, winograd.WIDE_CHANNELS // 2))
    assert narrow.transforms(64, 64) and not narrow.transforms(70, 66)


def test_detectron2_conv_keeps_its_activation():
    torch.manual_seed(0)
    conv = Conv2d(8, 8, 3, padding=1, bias=True, activation=F.relu).eval()
    x = torch.randn(1, 8, 20, 20)
    out = WinogradConv2d(conv)(x)
    assert out.min() == 0 and torch.allclose(out, conv(x), atol=1e-5)


def test_only_eligible_convolutions_are_replaced():
    model = torch.nn.ModuleDict({
        "plain": conv3x3(4, 4),
        "strided": torch.nn.Conv2d(4, 4, 3, stride=2, padding=1),
        "grouped": torch.nn.Conv2d(4, 4, 3, padding=1, groups=2),
        "dilated": torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        "pointwise": torch.nn.Conv2d(4, 4, 1),
        "with_norm": ConvNorm(4, 4, 3, norm="FrozenBN"),
        "folded": fold_norms(ConvNorm(4, 4, 3, norm="FrozenBN")),
        "preactivation": ConvNorm(4, 4, 3, norm="FrozenBN", norm_first=True),
    })
    replaced = winograd_convolutions(model)
    assert {k for k, m in replaced.items() if isinstance(m, WinogradConv2d)} == {"plain", "folded"}
    assert not has_winograd(model) and has_winograd(replaced)  # a copy unless inplace
    with pytest.raises(ValueError, match="not a 3x3 stride-1"):
        WinogradConv2d(model["strided"])
    with pytest.raises(ValueError, match="takes float32 models"):
        winograd_convolutions(torch.nn.Sequential(conv3x3(4, 4).double()))


def backbone(kind, depth):
    cfg = backbone_cfg(depth, kind, CPU)
    cfg.MODEL.RESNETS.CHANNELS_LAST = True
    torch.manual_seed(0)
    return fold_norms(randomize_norms(build_backbone(cfg)).eval()).requires_grad_(False)


@pytest.mark.parametrize("kind, depth, expected", [
    ("plain", 50, 16),   # every bottleneck's conv2
    ("plain", 18, 13),   # the basic blocks' 3x3 convolutions but the three strided ones
    ("fpn", 50, 16 + 4),  # and the FPN's four output convolutions
])
def test_backbone_hands_over_its_3x3_convolutions(kind, depth, expected):
    model = winograd_convolutions(backbone(kind, depth))
    assert sum(isinstance(m, WinogradConv2d) for m in model.modules()) == expected


@pytest.mark.parametrize("kind", ["plain", "fpn"])
def test_backbone_eager_and_compiled_equal_the_folded_one(kind):
    folded = backbone(kind, 50)
    # 224x224: res2 to res4 (56x56 to 14x14) transformed, res5 (7x7) direct
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = folded(x)
        eager = winograd_convolutions(folded)(x)
        compiled = compile_for_inference(winograd_convolutions(folded))(x)
    for name, ref in reference.items():
        bound = 1e-5 * ref.abs().max().item()
        assert (eager[name] - ref).abs().max().item() < bound, name
        assert (compiled[name] - ref).abs().max().item() < bound, name


def test_bfloat16_compile_refuses_winograd(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # past the hardware check
    with pytest.raises(ValueError, match="Winograd convolutions"):
        compile_for_inference(winograd_convolutions(torch.nn.Sequential(conv3x3(4, 4))), dtype=torch.bfloat16)
