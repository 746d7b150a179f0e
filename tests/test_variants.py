"""ResNet variants (issue 3): each config switch against a reference, and its failure modes."""
from pathlib import Path

import pytest
import torch
import torchvision
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from resnet_backbones import ConfigError, ResNet, ResNetArch, add_resnet_backbones_config
from resnet_backbones.config import load_config
from resnet_backbones.modeling import ResidualBlock
from resnet_backbones.modeling.arch import PRESETS
from resnet_backbones.weights import BackboneCheckpointer, convert_state_dict, convert_weights, infer_arch
from resnet_backbones.weights.cli import main as convert_main

from conftest import randomize_norms
from test_weights import torchvision_features

ROOT = Path(__file__).resolve().parents[1]
ALL_STAGES = ["res2", "res3", "res4", "res5"]


def make_cfg(**resnets):
    cfg = add_resnet_backbones_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.OUT_FEATURES = list(ALL_STAGES)
    cfg.MODEL.FPN.IN_FEATURES = list(ALL_STAGES)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.NORM = "BN"
    for key, value in resnets.items():
        cfg.MODEL.RESNETS[key.upper()] = value
    return cfg


def body(**fields) -> ResNet:
    fields = {"norm": "BN", "freeze_at": 0, **fields}
    return ResNet.from_arch(ResNetArch(**fields))


def images(n=2, size=64, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def batch_norms(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


# --------------------------------------------------------------------------- training aids
def test_norm_eval_freezes_bn_statistics_while_affine_weights_train():
    model = randomize_norms(body(depth=18, res2_out_channels=64, norm_eval=True))
    x = images()
    with torch.no_grad():
        expected = model.eval()(x)["res5"]
    model.train()
    norms = batch_norms(model)
    assert model.training and len(norms) == 20 and not any(m.training for m in norms)
    statistics = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    weights = [m.weight.clone() for m in norms]

    out = model(x)["res5"]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)  # normalised by the stored statistics
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out.square().mean().backward()
    optimizer.step()
    for m, (mean, var), weight in zip(norms, statistics, weights):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert m.weight.requires_grad and not torch.equal(m.weight, weight)

    # without the switch, the same step moves the statistics
    plain = body(depth=18, res2_out_channels=64).train()
    before = plain.res3[0].conv1.norm.running_mean.clone()
    plain(x)
    assert not torch.equal(plain.res3[0].conv1.norm.running_mean, before)


def test_norm_eval_from_config_reaches_the_c4_head():
    cfg = load_config(str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_C4_1x.yaml"),
                      ["MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.NORM_EVAL", "True", "MODEL.WEIGHTS", "",
                       "MODEL.BACKBONE.FREEZE_AT", "0"])
    model = build_model(cfg).train()
    norms = batch_norms(model.backbone) + batch_norms(model.roi_heads.res5)
    assert len(norms) == 53  # the stem's, three per block and one per projection in res2..res5
    assert not any(m.training for m in norms)
    assert model.roi_heads.training and all(m.weight.requires_grad for m in norms)


def _train_step(model, x, seed):
    torch.manual_seed(seed)
    model.zero_grad()
    outputs = model(x)
    loss = sum(o.square().mean() for o in outputs.values())
    loss.backward()
    return loss.detach()


def test_checkpoint_stages_give_the_gradients_and_statistics_of_the_plain_run():
    arch = ResNetArch(depth=18, res2_out_channels=64, norm="BN", freeze_at=0, drop_path_rate=0.3)
    plain = randomize_norms(ResNet.from_arch(arch)).train()
    checkpointed = ResNet.from_arch(arch.replace(checkpoint_stages=("stem", *ALL_STAGES))).train()
    checkpointed.load_state_dict(plain.state_dict())
    calls, stem_calls = [], []
    checkpointed.res3[0].register_forward_pre_hook(lambda *args: calls.append(1))
    checkpointed.stem.register_forward_pre_hook(lambda *args: stem_calls.append(1))
    x = images()

    loss_plain = _train_step(plain, x, seed=3)
    loss_checkpointed = _train_step(checkpointed, x, seed=3)  # same drop-path draws
    assert len(calls) == 2, "res3 was not recomputed in the backward pass"
    assert len(stem_calls) == 2, "the stem was not recomputed in the backward pass"
    torch.testing.assert_close(loss_checkpointed, loss_plain, rtol=0, atol=0)
    grads = dict(checkpointed.named_parameters())
    for name, p in plain.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=0, atol=1e-7, msg=name)
    # BatchNorm statistics advance once per step, not once more in the recomputation
    buffers = dict(checkpointed.named_buffers())
    for name, b in plain.named_buffers():
        torch.testing.assert_close(buffers[name], b, rtol=0, atol=0, msg=name)
    assert int(checkpointed.res4[0].conv1.norm.num_batches_tracked) == 1
    assert int(checkpointed.stem.conv1.norm.num_batches_tracked) == 1

    calls.clear()
    with torch.no_grad():
        checkpointed(x)
    checkpointed.eval()(x)
    assert len(calls) == 2  # no checkpointing without gradients or in eval mode


def test_channels_last_backbone_and_fpn_compute_what_the_contiguous_ones_do():
    cfg = make_cfg(depth=50)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_fpn_backbone"
    reference = randomize_norms(build_backbone(cfg)).eval()
    cfg.MODEL.RESNETS.CHANNELS_LAST = True
    ours = build_backbone(cfg).eval()
    ours.load_state_dict(reference.state_dict())
    weights = [p for p in ours.parameters() if p.dim() == 4]
    assert len(weights) == 53 + 4 + 4 and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
    assert not all(p.is_contiguous() for p in weights)
    x = images(size=64)
    with torch.no_grad():
        expected, actual = reference(x), ours(x)
    for name in expected:
        assert actual[name].is_contiguous(memory_format=torch.channels_last), name
        torch.testing.assert_close(actual[name], expected[name], atol=1e-4, rtol=0)
    ours.train()(x)["p2"].mean().backward()
    assert ours.bottom_up.stem.conv1.weight.grad.is_contiguous(memory_format=torch.channels_last)


def test_drop_path_rates_rise_with_depth_and_drop_path_is_identity_in_eval():
    model = randomize_norms(body(depth=50, drop_path_rate=0.3))
    rates = [block.drop_path_rate for stage in (model.res2, model.res3, model.res4, model.res5) for block in stage]
    assert rates == pytest.approx([0.3 * i / 15 for i in range(16)])
    plain = body(depth=50)
    plain.load_state_dict(model.state_dict())
    x = images(size=32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x)["res5"], plain.eval()(x)["res5"], rtol=0, atol=0)


def test_drop_path_in_training_drops_whole_branches_and_rescales_the_rest():
    block = ResidualBlock(8, 8, bottleneck_channels=4, norm="", drop_path_rate=0.5)  # no norm: same branch in train
    x = torch.randn(400, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.manual_seed(0)
        out = block.train()(x)
        b = block.conv3(torch.relu(block.conv2(torch.relu(block.conv1(x)))))
    dropped = torch.isclose(out, torch.relu(x), atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, torch.relu(x + 2 * b), atol=1e-5).flatten(1).all(1)
    assert bool((dropped ^ kept).all()), "each sample keeps or drops its whole branch"
    assert 150 < int(dropped.sum()) < 250


def test_zero_init_residual_makes_each_block_start_as_its_shortcut():
    model = body(depth=50, zero_init_residual=True).eval()
    blocks = [block for stage in (model.res2, model.res3, model.res4, model.res5) for block in stage]
    assert all(torch.count_nonzero(block.conv3.norm.weight) == 0 for block in blocks)
    assert all(torch.count_nonzero(block.conv2.norm.weight) > 0 for block in blocks)
    x = torch.randn(2, 512, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.res3[1](x), torch.relu(x), rtol=0, atol=0)
    preact = body(depth=50, zero_init_residual=True, preact=True)
    assert torch.count_nonzero(preact.res3[1].conv3.weight) == 0  # no norm after the last conv
    with torch.no_grad():
        torch.testing.assert_close(preact.eval().res3[1](x), x, rtol=0, atol=0)


# --------------------------------------------------------------------------- references
def timm_features(model, x):
    with torch.no_grad():
        x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
        out = {}
        for i, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
            x = out[f"res{i + 2}"] = layer(x)
    return out


def printed_keys(text):
    """``KEY VALUE`` overrides from the YAML lines convert_weights prints."""
    pairs = []
    for line in text.splitlines():
        if line.startswith("  MODEL.RESNETS.") or line.startswith("  INPUT.") or line.startswith("  MODEL.PIXEL"):
            key, value = line.strip().split(": ", 1)
            pairs += [key, value]
    return pairs


def assert_features_equal(actual, expected, names=ALL_STAGES, atol=1e-4):
    for name in names:
        assert actual[name].shape == expected[name].shape, name
        assert expected[name].abs().max() > 1e-2, "degenerate comparison"
        torch.testing.assert_close(actual[name].detach(), expected[name], atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("name, printed", [
    ("resnet50d", ["MODEL.RESNETS.STEM_TYPE: deep", "MODEL.RESNETS.AVG_DOWN: True"]),
    ("seresnet50", ["MODEL.RESNETS.SE_RATIO: 0.0625"]),
    ("resnext50_32x4d", ["MODEL.RESNETS.NUM_GROUPS: 32", "MODEL.RESNETS.WIDTH_PER_GROUP: 4"]),
])
def test_timm_models_convert_with_no_flags_to_equal_features(tmp_path, capsys, name, printed):
    timm = pytest.importorskip("timm")
    reference = randomize_norms(timm.create_model(name, pretrained=False)).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    assert convert_main([str(tmp_path / "timm.pth"), str(tmp_path / "d2.pth")]) == 0
    output = capsys.readouterr().out
    for line in printed:
        assert line in output
    # the printed keys alone rebuild the architecture
    cfg = load_config(str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
                      printed_keys(output) + ["MODEL.WEIGHTS", str(tmp_path / "d2.pth"), "MODEL.RESNETS.NORM", "BN"])
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    ours = build_backbone(cfg)
    BackboneCheckpointer(ours, cfg=cfg).load(str(tmp_path / "d2.pth"))
    x = images(size=64)
    assert_features_equal(ours.eval()(x), timm_features(reference, x))


def test_timm_preact_resnetv2_converts_to_equal_features(tmp_path):
    timm = pytest.importorskip("timm")
    reference = randomize_norms(timm.create_model("resnetv2_50", pretrained=False)).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    report = convert_weights(tmp_path / "timm.pth", tmp_path / "d2.pth")
    assert report.arch.preact and not report.arch.stride_in_1x1
    ours = ResNet.from_arch(report.arch.replace(norm="BN"))
    BackboneCheckpointer(ours).load(str(tmp_path / "d2.pth"))
    x = images(size=64)
    with torch.no_grad():
        expected, h = {}, reference.stem(x)
        for i, stage in enumerate(reference.stages):
            h = expected[f"res{i + 2}"] = stage(h)
        expected["res5"] = reference.norm(h)  # the final norm and ReLU close res5
    assert_features_equal(ours.eval()(x), expected)


@pytest.mark.parametrize("output_stride, replace", [(16, [False, False, True]), (8, [False, True, True])])
def test_torchvision_dilated_models_equal_the_torchvision_dilation_mode(output_stride, replace):
    reference = randomize_norms(torchvision.models.resnet50(replace_stride_with_dilation=replace)).eval()
    renamed, report = convert_state_dict(reference.state_dict())
    arch = report.arch.replace(norm="BN", output_stride=output_stride, dilation_mode="torchvision")
    ours = ResNet.from_arch(arch).eval()
    ours.load_state_dict(renamed)
    assert ours.output_shape()["res5"].stride == output_stride
    x = images(size=48)
    with torch.no_grad():
        actual = ours(x)
    assert_features_equal(actual, torchvision_features(reference, x))
    # Detectron2's placement (the first block takes the new dilation) computes something else
    detectron2_mode = ResNet.from_arch(arch.replace(dilation_mode="detectron2")).eval()
    detectron2_mode.load_state_dict(renamed)
    with torch.no_grad():
        assert (detectron2_mode(x)["res5"] - actual["res5"]).abs().max() > 1e-2


def test_output_stride_16_is_detectron2s_dc5():
    dc5 = randomize_norms(body(depth=50, res5_dilation=2)).eval()
    os16 = body(depth=50, output_stride=16).eval()
    os16.load_state_dict(dc5.state_dict())
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(os16(x)["res5"], dc5(x)["res5"], rtol=0, atol=0)
    assert [b.conv2.dilation for b in os16.res5] == [(2, 2)] * 3 and os16.output_shape()["res5"].stride == 16


def test_deeplab_stem_output_stride_8_and_multi_grid_equal_detectron2s_deeplab():
    from detectron2.projects.deeplab import add_deeplab_config
    import detectron2.projects.deeplab.resnet  # noqa: F401  (registers build_resnet_deeplab_backbone)

    d2 = get_cfg()
    add_deeplab_config(d2)
    d2.MODEL.BACKBONE.NAME = "build_resnet_deeplab_backbone"
    d2.MODEL.BACKBONE.FREEZE_AT = 0
    resnets = d2.MODEL.RESNETS
    resnets.NORM, resnets.STEM_TYPE, resnets.STEM_OUT_CHANNELS, resnets.STRIDE_IN_1X1 = "BN", "deeplab", 128, False
    resnets.RES4_DILATION, resnets.RES5_DILATION, resnets.RES5_MULTI_GRID = 2, 4, [1, 2, 4]
    resnets.OUT_FEATURES = list(ALL_STAGES)
    reference = randomize_norms(build_backbone(d2)).eval()

    cfg = make_cfg(preset="deeplab_stem", output_stride=8, res5_multi_grid=[1, 2, 4], stride_in_1x1=False)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    ours = build_backbone(cfg).eval()
    assert ours.load_state_dict(reference.state_dict()) is not None
    assert [b.conv2.dilation[0] for b in ours.res5] == [4, 8, 16]
    assert ours.output_shape() == reference.output_shape()
    x = images(size=48)
    with torch.no_grad():
        assert_features_equal(ours(x), reference(x))


# --------------------------------------------------------------------------- shortcuts
def shortcut_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if ".shortcut." in n)


def test_option_a_has_no_shortcut_parameters_and_option_c_one_projection_per_block():
    option_b, option_a, option_c = body(depth=50), body(depth=50, shortcut="A"), body(depth=50, shortcut="C")
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert shortcut_parameters(option_b) == 2_776_576  # 4 projections (conv + BN)
    assert shortcut_parameters(option_a) == 0
    assert total(option_a) == total(option_b) - 2_776_576
    projections = [n for n, m in option_c.named_modules() if n.endswith(".shortcut")]
    assert len(projections) == 16 == sum(len(s) for s in (option_c.res2, option_c.res3, option_c.res4, option_c.res5))
    identity_blocks = {256: 2, 512: 3, 1024: 5, 2048: 2}  # blocks per width whose shape does not change
    extra = sum(n * (c * c + 2 * c) for c, n in identity_blocks.items())
    assert total(option_c) == total(option_b) + extra
    x = images(size=32)
    with torch.no_grad():
        for model in (option_a, option_c):
            assert {k: v.shape for k, v in model.eval()(x).items()} == {
                k: v.shape for k, v in option_b.eval()(x).items()}


def test_option_a_shortcut_is_the_subsampled_input_with_zero_channels():
    block = ResidualBlock(64, 256, stride=2, bottleneck_channels=64, shortcut_type="A", norm="BN",
                          zero_init_last=True).eval()
    x = torch.randn(2, 64, 9, 9)
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 256, 5, 5)
    torch.testing.assert_close(out[:, :64], torch.relu(x[:, :, ::2, ::2]), rtol=0, atol=0)
    assert torch.count_nonzero(out[:, 64:]) == 0


def test_avg_down_pools_before_a_stride_1_projection():
    block = ResidualBlock(64, 256, stride=2, bottleneck_channels=64, avg_down=True, norm="", zero_init_last=True)
    assert block.shortcut.stride == (1, 1) and isinstance(block.shortcut_pool, nn.AvgPool2d)
    x = torch.randn(1, 64, 9, 9)
    with torch.no_grad():
        pooled = nn.functional.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
        torch.testing.assert_close(block.eval()(x), torch.relu(block.shortcut(pooled)), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- deformable convolutions
@pytest.mark.parametrize("modulated, groups", [(False, 1), (True, 2)])
def test_deformable_model_with_zero_offsets_equals_the_plain_model(modulated, groups):
    plain = randomize_norms(body(depth=50)).eval()
    deformable = body(depth=50, deform_on_per_stage=(False, True, True, True), deform_modulated=modulated,
                      deform_num_groups=groups).eval()
    incompatible = deformable.load_state_dict(plain.state_dict(), strict=False)
    assert not incompatible.unexpected_keys
    assert sorted(incompatible.missing_keys) == sorted(
        f"res{s}.{b}.conv2_offset.{p}" for s, n in ((3, 4), (4, 6), (5, 3)) for b in range(n) for p in ("weight", "bias"))
    assert deformable.res3[0].conv2_offset.out_channels == (27 if modulated else 18) * groups
    x = images(size=48)
    with torch.no_grad():
        expected = plain(x)
    actual = deformable(x)
    assert_features_equal(actual, expected)
    # the offsets are live: they get gradients, and once non-zero they change the output
    actual["res5"].square().mean().backward()
    assert deformable.res4[0].conv2_offset.weight.grad.abs().sum() > 0
    with torch.no_grad():
        deformable.res4[0].conv2_offset.bias.fill_(0.5)
        assert (deformable(x)["res5"] - expected["res5"]).abs().max() > 1e-3


@pytest.mark.parametrize("modulated", [False, True])
def test_detectron2_deformable_checkpoints_load_with_no_missing_or_unexpected_keys(modulated):
    cfg = make_cfg(depth=50, deform_on_per_stage=[False, True, True, True], deform_modulated=modulated,
                   deform_num_groups=2)
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    reference = build_backbone(cfg)  # builds without Detectron2's C++ extension; its DCN v2 forward needs it
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    ours = build_backbone(cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    ours.load_state_dict(reference.state_dict(), strict=True)


def test_deformable_body_equals_detectron2s_cpu_deformable_resnet_with_live_offsets():
    # Detectron2's DCN v1 with one offset group runs on CPUs (through torchvision's deform_conv2d);
    # its DCN v2 and grouped offsets are CUDA-only, so that is the reference that can run here.
    torch.manual_seed(0)
    cfg = make_cfg(depth=50, deform_on_per_stage=[False, True, True, True])
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    reference = randomize_norms(build_backbone(cfg)).eval()
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if "conv2_offset" in name:  # Detectron2 starts offsets at zero; make them move the samples
                parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    ours = build_backbone(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = images(size=48)
    with torch.no_grad():
        expected = reference(x)
        assert_features_equal(ours(x), expected)
        for name, parameter in ours.named_parameters():
            if "conv2_offset" in name:
                parameter.zero_()
        assert (ours(x)["res5"] - expected["res5"]).abs().max() > 1e-3  # the offsets did move the samples


def test_deformable_weights_infer_their_architecture():
    for fields in (dict(deform_on_per_stage=(False, True, True, True)),
                   dict(deform_on_per_stage=(False, False, True, True), deform_modulated=True, deform_num_groups=2),
                   dict(deform_on_per_stage=(True, True, True, True), deform_num_groups=4)):
        arch = ResNetArch(**fields)
        inferred = infer_arch(ResNet.from_arch(arch).state_dict(), stride_in_1x1=True)
        assert {k: getattr(inferred, k) for k in fields} == fields


@pytest.mark.parametrize("fields", [
    dict(preact=True), dict(se_ratio=0.25), dict(shortcut="A"), dict(shortcut="C"), dict(stem_type="deep", stem_width=48),
    dict(preact=True, stem_type="deep", norm="GN"), dict(depth=18, res2_out_channels=64, preact=True),
    dict(num_groups=32, width_per_group=4, se_ratio=0.0625),
])
def test_variant_weights_infer_their_architecture(fields):
    arch = ResNetArch(**fields)
    inferred = infer_arch(ResNet.from_arch(arch).state_dict(), stride_in_1x1=True)
    for name in ResNetArch.KEYS:
        if name not in ResNetArch.RUN_CHOICES and name != "norm":
            assert getattr(inferred, name) == getattr(arch, name), name


# --------------------------------------------------------------------------- training inside Mask R-CNN
# a thin R-50 (a quarter of the widths) at 96x96: the variants do not depend on the widths
SMALL = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
         "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
         "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
         "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1",
         "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
         "MODEL.ROI_HEADS.NUM_CLASSES", "2"]


def detection_batch(size=96):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, size, size), generator=generator).float()
    boxes = torch.tensor([[8, 15, 52, 68], [45, 22, 90, 84]])
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(boxes.float())
    instances.gt_classes = torch.tensor([0, 1])
    masks = torch.zeros(2, size, size, dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes.tolist()):
        mask[y0:y1, x0:x1] = True
        image[:, y0:y1, x0:x1] = 255.0 * torch.rand(3, 1, 1, generator=generator)
    instances.gt_masks = BitMasks(masks)
    return [{"image": image, "instances": instances}]


@pytest.mark.parametrize("overrides, variant_parameter", [
    (["MODEL.RESNETS.PREACT", "True"], "res5.norm.weight"),
    (["MODEL.RESNETS.SE_RATIO", "0.0625"], "res4.0.se.fc1.weight"),
    (["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, True, True]", "MODEL.RESNETS.DEFORM_MODULATED", "True"],
     "res4.0.conv2_offset.weight"),
], ids=["preact", "se", "deformable"])
def test_variant_trains_inside_mask_rcnn_on_cpu(overrides, variant_parameter):
    torch.manual_seed(0)
    cfg = load_config(str(ROOT / "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"), SMALL + overrides)
    model = build_model(cfg).train()
    parameter = dict(model.backbone.bottom_up.named_parameters())[variant_parameter]
    before = parameter.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.005)
    data, falling = detection_batch(), []
    with EventStorage():
        for _ in range(4):
            torch.manual_seed(1)  # the same anchor and proposal sampling at every step
            losses = model(data)
            loss = sum(losses.values())
            assert torch.isfinite(loss) and "loss_mask" in losses
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            # the box losses jump as the proposals change; these two see the same samples each step
            falling.append(float((losses["loss_rpn_cls"] + losses["loss_mask"]).detach()))
    assert all(later < earlier for earlier, later in zip(falling, falling[1:])), falling
    assert not torch.equal(parameter, before), f"{variant_parameter} did not train"


# --------------------------------------------------------------------------- torch.compile
def test_variants_compile_to_one_graph_in_training():
    arch = ResNetArch(norm="BN", freeze_at=0, stem_out_channels=16, width_per_group=16, res2_out_channels=64,
                      stem_type="deep", stem_width=8, avg_down=True, preact=True, se_ratio=0.25,
                      deform_on_per_stage=(False, True, True, True), deform_modulated=True, drop_path_rate=0.2,
                      checkpoint_stages=("res2", "res4"), channels_last=True, output_stride=16, norm_eval=True)
    model = ResNet.from_arch(arch).train()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: a graph break raises
    outputs = compiled(images(size=64))
    sum(o.mean() for o in outputs.values()).backward()
    assert model.res4[0].conv2_offset.weight.grad is not None


# --------------------------------------------------------------------------- presets and configs
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_sets_the_keys_it_implies(preset):
    cfg = make_cfg(preset=preset)
    if "norm" in PRESETS[preset]:
        cfg.MODEL.RESNETS.NORM = "FrozenBN"  # make_cfg's BN is an explicit key, which a preset leaves alone
    arch = ResNetArch.from_cfg(cfg)
    assert arch.preset == preset
    assert {name: getattr(arch, name) for name in PRESETS[preset]} == PRESETS[preset]


def test_explicit_keys_win_over_a_preset_unless_left_at_their_default():
    arch = ResNetArch.from_cfg(make_cfg(preset="seresnext", depth=101, width_per_group=8))
    assert (arch.depth, arch.num_groups, arch.width_per_group, arch.se_ratio) == (101, 32, 8, 0.0625)
    # a key written at its default cannot be told from an unset one: the preset fills it
    arch = ResNetArch.from_cfg(make_cfg(preset="resnet_d", stride_in_1x1=True, avg_down=False))
    assert not arch.stride_in_1x1 and arch.avg_down


@pytest.mark.parametrize("preset, reference", [
    ("resnet_d", "timm:resnet50d"), ("seresnext", "timm:seresnext50_32x4d"), ("wide", "torchvision:wide_resnet50_2"),
])
def test_presets_describe_their_reference_models(preset, reference):
    library, name = reference.split(":")
    if library == "timm":
        model = pytest.importorskip("timm").create_model(name, pretrained=False)
    else:
        model = getattr(torchvision.models, name)()
    _, report = convert_state_dict(model.state_dict())
    assert ResNetArch.with_preset(preset).weight_config_items() == report.arch.weight_config_items()


VARIANT_CONFIGS = {
    "COCO-Detection/faster_rcnn_R_50_FPN_1x_resnet_d.yaml": {"preset": "resnet_d", "avg_down": True},
    "COCO-Detection/faster_rcnn_R_50_FPN_1x_seresnext.yaml": {"preset": "seresnext", "se_ratio": 0.0625},
    "COCO-Detection/faster_rcnn_R_50_FPN_1x_resnet_rs.yaml": {"preset": "resnet_rs", "se_ratio": 0.25},
    "COCO-Detection/faster_rcnn_R_50_FPN_1x_wide.yaml": {"preset": "wide", "width_per_group": 128},
    "COCO-Detection/faster_rcnn_R_50_FPN_1x_deeplab_stem.yaml": {"preset": "deeplab_stem", "stem_out_channels": 128},
    "COCO-Detection/faster_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml": {"deform_on_per_stage": (False, True, True, True)},
    "COCO-Detection/faster_rcnn_R_50_FPN_1x_preact.yaml": {"preact": True},
    "COCO-Detection/faster_rcnn_R_50_DC5_1x_os8.yaml": {"output_stride": 8, "res5_multi_grid": (1, 2, 4)},
}


@pytest.mark.parametrize("config", sorted(VARIANT_CONFIGS))
def test_variant_configs_load_and_build(config):
    cfg = load_config(str(ROOT / "configs" / config), ["MODEL.WEIGHTS", ""])
    arch = ResNetArch.from_cfg(cfg)
    assert {k: getattr(arch, k) for k in VARIANT_CONFIGS[config]} == VARIANT_CONFIGS[config]
    model = build_model(cfg)
    assert type(model.backbone).__name__ in ("FPN", "ResNet")


# --------------------------------------------------------------------------- validation
FPN_CONFIG = "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
BASIC = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


@pytest.mark.parametrize("overrides, words", [
    (BASIC + ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]"],
     ["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "MODEL.RESNETS.DEPTH = 18", "bottleneck"]),
    (BASIC + ["MODEL.RESNETS.WIDTH_PER_GROUP", "128"], ["MODEL.RESNETS.WIDTH_PER_GROUP = 128", "MODEL.RESNETS.DEPTH"]),
    (["MODEL.RESNETS.SHORTCUT", "A", "MODEL.RESNETS.AVG_DOWN", "True"],
     ["MODEL.RESNETS.AVG_DOWN = True", "MODEL.RESNETS.SHORTCUT = 'A'"]),
    (BASIC + ["MODEL.RESNETS.SHORTCUT", "A", "MODEL.RESNETS.STEM_OUT_CHANNELS", "128"],
     ["MODEL.RESNETS.SHORTCUT = 'A'", "MODEL.RESNETS.STEM_OUT_CHANNELS = 128", "MODEL.RESNETS.RES2_OUT_CHANNELS = 64"]),
    (["MODEL.RESNETS.RES5_DILATION", "2", "MODEL.RESNETS.OUTPUT_STRIDE", "8"],
     ["MODEL.RESNETS.RES5_DILATION = 2", "MODEL.RESNETS.OUTPUT_STRIDE = 8"]),
    (["MODEL.RESNETS.DILATION_MODE", "torchvision", "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2, 4]"],
     ["MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]", "MODEL.RESNETS.DILATION_MODE = 'torchvision'"]),
    (["MODEL.RESNETS.ZERO_INIT_RESIDUAL", "True"], ["MODEL.RESNETS.ZERO_INIT_RESIDUAL = True",
                                                   "MODEL.RESNETS.NORM = 'FrozenBN'"]),
    (["MODEL.RESNETS.NORM_EVAL", "True", "MODEL.RESNETS.NORM", "GN"], ["MODEL.RESNETS.NORM_EVAL", "NORM = 'GN'"]),
    (["MODEL.RESNETS.STEM_WIDTH", "64"], ["MODEL.RESNETS.STEM_WIDTH = 64", "MODEL.RESNETS.STEM_TYPE = 'basic'"]),
    (["MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, True, True, True]", "MODEL.RESNETS.DEFORM_NUM_GROUPS", "3"],
     ["MODEL.RESNETS.DEFORM_NUM_GROUPS = 3", "MODEL.RESNETS.NUM_GROUPS x MODEL.RESNETS.WIDTH_PER_GROUP = 64"]),
    (["MODEL.RESNETS.OUTPUT_STRIDE", "16"], ["MODEL.FPN.IN_FEATURES", "MODEL.RESNETS.OUTPUT_STRIDE = 16", "[4, 8, 16, 16]"]),
    (["MODEL.RESNETS.STEM_TYPE", "deeplab"], ["MODEL.RESNETS.STEM_TYPE = 'deeplab'", "PRESET 'deeplab_stem'"]),
    (["MODEL.RESNETS.SHORTCUT", "D"], ["MODEL.RESNETS.SHORTCUT = 'D'", "'A'", "'C'"]),
    (["MODEL.RESNETS.OUTPUT_STRIDE", "4"], ["MODEL.RESNETS.OUTPUT_STRIDE = 4", "32, 16", "8"]),
    (["MODEL.RESNETS.DILATION_MODE", "timm"], ["MODEL.RESNETS.DILATION_MODE = 'timm'", "'torchvision'"]),
    (["MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2]"], ["MODEL.RESNETS.RES5_MULTI_GRID = [1, 2]", "3 positive integers"]),
    (["MODEL.RESNETS.SE_RATIO", "2.0"], ["MODEL.RESNETS.SE_RATIO = 2.0", "(0, 1]"]),
    (["MODEL.RESNETS.DROP_PATH_RATE", "1.0"], ["MODEL.RESNETS.DROP_PATH_RATE = 1.0", "[0, 1)"]),
    (["MODEL.RESNETS.CHECKPOINT_STAGES", "['res6']"], ["MODEL.RESNETS.CHECKPOINT_STAGES = ['res6']", "'res2'"]),
    (["MODEL.RESNETS.PRESET", "resnet_x"], ["MODEL.RESNETS.PRESET = 'resnet_x'", "'resnet_d'", "'deeplab_stem'"]),
])
def test_bad_values_and_incompatible_combinations_fail_at_build_time_naming_the_keys(overrides, words):
    cfg = load_config(str(ROOT / FPN_CONFIG), overrides)
    with pytest.raises(ConfigError) as error:
        build_model(cfg)
    for word in words:
        assert word in str(error.value), str(error.value)
