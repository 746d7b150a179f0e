"""The registered backbones: sizes, costs, equality with Detectron2's ResNet, config errors."""
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone
from torch import nn

from resnet_backbones import ConfigError, ResNet, ResNetArch, add_resnet_backbones_config
from resnet_backbones.analysis import count_backbone
from resnet_backbones.config import load_config

from conftest import randomize_norms

OUR_BUILDERS = ["build_resnet_family_backbone", "build_resnet_family_fpn_backbone",
                "build_resnet_family_retinanet_fpn_backbone"]


def make_cfg(**resnets):
    cfg = add_resnet_backbones_config(get_cfg())
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key.upper()] = value
    return cfg


def build(cfg, name):
    cfg = cfg.clone()
    cfg.MODEL.BACKBONE.NAME = name
    return build_backbone(cfg).eval()


def test_builders_are_registered_under_their_own_names():
    for name in OUR_BUILDERS:
        assert BACKBONE_REGISTRY.get(name) is not None
    assert BACKBONE_REGISTRY.get("build_resnet_backbone") is not BACKBONE_REGISTRY.get(OUR_BUILDERS[0])


@pytest.mark.parametrize("name, depth, kwargs, expected", [
    ("resnet18", 18, {}, 11_176_512), ("resnet34", 34, {}, 21_284_672), ("resnet50", 50, {}, 23_508_032),
    ("resnet101", 101, {}, 42_500_160), ("resnet152", 152, {}, 58_143_808),
    ("resnext50_32x4d", 50, {"num_groups": 32, "width_per_group": 4}, None),
    ("resnext101_32x8d", 101, {"num_groups": 32, "width_per_group": 8}, None),
    ("wide_resnet50_2", 50, {"width_per_group": 128}, None),
])
def test_parameter_counts_equal_torchvision_without_classifier(name, depth, kwargs, expected):
    reference = getattr(torchvision.models, name)()
    reference_count = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    arch = ResNetArch(depth=depth, norm="BN", freeze_at=0, res2_out_channels=64 if depth < 50 else 256, **kwargs)
    ours = sum(p.numel() for p in ResNet.from_arch(arch).parameters())
    assert ours == reference_count
    if expected is not None:
        assert ours == expected


@pytest.mark.parametrize("depth, paper_gmacs", [(18, 1.8), (34, 3.6), (50, 3.8), (101, 7.6), (152, 11.3)])
def test_multiply_adds_match_the_paper(depth, paper_gmacs):
    arch = ResNetArch(depth=depth, norm="BN", stride_in_1x1=True, res2_out_channels=64 if depth < 50 else 256)
    total = count_backbone(ResNet.from_arch(arch))[-1].macs / 1e9
    assert abs(total - paper_gmacs) / paper_gmacs <= 0.03, total


def _copy_and_compare(reference, ours, x, tolerance=1e-4):
    randomize_norms(reference)
    state = reference.state_dict()
    incompatible = ours.load_state_dict(state, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert expected[key].shape == actual[key].shape
        assert expected[key].abs().max() > 1e-2, "degenerate comparison"
        torch.testing.assert_close(actual[key], expected[key], atol=tolerance, rtol=0)


def test_r50_fpn_equals_detectron2(image_batch):
    cfg = make_cfg(depth=50, norm="FrozenBN", stride_in_1x1=True)
    reference, ours = build(cfg, "build_resnet_fpn_backbone"), build(cfg, "build_resnet_family_fpn_backbone")
    assert ours.output_shape() == reference.output_shape()
    assert [ours.output_shape()[f"p{i}"].stride for i in range(2, 7)] == [4, 8, 16, 32, 64]
    _copy_and_compare(reference, ours, image_batch)


def test_r50_dc5_equals_detectron2(image_batch):
    cfg = load_config("configs/COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml")
    reference, ours = build(cfg, "build_resnet_backbone"), build(cfg, "build_resnet_family_backbone")
    assert ours.output_shape() == {"res5": ShapeSpec(channels=2048, stride=16)} == reference.output_shape()
    _copy_and_compare(reference, ours, image_batch)


def test_x101_32x8d_fpn_equals_detectron2(image_batch):
    cfg = make_cfg(depth=101, num_groups=32, width_per_group=8, stride_in_1x1=False)
    reference, ours = build(cfg, "build_resnet_fpn_backbone"), build(cfg, "build_resnet_family_fpn_backbone")
    _copy_and_compare(reference, ours, image_batch[:1, :, :64, :64])


def test_retinanet_fpn_matches_detectron2_shapes_and_outputs(image_batch):
    cfg = load_config("configs/COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    reference = build(cfg, "build_retinanet_resnet_fpn_backbone")
    ours = build(cfg, "build_resnet_family_retinanet_fpn_backbone")
    assert [ours.output_shape()[f"p{i}"].stride for i in range(3, 8)] == [8, 16, 32, 64, 128]
    _copy_and_compare(reference, ours, image_batch)


def test_detectron2_checkpoint_loads_with_no_missing_or_unexpected_keys(tmp_path):
    cfg = make_cfg(depth=50)
    reference, ours = build(cfg, "build_resnet_fpn_backbone"), build(cfg, "build_resnet_family_fpn_backbone")
    DetectionCheckpointer(reference, str(tmp_path)).save("d2_r50_fpn")
    incompatible = DetectionCheckpointer(ours)._load_model(
        {"model": torch.load(tmp_path / "d2_r50_fpn.pth", weights_only=True)["model"]})
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []


def test_out_features_select_stages_and_unused_stages_are_not_built():
    cfg = make_cfg(depth=50)
    cfg.MODEL.RESNETS.OUT_FEATURES = ["stem", "res3"]
    body = build(cfg, "build_resnet_family_backbone")
    assert set(body.output_shape()) == {"stem", "res3"}
    assert not hasattr(body, "res4") and not hasattr(body, "res5")
    outputs = body(torch.zeros(1, 3, 64, 64))
    assert outputs["stem"].shape == (1, 64, 16, 16) and outputs["res3"].shape == (1, 512, 8, 8)


@pytest.mark.parametrize("freeze_at", range(6))
def test_freeze_at_freezes_the_stem_and_first_stages(freeze_at):
    body = ResNet.from_arch(ResNetArch(depth=18, norm="BN", res2_out_channels=64, freeze_at=freeze_at))
    parts = ["stem", "res2", "res3", "res4", "res5"]
    for index, part in enumerate(parts):
        module = getattr(body, part)
        frozen = index < freeze_at
        assert all(p.requires_grad != frozen for p in module.parameters()), part
        norms = [m for m in module.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms), part


@pytest.mark.parametrize("norm, layer", [("SyncBN", nn.BatchNorm2d), ("GN", nn.GroupNorm), ("BN", nn.BatchNorm2d)])
def test_norm_choice(norm, layer):
    body = ResNet.from_arch(ResNetArch(depth=50, norm=norm, freeze_at=0))
    norms = [m for m in body.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d))]
    assert norms and all(type(m) is layer for m in norms)  # SyncBN is plain BN in one process
    body.train()(torch.randn(2, 3, 64, 64)).values()


def test_frozen_bn_after_freeze_computes_the_same_in_train_mode(image_batch):
    arch = ResNetArch(depth=18, norm="BN", res2_out_channels=64, freeze_at=0)
    trainable = randomize_norms(ResNet.from_arch(arch)).eval()
    frozen = ResNet.from_arch(arch.replace(freeze_at=5))
    frozen.load_state_dict(trainable.state_dict(), strict=False)
    with torch.no_grad():
        expected, actual = trainable(image_batch), frozen.train()(image_batch)
    torch.testing.assert_close(actual["res5"], expected["res5"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("key, value, words", [
    ("MODEL.RESNETS.DEPTH", 42, ["MODEL.RESNETS.DEPTH", "42", "18, 34, 50, 101, 152, 200"]),
    ("MODEL.RESNETS.OUT_FEATURES", ["res2", "res6"], ["MODEL.RESNETS.OUT_FEATURES", "res6", "'stem'"]),
    ("MODEL.BACKBONE.FREEZE_AT", 6, ["MODEL.BACKBONE.FREEZE_AT", "6", "0", "5"]),
    ("MODEL.BACKBONE.FREEZE_AT", -1, ["MODEL.BACKBONE.FREEZE_AT", "-1"]),
    ("MODEL.RESNETS.NORM", "LayerNorm", ["MODEL.RESNETS.NORM", "LayerNorm", "FrozenBN"]),
    ("MODEL.RESNETS.RES5_DILATION", 3, ["MODEL.RESNETS.RES5_DILATION", "3"]),
    ("MODEL.RESNETS.WIDTH_PER_GROUP", 0, ["MODEL.RESNETS.WIDTH_PER_GROUP", "positive"]),
    ("MODEL.FPN.IN_FEATURES", ["res2", "res9"], ["MODEL.FPN.IN_FEATURES", "res9", "missing"]),
])
def test_bad_config_values_fail_at_build_time_naming_the_key(key, value, words):
    cfg = load_config("configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", [key, str(value)])
    with pytest.raises(ConfigError) as error:
        build(cfg, cfg.MODEL.BACKBONE.NAME)
    for word in words:
        assert word in str(error.value)


def test_groups_that_do_not_divide_the_width_fail_naming_the_keys():
    cfg = make_cfg(depth=50, norm="GN", num_groups=3, width_per_group=10)
    with pytest.raises(ConfigError, match=r"NUM_GROUPS x MODEL.RESNETS.WIDTH_PER_GROUP = 30.*GroupNorm"):
        build(cfg, "build_resnet_family_backbone")
    cfg = make_cfg(depth=18, num_groups=32, res2_out_channels=64)
    with pytest.raises(ConfigError, match=r"MODEL.RESNETS.NUM_GROUPS = 32 .* basic blocks"):
        build(cfg, "build_resnet_family_backbone")


def test_depth_200_and_basic_block_shapes():
    body = ResNet.from_arch(ResNetArch(depth=200, norm="BN", freeze_at=0))
    assert len(body.res4) == 36 and len(body.res3) == 24
    basic = ResNet.from_arch(ResNetArch(depth=34, res2_out_channels=64))
    assert {k: (v.channels, v.stride) for k, v in basic.output_shape().items()} == {
        "res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)}
