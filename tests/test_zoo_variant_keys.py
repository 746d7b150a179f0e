"""The variant keys issue 15 adds: NUM_BLOCKS, STEM_TYPE tiered, STEM_POOL, ANTI_ALIAS, ECA, and
the resnet_rs preset that is now exactly ResNet-RS. (Equality with timm: tests/test_timm_zoo.py.)"""
import pytest
import torch

from resnet_backbones import ResNet
from resnet_backbones.config import NEW_KEYS
from resnet_backbones.modeling.arch import ConfigError, ResNetArch
from resnet_backbones.modeling.layers import BlurPool2d, EfficientChannelAttention, eca_kernel_size
from resnet_backbones.weights import convert_state_dict

from conftest import arch_from


def test_every_new_field_has_a_key_and_a_default():
    for field in ("num_blocks", "stem_pool", "anti_alias", "eca"):
        key = ResNetArch.KEYS[field]
        assert key in NEW_KEYS
        default = getattr(ResNetArch(), field)
        assert NEW_KEYS[key] == (list(default) if isinstance(default, tuple) else default)


@pytest.mark.parametrize("depth, blocks, block_type", [(10, [1, 1, 1, 1], "basic"), (14, [1, 1, 1, 1], "bottleneck"),
                                                       (26, [2, 2, 2, 2], "bottleneck"),
                                                       (272, [4, 29, 53, 4], "bottleneck")])
def test_num_blocks_builds_any_depth(depth, blocks, block_type):
    arch = arch_from(depth=depth, num_blocks=blocks, res2_out_channels=64 if block_type == "basic" else 256)
    assert arch.block_type == block_type and arch.blocks_per_stage == tuple(blocks)
    with torch.device("meta"):
        body = ResNet.from_arch(arch)
    assert [len(getattr(body, s)) for s in ("res2", "res3", "res4", "res5")] == blocks
    assert hasattr(body.res2[0], "conv3") == (block_type == "bottleneck")


@pytest.mark.parametrize("keys, message", [
    (dict(depth=270, num_blocks=[4, 29, 53, 4]),
     "MODEL.RESNETS.DEPTH = 270 cannot be combined with MODEL.RESNETS.NUM_BLOCKS = [4, 29, 53, 4]: DEPTH counts "
     "the layers, 2 + 2 per basic block (182) or 2 + 3 per bottleneck block (272)"),
    (dict(depth=50, num_blocks=[3, 4]), "MODEL.RESNETS.NUM_BLOCKS = [3, 4] is not allowed"),  # 3: CIFAR
    (dict(depth=77), "MODEL.RESNETS.DEPTH = 77 is not allowed: one of [18, 34, 50, 101, 152, 200], or any depth "
                     "with MODEL.RESNETS.NUM_BLOCKS"),
    (dict(eca=True, se_ratio=0.25), "MODEL.RESNETS.ECA = True cannot be combined with MODEL.RESNETS.SE_RATIO"),
    (dict(anti_alias="avg"), "MODEL.RESNETS.ANTI_ALIAS = 'avg' cannot be combined with "
                             "MODEL.RESNETS.STRIDE_IN_1X1 = True"),
    (dict(anti_alias="max"), "MODEL.RESNETS.ANTI_ALIAS = 'max' is not allowed"),
    (dict(anti_alias="blur", stride_in_1x1=False, stem_pool="conv"),
     "MODEL.RESNETS.ANTI_ALIAS = 'blur' cannot be combined with MODEL.RESNETS.STEM_POOL = 'conv'"),
    (dict(stem_pool="avg"), "MODEL.RESNETS.STEM_POOL = 'avg' is not allowed"),
    (dict(stem_type="tiered", norm="GN", stem_width=32), "3/4 of MODEL.RESNETS.STEM_WIDTH"),
])
def test_bad_combinations_name_their_keys(keys, message):
    with pytest.raises(ConfigError) as error:
        arch_from(**keys)
    assert message in str(error.value)


def test_parameter_names_of_the_new_variants():
    arch = ResNetArch(stem_type="tiered", stem_pool="conv", eca=True, norm="BN", stride_in_1x1=False)
    names = set(ResNet.from_arch(arch).state_dict())
    assert {"stem.conv1.weight", "stem.conv2.weight", "stem.conv3.weight", "stem.pool.weight",
            "stem.pool.norm.running_var", "res2.0.eca.conv.weight", "res5.2.eca.conv.weight"} <= names
    shapes = ResNet.from_arch(arch).state_dict()
    assert shapes["stem.conv1.weight"].shape[0] == 24 and shapes["stem.conv2.weight"].shape[0] == 32
    assert shapes["res2.0.eca.conv.weight"].shape == (1, 1, eca_kernel_size(256)) == (1, 1, 5)
    # anti-aliasing adds no tensors: the weights cannot tell it
    plain = ResNet.from_arch(ResNetArch(stride_in_1x1=False)).state_dict()
    for kind in ("avg", "blur"):
        aliased = ResNet.from_arch(ResNetArch(stride_in_1x1=False, anti_alias=kind)).state_dict()
        assert {k: v.shape for k, v in aliased.items()} == {k: v.shape for k, v in plain.items()}


def test_blur_pool_is_a_normalised_binomial_filter_and_the_new_layers_script():
    x = torch.ones(1, 4, 8, 8)
    torch.testing.assert_close(BlurPool2d(4)(x), torch.ones(1, 4, 4, 4))  # reflect padding keeps a constant
    impulse = torch.zeros(1, 1, 5, 5)
    impulse[0, 0, 2, 2] = 16.0
    torch.testing.assert_close(BlurPool2d(1, stride=1)(impulse)[0, 0, 1:4, 1:4],
                               torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]))
    for layer, shape in ((BlurPool2d(4), (1, 4, 8, 8)), (EfficientChannelAttention(64), (2, 64, 5, 5))):
        x = torch.randn(shape)
        torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))


def test_the_resnet_rs_preset_is_timm_resnetrs50():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        state = timm.create_model("resnetrs50", pretrained=False).state_dict()
    _, report = convert_state_dict(state)
    assert ResNetArch.with_preset("resnet_rs").weight_config_items() == report.arch.weight_config_items()
    assert report.arch.stem_pool == "conv"
