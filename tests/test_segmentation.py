"""Semantic segmentation: DeepLab v3/v3+ heads on our bodies, the NumPy-2 evaluator, the sem-seg
dataset layout and the synthetic split, the poly schedule, train_net, configs, Panoptic FPN."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools.coco import COCO

import resnet_backbones  # noqa: F401  (before detectron2: installs the stand-ins)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from resnet_backbones.config import get_default_config, load_config
from resnet_backbones.data import (SYNTHETIC_STUFF_CLASSES, coco_split_paths, ensure_synthetic_coco,
                                   ensure_synthetic_sem_seg, load_sem_seg_pairs, register_sem_seg,
                                   register_synthetic_panoptic)
from resnet_backbones.data.datasets import parse_dataset_spec
from resnet_backbones.data.sem_seg import SemSegDatasetSpec, sem_seg_label_dir
from resnet_backbones.engine.segmentation import PolyLRMultiplier, build_lr_scheduler
from resnet_backbones.engine.train_net import main
from resnet_backbones.evaluation.sem_seg import SemSegEvaluator, confusion_matrix, sem_seg_metrics
from resnet_backbones.modeling.arch import ConfigError
from resnet_backbones.modeling.segmentation import hard_pixel_mining_loss

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "Demo" / "deeplab_v3_plus_R_18_synthetic.yaml"
PANOPTIC_CONFIG = REPO / "configs" / "Demo" / "panoptic_fpn_R_18_FPN_synthetic.yaml"

HEADS = {
    "v3": ["MODEL.SEM_SEG_HEAD.NAME", "ResNetFamilyDeepLabV3Head", "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res5']",
           "MODEL.RESNETS.OUT_FEATURES", "['res5']"],
    "v3+": ["MODEL.SEM_SEG_HEAD.NAME", "ResNetFamilyDeepLabV3PlusHead",
            "MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res5']", "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res5']",
            "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "4"],
}
BODIES = {
    "os16_multigrid": ["MODEL.RESNETS.OUTPUT_STRIDE", "16", "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2]"],
    "os8": ["MODEL.RESNETS.OUTPUT_STRIDE", "8", "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 1]"],
    "deeplab_stem": ["MODEL.RESNETS.PRESET", "deeplab_stem"],
    "preact": ["MODEL.RESNETS.PREACT", "True"],
    "se": ["MODEL.RESNETS.SE_RATIO", "0.25"],
}


def small_segmentor_cfg(head: str, body: str, *extra: str):
    overrides = ["MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2]", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32",
                 "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[16]",
                 "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.SEM_SEG_HEAD.ASPP_DROPOUT", "0.0",
                 "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "cross_entropy", "INPUT.CROP.ENABLED", "False"]
    overrides += HEADS[head] + BODIES[body] + list(extra)
    if head == "v3":
        stride = 8 if body == "os8" else 16
        overrides += ["MODEL.SEM_SEG_HEAD.COMMON_STRIDE", str(stride)]
    return load_config(str(DEMO_CONFIG), overrides)


def toy_batch(size: int = 64, count: int = 4):
    """Images with a bright square (class 1) and a dark disc (class 2) on grey, and their labels."""
    generator = torch.Generator().manual_seed(0)
    batch = []
    for index in range(count):
        label = torch.zeros(size, size, dtype=torch.long)
        label[8 + index * 4:32 + index * 4, 10:34] = 1
        ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        label[(ys - 44) ** 2 + (xs - 44 + index * 3) ** 2 < 100] = 2
        colours = torch.tensor([[128.0, 128, 128], [240, 220, 40], [30, 40, 160]])
        image = colours[label].permute(2, 0, 1) + 8 * torch.randn(3, size, size, generator=generator)
        label[0, :] = 255  # a row that counts nowhere
        batch.append({"image": image.clamp(0, 255), "sem_seg": label, "height": size, "width": size})
    return batch


# ---- heads ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", list(BODIES))
@pytest.mark.parametrize("head", list(HEADS))
def test_head_builds_on_the_body_and_its_loss_falls(head, body):
    torch.manual_seed(0)
    cfg = small_segmentor_cfg(head, body)
    model = build_model(cfg)
    stride = 8 if body == "os8" else 16
    aspp = model.sem_seg_head.aspp
    dilations = [aspp.convs[i].dilation[0] for i in (1, 2, 3)]
    assert dilations == ([12, 24, 36] if stride == 8 else [6, 12, 18])
    assert model.backbone.output_shape()["res5"].stride == stride
    if head == "v3+":
        assert model.sem_seg_head.in_features == ["res2", "res5"]
        assert model.sem_seg_head.decoder[0].project.out_channels == 16

    batch = toy_batch(count=2)
    losses = train_steps(model, batch, 8)
    assert losses[-1] < 0.8 * losses[0] and losses == sorted(losses, reverse=True), losses

    model.eval()
    with torch.no_grad():
        output = model([{"image": batch[0]["image"], "height": 64, "width": 64}])[0]["sem_seg"]
    assert output.shape == (3, 64, 64)


def train_steps(model, batch, steps: int, lr: float = 3e-3) -> list:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(batch)["loss_sem_seg"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    return losses


def test_hard_pixel_mining_trains_too():
    torch.manual_seed(0)
    model = build_model(small_segmentor_cfg("v3+", "se", "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "hard_pixel_mining"))
    losses = train_steps(model, toy_batch(), 10)
    assert losses[-1] < 0.93 * losses[0], losses


def test_aspp_dilations_written_in_the_config_are_kept():
    cfg = small_segmentor_cfg("v3", "os8", "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", "[6, 12, 18]")
    aspp = build_model(cfg).sem_seg_head.aspp
    assert [aspp.convs[i].dilation[0] for i in (1, 2, 3)] == [6, 12, 18]


def test_crop_gives_image_pooling_over_the_crop():
    cfg = small_segmentor_cfg("v3+", "os16_multigrid", "INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute",
                              "INPUT.CROP.SIZE", "(64, 128)")
    pooling = build_model(cfg).sem_seg_head.aspp.convs[4][0]
    assert isinstance(pooling, torch.nn.AvgPool2d) and tuple(pooling.kernel_size) == (4, 8)


@pytest.mark.parametrize("overrides, message", [
    (["MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "8"], "COMMON_STRIDE = 8 must be the stride of the finest feature"),
    (["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res5']"], "at least two features for DeepLab v3+"),
    (["MODEL.SEM_SEG_HEAD.PROJECT_FEATURES", "['res3']"], "PROJECT_FEATURES = ['res3']"),
    (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "dice"], "MODEL.SEM_SEG_HEAD.LOSS_TYPE = 'dice' is not allowed"),
    (["MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", "[6, 12]"], "ASPP_DILATIONS = [6, 12] is not allowed"),
    (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "(100, 100)"],
     "INPUT.CROP.SIZE = [100, 100] must be"),
    (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "relative_range"],
     "INPUT.CROP.TYPE = 'relative_range' cannot be combined"),
    (["MODEL.RESNETS.OUT_FEATURES", "['res5']"], "MODEL.SEM_SEG_HEAD.IN_FEATURES"),
])
def test_head_config_errors_name_the_key(overrides, message):
    cfg = small_segmentor_cfg("v3+", "os16_multigrid", *overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_model(cfg)


def test_hard_pixel_mining_is_the_mean_of_the_hardest_fifth_of_all_pixels():
    logits = torch.randn(2, 4, 5, 6, generator=torch.Generator().manual_seed(3))
    targets = torch.randint(0, 4, (2, 5, 6), generator=torch.Generator().manual_seed(4))
    targets[0, 0] = 255
    per_pixel = -F.log_softmax(logits, dim=1).gather(1, targets.clamp(max=3)[:, None])[:, 0]
    per_pixel[targets == 255] = 0.0  # ignored pixels are candidates with a loss of zero
    kept = int(0.2 * per_pixel.numel())
    expected = per_pixel.flatten().sort(descending=True).values[:kept].mean()
    assert torch.allclose(hard_pixel_mining_loss(logits, targets, 255), expected, atol=1e-6)
    plain = F.cross_entropy(logits, targets, ignore_index=255)
    assert torch.allclose(hard_pixel_mining_loss(logits, targets, 255, fraction=1.0) * 60 / 54, plain, atol=1e-6)


# ---- evaluator ------------------------------------------------------------------------------------

# 3 classes and ignore 255. Class 2 is absent from the ground truth but predicted on two pixels;
# the ignored pixels are predicted as everything.
HAND_GT = [np.array([[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 255, 1]]), np.array([[1, 1], [0, 255]])]
HAND_PRED = [np.array([[0, 1, 1, 1], [2, 2, 1, 0], [0, 0, 1, 1]]), np.array([[1, 0], [0, 2]])]


def numpy_reference(gts, preds, num_classes, ignore):
    """Counts by a loop over classes, then the metrics as their definitions read."""
    counts = np.zeros((num_classes, num_classes))  # [true, predicted]
    for gt, pred in zip(gts, preds):
        valid = gt != ignore
        for t in range(num_classes):
            for p in range(num_classes):
                counts[t, p] += np.sum(valid & (gt == t) & (pred == p))
    present = [c for c in range(num_classes) if counts[c].sum() > 0]
    iou = {c: counts[c, c] / (counts[c].sum() + counts[:, c].sum() - counts[c, c]) for c in present}
    acc = {c: counts[c, c] / counts[c].sum() for c in present}
    total = counts.sum()
    return {
        "mIoU": 100 * np.mean([iou[c] for c in present]),
        "fwIoU": 100 * sum(iou[c] * counts[c].sum() / total for c in present),
        "mACC": 100 * np.mean([acc[c] for c in present]),
        "pACC": 100 * np.trace(counts) / total,
        "iou": iou,
    }


def test_evaluator_equals_a_direct_numpy_computation(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for index, gt in enumerate(HAND_GT):
        cv2.imwrite(str(images / f"{index}.jpg"), np.zeros((*gt.shape, 3), np.uint8))
        cv2.imwrite(str(labels / f"{index}.png"), gt.astype(np.uint8))
    name = register_sem_seg("hand_made_sem_seg", images, labels, ["a", "b", "c"], ignore_label=255)
    evaluator = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for index, pred in enumerate(HAND_PRED):
        logits = F.one_hot(torch.from_numpy(pred), 3).permute(2, 0, 1).float()
        evaluator.process([{"file_name": str(images / f"{index}.jpg")}], [{"sem_seg": logits}])
    results = evaluator.evaluate()["sem_seg"]

    expected = numpy_reference(HAND_GT, HAND_PRED, 3, 255)
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert results[key] == pytest.approx(expected[key], abs=1e-9), key
    assert results["IoU-a"] == pytest.approx(100 * expected["iou"][0])
    assert results["IoU-b"] == pytest.approx(100 * expected["iou"][1])
    assert math.isnan(results["IoU-c"]) and math.isnan(results["ACC-c"])  # absent from the ground truth
    # by hand, over the 13 counted pixels: a is true on 6, predicted on 6, both on 4 (IoU 4 / 8); b is
    # true on 7, predicted on 6, both on 5 (IoU 5 / 8); c, predicted once, takes a pixel of a
    assert results["IoU-a"] == pytest.approx(100 * 4 / 8)
    assert results["IoU-b"] == pytest.approx(100 * 5 / 8)
    assert results["mIoU"] == pytest.approx(100 * (4 / 8 + 5 / 8) / 2)
    assert results["fwIoU"] == pytest.approx(100 * (6 / 13 * 4 / 8 + 7 / 13 * 5 / 8))
    assert results["pACC"] == pytest.approx(100 * 9 / 13)
    assert results["mACC"] == pytest.approx(100 * (4 / 6 + 5 / 7) / 2)
    written = json.loads((tmp_path / "out" / "sem_seg_evaluation.json").read_text())
    assert written["mIoU"] == pytest.approx(results["mIoU"])


def test_confusion_matrix_rejects_labels_that_are_no_class():
    with pytest.raises(ValueError, match=r"ground-truth values \[7\]"):
        confusion_matrix(np.zeros((2, 2)), np.array([[0, 7], [1, 255]]), 3, 255)
    matrix = confusion_matrix(np.array([[0, 1]]), np.array([[0, 255]]), 2, 255)
    assert matrix.sum() == 2 and matrix[1, 2] == 1  # the ignored pixel in the last column
    assert sem_seg_metrics(matrix, ["x", "y"])["pACC"] == 100.0


def test_evaluator_names_the_label_file_with_a_bad_value(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    cv2.imwrite(str(images / "0.png"), np.zeros((2, 2, 3), np.uint8))
    cv2.imwrite(str(labels / "0.png"), np.array([[0, 9], [1, 1]], np.uint8))
    name = register_sem_seg("bad_value_sem_seg", images, labels, ["a", "b"])
    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    with pytest.raises(ValueError, match="0.png: ground-truth values"):
        evaluator.process([{"file_name": str(images / "0.png")}], [{"sem_seg": torch.zeros(2, 2, 2)}])


# ---- data -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_semantic(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_semantic")
    ensure_synthetic_coco(root, num_train=8, num_val=4, image_size=128)
    ensure_synthetic_sem_seg(root)
    return root


def test_synthetic_labels_are_the_instance_masks_with_background_zero(tiny_semantic):
    json_file, image_dir = coco_split_paths(tiny_semantic, "val")
    coco = COCO(str(json_file))
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        label = cv2.imread(str(sem_seg_label_dir(tiny_semantic, "val") / info["file_name"]), cv2.IMREAD_UNCHANGED)
        expected = np.zeros((info["height"], info["width"]), np.uint8)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            expected[coco.annToMask(annotation).astype(bool)] = annotation["category_id"]
        np.testing.assert_array_equal(label, expected)
        assert set(np.unique(label)) <= set(range(len(SYNTHETIC_STUFF_CLASSES)))
    # a second call finds them done; a removed label makes it redraw
    folder = sem_seg_label_dir(tiny_semantic, "val")
    before = (folder / "000001.png").stat().st_mtime_ns
    ensure_synthetic_sem_seg(tiny_semantic)
    assert (folder / "000001.png").stat().st_mtime_ns == before
    (folder / "000002.png").unlink()
    ensure_synthetic_sem_seg(tiny_semantic)
    assert (folder / "000002.png").is_file()


def test_sem_seg_spec_parses_and_pairs_check_both_ways(tmp_path, tiny_semantic):
    _, images = coco_split_paths(tiny_semantic, "train")
    labels = sem_seg_label_dir(tiny_semantic, "train")
    spec = parse_dataset_spec(f"mine_train={images}:{labels}")
    assert spec == SemSegDatasetSpec("mine_train", images, labels)
    pairs = load_sem_seg_pairs(images, labels)
    assert len(pairs) == 8 and all(Path(p["file_name"]).stem == Path(p["sem_seg_file_name"]).stem for p in pairs)
    with pytest.raises(ValueError, match="label folder .* does not exist"):
        parse_dataset_spec(f"mine={images}:{tmp_path / 'missing'}")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    cv2.imwrite(str(lonely / "999.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="999.png has no image"):
        load_sem_seg_pairs(images, lonely)


# ---- schedule -------------------------------------------------------------------------------------


def test_poly_schedule_is_deeplabs():
    cfg = get_default_config()
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR = 100, 10, 0.1
    cfg.SOLVER.BASE_LR = 0.01
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = build_lr_scheduler(cfg, optimizer)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for it in (0, 5, 10, 50, 99):
        warmup = 0.1 * (1 - it / 10) + it / 10 if it < 10 else 1.0
        assert seen[it] == pytest.approx(0.01 * warmup * (1 - it / 100) ** 0.9), it
    ending = PolyLRMultiplier(100, power=0.9, constant_ending=0.2)
    assert ending(0.95) == 0.2 and ending(0.5) == pytest.approx(0.5 ** 0.9)


# ---- train_net ------------------------------------------------------------------------------------


def sem_seg_specs(root: Path) -> list:
    specs = []
    for split in ("train", "val"):
        specs += ["--dataset", f"tiny_sem_{split}={coco_split_paths(root, split)[1]}:{sem_seg_label_dir(root, split)}"]
    return specs


def small_sem_seg_run(output_dir: Path, max_iter: int, *extra: str) -> list:
    return ["OUTPUT_DIR", str(output_dir), "DATASETS.TRAIN", "('tiny_sem_train',)", "DATASETS.TEST", "('tiny_sem_val',)",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", "32",
            "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "INPUT.CROP.SIZE", "(32, 32)", "SEED", "1", *extra]


def test_train_net_trains_deeplab_and_keeps_the_best_miou(tmp_path, tiny_semantic):
    out = tmp_path / "run"
    code = main(["--config-file", str(DEMO_CONFIG), *sem_seg_specs(tiny_semantic),
                 *small_sem_seg_run(out, 4, "TEST.EVAL_PERIOD", "2", "SOLVER.CHECKPOINT_PERIOD", "2")])
    assert code == 0
    assert MetadataCatalog.get("tiny_sem_val").stuff_classes == [f"class_{i}" for i in range(6)]
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    evaluations = [r for r in records if "sem_seg/mIoU" in r]
    assert [r["iteration"] for r in evaluations] == [1, 4]  # as Detectron2 logs the two evaluations
    assert all(0 <= r["sem_seg/mIoU"] <= 100 and 0 <= r["sem_seg/pACC"] <= 100 for r in evaluations)
    best = torch.load(out / "model_best.pth", map_location="cpu", weights_only=True)
    first, last = evaluations
    assert best["iteration"] == (4 if last["sem_seg/mIoU"] > first["sem_seg/mIoU"] else 1)
    assert (out / "inference" / "tiny_sem_val" / "sem_seg_evaluation.json").is_file()


def copy_semantic_split(root: Path, split: str, target: Path) -> tuple:
    import shutil

    images, labels = target / "images", target / "labels"
    shutil.copytree(coco_split_paths(root, split)[1], images)
    shutil.copytree(sem_seg_label_dir(root, split), labels)
    return images, labels


def test_labels_outside_the_classes_stop_training_before_it_starts(tmp_path, tiny_semantic, capsys):
    # a value 9 with 6 classes would fail the loss mid-training (or, below 255, train a class the
    # head does not have); a label of another size would be cropped against the wrong image
    from resnet_backbones.data.checks import main as check_dataset

    images, labels = copy_semantic_split(tiny_semantic, "train", tmp_path / "bad")
    first, second, third = sorted(labels.glob("*.png"))[:3]
    label = np.array(Image.open(first))
    label[:2, :2] = 9
    Image.fromarray(label).save(first)
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(second)
    Image.fromarray(np.zeros((*label.shape, 3), np.uint8)).save(third)
    out = tmp_path / "run"
    code = main(["--config-file", str(DEMO_CONFIG), "--dataset", f"bad_sem_train={images}:{labels}",
                 *small_sem_seg_run(out, 2, "DATASETS.TRAIN", "('bad_sem_train',)", "DATASETS.TEST", "()")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: dataset 'bad_sem_train' ({labels}): {first}: has values 9: "
                             "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 6 (classes 0..5) and the ignore label 255 "
                             "(3 errors in all: "), err
    report = (out / "dataset_check_bad_sem_train.txt").read_text()
    assert f"error: {second}: is 7x5, its image 128x128" in report
    assert f"error: {third}: PNG mode RGB (3 channels)" in report
    assert not (out / "model_final.pth").exists()

    assert check_dataset(["--sem-seg", str(images), str(labels), "--num-classes", "10"]) == 2
    assert "label_out_of_range" not in capsys.readouterr().out
    assert check_dataset(["--sem-seg", str(images), str(labels), "--num-classes", "6"]) == 2
    assert "labels with values that are neither a class nor the ignore label: 1" in capsys.readouterr().out


def test_a_clean_semantic_split_passes_the_check_and_counts_each_class(tiny_semantic):
    from resnet_backbones.data.checks import check_sem_seg_dataset

    report = check_sem_seg_dataset(coco_split_paths(tiny_semantic, "val")[1], sem_seg_label_dir(tiny_semantic, "val"),
                                   num_classes=6)
    assert not report.errors and report.num_images == 4
    counts = dict((cid, n) for cid, _, n in report.category_counts)
    expected = np.zeros(6, int)
    for path in sem_seg_label_dir(tiny_semantic, "val").glob("*.png"):
        expected[np.unique(np.array(Image.open(path)))] += 1
    assert [counts[c] for c in range(6)] == expected.tolist()


def test_evaluation_rejects_a_class_count_the_dataset_does_not_have(tiny_semantic):
    # the built-in names carry their 6 class names; a head with 4 classes would be scored wrong
    from resnet_backbones.engine.segmentation import build_segmentation_evaluator

    register_sem_seg("tiny_named_val", coco_split_paths(tiny_semantic, "val")[1],
                     sem_seg_label_dir(tiny_semantic, "val"), SYNTHETIC_STUFF_CLASSES)
    cfg = load_config(str(DEMO_CONFIG), ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4"])
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES = 4 but dataset 'tiny_named_val' has 6"):
        build_segmentation_evaluator(cfg, "tiny_named_val", "")
    cfg = load_config(str(DEMO_CONFIG), ["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "0"])
    with pytest.raises(ValueError, match="IGNORE_VALUE = 0 but dataset 'tiny_named_val' marks ignored pixels 255"):
        build_segmentation_evaluator(cfg, "tiny_named_val", "")


# ---- configs --------------------------------------------------------------------------------------

SEGMENTATION_CONFIGS = sorted((REPO / "configs").glob("Cityscapes/*.yaml")) + sorted(
    (REPO / "configs").glob("ADE20K/*.yaml")) + sorted((REPO / "configs").glob("Demo/*sem*.yaml")) + [
    DEMO_CONFIG, PANOPTIC_CONFIG]


@pytest.mark.parametrize("config", [c for c in SEGMENTATION_CONFIGS if not c.name.startswith("Base")],
                         ids=lambda c: f"{c.parent.name}/{c.stem}")
def test_segmentation_config_builds_what_its_name_says(config):
    cfg = load_config(str(config), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    name = config.stem
    if name.startswith("panoptic_fpn"):
        assert cfg.MODEL.META_ARCHITECTURE == "PanopticFPN"
    else:
        assert cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"
        plus = "deeplab_v3_plus" in name
        assert cfg.MODEL.SEM_SEG_HEAD.NAME == ("ResNetFamilyDeepLabV3PlusHead" if plus else "ResNetFamilyDeepLabV3Head")
        assert cfg.TEST.BEST_METRIC == "sem_seg/mIoU"
    if "_R_103_" in name:
        assert cfg.MODEL.RESNETS.DEPTH == 101 and cfg.MODEL.RESNETS.PRESET == "deeplab_stem"
    if "_os16_" in name:
        assert cfg.MODEL.RESNETS.OUTPUT_STRIDE == 16
    if "_os8_" in name:
        assert cfg.MODEL.RESNETS.OUTPUT_STRIDE == 8
    if "_mg124_" in name:
        assert list(cfg.MODEL.RESNETS.RES5_MULTI_GRID) == [1, 2, 4]
    if "_poly_" in name:
        assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR"
    if "_90k_" in name:
        assert cfg.SOLVER.MAX_ITER == 90000
    if "_160k_" in name:
        assert cfg.SOLVER.MAX_ITER == 160000
    if "_bs16" in name:
        assert cfg.SOLVER.IMS_PER_BATCH == 16
    if config.parent.name == "Cityscapes":
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 19 and cfg.DATASETS.TRAIN == ("cityscapes_fine_sem_seg_train",)
    if config.parent.name == "ADE20K":
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 150 and cfg.DATASETS.TRAIN == ("ade20k_sem_seg_train",)
    model = build_model(cfg)
    if "R_103" in name:
        assert model.backbone.stem.conv3.out_channels == 128  # Detectron2's DeepLab stem
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        assert model.backbone.output_shape()["res5"].stride == cfg.MODEL.RESNETS.OUTPUT_STRIDE
    else:
        assert type(model.backbone).__name__ == "FPN" and type(model.backbone.bottom_up).__name__ == "ResNet"


# ---- Panoptic FPN ---------------------------------------------------------------------------------


def test_panoptic_fpn_trains_on_our_fpn_and_scores_boxes_masks_and_semantics(tmp_path, tiny_semantic):
    register_synthetic_panoptic(tiny_semantic, names=("tiny_panoptic_train", "tiny_panoptic_val"))
    out = tmp_path / "panoptic"
    code = main(["--config-file", str(PANOPTIC_CONFIG), "OUTPUT_DIR", str(out), "DATASETS.TRAIN", "('tiny_panoptic_train',)",
                 "DATASETS.TEST", "('tiny_panoptic_val',)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
                 "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
                 "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0",
                 "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "SEED", "1"])
    assert code == 0
    model_backbone = load_config(str(PANOPTIC_CONFIG)).MODEL.BACKBONE.NAME
    assert model_backbone == "build_resnet_family_fpn_backbone"
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [r for r in records if "loss_sem_seg" in r]
    assert trained and all(k in trained[-1] for k in ("loss_cls", "loss_mask", "loss_rpn_cls"))
    final = records[-1]
    assert "bbox/AP" in final and "segm/AP" in final and "sem_seg/mIoU" in final
    assert "sem_seg/IoU-things" in final and "sem_seg/IoU-background" in final


def test_panoptic_stuff_labels_follow_detectron2s_convention(tiny_semantic):
    # PanopticFPN's combination skips semantic class 0 ("things") and pastes every other class as a
    # stuff segment: the shapes must be 0 and the background 1, not the semantic split's 0..5
    from resnet_backbones.data.sem_seg import panoptic_stuff_label_dir

    names = register_synthetic_panoptic(tiny_semantic, names=("tiny_panoptic_train", "tiny_panoptic_val"))
    assert MetadataCatalog.get(names[1]).stuff_classes == ["things", "background"]
    for record in DatasetCatalog.get(names[1]):
        stuff = np.array(Image.open(record["sem_seg_file_name"]))
        semantic = np.array(Image.open(sem_seg_label_dir(tiny_semantic, "val") / Path(record["sem_seg_file_name"]).name))
        assert Path(record["sem_seg_file_name"]).parent == panoptic_stuff_label_dir(tiny_semantic, "val")
        assert np.array_equal(stuff == 1, semantic == 0) and set(np.unique(stuff)) <= {0, 1}


# ---- the segmentation demo ---------------------------------------------------------------------------

SEM_SEG_DEMO_CI_SIZE = ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0",
                        "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def sem_seg_demo_data(tmp_path_factory):
    """One data root for the demo's runs: the synthetic splits register under fixed names."""
    return str(tmp_path_factory.mktemp("sem_seg_demo_data"))


def test_sem_seg_demo_pretrains_the_body_trains_and_scores_before_and_after(tmp_path, sem_seg_demo_data):
    """The segmentation demo's road at CI size: 8 images, 2 iterations (the real run is the slow
    test below)."""
    from resnet_backbones.engine.sem_seg_demo import run_sem_seg_demo

    out = tmp_path / "demo"
    summary = run_sem_seg_demo(str(out), data_root=sem_seg_demo_data, overrides=SEM_SEG_DEMO_CI_SIZE,
                               num_train=8, num_val=4, pretrain_overrides=[
                                   "PRETRAIN.EPOCHS", "1", "PRETRAIN.BATCH_SIZE", "8", "PRETRAIN.NUM_WORKERS", "0"])
    # the body was pretrained on the objects' crops, converted, and loaded into the model
    converted = torch.load(out / "pretrain" / "model_d2.pth", map_location="cpu", weights_only=True)["model"]
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    for key in ("stem.conv1.weight", "res4.1.conv2.weight", "res5.0.shortcut.weight"):
        # two AdamW steps at lr 1e-3 move each weight by about 2e-3 at most; a random start is ~0.1 off
        torch.testing.assert_close(final[f"backbone.{key}"], torch.as_tensor(converted[key]), atol=3e-3, rtol=0,
                                   msg=key)
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert set(summary) == {"untrained", "trained", "minutes"}
    for stage in ("untrained", "trained"):
        assert 0 <= summary[stage]["mIoU"] <= 100 and 0 <= summary[stage]["pACC"] <= 100, summary


def test_sem_seg_demo_with_weights_given_does_not_pretrain(tmp_path, sem_seg_demo_data):
    from resnet_backbones.engine.sem_seg_demo import run_sem_seg_demo

    out = tmp_path / "demo"
    summary = run_sem_seg_demo(str(out), data_root=sem_seg_demo_data, num_train=8, num_val=4,
                               overrides=SEM_SEG_DEMO_CI_SIZE + ["MODEL.WEIGHTS", ""])
    assert not (out / "pretrain").exists()
    assert set(summary) == {"untrained", "trained", "minutes"}


# ---- the slow run ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_deeplab_v3_plus_demo_reaches_its_goal_within_ten_minutes(tmp_path):
    """tools/demo_sem_seg.py as shipped: the R-18 body pretrained on object crops, DeepLab v3+ on
    the synthetic semantic split; val mIoU >= 50, against the untrained model's (near
    chance: its random classifier gives one class to almost every pixel), within 10 minutes (data generation and pretraining included)."""
    from resnet_backbones.engine.sem_seg_demo import run_sem_seg_demo

    summary = run_sem_seg_demo(str(tmp_path / "demo"), data_root=str(tmp_path / "data"))
    untrained, trained = summary["untrained"]["mIoU"], summary["trained"]["mIoU"]
    print(f"sem-seg demo: {summary['minutes']:.1f} min, mIoU {untrained:.1f} untrained, {trained:.1f} trained")
    assert untrained < 20 and trained >= 50, summary
    assert summary["minutes"] <= 10, f"the segmentation demo took {summary['minutes']:.1f} min"
