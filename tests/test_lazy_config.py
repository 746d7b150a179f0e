"""LazyConfig front door: the lazy body, the shipped .py recipes, tools/train_net.py with a .py config.

The yacs path's own tests are in test_training.py; these reuse its dataset and helpers and run
the same checks through a LazyConfig.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm, ShapeSpec
from conftest import free_port
from test_training import DEMO_CONFIG, TOOL, checkpoint

from resnet_backbones.config import add_resnet_backbones_config
from resnet_backbones.engine import amp_dtype
from resnet_backbones.engine.config_frontends import (
    LazyConfigTrainer,
    build_model_from_config_file,
    lazy_config_of,
    load_lazy_config,
    load_training_config,
)
from resnet_backbones.engine.reports import curves, plot_training_curves, read_metrics
from resnet_backbones.engine.train_net import main
from resnet_backbones.modeling import ConfigError, ResNetArch, ResNetFamily, build_resnet_family_backbone
from resnet_backbones.modeling.lazy import ARCH_FIELDS
from resnet_backbones.weights.checkpoint import BackboneCheckpointer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
LAZY_DEMO = CONFIGS / "Demo" / "mask_rcnn_R_18_FPN_synthetic.py"
MODELS = sorted((CONFIGS / "common" / "models").glob("*.py"))
BASELINES = sorted((CONFIGS / "new_baselines").glob("*_LSJ.py"))
VARIANTS = sorted((CONFIGS / "new_baselines").glob("*_LSJ_*.py"))


def small_run(output_dir: Path, max_iter: int, *extra: str) -> list:
    """Overrides that make the lazy demo config a seconds-long run on the tiny dataset (as
    test_training.small_run does for the YAML one)."""
    train_resize, test_resize = "dataloader.train.mapper.augmentations.0", "dataloader.test.mapper.augmentations.0"
    return [f"train.output_dir={output_dir}", f"train.max_iter={max_iter}", "train.seed=1",
            "dataloader.train.dataset.names=tiny_shapes_train", "dataloader.test.dataset.names=tiny_shapes_val",
            f"{train_resize}.short_edge_length=[128]", f"{train_resize}.max_size=128",
            f"{test_resize}.short_edge_length=128", f"{test_resize}.max_size=128",
            "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
            "lr_multiplier.warmup_factor=1.0", *extra]


def shapes(model: torch.nn.Module) -> dict:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


# --------------------------------------------------------------------------- the lazy body
def test_the_body_takes_exactly_resnet_arch_fields_and_builds_what_the_yacs_keys_build():
    assert list(inspect.signature(ResNetFamily).parameters) == [f.name for f in dataclasses.fields(ResNetArch)]
    assert ARCH_FIELDS[0] == "depth" and "preset" in ARCH_FIELDS

    lazy = instantiate(L(ResNetFamily)(depth=50, preset="resnet_d", norm="BN", freeze_at=0,
                                       out_features=["res3", "res4", "res5"]))
    cfg = add_resnet_backbones_config(get_cfg())
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.PRESET", "resnet_d", "MODEL.RESNETS.NORM", "BN",
                         "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"]])
    yacs = build_resnet_family_backbone(cfg, ShapeSpec(channels=3))
    assert shapes(lazy) == shapes(yacs)
    yacs.load_state_dict(lazy.state_dict())
    x = torch.randn(1, 3, 64, 64)
    lazy.eval(), yacs.eval()
    with torch.no_grad():
        assert all(torch.equal(lazy(x)[k], yacs(x)[k]) for k in ("res3", "res4", "res5"))
    assert all(p.requires_grad for p in lazy.parameters())  # freeze_at=0


@pytest.mark.parametrize("keywords, message", [
    (dict(depth=19), "depth = 19 is not allowed: one of [18, 34, 50, 101, 152, 200]"),
    (dict(nrom="BN"), "nrom = 'BN' is not allowed: not an argument of the ResNet body"),
    (dict(preset="resnet_x"), "preset = 'resnet_x' is not allowed"),
    (dict(out_features="res5"), "out_features = 'res5' is not allowed: a list"),
    (dict(norm="GN", res2_out_channels=250), "res2_out_channels = 250 is not allowed with norm = 'GN'"),
    (dict(depth=18, res2_out_channels=64, deform_on_per_stage=[False, True, True, True]),
     "deform_on_per_stage = [False, True, True, True] cannot be combined with depth = 18"),
])
def test_the_body_reports_bad_keywords_by_their_name(keywords, message):
    with pytest.raises(ConfigError) as raised:
        ResNetFamily(**keywords)
    assert message in str(raised.value)
    assert "MODEL.RESNETS" not in str(raised.value).split(":")[0]


def test_detectron2_idioms_set_freezing_one_norm_everywhere_and_the_fpn_inputs():
    cfg = load_lazy_config(CONFIGS / "common" / "models" / "mask_rcnn_fpn.py",
                           ["model.backbone.bottom_up.freeze_at=0", "model.backbone.bottom_up.norm=SyncBN",
                            "model.backbone.bottom_up.out_features=[res3,res4,res5]"])
    fpn = instantiate(cfg.model.backbone)
    assert list(fpn.in_features) == ["res3", "res4", "res5"]  # in_features="${.bottom_up.out_features}"
    norms = {name: type(m) for name, m in fpn.bottom_up.named_modules()
             if isinstance(m, (torch.nn.modules.batchnorm._NormBase, FrozenBatchNorm2d))}
    # one assignment for stem and stages (SyncBN is plain BN in a single process, as on the YAML path)
    assert set(norms.values()) == {torch.nn.BatchNorm2d}
    assert "stem.conv1.norm" in norms and "res5.2.conv3.norm" in norms
    assert all(p.requires_grad for p in fpn.parameters())


# --------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("path", MODELS + [LAZY_DEMO], ids=lambda p: p.name)
def test_each_common_model_and_the_demo_config_builds(path):
    model = build_model_from_config_file(str(path))
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
    assert type(model).__name__ in ("GeneralizedRCNN", "RetinaNet")


@pytest.mark.parametrize("name, train_set, image_format, keypoints", [
    ("coco", "coco_2017_train", "BGR", False),
    ("coco_keypoint", "keypoints_coco_2017_train", "BGR", True),
    ("synthetic", "synthetic_shapes_train", "RGB", False),
])
def test_each_data_config_builds_its_mappers(name, train_set, image_format, keypoints):
    dataloader = LazyConfig.load(str(CONFIGS / "common" / "data" / f"{name}.py")).dataloader
    assert dataloader.train.dataset.names == train_set
    train, test = instantiate(dataloader.train.mapper), instantiate(dataloader.test.mapper)
    assert train.is_train and not test.is_train
    assert train.image_format == test.image_format == image_format
    assert (train.keypoint_hflip_indices is not None) == keypoints  # the flip swaps left and right keypoints


#: Detectron2's new-baseline schedules (configs/new_baselines of its main branch): iterations and
#: learning-rate drops (of 64-image batches)
SCHEDULES = {"50ep": (92187, [81944, 88773]), "100ep": (184375, [163889, 177546]),
             "200ep": (368750, [327778, 355092]), "400ep": (737500, [655556, 710184])}


@pytest.mark.parametrize("path", BASELINES, ids=lambda p: p.name)
def test_each_new_baseline_is_detectron2s_recipe_with_our_body(path):
    cfg = load_training_config(str(path))
    lazy = lazy_config_of(cfg)
    epochs = path.stem.split("_")[-2]
    assert (lazy.train.max_iter, list(lazy.lr_multiplier.scheduler.milestones)) == SCHEDULES[epochs]
    assert lazy.lr_multiplier.scheduler.num_updates == lazy.train.max_iter
    assert (lazy.optimizer.lr, lazy.optimizer.weight_decay, lazy.dataloader.train.total_batch_size) == (0.1, 4e-5, 64)
    assert (cfg.SOLVER.AMP.ENABLED, cfg.MODEL.WEIGHTS, cfg.SOLVER.MAX_ITER) == (True, "", lazy.train.max_iter)
    augmentations = instantiate(lazy.dataloader.train.mapper).augmentations.augs
    assert [type(a).__name__ for a in augmentations] == ["ResizeScale", "FixedSizeCrop", "RandomFlip"]

    model = build_model_from_config_file(str(path))
    body = model.backbone.bottom_up
    assert len(body.res4) == (23 if "R_101" in path.name else 6)
    body_norms = [m for m in body.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert body_norms and all(type(m) is torch.nn.BatchNorm2d for m in body_norms)  # SyncBN, one process
    fpn = model.backbone
    assert all(type(m.norm) is torch.nn.SyncBatchNorm for m in (fpn.fpn_lateral2, fpn.fpn_output5))
    head_norms = [m for m in model.roi_heads.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
    assert len(head_norms) == 4 + 4 and all(isinstance(m, NaiveSyncBatchNorm) for m in head_norms)
    assert all(p.requires_grad for p in model.parameters())  # from scratch, nothing frozen
    assert len(model.proposal_generator.rpn_head.conv) == 2

    optimizer = LazyConfigTrainer.build_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.SGD and optimizer.defaults["lr"] == 0.1
    multiplier = LazyConfigTrainer.build_lr_scheduler(cfg, optimizer)._multiplier
    assert multiplier(0.0) == pytest.approx(0.067) and multiplier(0.999) == pytest.approx(0.01)
    if path.name == "mask_rcnn_R_50_FPN_100ep_LSJ.py":
        model.eval()
        with torch.no_grad():
            outputs = model([{"image": torch.randint(0, 255, (3, 96, 128)).float()}])
        assert outputs[0]["instances"].image_size == (96, 128)


@pytest.mark.parametrize("path", VARIANTS, ids=lambda p: p.name)
def test_each_variant_recipe_is_one_override_of_the_r50_recipe(path):
    variant = lazy_config_of(load_training_config(str(path)))
    base = lazy_config_of(load_training_config(str(CONFIGS / "new_baselines" / "mask_rcnn_R_50_FPN_100ep_LSJ.py")))
    changed = {key: value for key, value in variant.model.backbone.bottom_up.items()
               if base.model.backbone.bottom_up.get(key) != value}
    assert len(changed) == 1, changed
    for section in ("train", "optimizer", "lr_multiplier", "dataloader"):
        assert LazyConfig.to_py(variant[section]) == LazyConfig.to_py(base[section]), section
    body = instantiate(variant.model.backbone.bottom_up)
    reference = instantiate(base.model.backbone.bottom_up)
    assert shapes(body) != shapes(reference)
    assert body.output_shape() == reference.output_shape()


# --------------------------------------------------------------------------- yacs <-> lazy
#: the input convention of timm/torchvision weights, which the variant YAML files use
RGB = ["model.pixel_mean=[123.675,116.28,103.53]", "model.pixel_std=[58.395,57.12,57.375]", "model.input_format=RGB"]
PAIRS = [
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "common/models/mask_rcnn_fpn.py", []),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", "common/models/mask_rcnn_c4.py", []),
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "common/models/faster_rcnn_fpn.py", []),
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "common/models/retinanet.py", []),
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x_resnet_d.yaml", "common/models/faster_rcnn_fpn.py",
     ["model.backbone.bottom_up.preset=resnet_d", *RGB]),
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x_preact.yaml", "common/models/faster_rcnn_fpn.py",
     ["model.backbone.bottom_up.preact=true", "model.backbone.bottom_up.stride_in_1x1=false", *RGB]),
]


@pytest.mark.parametrize("yacs_file, lazy_file, overrides", PAIRS, ids=[p[0].split("/")[-1] for p in PAIRS])
def test_yacs_and_lazy_forms_build_the_same_parameters(yacs_file, lazy_file, overrides):
    yacs = build_model_from_config_file(str(CONFIGS / yacs_file))
    lazy = build_model_from_config_file(str(CONFIGS / lazy_file), overrides)
    assert shapes(lazy) == shapes(yacs)
    # the same weights compute the same features: the architectures agree, not only the names
    lazy.load_state_dict(yacs.state_dict(), strict=True)
    yacs.eval(), lazy.eval()
    image = torch.randint(0, 255, (3, 64, 96)).float()
    with torch.no_grad():
        x = yacs.preprocess_image([{"image": image}]).tensor
        assert torch.equal(x, lazy.preprocess_image([{"image": image}]).tensor)
        expected, found = yacs.backbone(x), lazy.backbone(x)
    assert expected.keys() == found.keys() and all(torch.equal(expected[k], found[k]) for k in expected)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def lazy_run(tmp_path_factory, tiny_shapes):  # noqa: F811
    """4 iterations of the lazy demo config, evaluated at 2 and at the end."""
    out = tmp_path_factory.mktemp("lazy") / "run"
    code = main(["--config-file", str(LAZY_DEMO), *tiny_shapes,
                 *small_run(out, 4, "train.eval_period=2", "train.checkpointer.period=2")])
    assert code == 0
    return out


def test_lazy_config_trains_evaluates_and_keeps_the_best_checkpoint(lazy_run, tmp_path, tiny_shapes):  # noqa: F811
    out = lazy_run
    final = checkpoint(out / "model_final.pth")
    assert final["iteration"] == 3 and (out / "last_checkpoint").read_text() == "model_final.pth"
    best = checkpoint(out / "model_best.pth")
    assert best["iteration"] in (1, 4) and set(best["model"]) == set(final["model"])
    found = curves(read_metrics(out / "metrics.json"))
    assert found["total_loss"][0] == [4]
    # the tasks came from the model, as on the YAML path: segm AP exists even without detections
    assert found["bbox/AP"][0] == [2, 4] and found["segm/AP"][0] == [2, 4]
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert plot_training_curves(out / "metrics.json", tmp_path / "curves.png").stat().st_size > 0
    # the run records its LazyConfig, which loads back with the overrides applied
    recorded = LazyConfig.load(str(out / "config.yaml"))
    assert recorded.train.max_iter == 4 and recorded.model.backbone.bottom_up.depth == 18
    # the optimizer is the config's AdamW (SGD keeps no betas)
    assert tuple(final["trainer"]["_trainer"]["optimizer"]["param_groups"][0]["betas"]) == (0.9, 0.999)

    # --eval-only of the final weights reproduces training's last evaluation
    eval_out = tmp_path / "eval"
    code = main(["--config-file", str(LAZY_DEMO), *tiny_shapes, "--eval-only",
                 *small_run(eval_out, 4, f"train.init_checkpoint={out / 'model_final.pth'}")])
    assert code == 0
    results = "inference/tiny_shapes_val/coco_instances_results.json"
    assert json.loads((eval_out / results).read_text()) == json.loads((out / results).read_text())


def test_a_lazy_checkpoint_loads_into_the_yacs_model_and_back(lazy_run):
    final = checkpoint(lazy_run / "model_final.pth")["model"]
    yacs = build_model_from_config_file(str(DEMO_CONFIG))
    yacs.load_state_dict(final, strict=True)  # no missing, no unexpected key
    lazy = build_model_from_config_file(str(LAZY_DEMO))
    lazy.load_state_dict(yacs.state_dict(), strict=True)
    assert all(torch.equal(lazy.state_dict()[k], v) for k, v in final.items())
    # and through the checkpointer the YAML path uses (strict about the backbone)
    fresh = build_model_from_config_file(str(DEMO_CONFIG))
    incompatible = BackboneCheckpointer(fresh)._load_model(checkpoint(lazy_run / "model_final.pth"))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys


def test_lazy_mixed_precision_switch_trains_in_bfloat16_on_cpu(tmp_path, tiny_shapes):  # noqa: F811
    assert amp_dtype(load_training_config(str(LAZY_DEMO), ["train.amp.enabled=true"])) == torch.bfloat16
    assert amp_dtype(load_training_config(str(LAZY_DEMO))) is None
    out = tmp_path / "amp"
    assert main(["--config-file", str(LAZY_DEMO), *tiny_shapes,
                 *small_run(out, 2, "train.amp.enabled=true", "train.eval_period=0",
                            "dataloader.test.dataset.names=[]")]) == 0
    assert checkpoint(out / "model_final.pth")["iteration"] == 1


def test_two_gloo_processes_under_torchrun_train_a_lazy_config(tmp_path, tiny_shapes):  # noqa: F811
    # torchrun here; test_training starts its two processes with Detectron2's launcher
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), str(TOOL), "--config-file", str(LAZY_DEMO), *tiny_shapes,
               *small_run(out, 3, "train.eval_period=0", "dataloader.test.dataset.names=[]")]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "World size: 2" in (out / "log.txt").read_text()
    assert checkpoint(out / "model_final.pth")["iteration"] == 2
    assert LazyConfig.load(str(out / "config.yaml")).dataloader.train.total_batch_size == 2


def resume_schedule_args(out: Path, tiny_shapes: list, max_iter: int = 12) -> list:
    # the rate drops at iteration 10 of 12: a schedule restarted at the resume point would not have dropped
    return ["--config-file", str(LAZY_DEMO), *tiny_shapes,
            *small_run(out, max_iter, "optimizer.lr=0.01", "lr_multiplier.scheduler.values=[1.0,0.1]",
                       "lr_multiplier.scheduler.milestones=[10]", "lr_multiplier.scheduler.num_updates=12",
                       "train.checkpointer.period=4", "train.eval_period=0", "dataloader.test.dataset.names=[]")]


def assert_ends_on_the_uninterrupted_schedule(out: Path, resume_from: int) -> None:
    assert f"Starting training from iteration {resume_from}" in (out / "log.txt").read_text()
    final = checkpoint(out / "model_final.pth")
    assert final["iteration"] == 11
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 12
    optimizer = final["trainer"]["_trainer"]["optimizer"]
    assert optimizer["state"], "no optimizer state (AdamW's moments) saved"
    assert [group["lr"] for group in optimizer["param_groups"]] == pytest.approx(
        [0.01 * 0.1] * len(optimizer["param_groups"]))


def test_lazy_run_resumes_at_the_saved_iteration_with_the_same_schedule(tmp_path, tiny_shapes):  # noqa: F811
    # in-process: a run stopped after 4 of the schedule's 12 iterations, then resumed to the end
    # (the slow test below kills a real process instead)
    out = tmp_path / "resume"
    assert main(resume_schedule_args(out, tiny_shapes, max_iter=4)) == 0
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    (out / "model_final.pth").rename(out / "model_0000003.pth")
    (out / "last_checkpoint").write_text("model_0000003.pth")
    assert main(["--resume", *resume_schedule_args(out, tiny_shapes)]) == 0
    assert_ends_on_the_uninterrupted_schedule(out, 4)


@pytest.mark.slow
def test_killed_lazy_run_resumes_at_the_saved_iteration_with_the_same_schedule(tmp_path, tiny_shapes):  # noqa: F811
    out = tmp_path / "resume"
    args = resume_schedule_args(out, tiny_shapes)
    first = subprocess.Popen([sys.executable, str(TOOL), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = out / "last_checkpoint"
    deadline = time.monotonic() + 480  # start-up and 4 iterations, on a machine shared with others
    while not (tag.is_file() and tag.read_text() == "model_0000003.pth"):
        assert first.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 8 minutes"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    saved = tag.read_text()
    assert saved in ("model_0000003.pth", "model_0000007.pth")
    resume_from = int(saved[len("model_"):-len(".pth")]) + 1
    assert not (out / "model_final.pth").exists()

    resumed = subprocess.run([sys.executable, str(TOOL), "--resume", *args], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_ends_on_the_uninterrupted_schedule(out, resume_from)


def test_lazy_divergence_is_one_message_naming_the_lazy_keys(tmp_path, tiny_shapes, capsys):  # noqa: F811
    code = main(["--config-file", str(LAZY_DEMO), *tiny_shapes,
                 *small_run(tmp_path / "nan", 30, "optimizer.lr=1e6", "train.clip_gradients.enabled=false",
                            "train.eval_period=0", "dataloader.test.dataset.names=[]")])
    assert code == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1
    assert errors[0].startswith("error: the loss became NaN or infinite at iteration ") and "optimizer.lr" in errors[0]


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("override, expected", [
    ("train.max_itr=5", "override train.max_itr=5: no such key"),
    ("train.max_iter=abc", "override train.max_iter='abc': wrong type"),
    ("train.max_iter=2.5", "override train.max_iter=2.5: wrong type"),
    ("model.backbone.bottom_up.depth=19", "model.backbone.bottom_up.depth = 19 is not allowed"),
    ("model.backbone.bottom_up.nrom=BN", "model.backbone.bottom_up.nrom='BN': ResNetFamily has no argument 'nrom'"),
    ("model.backbone.bottom_up.se_ratio=big", "override model.backbone.bottom_up.se_ratio='big': wrong type"),
    ("model.backbone.bottom_up.deform_on_per_stage=[false,true,true,true]",
     "model.backbone.bottom_up.deform_on_per_stage = [False, True, True, True] cannot be combined with "
     "model.backbone.bottom_up.depth = 18"),
    ("model.backbone.fuse=avg", "FPN has no argument 'fuse'"),
    ("model.backbone.bottom_up.out_features=[res2,res4]", "model: cannot be built from this config"),
    ("train.amp.precision=int8", "train.amp.precision = 'int8' is not allowed"),
    ("train.max_iter", "not key=value"),
    ("train.ddp.fp16_compression=true", "override train.ddp.fp16_compression=True: the config has no key 'train.ddp'"),
    ("model.roi_heads.box_head.conv_dims.2=64", "model.roi_heads.box_head.conv_dims has 2 items"),
])
def test_a_bad_lazy_override_gets_one_error_line_and_status_2(override, expected, tmp_path, capsys):
    code = main(["--config-file", str(LAZY_DEMO), f"train.output_dir={tmp_path}", override])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert expected in errors[0]
    if "cannot be built" not in expected:  # found before anything starts: nothing else is printed
        assert err.strip() == errors[0]


def test_a_missing_lazy_config_file_is_one_error_line(capsys):
    assert main(["--config-file", "no/such.py"]) == 2
    assert capsys.readouterr().err.strip() == "error: no/such.py: no such config file"
