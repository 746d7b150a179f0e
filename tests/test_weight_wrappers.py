"""Checkpoints as training frameworks and self-supervised methods save them: the trunk is found,
converted with no flags, and equals the network it came from; everything else is listed.

Each fixture holds random torchvision ResNet-18 weights (with random BN statistics) laid out as
the method's public code saves its checkpoint; the code is cited beside each layout.
"""
import argparse
from pathlib import Path

import pytest
import torch
import torchvision

from resnet_backbones import ResNet
from resnet_backbones.config import load_config
from resnet_backbones.modeling.arch import ResNetArch
from resnet_backbones.weights import BackboneCheckpointer, WeightsError, convert_weights
from resnet_backbones.weights.cli import main as convert_main

from conftest import randomize_norms
from test_weights import torchvision_features

ROOT = Path(__file__).resolve().parents[1]


def trunk(seed):
    torch.manual_seed(seed)
    return randomize_norms(torchvision.models.resnet18(), seed=seed).eval()


def prefixed(prefix, state):
    return {prefix + k: v for k, v in state.items()}


def mlp(*widths, bn=False):
    """A projection head's state: Linear (and BatchNorm1d) layers as nn.Sequential numbers them."""
    state, index = {}, 0
    for a, b in zip(widths, widths[1:]):
        state[f"{index}.weight"], state[f"{index}.bias"] = torch.randn(b, a), torch.randn(b)
        index += 1
        if bn:
            state.update({f"{index}.weight": torch.ones(b), f"{index}.bias": torch.zeros(b),
                          f"{index}.running_mean": torch.zeros(b), f"{index}.running_var": torch.ones(b),
                          f"{index}.num_batches_tracked": torch.tensor(0)})
            index += 1
        index += 1  # the ReLU
    return state


def without_fc(model):
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def optimizer_state(num):
    return {"state": {i: {"momentum_buffer": torch.zeros(3)} for i in range(num)},
            "param_groups": [{"lr": 0.03, "params": list(range(num))}]}


# Each layout: (checkpoint, the trunk that must be taken by default, {prefix: trunk} for --prefix,
# the method the report names or "" for plain wrappers)
def layout_ddp():
    # torch.nn.parallel.DistributedDataParallel / DataParallel: the module's keys under "module."
    q = trunk(1)
    return prefixed("module.", q.state_dict()), q, {}, ""


def layout_lightning():
    # PyTorch Lightning's checkpoint (lightning/pytorch/trainer/connectors/checkpoint_connector.py,
    # dump_checkpoint): the LightningModule's state_dict beside loop and optimizer states
    q = trunk(2)
    state = {**prefixed("model.backbone.", q.state_dict()), **prefixed("model.head.", mlp(512, 10))}
    return ({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": state,
             "optimizer_states": [optimizer_state(4)], "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}},
            q, {}, "")


def layout_moco_v2():
    # facebookresearch/moco moco/builder.py (MoCo: encoder_q, encoder_k with the MLP head as
    # fc = Sequential(Linear, ReLU, Linear); queue and queue_ptr buffers), main_moco.py
    # save_checkpoint({"epoch", "arch", "state_dict", "optimizer"}) of the DDP model
    q, k = trunk(3), trunk(4)
    head = prefixed("fc.", mlp(512, 512, 128))
    state = {**prefixed("module.encoder_q.", {**without_fc(q), **head}),
             **prefixed("module.encoder_k.", {**without_fc(k), **head}),
             "module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return ({"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": optimizer_state(3)},
            q, {"module.encoder_k.": k}, "MoCo v1/v2")


def layout_moco_v3():
    # facebookresearch/moco-v3 moco/builder.py (MoCo_ResNet: base_encoder and momentum_encoder, whose
    # fc is a 3-layer MLP with BatchNorm1d, and a predictor), main_moco.py save_checkpoint
    # ({"epoch", "arch", "state_dict", "optimizer", "scaler"})
    q, k = trunk(5), trunk(6)
    head = prefixed("fc.", mlp(512, 64, 64, 32, bn=True))
    state = {**prefixed("module.base_encoder.", {**without_fc(q), **head}),
             **prefixed("module.momentum_encoder.", {**without_fc(k), **head}),
             **prefixed("module.predictor.", mlp(32, 64, 32, bn=True))}
    return ({"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": optimizer_state(2),
             "scaler": {"scale": 65536.0, "growth_factor": 2.0}},
            q, {"module.momentum_encoder.": k}, "MoCo v3")


def layout_swav():
    # facebookresearch/swav src/resnet50.py (the trunk, projection_head and prototypes in one
    # module), main_swav.py save_dict {"epoch", "state_dict", "optimizer"} of the DDP model
    q = trunk(7)
    state = {**prefixed("module.", without_fc(q)), **prefixed("module.projection_head.", mlp(512, 64, 32, bn=True)),
             "module.prototypes.weight": torch.randn(300, 32)}
    return {"epoch": 400, "state_dict": state, "optimizer": optimizer_state(2)}, q, {}, "SwAV / DeepCluster-v2"


def layout_deepcluster_v2():
    # facebookresearch/swav main_deepclusterv2.py: as SwAV, with MultiPrototypes (prototypes0..2)
    q = trunk(8)
    state = {**prefixed("module.", without_fc(q)), **prefixed("module.projection_head.", mlp(512, 64, 32, bn=True)),
             **{f"module.prototypes.prototypes{i}.weight": torch.randn(30, 32) for i in range(3)}}
    return {"epoch": 400, "state_dict": state, "optimizer": optimizer_state(2)}, q, {}, "SwAV / DeepCluster-v2"


def layout_dino():
    # facebookresearch/dino main_dino.py: save_dict {"student", "teacher", "optimizer", "epoch",
    # "args", "dino_loss"}; both networks are MultiCropWrapper(backbone with fc = Identity,
    # DINOHead) under DistributedDataParallel (a ResNet has BatchNorm), the loss keeps its center
    teacher, student = trunk(9), trunk(10)
    head = {**prefixed("mlp.", mlp(512, 64, 32)), "last_layer.weight_g": torch.ones(1000, 1),
            "last_layer.weight_v": torch.randn(1000, 32)}
    return ({"student": {**prefixed("module.backbone.", without_fc(student)), **prefixed("module.head.", head)},
             "teacher": {**prefixed("module.backbone.", without_fc(teacher)), **prefixed("module.head.", head)},
             "optimizer": optimizer_state(4), "epoch": 100, "args": argparse.Namespace(arch="resnet18", lr=0.03),
             "dino_loss": {"center": torch.zeros(1, 1000)}},
            teacher, {"student.module.backbone.": student}, "DINO")


def layout_byol():
    # sthalles/PyTorch-BYOL trainer.py save_model ({"online_network_state_dict",
    # "target_network_state_dict", "optimizer_state_dict"}); models/resnet_base_network.py keeps the
    # trunk as nn.Sequential(*list(resnet.children())[:-1]) named "encoder", beside "projetion"
    online, target = trunk(11), trunk(12)

    def network(model):
        children = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
        encoder = {children[k.split(".")[0]] + k[len(k.split(".")[0]):]: v for k, v in without_fc(model).items()}
        return {**prefixed("encoder.", encoder), **prefixed("projetion.net.", mlp(512, 512, 128, bn=True))}

    return ({"online_network_state_dict": network(online), "target_network_state_dict": network(target),
             "optimizer_state_dict": optimizer_state(3)},
            online, {"target_network_state_dict.encoder.": target}, "BYOL")


def layout_barlow_twins():
    # facebookresearch/barlowtwins main.py: BarlowTwins(backbone = resnet with fc = Identity,
    # projector, bn = BatchNorm1d(affine=False)); the checkpoint is {"epoch", "model", "optimizer"}
    # of the DDP model
    q = trunk(13)
    bn = {"running_mean": torch.zeros(128), "running_var": torch.ones(128), "num_batches_tracked": torch.tensor(5)}
    state = {**prefixed("module.backbone.", without_fc(q)), **prefixed("module.projector.", mlp(512, 512, 128, bn=True)),
             **prefixed("module.bn.", bn)}
    return {"epoch": 300, "model": state, "optimizer": optimizer_state(2)}, q, {}, "a projection head"


def layout_simclr():
    # sthalles/SimCLR models/resnet_simclr.py (backbone = resnet with fc = Sequential(Linear, ReLU,
    # fc)), simclr.py save_checkpoint({"epoch", "arch", "state_dict", "optimizer"})
    q = trunk(14)
    state = prefixed("backbone.", {**without_fc(q), **prefixed("fc.", mlp(512, 512, 128))})
    return {"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": optimizer_state(2)}, q, {}, "SimCLR"


def layout_densecl():
    # WXinlong/DenseCL openselfsup/models/densecl.py: encoder_q = Sequential(backbone, neck), the same
    # backbone also registered as self.backbone, encoder_k likewise, queue/queue2 buffers; mmcv's
    # save_checkpoint writes {"meta", "state_dict", "optimizer"}
    q, k = trunk(15), trunk(16)
    neck = {**prefixed("mlp.", mlp(512, 64, 32)), "mlp2.0.weight": torch.randn(64, 512, 1, 1),
            "mlp2.0.bias": torch.randn(64), "mlp2.2.weight": torch.randn(32, 64, 1, 1), "mlp2.2.bias": torch.randn(32)}
    state = {**prefixed("encoder_q.0.", without_fc(q)), **prefixed("encoder_q.1.", neck),
             **prefixed("encoder_k.0.", without_fc(k)), **prefixed("encoder_k.1.", neck),
             **prefixed("backbone.", without_fc(q)),
             "queue": torch.randn(32, 256), "queue_ptr": torch.zeros(1, dtype=torch.long),
             "queue2": torch.randn(32, 256), "queue2_ptr": torch.zeros(1, dtype=torch.long)}
    return ({"meta": {"epoch": 200, "iter": 1000}, "state_dict": state, "optimizer": optimizer_state(2)},
            q, {"encoder_k.0.": k}, "DenseCL")


LAYOUTS = {name[len("layout_"):]: fn for name, fn in globals().items() if name.startswith("layout_")}


def convert_and_compare(tmp_path, checkpoint, expected_trunk, prefix=None):
    """Convert with no flags but ``prefix``; the report, once the body equals ``expected_trunk``."""
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    report = convert_weights(tmp_path / "ckpt.pth", tmp_path / "d2.pth", prefix=prefix)
    body = ResNet.from_arch(report.arch.replace(norm="BN"))
    BackboneCheckpointer(body).load(str(tmp_path / "d2.pth"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected, actual = torchvision_features(expected_trunk, x), body.eval()(x)
    for name in ("res2", "res3", "res4", "res5"):
        assert expected[name].abs().max() > 1e-2
        torch.testing.assert_close(actual[name].detach(), expected[name], atol=1e-4, rtol=0, msg=name)
    return report


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_wrapped_and_self_supervised_checkpoints_convert_with_no_flags(tmp_path, layout):
    checkpoint, expected_trunk, others, method = LAYOUTS[layout]()
    report = convert_and_compare(tmp_path, checkpoint, expected_trunk)
    printed = report.format()  # what tools/convert_weights.py prints
    assert report.source == "torchvision" and report.arch.depth == 18
    assert method in report.method if method else not report.self_supervised
    # nothing left out unnamed: every tensor is written, dropped on purpose, or in a listed group
    listed = report.num_tensors + len(report.dropped) + sum(n for _, n, _ in report.left_out)
    total = sum(1 for _ in _tensors(checkpoint))
    assert listed == total, (listed, total)
    for prefix in others:
        assert prefix in printed  # the report names the other encoders
    if method:  # the method's own detection transfer, printed
        for line in ("MODEL.RESNETS.NORM: SyncBN", "MODEL.FPN.NORM: SyncBN", "MODEL.BACKBONE.FREEZE_AT: 0",
                     "INPUT.FORMAT: RGB", "MODEL.RESNETS.STRIDE_IN_1X1: False"):
            assert line in printed


def _tensors(obj):
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    for value in items:
        if torch.is_tensor(value):
            yield value
        else:
            yield from _tensors(value)


@pytest.mark.parametrize("layout", ["moco_v2", "moco_v3", "dino", "byol", "densecl"])
def test_prefix_chooses_the_other_encoder(tmp_path, layout):
    checkpoint, _, others, _ = LAYOUTS[layout]()
    (prefix, other), = others.items()
    report = convert_and_compare(tmp_path, checkpoint, other, prefix)
    assert report.prefix == prefix


def test_the_report_says_which_encoder_was_taken_and_what_else_was_there(tmp_path, capsys):
    checkpoint, *_ = layout_moco_v2()
    torch.save(checkpoint, tmp_path / "moco.pth")
    assert convert_main([str(tmp_path / "moco.pth"), str(tmp_path / "d2.pth")]) == 0
    printed = capsys.readouterr().out
    assert "took MoCo v1/v2's the query encoder under 'module.encoder_q.'" not in printed
    assert "took MoCo v1/v2's query encoder under 'module.encoder_q.'" in printed
    assert "'module.encoder_k.' (the momentum (key) encoder)" in printed
    assert "module.queue (1 tensor: a queue)" in printed
    # DINO: the student's head is its own group, beside the student's backbone
    checkpoint, *_ = layout_dino()
    torch.save(checkpoint, tmp_path / "dino.pth")
    printed = convert_weights(tmp_path / "dino.pth", tmp_path / "d2.pth").format()
    assert "student.module.head. (6 tensors: a head)" in printed and "teacher.module.head. (6 tensors: a head)" in printed


def test_several_encoders_no_rule_tells_apart_are_refused_naming_them(tmp_path, capsys):
    state = {**prefixed("net_a.", trunk(1).state_dict()), **prefixed("net_b.", trunk(2).state_dict())}
    torch.save(state, tmp_path / "two.pth")
    assert convert_main([str(tmp_path / "two.pth"), str(tmp_path / "x.pth")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert "'net_a.', 'net_b.'; choose one with --prefix" in error
    with pytest.raises(WeightsError, match=r"--prefix 'net_c': no ResNet trunk there; trunks were found under 'net_a.'"):
        convert_weights(tmp_path / "two.pth", tmp_path / "x.pth", prefix="net_c")


def test_an_unknown_layout_is_refused_with_its_first_keys_and_what_was_looked_for(tmp_path):
    state = {f"encoder.blocks.{i}.weight": torch.zeros(2) for i in range(300)}
    torch.save({"state_dict": state}, tmp_path / "vit.pth")
    with pytest.raises(WeightsError) as error:
        convert_weights(tmp_path / "vit.pth", tmp_path / "x.pth")
    message = str(error.value)
    assert "no ResNet trunk found" in message and "stem.conv1.weight" in message and "layer1.0." in message
    assert "300 keys (all under 'encoder.blocks.')" in message and len(message) < 700


def test_key_errors_name_a_few_keys_the_count_and_their_prefix(tmp_path, capsys):
    # a DDP ResNet-50 checked against a ResNet-18 config: hundreds of keys do not fit
    torch.save(prefixed("module.", torchvision.models.resnet50().state_dict()), tmp_path / "ddp.pth")
    assert convert_main([str(tmp_path / "ddp.pth"), str(tmp_path / "x.pth"), "--source", "torchvision",
                         "--config-file", str(ROOT / "configs/Demo/mask_rcnn_R_18_FPN_synthetic.yaml")]) == 2
    error = capsys.readouterr().err
    assert "keys with no place in the model: 165 keys: res2.0.conv3.norm.bias" in error and "(160 more)" in error
    assert len(error) < 2000, error
    # and with --source torchvision alone, the DDP file converts
    report = convert_weights(tmp_path / "ddp.pth", tmp_path / "d2.pth", source="torchvision")
    assert report.arch.depth == 50 and report.prefix == "module."


def test_shipped_self_supervised_config_sets_the_printed_transfer_keys():
    from resnet_backbones.weights.convert import SELF_SUPERVISED_TRANSFER, TORCHVISION_CONVENTION

    cfg = load_config(str(ROOT / "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x_self_supervised.yaml"))
    for key, value in list(SELF_SUPERVISED_TRANSFER) + TORCHVISION_CONVENTION.config_items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert (list(node) if isinstance(node, tuple) else node) == value, key
    arch = ResNetArch.from_cfg(cfg)
    assert arch.norm == "SyncBN" and arch.freeze_at == 0 and not arch.stride_in_1x1


def test_a_converted_file_converts_again_keeping_its_recorded_convention(tmp_path):
    torch.save(prefixed("module.", trunk(1).state_dict()), tmp_path / "ddp.pth")
    first = convert_weights(tmp_path / "ddp.pth", tmp_path / "d2.pth")
    again = convert_weights(tmp_path / "d2.pth", tmp_path / "d2_again.pth")
    # Detectron2 names record no convention of their own; the file's recorded one (RGB) is kept
    assert again.source == "detectron2" and again.convention == first.convention
    assert again.convention.input_format == "RGB" and again.num_tensors == first.num_tensors
