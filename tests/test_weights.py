"""Weights in: conversion from torchvision, checked loading, safe reading, clear errors."""
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from detectron2.modeling import build_model

from resnet_backbones import ResNet
from resnet_backbones.config import load_config
from resnet_backbones.weights import (
    BackboneCheckpointer,
    ConventionMismatchWarning,
    WeightsError,
    convert_weights,
    load_weights_file,
)
from resnet_backbones.weights.cli import main as convert_main

from conftest import randomize_norms

ROOT = Path(__file__).resolve().parents[1]
FEATURE_OF_LAYER = {"layer1": "res2", "layer2": "res3", "layer3": "res4", "layer4": "res5"}


def torchvision_features(model, x):
    with torch.no_grad():
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        out = {}
        for layer, feature in FEATURE_OF_LAYER.items():
            x = out[feature] = getattr(model, layer)(x)
    return out


@pytest.mark.parametrize("name", ["resnet50", "resnext50_32x4d"])
def test_torchvision_weights_convert_to_equal_features(tmp_path, image_batch, name):
    reference = randomize_norms(getattr(torchvision.models, name)()).eval()
    source = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), source)

    report = convert_weights(source, tmp_path / "converted.pth")
    assert report.source == "torchvision"
    assert not report.arch.stride_in_1x1 and report.convention.input_format == "RGB"
    assert "fc.weight" in report.dropped

    body = ResNet.from_arch(report.arch)
    BackboneCheckpointer(body).load(str(tmp_path / "converted.pth"))
    expected, actual = torchvision_features(reference, image_batch), body.eval()(image_batch)
    for key in expected:
        assert expected[key].abs().max() > 1e-2
        torch.testing.assert_close(actual[key].detach(), expected[key], atol=1e-4, rtol=0)


def test_converted_weights_load_into_a_detector_through_model_weights(tmp_path):
    source = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), source)
    convert_weights(source, tmp_path / "r50_d2.pkl")  # Detectron2's model-zoo format
    cfg = load_config(str(ROOT / "configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"),
                      ["MODEL.RESNETS.STRIDE_IN_1X1", "False",
                       "INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
                       "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]"])
    model = build_model(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConventionMismatchWarning)
        BackboneCheckpointer(model, cfg=cfg).load(str(tmp_path / "r50_d2.pkl"))
    loaded = model.backbone.bottom_up.res4[5].conv2.weight
    stored = load_weights_file(tmp_path / "r50_d2.pkl")["model"]["res4.5.conv2.weight"]
    np.testing.assert_array_equal(loaded.detach().numpy(), stored)


def test_convention_mismatch_is_a_warning_naming_both_sides(tmp_path):
    source = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), source)
    convert_weights(source, tmp_path / "r18_d2.pth")
    cfg = load_config(str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
                      ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"])
    model = build_model(cfg)  # BGR, MSRA statistics, stride in 1x1: all three differ
    with pytest.warns(ConventionMismatchWarning) as record:
        BackboneCheckpointer(model, cfg=cfg).load(str(tmp_path / "r18_d2.pth"))
    messages = " ".join(str(w.message) for w in record)
    assert "INPUT.FORMAT: the weights expect RGB, the config has BGR" in messages
    assert "MODEL.RESNETS.STRIDE_IN_1X1" in messages


def converted_torchvision_resnet50(tmp_path) -> Path:
    """A torchvision ResNet-50 with random weights, saved and converted; the converted file."""
    source = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), source)
    convert_weights(source, tmp_path / "r50_d2.pth")
    return tmp_path / "r50_d2.pth"


def test_weights_that_leave_backbone_parameters_missing_are_an_error(tmp_path):
    converted_torchvision_resnet50(tmp_path)
    cfg = load_config(str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
                      ["MODEL.RESNETS.DEPTH", "101"])
    with pytest.raises(WeightsError, match=r"backbone parameters missing from the file: .*res4\.22\.conv1\.weight"):
        BackboneCheckpointer(build_model(cfg)).load(str(tmp_path / "r50_d2.pth"))


def test_plain_weights_load_into_a_deformable_model_whose_offsets_start_at_zero(tmp_path):
    converted_torchvision_resnet50(tmp_path)
    cfg = load_config(str(ROOT / "configs/COCO-Detection/faster_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml"),
                      ["MODEL.RESNETS.STRIDE_IN_1X1", "False"])
    model = build_model(cfg)
    BackboneCheckpointer(model).load(str(tmp_path / "r50_d2.pth"))
    block = model.backbone.bottom_up.res4[0]
    assert block.conv2_offset is not None and not block.conv2_offset.weight.any()
    stored = load_weights_file(tmp_path / "r50_d2.pth")["model"]["res4.0.conv2.weight"]
    np.testing.assert_array_equal(block.conv2.weight.detach().numpy(), np.asarray(stored))


def test_unplaceable_and_misshapen_keys_are_listed_and_nothing_is_written(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.attention.weight"] = torch.zeros(3)
    state["layer9.0.conv1.weight"] = torch.zeros(3)
    (tmp_path / "bad.pth").write_bytes(b"")
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as error:
        convert_weights(tmp_path / "bad.pth", tmp_path / "out.pth")
    assert "layer1.0.attention.weight" in str(error.value) and "layer9.0.conv1.weight" in str(error.value)

    state = torchvision.models.resnet18().state_dict()
    state["layer2.1.conv2.weight"] = torch.zeros(128, 128, 1, 1)
    state["layer3.0.bn1.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "misshapen.pth")
    (tmp_path / "out.pth").write_bytes(b"previous output")
    with pytest.raises(WeightsError) as error:
        convert_weights(tmp_path / "misshapen.pth", tmp_path / "out.pth")
    assert "res3.1.conv2.weight: (128, 128, 1, 1) in the file, (128, 128, 3, 3) in the model" in str(error.value)
    assert "res4.0.conv1.norm.weight" in str(error.value)
    assert (tmp_path / "out.pth").read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth", "misshapen.pth", "out.pth"]


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_untrusted_pickles_are_refused(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": Payload()}, "__author__": "x"}))
    with pytest.raises(WeightsError, match="allow-unsafe-pickle"):
        load_weights_file(evil)
    torch.save({"model": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="weights_only"):
        load_weights_file(tmp_path / "evil.pth")


def test_caffe2_names_convert_through_detectron2s_translation(tmp_path):
    state = {}
    for name, value in torchvision.models.resnet18().state_dict().items():
        state[name] = value.numpy()
    converted = tmp_path / "converted.pkl"
    blobs = {"conv1_w": state["conv1.weight"], "res_conv1_bn_s": state["bn1.weight"],
             "res_conv1_bn_b": state["bn1.bias"], "fc1000_w": np.zeros((10, 512), np.float32)}
    for layer in range(1, 5):
        for block in range(2):
            for conv, branch in ((1, "2a"), (2, "2b")):
                prefix = f"layer{layer}.{block}."
                c2 = f"res{layer + 1}_{block}_branch{branch}"
                blobs[f"{c2}_w"] = state[f"{prefix}conv{conv}.weight"]
                blobs[f"{c2}_bn_s"] = state[f"{prefix}bn{conv}.weight"]
                blobs[f"{c2}_bn_b"] = state[f"{prefix}bn{conv}.bias"]
            if f"layer{layer}.{block}.downsample.0.weight" in state:
                c2 = f"res{layer + 1}_{block}_branch1"
                blobs[f"{c2}_w"] = state[f"layer{layer}.{block}.downsample.0.weight"]
                blobs[f"{c2}_bn_s"] = state[f"layer{layer}.{block}.downsample.1.weight"]
                blobs[f"{c2}_bn_b"] = state[f"layer{layer}.{block}.downsample.1.bias"]
    (tmp_path / "msra.pkl").write_bytes(pickle.dumps({"blobs": blobs}))
    report = convert_weights(tmp_path / "msra.pkl", converted)
    assert report.source == "caffe2" and report.convention.input_format == "BGR"
    assert report.arch.depth == 18 and "fc1000_w" in report.dropped


def test_cli_success_prints_config_keys_and_bad_input_exits_2(tmp_path, capsys):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    assert convert_main([str(tmp_path / "r18.pth"), str(tmp_path / "out.pth")]) == 0
    printed = capsys.readouterr().out
    for line in ["MODEL.RESNETS.DEPTH: 18", "MODEL.RESNETS.RES2_OUT_CHANNELS: 64", "INPUT.FORMAT: RGB",
                 "MODEL.RESNETS.STRIDE_IN_1X1: False", "MODEL.PIXEL_STD: [58.395, 57.12, 57.375]"]:
        assert line in printed

    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, str(ROOT / "tools/convert_weights.py"), str(tmp_path / "garbage.pth"),
                             str(tmp_path / "x.pth")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "garbage.pth" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.pth").exists()
