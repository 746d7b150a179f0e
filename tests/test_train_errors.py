"""tools/train_net.py on bad input: one `error:` line naming the file, key or value, exit status 2.

Before training (the dataset check, the config, MODEL.WEIGHTS) and during it (Detectron2's loop
and its data-loader workers, with the check skipped); a json repaired by check_dataset --fix trains.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from resnet_backbones.data import coco_split_paths, ensure_synthetic_coco
from resnet_backbones.data.checks import main as check_dataset
from resnet_backbones.engine.train_net import main

from test_training import DEMO_CONFIG, TOOL, small_run


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> tuple:
    """(annotation json, image folder) of 8 synthetic 128 px training images."""
    root = tmp_path_factory.mktemp("shapes")
    ensure_synthetic_coco(root, num_train=8, num_val=1, image_size=128)
    json_file, images = coco_split_paths(root, "train")
    return Path(json_file), Path(images)


class Case:
    """A copy of the tiny dataset with one thing broken; ``argv`` trains on it."""

    def __init__(self, tmp_path: Path, shapes: tuple):
        json_file, images = shapes
        self.root = tmp_path
        self.images = tmp_path / "images"
        shutil.copytree(images, self.images)
        self.data = json.loads(json_file.read_text())
        self.json_file = tmp_path / "train.json"
        self.out = tmp_path / "out"

    @property
    def name(self) -> str:
        """Unique in the test session (Detectron2's catalog is global), e.g. ``test_x_0_train``."""
        return f"{self.root.name}_{self.json_file.stem}"

    def only_image(self, index: int = 0) -> dict:
        """Keep one image (and its annotations), so the first batch samples it."""
        image = self.data["images"][index]
        self.data["images"] = [image]
        self.data["annotations"] = [a for a in self.data["annotations"] if a["image_id"] == image["id"]]
        return image

    def argv(self, *extra: str, flags=()) -> list:
        if not self.json_file.exists():
            self.json_file.write_text(json.dumps(self.data))
        return [*flags, "--config-file", str(DEMO_CONFIG), "--dataset", f"{self.name}={self.json_file}:{self.images}",
                *small_run(self.out, 2, "DATASETS.TRAIN", f"('{self.name}',)", "DATASETS.TEST", "()",
                           "TEST.EVAL_PERIOD", "0"), *extra]


# ---------------------------------------------------------------- the broken inputs
def invalid_json(case):
    case.json_file.write_text('{"images": [\n  {"id": 1,}\n]}')
    return str(case.json_file)


def unknown_category(case):
    case.data["annotations"][3]["category_id"] = 42
    return str(case.json_file)


def duplicate_annotation_ids(case):
    case.data["annotations"][1]["id"] = case.data["annotations"][0]["id"]
    return str(case.json_file)


def no_annotations(case):
    del case.data["annotations"]
    return str(case.json_file)


def negative_box(case):
    box = case.data["annotations"][2]["bbox"]
    box[2] = -box[2]
    return f"annotation {case.data['annotations'][2]['id']} "


def too_few_classes(case):
    return "MODEL.ROI_HEADS.NUM_CLASSES"


def missing_image(case):
    image = case.only_image()
    os.unlink(case.images / image["file_name"])
    return str(case.images / image["file_name"])


def size_mismatch(case):
    image = case.only_image()
    image["width"] = 130
    return str(case.images / image["file_name"])


def exif_rotated(case):
    """A real JPEG with EXIF orientation 6 whose stored size the json gives: Detectron2 rotates it."""
    image = case.only_image()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(case.images / image["file_name"]).convert("RGB").crop((0, 0, 128, 96)).save(
        case.images / "rotated.jpg", exif=exif)
    image.update(file_name="rotated.jpg", width=128, height=96)
    for annotation in case.data["annotations"]:
        annotation.pop("segmentation", None)
        annotation["bbox"] = [10, 10, 30, 30]
    return str(case.images / "rotated.jpg")


def not_an_image(case):
    image = case.only_image()
    (case.images / image["file_name"]).write_text("GIF? no: a text file")
    return str(case.images / image["file_name"])


def truncated_image(case):
    image = case.only_image()
    path = case.images / image["file_name"]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return str(path)


# name, breaks the data (returns what the error must name), extra arguments, checked?, exit status
BEFORE_TRAINING = [
    ("invalid json", invalid_json, []),
    ("unknown category id", unknown_category, []),
    ("duplicate annotation ids", duplicate_annotation_ids, []),
    ("no annotations", no_annotations, []),
    ("negative box", negative_box, []),
    ("NUM_CLASSES below the categories", too_few_classes, ["MODEL.ROI_HEADS.NUM_CLASSES", "3"]),
    ("missing image", missing_image, []),
    ("size mismatch", size_mismatch, []),
    ("EXIF-rotated JPEG", exif_rotated, []),
    ("not an image", not_an_image, []),
    ("truncated image", truncated_image, []),
]


def one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("name, breaks, extra", BEFORE_TRAINING, ids=[c[0] for c in BEFORE_TRAINING])
def test_the_dataset_check_stops_bad_data_before_training(tmp_path, shapes, capsys, name, breaks, extra):
    case = Case(tmp_path, shapes)
    must_name = breaks(case)
    assert main(case.argv(*extra)) == 2
    line = one_error_line(capsys.readouterr().err)
    report = case.out / f"dataset_check_{case.name}.txt"
    assert must_name in line, line
    if name != "invalid json":  # a json that does not parse has no report to write
        assert f"full report: {report}" in line and must_name.strip() in report.read_text()
    assert not (case.out / "model_final.pth").exists() and not (case.out / "metrics.json").exists()


# With the check skipped the same problems surface inside Detectron2: while loading the json, in the
# training loop, and in a data-loader worker; each is still one line naming the file.
DURING_TRAINING = [
    ("invalid json", invalid_json, "0", "Expecting property name"),
    ("unknown category id", unknown_category, "0", "category_id=42"),
    ("duplicate annotation ids", duplicate_annotation_ids, "0", "are not unique"),
    ("missing image", missing_image, "0", "No such file"),
    ("missing image, in a worker", missing_image, "1", "No such file"),
    ("size mismatch", size_mismatch, "0", "got (128, 128), expect (130, 128)"),
    ("EXIF-rotated JPEG, in a worker", exif_rotated, "1", "got (96, 128), expect (128, 96)"),
    ("not an image", not_an_image, "0", "cannot identify image file"),
    ("truncated image, in a worker", truncated_image, "1", "truncated"),
]


@pytest.mark.parametrize("name, breaks, workers, detail", DURING_TRAINING, ids=[c[0] for c in DURING_TRAINING])
def test_errors_inside_detectron2_are_one_line_naming_the_file(tmp_path, shapes, capsys, name, breaks, workers,
                                                                 detail):
    case = Case(tmp_path, shapes)
    must_name = breaks(case)
    assert main(case.argv("DATALOADER.NUM_WORKERS", workers, flags=["--skip-data-check"])) == 2
    line = one_error_line(capsys.readouterr().err)
    assert must_name in line and detail in line, line
    assert "Original Traceback" not in line and "DataLoader worker" not in line
    assert not (case.out / f"dataset_check_{case.name}.txt").exists()


@pytest.mark.parametrize("argv_tail, must_name, must_not_name", [
    (["MODEL.NO_SUCH_KEY", "1"], "MODEL.NO_SUCH_KEY", "OUTPUT_DIR"),
    (["SOLVER.MAX_ITER", "many"], "SOLVER.MAX_ITER many", "OUTPUT_DIR"),
    (["MODEL.WEIGHTS", "no/such/weights.pth"], "MODEL.WEIGHTS = 'no/such/weights.pth': no such file", ""),
    (["SOLVER.BASE_LR"], "'SOLVER.BASE_LR' has no value", "OUTPUT_DIR"),
])
def test_config_errors_name_only_the_key_at_fault(tmp_path, capsys, argv_tail, must_name, must_not_name):
    argv = ["--config-file", str(DEMO_CONFIG), "OUTPUT_DIR", str(tmp_path / "out"), "SEED", "3", *argv_tail]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert must_name in line, line
    assert not must_not_name or must_not_name not in line, line


def test_yaml_syntax_errors_name_the_file_line_and_column(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(f'_BASE_: "{DEMO_CONFIG}"\nSOLVER:\n  BASE_LR: [0.1\n')
    child = tmp_path / "child.yaml"
    child.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 3\n')
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL:\n  WEIGHTS: ''\n   MASK_ON: True\n")
    assert main(["--config-file", str(broken)]) == 2
    assert f"error: {broken}, line 3, column 4: YAML syntax error: " in one_error_line(capsys.readouterr().err)
    assert main(["--config-file", str(child)]) == 2  # the fault is in the _BASE_ file
    assert f"error: {base}, line 4, column 1: YAML syntax error: " in one_error_line(capsys.readouterr().err)


def test_no_traceback_on_the_console_unless_asked_for(tmp_path, shapes):
    """As a user runs it: an error in a data-loader worker, inside Detectron2's loop (which logs the
    traceback itself), is one line on the console; the traceback stays in log.txt, and
    RESNET_BACKBONES_DEBUG=1 shows it."""
    case = Case(tmp_path, shapes)
    must_name = missing_image(case)
    argv = [sys.executable, str(TOOL), *case.argv("DATALOADER.NUM_WORKERS", "1", flags=["--skip-data-check"])]
    env = {k: v for k, v in os.environ.items() if k != "RESNET_BACKBONES_DEBUG"}
    quiet = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert quiet.returncode == 2
    assert must_name in one_error_line(quiet.stderr + quiet.stdout)
    assert "Exception during training" in (case.out / "log.txt").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text("MODEL: [\n")
    loud = subprocess.run([sys.executable, str(TOOL), "--config-file", str(broken)], capture_output=True, text=True,
                          timeout=300, env={**env, "RESNET_BACKBONES_DEBUG": "1"})
    assert loud.returncode != 0 and "Traceback (most recent call last)" in loud.stderr, loud.stderr
    assert f"{broken}, line 2, column 1: YAML syntax error" in loud.stderr


def test_a_fixed_json_trains_and_leftover_temporaries_are_removed(tmp_path, shapes, capsys):
    case = Case(tmp_path, shapes)
    annotations = case.data["annotations"]
    annotations[0]["bbox"][2] = -annotations[0]["bbox"][2]  # negative width
    annotations[1]["bbox"] = [120, 120, 30, 30]  # partly outside the 128 px image: clipped
    annotations[2]["bbox"] = [200, 200, 10, 10]  # outside: dropped
    annotations[3]["id"] = annotations[4]["id"]  # duplicate id: renumbered
    annotations[5]["category_id"] = 99  # unknown category: removed
    case.data["images"][1]["height"] = 127  # size: from the file
    case.data["images"][2]["file_name"] = "gone.png"  # missing image: removed
    assert main(case.argv()) == 2
    assert f"error: dataset '{case.name}'" in one_error_line(capsys.readouterr().err)

    fixed = tmp_path / "fixed.json"
    assert check_dataset([str(case.json_file), str(case.images), "--fix", str(fixed)]) == 0
    capsys.readouterr()
    case.json_file = fixed
    # what a kill during checkpoint writes leaves behind (fileio.atomic_output's temporaries)
    case.out.mkdir(exist_ok=True)
    leftovers = [case.out / ".model_0000003.pth.k2j4h5g1.tmp", case.out / ".last_checkpoint.a_b3c9xz.tmp"]
    unrelated = case.out / ".notes.txt.abcdefgh.tmp"
    for path in leftovers + [unrelated]:
        path.write_bytes(b"\0" * 1000)
    assert main(case.argv()) == 0
    err = capsys.readouterr().err
    assert "error:" not in err
    assert (case.out / "model_final.pth").is_file()
    assert not any(p.exists() for p in leftovers) and unrelated.exists()
