import logging
import warnings

import pytest
import torch

import resnet_backbones  # noqa: F401  (registers the builders, installs the detectron2 stand-ins)
from detectron2.utils.logger import setup_logger
from resnet_backbones.data import coco_split_paths, ensure_synthetic_coco

warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)


@torch.no_grad()
def randomize_norms(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN/FrozenBN layer random but tame statistics and affine parameters.

    Default statistics (mean 0, var 1, weight 1, bias 0) would make a norm layer that drops out
    of any comparison; these keep activations of order one through 50+ layers.
    """
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if hasattr(m, "running_var") and m.running_var is not None:
            n = m.running_var.numel()
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            m.weight.copy_(torch.rand(n, generator=generator) * 0.3 + 0.2)
            m.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return module


@pytest.fixture
def image_batch():
    return torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def fresh_logging():
    """Detectron2's ``setup_logger`` is cached: its console handlers would keep writing to the
    output capture of the first test that trained, closed by the time the next one runs."""
    def reset():
        setup_logger.cache_clear()
        for logger in [logging.getLogger(name) for name in ("detectron2", "fvcore", "d2")]:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> list:
    """``--dataset`` arguments for 8 train and 4 val images of 128 px (one set per session: the
    names can be registered once per process)."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    ensure_synthetic_coco(root, num_train=8, num_val=4, image_size=128)
    specs = []
    for split in ("train", "val"):
        json_file, images = coco_split_paths(root, split)
        specs += ["--dataset", f"tiny_shapes_{split}={json_file}:{images}"]
    return specs


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def arch_from(**keys):
    """The ``ResNetArch`` that ``MODEL.RESNETS.<KEY> = value`` for each keyword reads (all four stages out)."""
    from resnet_backbones.config import get_default_config
    from resnet_backbones.modeling.arch import ResNetArch

    cfg = get_default_config()
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    for key, value in keys.items():
        cfg.MODEL.RESNETS[key.upper()] = value
    return ResNetArch.from_cfg(cfg)
