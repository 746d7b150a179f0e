"""ImageNet pretraining: learning on the synthetic folder, DDP with gloo, kill and resume,
conversion into Mask R-CNN, bad images, layout errors, recipes and schedules."""
import json
import math
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

from resnet_backbones.config import load_config
from resnet_backbones.data import ensure_imagefolder, write_corrupt_image
from resnet_backbones.pretrain import CHECKPOINT_NAME, ImageNetClassifier, load_pretrain_config
from resnet_backbones.pretrain.cli import _overrides, build_parser, main as pretrain_main
from resnet_backbones.pretrain.config import config_from_yaml_text, learning_rate, val_crop_size, val_resize_size
from resnet_backbones.pretrain.distributed import DistContext
from resnet_backbones.pretrain.engine import Pretrainer
from resnet_backbones.pretrain.optim import LrSchedule
from resnet_backbones.weights import BackboneCheckpointer, ConventionMismatchWarning
from resnet_backbones.weights.cli import main as convert_main

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "pretrain_imagenet.py"
TINY = ROOT / "configs" / "ImageNet" / "tiny_synthetic.yaml"
DETECTION = ROOT / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_1x.yaml"
ITERS_PER_EPOCH = 12  # 192 training images, batch 16
STAGES = ("res2", "res3", "res4", "res5")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On a loaded 2-core machine, OpenMP threads spin-waiting for each other make 2-thread torch
    # ten times slower than 1 thread. Subprocesses get OMP_NUM_THREADS=1 for the same reason and
    # so that their arithmetic matches this process's bit for bit.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def subprocess_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two synthetic classes (disc, stripes): 96 + 96 training and 32 + 32 validation images."""
    return ensure_imagefolder(tmp_path_factory.mktemp("imagefolder"), num_classes=2, train_per_class=96,
                              val_per_class=32, image_size=40)


def run_args(data, out, *extra):
    # on the CPU even where there are GPUs: the two-process test needs gloo
    return ["--config-file", str(TINY), "--data-path", str(data), "--output-dir", str(out), *extra,
            "MODEL.DEVICE", "cpu"]


def read_metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """The tiny config's 5 epochs in this process (EMA on)."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert pretrain_main(run_args(data, out)) == 0
    return out


def test_pretraining_learns_and_writes_metrics_events_plot_and_checkpoint(trained):
    history = read_metrics(trained)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    for record in history:
        assert {"epoch", "train_loss", "top1", "top5", "lr", "ema_top1", "ema_top5"} <= set(record)
        assert record["train_images"] == ITERS_PER_EPOCH * 16 and record["val_images"] == 64
    # two classes: chance is 50 % and log(2) the loss of a chance-level predictor; the loss rises
    # after the warm-up epoch, then falls
    losses = [r["train_loss"] for r in history]
    assert losses[-1] < math.log(2) - 0.03 and losses[-1] < 0.75 * max(losses)
    assert max(history[-1]["top1"], history[-1]["ema_top1"]) >= 60
    assert history[-1]["top5"] == 100  # top-5 of two classes

    # the rate of the last iteration of each epoch follows the cosine with warm-up
    schedule = LrSchedule("cosine", ITERS_PER_EPOCH, 5, warmup_epochs=1.0, warmup_factor=0.1)
    for record in history:
        assert record["lr"] == pytest.approx(0.075 * schedule(record["epoch"] * ITERS_PER_EPOCH - 1))

    assert list(trained.glob("events.out.tfevents.*"))
    assert (trained / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(trained / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["epoch"] == 5 and state["iteration"] == 5 * ITERS_PER_EPOCH
    assert state["input_convention"] == {"input_format": "RGB", "pixel_mean": [123.675, 116.28, 103.53],
                                         "pixel_std": [58.395, 57.12, 57.375], "stride_in_1x1": False}
    assert state["classes"] == ["disc", "stripes"] and state["ema"]["num_updates"] > 0
    assert {"optimizer", "scheduler", "scaler", "config", "history"} <= set(state)


def test_progress_bar_reports_images_per_second(data, tmp_path, capsys):
    assert pretrain_main(run_args(data, tmp_path / "run", "--epochs", "1", "PRETRAIN.LOG_PERIOD", "1")) == 0
    captured = capsys.readouterr()
    assert "images_s=" in captured.err and "epoch 1/1" in captured.err
    assert "1 process(es) on cpu x 16 images = batch 16; 12 iterations per epoch" in captured.out
    assert "epoch 1/1: train_loss" in captured.out


def test_two_gloo_processes_share_the_batch_and_count_each_image_once(data, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(TOOL), *run_args(data, out, "--epochs", "1")]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es) on cpu x 8 images = batch 16; 12 iterations per epoch" in result.stdout
    assert result.stdout.count("epoch 1/1: train_loss") == 1  # only the first process reports
    (record,) = read_metrics(out)
    assert record["train_images"] == 12 * 16  # both processes' images
    assert record["val_images"] == 64  # each validation image once, none padded in twice
    state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["world_size"] == 2 and state["iteration"] == 12


def test_killed_run_resumes_at_the_next_epoch_and_ends_where_an_uninterrupted_run_ends(data, tmp_path, trained):
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, str(TOOL), *run_args(data, out)], env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / CHECKPOINT_NAME).exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    done = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= done < 5, "the kill came too late to test anything"

    result = subprocess.run([sys.executable, str(TOOL), "--data-path", str(data), "--output-dir", str(out),
                             "--resume"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f"resumed after epoch {done} (iteration {done * ITERS_PER_EPOCH}); continuing at epoch {done + 1}"
            in result.stdout)
    assert f"epoch {done}/5:" not in result.stdout  # finished epochs are not run again
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3, 4, 5]

    resumed = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    reference = torch.load(trained / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert resumed["iteration"] == reference["iteration"] == 5 * ITERS_PER_EPOCH
    assert resumed["scheduler"] == reference["scheduler"]
    assert resumed["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    assert resumed["ema"]["num_updates"] == reference["ema"]["num_updates"]
    for name in ("model", "ema"):
        a, b = (resumed[name], reference[name]) if name == "model" else (resumed[name]["model"], reference[name]["model"])
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=f"{name} {key}")
    momentum = [s["momentum_buffer"] for s in resumed["optimizer"]["state"].values()]
    expected = [s["momentum_buffer"] for s in reference["optimizer"]["state"].values()]
    assert len(momentum) == len(expected)
    for a, b in zip(momentum, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(read_metrics(out), read_metrics(trained)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4) and a["lr"] == pytest.approx(b["lr"])


def detection_config(state, *overrides):
    """The Mask R-CNN config with the checkpoint's body and input convention."""
    keys = []
    for key, value in (("MODEL.RESNETS.DEPTH", 50), ("MODEL.RESNETS.WIDTH_PER_GROUP", 8),
                       ("MODEL.RESNETS.RES2_OUT_CHANNELS", 32), ("MODEL.RESNETS.STEM_OUT_CHANNELS", 16),
                       ("MODEL.RESNETS.STRIDE_IN_1X1", False), ("INPUT.FORMAT", "RGB"),
                       ("MODEL.PIXEL_MEAN", state["input_convention"]["pixel_mean"]),
                       ("MODEL.PIXEL_STD", state["input_convention"]["pixel_std"]), ("MODEL.WEIGHTS", "")):
        keys += [key, str(value)]
    return load_config(str(DETECTION), keys + list(overrides))


def assert_detector_has_classifier_features(run, converted, ema=False, body_keys=()):
    """Load ``converted`` into Mask R-CNN with the run's body: no missing key, no convention
    warning, and res2..res5 equal to the classifier trunk's on the same raw images."""
    state = torch.load(run / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    classifier = ImageNetClassifier.from_config(config_from_yaml_text(state["config"]), 2)
    classifier.load_state_dict(state["ema"]["model"] if ema else state["model"])
    classifier.eval()

    cfg = detection_config(state, *body_keys)
    detector = build_model(cfg).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConventionMismatchWarning)
        # strict: a backbone parameter missing from the file would raise here
        BackboneCheckpointer(detector, cfg=cfg).load(str(converted))

    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        expected = classifier.backbone(classifier.normalize(image))
        # what GeneralizedRCNN.preprocess_image does to an image before the backbone
        actual = detector.backbone.bottom_up((image - detector.pixel_mean) / detector.pixel_std)
    for stage in STAGES:
        assert expected[stage].abs().max() > 1e-2
        torch.testing.assert_close(actual[stage], expected[stage], atol=1e-5, rtol=0)


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_converted_checkpoint_loads_into_mask_rcnn_with_the_classifiers_features(trained, tmp_path, capsys, ema):
    output = tmp_path / "pretrained_d2.pth"
    assert convert_main([str(trained / CHECKPOINT_NAME), str(output)] + (["--ema"] if ema else [])) == 0
    printed = capsys.readouterr().out
    assert f"{'EMA' if ema else 'plain'} weights after epoch 5" in printed
    assert "dropped on purpose (2): head.fc.weight, head.fc.bias" in printed
    assert "INPUT.FORMAT: RGB" in printed and "MODEL.RESNETS.STRIDE_IN_1X1: False" in printed
    assert "note:" not in printed  # the convention is recorded, not assumed
    assert_detector_has_classifier_features(trained, output, ema=ema)


def test_a_variant_body_pretrains_converts_and_loads(data, tmp_path):
    # ResNet-D's deep stem and average-pool shortcuts, with squeeze-and-excitation
    variant = ["MODEL.RESNETS.STEM_TYPE", "deep", "MODEL.RESNETS.AVG_DOWN", "True", "MODEL.RESNETS.SE_RATIO", "0.25"]
    run = tmp_path / "run"
    assert pretrain_main(run_args(data, run, "--epochs", "1", *variant)) == 0
    assert convert_main([str(run / CHECKPOINT_NAME), str(tmp_path / "d2.pth")]) == 0
    assert_detector_has_classifier_features(run, tmp_path / "d2.pth", body_keys=variant)


def test_rgb_weights_in_a_bgr_detection_config_warn_naming_both(trained, tmp_path):
    output = tmp_path / "pretrained_d2.pth"
    assert convert_main([str(trained / CHECKPOINT_NAME), str(output)]) == 0
    state = torch.load(trained / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    cfg = detection_config(state, "INPUT.FORMAT", "BGR")
    with pytest.warns(ConventionMismatchWarning, match="INPUT.FORMAT: the weights expect RGB, the config has BGR"):
        BackboneCheckpointer(build_model(cfg), cfg=cfg).load(str(output))


def test_ema_flag_on_a_run_without_ema_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain_main(run_args(data, out, "--epochs", "1", "PRETRAIN.EMA.ENABLED", "False")) == 0
    assert convert_main([str(out / CHECKPOINT_NAME), str(tmp_path / "x.pth"), "--ema"]) == 2
    assert "kept no EMA of the weights" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


@pytest.fixture
def small_data_with_bad_files(tmp_path):
    root = ensure_imagefolder(tmp_path / "data", num_classes=2, train_per_class=16, val_per_class=4, image_size=40)
    bad_train = write_corrupt_image(root / "train" / "disc" / "disc_broken.jpg", "truncated")
    bad_val = write_corrupt_image(root / "val" / "stripes" / "stripes_garbage.jpg", "garbage")
    return root, bad_train, bad_val


def test_an_undecodable_image_stops_the_run_naming_its_path(small_data_with_bad_files, tmp_path, capsys):
    root, bad_train, _ = small_data_with_bad_files
    assert pretrain_main(run_args(root, tmp_path / "run", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    # splitlines also splits at the progress bar's carriage returns
    assert err.splitlines()[-1].startswith(f"error: {bad_train}: cannot decode this image (OSError: ")
    assert "--skip-bad-images" in err and "Traceback" not in err


def test_skip_bad_images_counts_and_reports_them(small_data_with_bad_files, tmp_path, capsys):
    root, bad_train, bad_val = small_data_with_bad_files
    out = tmp_path / "run"
    assert pretrain_main(run_args(root, out, "--epochs", "1", "--skip-bad-images")) == 0
    printed = capsys.readouterr().out
    assert "skipped 2 image(s) that could not be decoded:" in printed
    assert f"  {bad_train} (OSError: " in printed and f"  {bad_val} (UnidentifiedImageError: " in printed
    (record,) = read_metrics(out)
    assert record["skipped_images"] == 2
    assert record["train_images"] == 32  # a skipped training image is replaced: batches keep their size
    assert record["val_images"] == 8  # the 8 readable validation images


@pytest.mark.parametrize("setup, message", [
    (lambda root: (root / "train" / "disc").mkdir(parents=True), "no val/ folder"),
    (lambda root: [(root / s / c).mkdir(parents=True) for s in ("train", "val") for c in ("a", "b")][0] or
     (root / "val" / "b").rmdir(), "the class folders of train/ and val/ differ (only in train/: b; only in val/: none)"),
    (lambda root: [(root / s / "a").mkdir(parents=True) for s in ("train", "val")], "no images in this class folder"),
])
def test_a_folder_without_the_layout_gets_the_layout_expected(tmp_path, capsys, setup, message):
    root = tmp_path / "data"
    setup(root)
    assert pretrain_main(run_args(root, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert message in err
    assert f"{root}/train/<class>/<image>.JPEG" in err and f"{root}/val/<class>/<image>.JPEG" in err


def test_sync_bn_with_several_cpu_processes_is_refused(data, tmp_path):
    cfg = load_pretrain_config(str(TINY), ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.DEVICE", "cpu"])
    two_cpu_processes = DistContext(rank=0, local_rank=0, world_size=2, device=torch.device("cpu"), owns_group=False)
    with pytest.raises(ValueError, match="MODEL.RESNETS.NORM = 'SyncBN' is not allowed with several CPU processes"):
        Pretrainer(cfg, data, tmp_path, ctx=two_cpu_processes)


def test_resume_and_output_dir_mistakes_are_clear(data, tmp_path, trained, capsys):
    assert pretrain_main(["--data-path", str(data), "--output-dir", str(tmp_path), "--resume"]) == 2
    assert f"--resume: {tmp_path / CHECKPOINT_NAME}: no such checkpoint" in capsys.readouterr().err
    assert pretrain_main(run_args(data, trained)) == 2
    assert "exists: pass --resume to continue that run" in capsys.readouterr().err
    assert pretrain_main(run_args(data, trained, "--resume", "--epochs", "9")) == 2
    assert "PRETRAIN.EPOCHS is 5 there, 9 here" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_modern_recipe_switches_run_together(small_data_with_bad_files, tmp_path, precision):
    root = small_data_with_bad_files[0]
    (root / "train" / "disc" / "disc_broken.jpg").unlink()
    (root / "val" / "stripes" / "stripes_garbage.jpg").unlink()
    out = tmp_path / "run"
    assert pretrain_main(run_args(root, out, "--epochs", "1", "--amp", precision, "--channels-last",
                                  "PRETRAIN.MIXUP_ALPHA", "0.2", "PRETRAIN.CUTMIX_ALPHA", "1.0",
                                  "PRETRAIN.LABEL_SMOOTHING", "0.1", "PRETRAIN.AUTO_AUGMENT", "ta_wide",
                                  "PRETRAIN.RANDOM_ERASE", "0.25", "INPUT.FORMAT", "BGR",
                                  "MODEL.PIXEL_MEAN", "[103.53, 116.28, 123.675]",
                                  "MODEL.PIXEL_STD", "[57.375, 57.12, 58.395]")) == 0
    (record,) = read_metrics(out)
    assert torch.isfinite(torch.tensor([record["train_loss"], record["ema_top1"]])).all()
    state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # loss scaling only for fp16
    assert state["input_convention"]["input_format"] == "BGR"


def test_recipes_and_command_line_overrides():
    paper = load_pretrain_config(str(ROOT / "configs/ImageNet/R_50.yaml"))
    p = paper.PRETRAIN
    assert (paper.MODEL.RESNETS.DEPTH, p.EPOCHS, tuple(p.STEPS), p.GAMMA, p.MOMENTUM, p.WEIGHT_DECAY) == \
        (50, 90, (30, 60), 0.1, 0.9, 1e-4)
    assert learning_rate(paper) == pytest.approx(0.1) and (val_crop_size(paper), val_resize_size(paper)) == (224, 256)
    modern = load_pretrain_config(str(ROOT / "configs/ImageNet/R_50_modern.yaml"))
    m = modern.PRETRAIN
    assert learning_rate(modern) == pytest.approx(0.5) and m.LR_SCHEDULER == "cosine"
    assert (m.LABEL_SMOOTHING, m.MIXUP_ALPHA, m.CUTMIX_ALPHA, m.EMA.ENABLED, m.WEIGHT_DECAY_NORM_AND_BIAS) == \
        (0.1, 0.2, 1.0, True, False)
    for config in (ROOT / "configs/ImageNet").glob("*.yaml"):
        load_pretrain_config(str(config))

    args = build_parser().parse_args(["--config-file", "x", "--data-path", "d", "--output-dir", "o", "--epochs", "3",
                                      "--batch-size", "512", "--lr", "0.2", "--crop-size", "160", "--workers", "2",
                                      "--amp", "bf16", "--channels-last", "--sync-bn", "PRETRAIN.SEED", "7"])
    cfg = load_pretrain_config(str(ROOT / "configs/ImageNet/R_50.yaml"), _overrides(args))
    p = cfg.PRETRAIN
    assert (p.EPOCHS, p.BATCH_SIZE, p.CROP_SIZE, p.NUM_WORKERS, p.PRECISION, p.SEED) == (3, 512, 160, 2, "bf16", 7)
    assert cfg.MODEL.RESNETS.CHANNELS_LAST
    assert learning_rate(cfg) == pytest.approx(0.4) and cfg.MODEL.RESNETS.NORM == "SyncBN"
    assert (val_crop_size(cfg), val_resize_size(cfg)) == (160, 183)  # they follow the crop, 224 : 256

    with pytest.raises(ValueError, match=r"PRETRAIN.LR_SCHEDULER = 'poly' is not allowed: one of \['step', 'cosine'\]"):
        load_pretrain_config(str(TINY), ["PRETRAIN.LR_SCHEDULER", "poly"])
    with pytest.raises(ValueError, match="MODEL.RESNETS.NORM = 'FrozenBN' is not allowed"):
        load_pretrain_config(str(ROOT / "configs/ImageNet/R_50.yaml"), ["MODEL.RESNETS.NORM", "FrozenBN"])


def test_schedules():
    step = LrSchedule("step", iters_per_epoch=100, epochs=90, steps=(30, 60))
    assert [step(i) for i in (0, 2999, 3000, 5999, 6000, 8999)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = LrSchedule("cosine", iters_per_epoch=10, epochs=100, warmup_epochs=5, warmup_factor=0.01)
    assert cosine(0) == pytest.approx(0.01)
    assert cosine(25) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the warm-up
    assert cosine(50) == pytest.approx(1.0)
    assert cosine(50 + 475) == pytest.approx(0.5)  # half-way through the cosine
    assert cosine(999) == pytest.approx(0, abs=1e-4)
    values = [cosine(i) for i in range(50, 1000)]
    assert values == sorted(values, reverse=True)
