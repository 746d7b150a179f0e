"""timm's ResNet family, model by model: each converts exactly (random weights, random BN
statistics, features of res2..res5 within 1e-4 of timm's) or is refused with one error line
naming what is not supported. New timm models fail ``test_every_timm_resnet_is_decided`` until
they are put in one list or the other.

The normal suite compares features for a set of small models that covers every variant key
(NUM_BLOCKS, tiered stem, conv stem pool, ECA, both anti-aliasing kinds, GN, SE, groups);
``-m slow`` compares every model that converts.
"""
import fnmatch

import pytest
import torch

from resnet_backbones import ResNet
from resnet_backbones.weights import WeightsError, convert_state_dict, convert_weights
from resnet_backbones.weights.cli import main as convert_main
from resnet_backbones.weights.timm_models import ANTI_ALIASED, CONVERTS

from conftest import randomize_norms

timm = pytest.importorskip("timm")

#: the ResNet trunk of timm's ViT hybrids converts (the transformer is listed as left out)
HYBRIDS = ("vit_base_resnet26d_224", "vit_base_resnet50d_224", "vit_small_resnet26d_224",
           "vit_small_resnet50d_s16_224")

#: name pattern -> what the one error line says
REFUSED = {
    "senet154": "(3, 3) projection shortcuts (timm's down_kernel_size",
    "test_resnet": "basic and bottleneck mixed",
    "ecaresnet*_pruned": "a pruned network",
    "resnetv2_*_bit": "is a BiT model, whose weight-standardised convolutions",
    "resnetv2_50d_evos": "timm's EvoNorm",
    "resnetv2_50d_frn": "timm's FilterResponseNorm",
    "sk*": "keys that have no place in a",  # selective-kernel convolutions
    "resnet51q": "the stages are not ResNet blocks",
    "nf_*": "cannot tell which family",  # normalizer-free networks
    # other timm architectures named after ResNet: ByobNet (*ts, *q, CLIP, lambda, GC, BAT), CSPNet,
    # TResNet, the legacy SENet port, Inception-ResNet, resnet50_mlp
    "*ts": "no ResNet trunk found", "resnet61q": "no ResNet trunk found", "*_clip*": "no ResNet trunk found",
    "csp*": "no ResNet trunk found", "tresnet*": "no ResNet trunk found", "legacy_*": "no ResNet trunk found",
    "inception_resnet_v2": "no ResNet trunk found", "lambda_*": "no ResNet trunk found",
    "gcresnet50t": "no ResNet trunk found", "resnet50_mlp": "no ResNet trunk found",
}

#: small models that together use every variant key the converter infers or is told
SMALL = ["resnet10t", "resnet14t", "resnet26", "resnet26d", "resnet26t", "ecaresnet26t", "ecaresnext26t_32x4d",
         "seresnext26t_32x4d", "resnet18d", "resnetblur18", "resnetaa34d", "ecaresnetlight", "resnet50_gn",
         "resnetrs50", "resnetv2_18d"]


def family():
    names = set(timm.list_models("*resnet*")) | set(timm.list_models("*resnext*"))
    return sorted(names | set(timm.list_models(module="resnet")) | set(timm.list_models(module="resnetv2")))


def refusal(name):
    return next((why for pattern, why in REFUSED.items() if fnmatch.fnmatch(name, pattern)), None)


def test_every_timm_resnet_is_decided():
    undecided = [n for n in family() if n not in CONVERTS and n not in HYBRIDS and refusal(n) is None]
    both = [n for n in CONVERTS if refusal(n) is not None]
    assert not undecided and not both, (undecided, both)
    assert set(CONVERTS) <= set(family())  # no stale names


def timm_features(model, x, stages):
    """res2.. of a timm ResNet or ResNetV2 (a ViT hybrid's: of its ResNet trunk)."""
    model = getattr(getattr(model, "patch_embed", None), "backbone", model)
    with torch.no_grad():
        out = {}
        if hasattr(model, "stages"):  # ResNetV2: the final norm and ReLU close res5
            x = model.stem(x)
            for i, stage in enumerate(model.stages):
                x = out[f"res{i + 2}"] = stage(x)
            out["res5"] = model.norm(x)
        else:
            x = model.maxpool(model.act1(model.bn1(model.conv1(x))))
            for i in range(len(stages)):
                x = out[f"res{i + 2}"] = getattr(model, f"layer{i + 1}")(x)
    return out


def assert_converts_exactly(name):
    torch.manual_seed(0)
    reference = randomize_norms(timm.create_model(name, pretrained=False)).eval()
    renamed, report = convert_state_dict(reference.state_dict(), timm_model=name if name in ANTI_ALIASED else None)
    arch = report.arch if report.arch.norm == "GN" else report.arch.replace(norm="BN")
    body = ResNet.from_arch(arch).eval()
    result = body.load_state_dict(renamed, strict=False)
    assert not result.unexpected_keys and all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    expected, actual = timm_features(reference, x, arch.out_features), body(x)
    for stage in arch.out_features:
        assert expected[stage].abs().max() > 1e-2, stage
        torch.testing.assert_close(actual[stage].detach(), expected[stage], atol=1e-4, rtol=0, msg=stage)
    return report


@pytest.mark.parametrize("name", SMALL)
def test_small_timm_models_convert_to_equal_features(name):
    report = assert_converts_exactly(name)
    if name in ANTI_ALIASED:
        assert report.arch.anti_alias == ANTI_ALIASED[name][0]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(CONVERTS + HYBRIDS) - set(SMALL)))
def test_every_timm_model_that_converts_equals_timm(name):
    assert_converts_exactly(name)


def refused_names():
    return [n for n in family() if refusal(n) is not None]


@pytest.mark.parametrize("name", [n for n in refused_names() if not fnmatch.fnmatch(n, "*_clip*")
                                  and n not in ("resnetv2_152x4_bit", "resnetv2_152x2_bit", "resnetv2_101x3_bit")])
def test_other_timm_models_are_refused_with_one_line_naming_why(name):
    with torch.device("meta"):  # only names and shapes matter here
        state = timm.create_model(name, pretrained=False).state_dict()
    with pytest.raises(WeightsError) as error:
        convert_state_dict(state)
    message = str(error.value)
    assert refusal(name) in message and "\n" not in message and len(message) < 800, message


@pytest.mark.parametrize("name", ["resnetblur18"])
def test_anti_aliased_weights_need_the_name_and_plain_ones_warn_of_their_twins(tmp_path, capsys, name):
    reference = randomize_norms(timm.create_model(name, pretrained=False)).eval()
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    assert convert_main([str(tmp_path / "w.pth"), str(tmp_path / "d2.pth")]) == 0
    printed = capsys.readouterr().out
    assert f"warning: anti-aliasing leaves no trace in the weights: these tensors are exactly those of timm's {name}" \
        in printed and "--timm-model NAME" in printed
    # the twin really is another network: unnamed, the features differ
    _, unnamed = convert_state_dict(reference.state_dict())
    body = ResNet.from_arch(unnamed.arch.replace(norm="BN")).eval()
    body.load_state_dict(convert_state_dict(reference.state_dict())[0], strict=False)
    x = torch.randn(1, 3, 64, 64)
    assert (body(x)["res5"] - timm_features(reference, x, ("res2", "res3", "res4", "res5"))["res5"]).abs().max() > 1e-2

    assert convert_main([str(tmp_path / "w.pth"), str(tmp_path / "d2.pth"), "--timm-model", name]) == 0
    printed = capsys.readouterr().out
    assert "warning:" not in printed and f"MODEL.RESNETS.ANTI_ALIAS: {ANTI_ALIASED[name][0]}" in printed
    # a name the tensors contradict, or no timm ResNet at all, is refused
    assert convert_main([str(tmp_path / "w.pth"), str(tmp_path / "d2.pth"), "--timm-model", "resnetaa101d"]) == 2
    assert "these weights are not that model's" in capsys.readouterr().err
    assert convert_main([str(tmp_path / "w.pth"), str(tmp_path / "d2.pth"), "--timm-model", "vgg16"]) == 2
    assert "'vgg16' is not a timm ResNet this package converts" in capsys.readouterr().err


def test_a_recorded_architecture_names_the_model(tmp_path):
    reference = timm.create_model("resnetblur18", pretrained=False)
    # timm's train.py (timm/utils/checkpoint_saver.py) stores the model name as "arch"
    torch.save({"epoch": 3, "arch": "resnetblur18", "state_dict": reference.state_dict(), "version": 2},
               tmp_path / "checkpoint.pth.tar")
    report = convert_weights(tmp_path / "checkpoint.pth.tar", tmp_path / "d2.pth")
    assert report.arch.anti_alias == "blur" and not report.warnings
    # a timm hub download: model.safetensors beside config.json naming the architecture
    from safetensors.torch import save_file

    (tmp_path / "hub").mkdir()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "hub/model.safetensors"))
    (tmp_path / "hub/config.json").write_text('{"architecture": "resnetblur18", "num_classes": 1000}')
    report = convert_weights(tmp_path / "hub/model.safetensors", tmp_path / "d2.pth")
    assert report.arch.anti_alias == "blur"


@pytest.mark.slow
def test_the_anti_aliased_table_matches_timm():
    for name, (kind, _) in ANTI_ALIASED.items():
        with torch.device("meta"):
            state = timm.create_model(name, pretrained=False).state_dict()
        _, report = convert_state_dict(state, timm_model=name)  # refused if the table's tensors were wrong
        assert report.arch.anti_alias == kind
