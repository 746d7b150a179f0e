"""The ConvNeXt road (issue 19): every step of Liu et al.'s Fig. 2 from ResNet-50 is a key of our
body, applied one at a time in the paper's order (``arch.CONVNEXT_ROAD``); each step builds,
trains a step and converts back to itself; the end of the road, ``PRESET: convnext``, is timm's
ConvNeXt-T: timm ``convnext_tiny`` weights convert with no flags and give its features."""
import dataclasses
import re

import pytest
import torch

from resnet_backbones import ResNet
from resnet_backbones.config import NEW_KEYS, get_default_config
from resnet_backbones.modeling.arch import CONVNEXT_ROAD, ConfigError, ResNetArch, convnext_road
from resnet_backbones.modeling.blocks import ResidualBlock
from resnet_backbones.modeling.layers import LayerNorm2d
from resnet_backbones.weights import WeightsError, convert_state_dict
from resnet_backbones.weights.convert import TORCHVISION_CONVENTION
from resnet_backbones.weights.cli import main as convert_main

from conftest import arch_from

timm = pytest.importorskip("timm")

ROAD_FIELDS = ("depthwise", "depthwise_first", "kernel_size", "activation", "single_activation", "single_norm",
               "downsample", "layer_scale")
#: what weights cannot show: the converter is told these (timm ConvNeXt's naming tells them)
NOT_IN_WEIGHTS = ("activation", "single_activation")


def randomize(module, seed=0):
    """Random weights of order one for every tensor (timm's init leaves biases at 0, LayerNorms at
    identity and layer scale at 1e-6, which would hide most of a block from a comparison)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                if re.search(r"(gamma|layer_scale|norm\.weight|stem\.1\.weight|downsample\.0\.weight)$", name):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
                elif name.endswith("bias"):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
                elif name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                elif not name.endswith("running_mean"):
                    fan_in = tensor[0].numel()
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) / fan_in ** 0.5)
    return module


def test_every_road_key_has_a_config_key_and_a_default():
    for field in ROAD_FIELDS:
        key = ResNetArch.KEYS[field]
        assert NEW_KEYS[key] == getattr(ResNetArch(), field)
    # each step changes keys the previous steps left at their default, or the widths
    changed = [set(fields) for _, fields in CONVNEXT_ROAD]
    assert all(len(keys) >= 1 for keys in changed) and set(ROAD_FIELDS) <= set().union(*changed)


def test_the_road_ends_at_the_convnext_preset():
    *_, (_, last) = convnext_road()
    assert ResNetArch(**last).validated() == ResNetArch.with_preset("convnext").replace(preset="")


def slim(fields):
    """A road step at a quarter of its widths and 1/1/2/1 blocks (CI-sized; the same keys otherwise)."""
    defaults = ResNetArch()
    widths = {name: fields.get(name, getattr(defaults, name)) // 4
              for name in ("stem_out_channels", "width_per_group", "res2_out_channels")}
    return {**fields, **widths, "depth": 17, "num_blocks": (1, 1, 2, 1)}


@pytest.mark.parametrize("step", [name for name, _ in CONVNEXT_ROAD])
def test_each_road_step_builds_trains_a_step_and_converts_back(step):
    fields = slim(dict(convnext_road())[step])
    arch = ResNetArch(freeze_at=0, **fields).validated()
    torch.manual_seed(0)
    body = ResNet.from_arch(arch).train()
    x = torch.randn(2, 3, 64, 64)
    out = body(x)
    assert {f: (t.shape[1], 64 // t.shape[2]) for f, t in out.items()} == {
        f: (s.channels, s.stride) for f, s in body.output_shape().items()}
    before = {n: p.detach().clone() for n, p in body.named_parameters()}
    # Adam: every parameter with a gradient moves, also behind a layer scale of 1e-6
    optimizer = torch.optim.Adam(body.parameters(), lr=1e-3)
    sum((t ** 2).mean() for t in out.values()).backward()
    no_grad = [n for n, p in body.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in body.named_parameters())

    # converted back (as Detectron2-named weights with timm's convention): the same architecture,
    # but for what weights cannot show; the weights load strictly and give the same features
    body.eval()
    renamed, report = convert_state_dict(body.state_dict(), "detectron2", convention=TORCHVISION_CONVENTION)
    told = {name: getattr(arch, name) for name in NOT_IN_WEIGHTS}
    inferred = report.arch.replace(**told, norm="BN" if report.arch.norm == "FrozenBN" else report.arch.norm)
    assert inferred.weight_config_items() == arch.weight_config_items()
    rebuilt = ResNet.from_arch(inferred.replace(freeze_at=0)).eval()
    rebuilt.load_state_dict(renamed, strict=True)
    with torch.no_grad():
        expected, actual = body(x), rebuilt(x)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=0)


def test_convnext_block_is_timm_convnext_block_structure():
    arch = ResNetArch.with_preset("convnext", norm="LN")
    body = ResNet.from_arch(arch)
    block = body.res3[0]
    assert isinstance(block, ResidualBlock) and block.shortcut is None and block.stride == 1
    assert block.conv1.groups == 192 and block.conv1.kernel_size == (7, 7) and isinstance(block.conv1.norm, LayerNorm2d)
    assert block.conv2.norm is None and block.conv3.norm is None and block.conv2.out_channels == 768
    assert body.res3.downsample.kernel_size == (2, 2) and body.res3.downsample.stride == (2, 2)
    assert body.res2.downsample is None and body.stem.conv1.kernel_size == (4, 4)
    assert sum(p.numel() for p in body.parameters()) == 27_818_592  # timm convnext_tiny without its head


def timm_features(model, x):
    """timm's features_only outputs of ConvNeXt (the stages' outputs, no final norm)."""
    features = timm.create_model("convnext_tiny", pretrained=False, features_only=True)
    # FeatureListNet names its top-level modules stem_0, stages_0...
    state = {re.sub(r"^(stem|stages)\.(\d+)\.", r"\1_\2.", k): v for k, v in model.state_dict().items()
             if not k.startswith("head")}
    features.load_state_dict(state, strict=True)
    with torch.no_grad():
        return features.eval()(x)


def test_timm_convnext_tiny_converts_with_no_flags_to_equal_features(tmp_path, capsys):
    torch.manual_seed(0)
    reference = randomize(timm.create_model("convnext_tiny", pretrained=False)).eval()
    torch.save(reference.state_dict(), tmp_path / "convnext_tiny.pth")
    assert convert_main([str(tmp_path / "convnext_tiny.pth"), str(tmp_path / "d2.pth")]) == 0
    printed = capsys.readouterr().out
    keys = dict(re.findall(r"^  (MODEL\.RESNETS\.\w+): (.+)$", printed, flags=re.M))
    # the printed keys alone rebuild the body: they are the convnext preset
    cfg = get_default_config()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.merge_from_list([x for k, v in keys.items() for x in (k, v)])
    arch = ResNetArch.from_cfg(cfg)
    preset = ResNetArch.with_preset("convnext", out_features=arch.out_features)
    assert dataclasses.replace(arch, freeze_at=preset.freeze_at) == preset.replace(preset="")

    body = ResNet.from_arch(arch).eval()
    converted = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    body.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected = timm_features(reference, x)
    with torch.no_grad():
        actual = body(x)
    for index, name in enumerate(("res2", "res3", "res4", "res5")):
        assert expected[index].abs().max() > 1e-1, name
        torch.testing.assert_close(actual[name], expected[index], atol=1e-4, rtol=0, msg=name)


def test_convnext_preset_equals_timm_convnext_tiny_on_random_weights():
    """The preset, built by name, holds exactly timm's tensors and computes timm's features."""
    torch.manual_seed(0)
    reference = randomize(timm.create_model("convnext_tiny", pretrained=False), seed=3).eval()
    renamed, _ = convert_state_dict(reference.state_dict())
    body = ResNet.from_arch(ResNetArch.with_preset("convnext")).eval()
    assert {k: tuple(v.shape) for k, v in body.state_dict().items()} == {k: tuple(v.shape) for k, v in renamed.items()}
    body.load_state_dict(renamed, strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.forward_intermediates(x, intermediates_only=True)
        actual = body(x)
    for index, name in enumerate(("res2", "res3", "res4", "res5")):
        torch.testing.assert_close(actual[name], expected[index], atol=1e-4, rtol=0, msg=name)


@pytest.mark.parametrize("keys, message", [
    (dict(depthwise=True, num_groups=32, width_per_group=4),
     "MODEL.RESNETS.DEPTHWISE = True cannot be combined with MODEL.RESNETS.NUM_GROUPS = 32"),
    (dict(depthwise=True, depth=18, res2_out_channels=64),
     "MODEL.RESNETS.DEPTHWISE = True cannot be combined with MODEL.RESNETS.DEPTH = 18"),
    (dict(depthwise_first=True), "MODEL.RESNETS.DEPTHWISE_FIRST = True cannot be combined with "
                                 "MODEL.RESNETS.DEPTHWISE = False"),
    (dict(depthwise=True, depthwise_first=True), "MODEL.RESNETS.DEPTHWISE_FIRST = True cannot be combined with "
                                                 "MODEL.RESNETS.STRIDE_IN_1X1 = True"),
    (dict(kernel_size=4), "MODEL.RESNETS.KERNEL_SIZE = 4 is not allowed: an odd positive integer"),
    (dict(activation="silu"), "MODEL.RESNETS.ACTIVATION = 'silu' is not allowed: one of ['relu', 'gelu']"),
    (dict(downsample="pool"), "MODEL.RESNETS.DOWNSAMPLE = 'pool' is not allowed"),
    (dict(layer_scale=-1.0), "MODEL.RESNETS.LAYER_SCALE = -1.0 is not allowed"),
    (dict(downsample="separate"), "MODEL.RESNETS.STEM_OUT_CHANNELS = 64 cannot be combined with "
                                  "MODEL.RESNETS.RES2_OUT_CHANNELS = 256 and MODEL.RESNETS.DOWNSAMPLE = 'separate'"),
    (dict(preset="convnext", output_stride=16), "MODEL.RESNETS.OUTPUT_STRIDE = 16 cannot be combined with "
                                                "MODEL.RESNETS.DOWNSAMPLE = 'separate'"),
    (dict(preset="convnext", avg_down=True), "MODEL.RESNETS.AVG_DOWN = True cannot be combined with "
                                             "MODEL.RESNETS.DOWNSAMPLE = 'separate'"),
    (dict(single_norm=True, preact=True), "MODEL.RESNETS.SINGLE_NORM = True cannot be combined with "
                                          "MODEL.RESNETS.PREACT = True"),
    (dict(kernel_size=5, deform_on_per_stage=[False, True, True, True]),
     "MODEL.RESNETS.KERNEL_SIZE = 5 cannot be combined with MODEL.RESNETS.DEFORM_ON_PER_STAGE"),
    (dict(stem_type="patchify", stem_pool="conv"), "MODEL.RESNETS.STEM_POOL = 'conv' cannot be combined with "
                                                   "MODEL.RESNETS.STEM_TYPE = 'patchify'"),
    (dict(preset="convnext", norm_eval=True), "MODEL.RESNETS.NORM_EVAL = True cannot be combined with "
                                              "MODEL.RESNETS.NORM = 'LN'"),
])
def test_bad_road_combinations_name_their_keys(keys, message):
    with pytest.raises(ConfigError) as error:
        arch_from(**keys)
    assert message in str(error.value)


@pytest.mark.parametrize("name, why", [
    ("convnextv2_atto", "timm's ConvNeXt V2 (Global Response Norm in the MLP: mlp.grn) is not supported"),
    ("convnext_atto_ols", "keys that have no place in a timm ResNet"),  # an overlapping 3-conv stem
    ("convnext_atto_rms", "model keys missing from the file"),  # RMSNorm: no bias
])
def test_other_timm_convnexts_are_refused_in_one_line(name, why):
    with torch.device("meta"):
        state = timm.create_model(name, pretrained=False).state_dict()
    with pytest.raises(WeightsError) as error:
        convert_state_dict(state)
    assert why in str(error.value) and "\n" not in str(error.value), str(error.value)


#: timm ConvNeXt (V1) models with this layout; the normal suite converts the smallest
TIMM_CONVNEXTS = ["convnext_atto", "convnext_femto", "convnext_pico", "convnext_nano", "convnext_tiny_hnf",
                  "convnext_small", "convnext_base", "convnext_large_mlp"]


@pytest.mark.parametrize("name", [n if n == "convnext_atto" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in TIMM_CONVNEXTS])
def test_timm_convnexts_convert_to_equal_features(name):
    reference = randomize(timm.create_model(name, pretrained=False)).eval()
    renamed, report = convert_state_dict(reference.state_dict())
    body = ResNet.from_arch(report.arch).eval()
    body.load_state_dict(renamed, strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, actual = reference.forward_intermediates(x, intermediates_only=True), body(x)
    for index, stage in enumerate(("res2", "res3", "res4", "res5")):
        torch.testing.assert_close(actual[stage], expected[index], atol=1e-4, rtol=0, msg=stage)


def test_a_convnext_body_scripts_and_equals_eager():
    arch = ResNetArch.with_preset("convnext", depth=17, num_blocks=(1, 1, 2, 1), stem_out_channels=24,
                                  res2_out_channels=24, width_per_group=96)
    body = randomize(ResNet.from_arch(arch)).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    scripted = torch.jit.script(body)
    with torch.no_grad():
        expected, actual = body(x), scripted(x)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=0)
