"""COCO evaluation: the tool, its backends and FastCOCOEvaluator give pycocotools' numbers.

The reference everywhere is pycocotools' COCOeval run directly, as its own documentation shows.
The generated set has what separates COCOeval from a naive AP: crowd regions, all three area
ranges, images without ground truth or detections, and images with more than 100 detections.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import resnet_backbones  # noqa: F401  (installs the stand-in for detectron2's C++ extension)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.data.datasets.coco import convert_to_coco_dict
from detectron2.evaluation.coco_evaluation import COCOevalMaxDets, instances_to_coco_json
from detectron2.structures import Boxes, BoxMode, Instances
from resnet_backbones.compat import HAS_D2_EXTENSION
from resnet_backbones.evaluation import (
    COCOEvaluationInputError,
    EmptyResultsWarning,
    FastCOCOEvaluator,
    default_backend,
    evaluate_coco,
    run_coco_eval,
    run_evaluate_coco,
    write_metrics_json,
)
from resnet_backbones.evaluation.synthetic_results import (
    synthetic_ground_truth,
    synthetic_keypoint_set,
    synthetic_results,
)

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("pycocotools", "faster-coco-eval")
DETECTION_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
DETECTION_NAMES += ["AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
KEYPOINT_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
TOLERANCE = 1e-6

# pycocotools' mask code under NumPy 2 (and Detectron2 feeding it torch tensors) warns on every
# mask; that is theirs to fix, and it buries the warnings of this code.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


# ---------------------------------------------------------------------------------------------
# Generated data and the pycocotools reference


@pytest.fixture(scope="module")
def coco_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Annotations and bbox/segm/keypoint results, written as JSON files."""
    directory = tmp_path_factory.mktemp("coco")
    ground_truth = synthetic_ground_truth(60, seed=3)
    keypoint_truth, keypoint_results = synthetic_keypoint_set(40, seed=5)
    contents = {
        "annotations": ground_truth,
        "bbox": synthetic_results(ground_truth, "bbox", seed=4),
        "segm": synthetic_results(ground_truth, "segm", seed=4),
        "keypoint_annotations": keypoint_truth,
        "keypoints": keypoint_results,
    }
    paths = {}
    for name, content in contents.items():
        paths[name] = directory / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    return paths


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def annotations_for(coco_files: dict[str, Path], iou_type: str) -> Path:
    return coco_files["keypoint_annotations" if iou_type == "keypoints" else "annotations"]


def pycocotools_eval(
    annotations: Path | dict,
    results: Path | list,
    iou_type: str,
    max_dets: int | None = None,
    cocoeval_class: type = COCOeval,
) -> COCOeval:
    """pycocotools' COCOeval run directly: evaluate, accumulate, summarize."""
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(annotations, dict):
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(annotations)
            coco_gt.createIndex()
        else:
            coco_gt = COCO(str(annotations))
        coco_dt = coco_gt.loadRes(
            str(results) if isinstance(results, Path) else copy.deepcopy(results)
        )
        evaluator = cocoeval_class(coco_gt, coco_dt, iou_type)
        if max_dets is not None:
            evaluator.params.maxDets = [1, 10, max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def reference_category_ap(evaluator: COCOeval, ground_truth: dict) -> dict[str, float]:
    """Per-category AP in percent, as Detectron2's COCOEvaluator derives it."""
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    category_ap = {}
    for index, category_id in enumerate(evaluator.params.catIds):
        cells = evaluator.eval["precision"][:, :, index, 0, -1]
        category_ap[f"AP-{names[category_id]}"] = float(np.mean(cells[cells > -1])) * 100
    return category_ap


def test_generated_set_has_what_the_comparison_needs(coco_files: dict[str, Path]) -> None:
    ground_truth = load(coco_files["annotations"])
    areas = [a["area"] for a in ground_truth["annotations"] if not a["iscrowd"]]
    ranges = Counter("small" if a < 32**2 else "medium" if a < 96**2 else "large" for a in areas)
    assert min(ranges["small"], ranges["medium"], ranges["large"]) > 20, ranges
    crowds = [a for a in ground_truth["annotations"] if a["iscrowd"]]
    assert len(crowds) >= 5 and all(isinstance(c["segmentation"]["counts"], list) for c in crowds)
    image_ids = {image["id"] for image in ground_truth["images"]}
    images_with_truth = {a["image_id"] for a in ground_truth["annotations"]}
    assert image_ids - images_with_truth, "no image without ground truth"
    for iou_type in ("bbox", "segm"):
        per_image = {image_id: 0 for image_id in image_ids}
        for result in load(coco_files[iou_type]):
            per_image[result["image_id"]] += 1
        assert min(per_image.values()) == 0, "no image without detections"
        assert max(per_image.values()) > 100, "no image with more than 100 detections"
    keypoint_truth = load(coco_files["keypoint_annotations"])
    assert any(a["num_keypoints"] == 0 for a in keypoint_truth["annotations"])


# ---------------------------------------------------------------------------------------------
# The numbers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_backend_stats_equal_pycocotools(
    coco_files: dict[str, Path], iou_type: str, backend: str
) -> None:
    annotations = annotations_for(coco_files, iou_type)
    reference = pycocotools_eval(annotations, coco_files[iou_type], iou_type)
    evaluator = run_coco_eval(
        load(annotations), load(coco_files[iou_type]), iou_type, backend=backend
    )
    assert len(evaluator.stats) == len(reference.stats) == (10 if iou_type == "keypoints" else 12)
    np.testing.assert_allclose(evaluator.stats, reference.stats, rtol=0, atol=TOLERANCE)
    # A broken evaluator (crowds not ignored, areas mixed up, nothing matched) would not land here.
    assert 0.2 < reference.stats[0] < 0.95
    assert all(0.1 < value < 1 for value in reference.stats)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm", "keypoints"])
def test_tool_output_equals_pycocotools(
    coco_files: dict[str, Path], tmp_path: Path, iou_type: str, backend: str
) -> None:
    annotations = annotations_for(coco_files, iou_type)
    output = tmp_path / "metrics.json"
    stdout, stderr = io.StringIO(), io.StringIO()
    status = run_evaluate_coco(
        annotations,
        coco_files[iou_type],
        iou_type,
        output=output,
        backend=backend,
        stdout=stdout,
        stderr=stderr,
    )
    assert status == 0, stderr.getvalue()
    metrics = load(output)[iou_type]
    reference = pycocotools_eval(annotations, coco_files[iou_type], iou_type)
    names = KEYPOINT_NAMES if iou_type == "keypoints" else DETECTION_NAMES
    assert [metrics[name] / 100 for name in names] == pytest.approx(
        list(reference.stats), abs=TOLERANCE
    )
    category_ap = reference_category_ap(reference, load(annotations))
    assert {k: v for k, v in metrics.items() if k.startswith("AP-")} == pytest.approx(
        category_ap, abs=100 * TOLERANCE
    )
    # The report shows pycocotools' summary lines and a per-category table.
    report = stdout.getvalue()
    assert report.count("Average Precision") + report.count("Average Recall") == len(names)
    assert f" = {reference.stats[0]:0.3f}" in report
    assert all(name[len("AP-") :] in report for name in category_ap)


def test_output_json_has_detectron2_names_and_scale(
    coco_files: dict[str, Path], tmp_path: Path
) -> None:
    output = tmp_path / "out" / "metrics.json"  # a missing directory is created
    annotations, results = coco_files["annotations"], coco_files["bbox"]
    assert run_evaluate_coco(annotations, results, "bbox", output=output, stdout=io.StringIO()) == 0
    written = load(output)
    assert list(written) == ["bbox"]
    categories = [f"AP-{c['name']}" for c in load(coco_files["annotations"])["categories"]]
    assert list(written["bbox"]) == DETECTION_NAMES + categories
    assert all(1 < value < 100 for value in written["bbox"].values()), "expected percentages"
    assert written["bbox"] == pytest.approx(
        evaluate_coco(coco_files["annotations"], coco_files["bbox"], "bbox")
    )
    assert sorted(os.listdir(output.parent)) == ["metrics.json"], "temporary file left behind"


def test_undefined_metrics_are_nan_in_python_and_null_in_json(
    coco_files: dict[str, Path], tmp_path: Path
) -> None:
    ground_truth = load(coco_files["annotations"])
    no_small_objects = [a for a in ground_truth["annotations"] if a["area"] >= 32**2]
    ground_truth["annotations"] = no_small_objects
    metrics = evaluate_coco(ground_truth, load(coco_files["bbox"]), "bbox")
    assert math.isnan(metrics["APs"]) and math.isnan(metrics["ARs"]) and metrics["APm"] > 0
    output = tmp_path / "metrics.json"
    write_metrics_json(output, {"bbox": metrics})
    assert "NaN" not in output.read_text()
    assert load(output)["bbox"]["APs"] is None


def test_write_metrics_json_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    output = tmp_path / "metrics.json"
    write_metrics_json(output, {"bbox": {"AP": 50.0}})
    with pytest.raises(TypeError):
        write_metrics_json(output, {"bbox": {"AP": object()}})  # type: ignore[dict-item]
    assert load(output) == {"bbox": {"AP": 50.0}}
    assert os.listdir(tmp_path) == ["metrics.json"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_dets_limits_detections_like_detectron2(
    coco_files: dict[str, Path], backend: str
) -> None:
    # pycocotools' own summarize() gives AP = -1 for maxDets other than 100; Detectron2's
    # COCOevalMaxDets is the reference for other limits.
    reference = pycocotools_eval(
        coco_files["annotations"], coco_files["bbox"], "bbox", 20, COCOevalMaxDets
    )
    metrics = evaluate_coco(
        coco_files["annotations"], coco_files["bbox"], "bbox", backend=backend, max_dets=20
    )
    names = DETECTION_NAMES[:8] + ["AR20"] + DETECTION_NAMES[9:]
    assert [metrics[name] / 100 for name in names] == pytest.approx(
        list(reference.stats), abs=TOLERANCE
    )
    assert metrics["AR20"] != pytest.approx(
        evaluate_coco(coco_files["annotations"], coco_files["bbox"], "bbox")["AR100"]
    )


def test_faster_coco_eval_is_the_default_backend() -> None:
    assert default_backend() == "faster-coco-eval"


def test_evaluation_leaves_its_inputs_unchanged(coco_files: dict[str, Path]) -> None:
    ground_truth, results = load(coco_files["annotations"]), load(coco_files["segm"])
    before = copy.deepcopy((ground_truth, results))
    for backend in BACKENDS:
        evaluate_coco(ground_truth, results, "segm", backend=backend)
    assert (ground_truth, results) == before


def test_empty_results_give_zeros_and_a_warning(
    coco_files: dict[str, Path], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    for backend in BACKENDS:
        with pytest.warns(EmptyResultsWarning, match="empty"):
            metrics = evaluate_coco(coco_files["annotations"], empty, "segm", backend=backend)
        assert all(value == 0 for value in metrics.values())
    stdout, stderr = io.StringIO(), io.StringIO()
    status = run_evaluate_coco(
        coco_files["annotations"], empty, "bbox", stdout=stdout, stderr=stderr
    )
    assert status == 0
    assert stderr.getvalue().startswith(f"warning: {empty}: the result list is empty")
    assert " = 0.000" in stdout.getvalue()


# ---------------------------------------------------------------------------------------------
# Malformed input: one "error: ..." line naming the file and the entry, exit status 2


def small_set(iou_type: str) -> tuple[dict, list]:
    if iou_type == "keypoints":
        return synthetic_keypoint_set(6, seed=1)
    ground_truth = synthetic_ground_truth(6, seed=1, empty_image_every=0)
    return ground_truth, synthetic_results(
        ground_truth, iou_type, seed=1, undetected_image_every=0, dense_image_every=0
    )


def set_result(index: int, key: str, value: Any) -> Callable[[dict, list], None]:
    def change(ground_truth: dict, results: list) -> None:
        results[index][key] = value

    return change


def drop_result_key(index: int, key: str) -> Callable[[dict, list], None]:
    def change(ground_truth: dict, results: list) -> None:
        del results[index][key]

    return change


def negative_width(ground_truth: dict, results: list) -> None:
    results[1]["bbox"][2] = -4.5


def no_categories(ground_truth: dict, results: list) -> None:
    del ground_truth["categories"], ground_truth["annotations"]


def first_annotation_id_zero(ground_truth: dict, results: list) -> None:
    ground_truth["annotations"][0]["id"] = 0


# Each case: the IoU type, the file that is broken, the breakage (a change to the valid set, or
# the file's raw text) and fragments of the expected message.
# fmt: off
MALFORMED_INPUTS = [
    pytest.param("bbox", "results", "[{'image_id': 1}]",
                 ["results file is not valid JSON", "line 1"], id="results not JSON"),
    pytest.param("bbox", "annotations", "images: []",
                 ["annotations file is not valid JSON"], id="annotations not JSON"),
    pytest.param("bbox", "results", '{"image_id": 100}',
                 ["expected a JSON list", "got a JSON object"], id="results not a list"),
    pytest.param("bbox", "annotations", no_categories,
                 ["missing 'annotations', 'categories'"], id="annotations not COCO"),
    pytest.param("bbox", "annotations", first_annotation_id_zero,
                 ["annotation #0", "id 0"], id="annotation id 0"),
    pytest.param("bbox", "results", set_result(3, "image_id", 999999),
                 ["result #3", "image_id 999999 is not in"], id="unknown image id"),
    pytest.param("segm", "results", set_result(2, "category_id", 77),
                 ["result #2", "category_id 77 is not in"], id="unknown category id"),
    pytest.param("bbox", "results", negative_width,
                 ["result #1", "-4.5", "negative width or height"], id="negative box size"),
    pytest.param("bbox", "results", set_result(4, "score", float("nan")),
                 ["result #4", "score must be a finite number, got nan"], id="NaN score"),
    pytest.param("segm", "results", drop_result_key(0, "score"),
                 ["result #0", "missing 'score'"], id="no score"),
    pytest.param("bbox", "results", set_result(5, "bbox", [1.0, 2.0, 3.0]),
                 ["result #5", "bbox must be a list of 4 finite numbers"], id="bbox of 3 numbers"),
    pytest.param("segm", "results", drop_result_key(2, "segmentation"),
                 ["result #2", "missing 'segmentation'"], id="segm result without mask"),
    pytest.param("segm", "results", set_result(1, "segmentation", [[1, 1, 9, 1, 9, 9]]),
                 ["result #1", "compressed RLE"], id="segm polygon result"),
    pytest.param("keypoints", "results", set_result(0, "keypoints", [1.0, 2.0, 1.0] * 5),
                 ["result #0", "5 keypoints", "17"], id="keypoint count"),
]
# fmt: on


@pytest.mark.parametrize(("iou_type", "broken", "breakage", "fragments"), MALFORMED_INPUTS)
def test_malformed_input_gives_one_error_line_and_status_2(
    tmp_path: Path, iou_type: str, broken: str, breakage: Callable | str, fragments: list[str]
) -> None:
    ground_truth, results = small_set(iou_type)
    if callable(breakage):
        breakage(ground_truth, results)
    paths = {role: tmp_path / f"{role}.json" for role in ("annotations", "results")}
    paths["annotations"].write_text(json.dumps(ground_truth))
    paths["results"].write_text(json.dumps(results))
    if isinstance(breakage, str):
        paths[broken].write_text(breakage)

    stdout, stderr = io.StringIO(), io.StringIO()
    status = run_evaluate_coco(
        paths["annotations"], paths["results"], iou_type, stdout=stdout, stderr=stderr
    )

    message = stderr.getvalue()
    assert status == 2
    assert message.startswith(f"error: {paths[broken]}: ") and message.count("\n") == 1, message
    assert all(fragment in message for fragment in fragments), message
    assert stdout.getvalue() == ""
    with pytest.raises(COCOEvaluationInputError):
        evaluate_coco(paths["annotations"], paths["results"], iou_type)


@pytest.mark.parametrize(
    ("iou_type", "max_dets", "fragment"),
    [("bbox", 10, "more than 10"), ("keypoints", 100, "20 detections per image")],
)
def test_unusable_max_dets_is_an_error(
    coco_files: dict[str, Path], iou_type: str, max_dets: int, fragment: str
) -> None:
    stderr = io.StringIO()
    status = run_evaluate_coco(
        annotations_for(coco_files, iou_type),
        coco_files[iou_type],
        iou_type,
        max_dets=max_dets,
        stderr=stderr,
    )
    assert status == 2 and fragment in stderr.getvalue()


@pytest.mark.parametrize("missing", ["annotations", "results"])
def test_missing_file_is_an_error(
    coco_files: dict[str, Path], tmp_path: Path, missing: str
) -> None:
    paths = {
        "annotations": coco_files["annotations"],
        "results": coco_files["bbox"],
        missing: tmp_path / "absent.json",
    }
    stderr = io.StringIO()
    assert run_evaluate_coco(paths["annotations"], paths["results"], "bbox", stderr=stderr) == 2
    assert (
        stderr.getvalue() == f"error: {tmp_path / 'absent.json'}: {missing} file does not exist\n"
    )


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "evaluate_coco.py"), *args],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip


def test_tool_subprocess_reports_malformed_input(
    coco_files: dict[str, Path], tmp_path: Path
) -> None:
    results = load(coco_files["bbox"])
    results[7]["score"] = float("nan")
    broken = tmp_path / "nan_score.json"
    broken.write_text(json.dumps(results))
    completed = run_tool(str(coco_files["annotations"]), str(broken), "--iou-type", "bbox")
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1] == (
        f"error: {broken}: result #7 (image_id={results[7]['image_id']}, "
        f"category_id={results[7]['category_id']}): score must be a finite number, got nan"
    )


def test_tool_subprocess_writes_metrics(coco_files: dict[str, Path], tmp_path: Path) -> None:
    output = tmp_path / "metrics.json"
    completed = run_tool(
        str(coco_files["annotations"]), str(coco_files["segm"]), "--iou-type", "segm",
        "--output", str(output), "--backend", "pycocotools", "--max-dets", "20",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "maxDets= 20" in completed.stdout and "Per-category segm AP" in completed.stdout
    expected = evaluate_coco(coco_files["annotations"], coco_files["segm"], "segm", max_dets=20)
    assert load(output) == {"segm": pytest.approx(expected)}


# ---------------------------------------------------------------------------------------------
# FastCOCOEvaluator: Detectron2's evaluator interface, our backends

IMAGE_SIZE = (160, 224)  # height, width
CLASS_NAMES = ["ring", "square", "blob"]
DATASET_CATEGORY_IDS = {5: 0, 9: 1, 13: 2}  # not contiguous, so the evaluator must map them back


def octagon(x: float, y: float, w: float, h: float) -> list[float]:
    cx, cy = w / 4, h / 4
    points = [(x + cx, y), (x + w - cx, y), (x + w, y + cy), (x + w, y + h - cy),
              (x + w - cx, y + h), (x + cx, y + h), (x, y + h - cy), (x, y + cy)]  # fmt: skip
    return [float(c) for point in points for c in point]


def random_box(rng: np.random.Generator) -> list[float]:
    height, width = IMAGE_SIZE
    w, h = np.exp(rng.uniform(np.log(8), np.log(140), size=2))
    return [float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), float(w), float(h)]


def record_annotation(box: list[float], category: int, polygon: list[float], crowd: int) -> dict:
    return {"bbox": box, "bbox_mode": BoxMode.XYWH_ABS, "category_id": category,
            "segmentation": [polygon], "iscrowd": crowd}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_dataset() -> str:
    """A registered Detectron2 dataset of 8 image records (no pixels): one without objects, one
    with a crowd region."""
    rng = np.random.default_rng(11)
    height, width = IMAGE_SIZE
    records = []
    for index in range(8):
        boxes = [random_box(rng) for _ in range(0 if index == 3 else int(rng.integers(2, 6)))]
        annotations = [
            record_annotation(box, int(rng.integers(3)), octagon(*box), 0) for box in boxes
        ]
        if index == 5:
            crowd = [10.0, 10.0, 130.0, 10.0, 130.0, 110.0, 10.0, 110.0]
            annotations.append(record_annotation([10.0, 10.0, 120.0, 100.0], 1, crowd, 1))
        records.append({"file_name": f"img{index}.jpg", "image_id": 40 + index,
                        "height": height, "width": width, "annotations": annotations})  # fmt: skip
    name = "resnet_backbones_test_evaluation_tiny"
    DatasetCatalog.register(name, lambda: copy.deepcopy(records))
    MetadataCatalog.get(name).set(
        thing_classes=CLASS_NAMES, thing_dataset_id_to_contiguous_id=DATASET_CATEGORY_IDS
    )
    return name


def jittered(box: list[float], rng: np.random.Generator) -> list[float]:
    x, y, w, h = box
    dx, dy, dw, dh = rng.normal(0, 0.08, size=4)
    return [x + dx * w, y + dy * h, w * float(np.exp(dw)), h * float(np.exp(dh))]


def predicted_instances(
    boxes: list[list[float]], classes: list[int], scores: np.ndarray
) -> Instances:
    """What a Mask R-CNN returns for one image: boxes (XYXY), scores, classes and full masks."""
    height, width = IMAGE_SIZE
    xyxy = BoxMode.convert(np.array(boxes).reshape(-1, 4), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    masks = [
        mask_utils.decode(mask_utils.frPyObjects([octagon(*b)], height, width))[:, :, 0]
        for b in boxes
    ]
    instances = Instances(IMAGE_SIZE)
    instances.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32))
    instances.scores = torch.tensor(scores, dtype=torch.float32)
    instances.pred_classes = torch.tensor(classes, dtype=torch.int64)
    instances.pred_masks = torch.from_numpy(np.array(masks, dtype=bool).reshape(-1, height, width))
    return instances


def fake_outputs(records: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Model inputs and outputs: jittered ground truth (10% with a wrong class) plus two false
    positives per image, and one image without predictions."""
    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for index, record in enumerate(records):
        boxes, classes = [], []
        if index != 6:
            for annotation in record["annotations"]:
                boxes.append(jittered(annotation["bbox"], rng))
                right = rng.random() > 0.1
                classes.append(annotation["category_id"] if right else int(rng.integers(3)))
            boxes += [random_box(rng), random_box(rng)]
            classes += [int(rng.integers(3)), int(rng.integers(3))]
        scores = rng.uniform(0.05, 1.0, size=len(boxes))
        inputs.append(
            {"image_id": record["image_id"], "height": IMAGE_SIZE[0], "width": IMAGE_SIZE[1]}
        )
        outputs.append({"instances": predicted_instances(boxes, classes, scores)})
    return inputs, outputs


def detectron2_reference(
    dataset_name: str, inputs: list[dict], outputs: list[dict], task: str
) -> tuple[COCOeval, dict]:
    """pycocotools on the same predictions, prepared as Detectron2's COCOEvaluator prepares them."""
    ground_truth = convert_to_coco_dict(dataset_name)
    to_dataset_id = {
        contiguous: dataset_id for dataset_id, contiguous in DATASET_CATEGORY_IDS.items()
    }
    results = []
    for model_input, output in zip(inputs, outputs):
        for result in instances_to_coco_json(output["instances"], model_input["image_id"]):
            result["category_id"] = to_dataset_id[result["category_id"]]
            if task == "segm":
                result.pop("bbox")  # Detectron2 lets mask area decide a mask's area range
            results.append(result)
    return pycocotools_eval(ground_truth, results, task), ground_truth


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_coco_evaluator_equals_pycocotools(
    tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory, backend: str
) -> None:
    evaluator = FastCOCOEvaluator(
        tiny_dataset,
        distributed=False,
        output_dir=str(tmp_path_factory.mktemp("d2")),
        backend=backend,
    )
    inputs, outputs = fake_outputs(DatasetCatalog.get(tiny_dataset), seed=2)
    evaluator.reset()
    for start in range(0, len(inputs), 3):  # batches, as inference_on_dataset feeds them
        evaluator.process(inputs[start : start + 3], outputs[start : start + 3])
    results = evaluator.evaluate()

    assert sorted(results) == ["bbox", "segm"]
    for task in ("bbox", "segm"):
        reference, ground_truth = detectron2_reference(tiny_dataset, inputs, outputs, task)
        assert 0.2 < reference.stats[0] < 0.95
        # Detectron2's convention: percent, NaN where COCOeval has -1 (no ground truth in range).
        expected = {
            name: value * 100 if value >= 0 else math.nan
            for name, value in zip(DETECTION_NAMES[:6], reference.stats)
        }
        expected.update(reference_category_ap(reference, ground_truth))
        assert list(results[task]) == DETECTION_NAMES[:6] + [f"AP-{name}" for name in CLASS_NAMES]
        assert results[task] == pytest.approx(expected, abs=100 * TOLERANCE, nan_ok=True)


@pytest.mark.skipif(not HAS_D2_EXTENSION, reason="needs detectron2's C++ extension (its fast C++ COCOeval): "
                    "run `make test-d2main` with a detectron2 built from source")
def test_detectron2_cpp_cocoeval_equals_fast_coco_evaluator(
    tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    cpp_evaluations = []
    evaluate_in_cpp = COCOeval_opt.evaluate
    monkeypatch.setattr(COCOeval_opt, "evaluate",
                        lambda self: cpp_evaluations.append(self.params.iouType) or evaluate_in_cpp(self))
    inputs, outputs = fake_outputs(DatasetCatalog.get(tiny_dataset), seed=2)

    def evaluate(evaluator: COCOEvaluator) -> dict:
        evaluator.reset()
        evaluator.process(inputs, outputs)
        return evaluator.evaluate()

    detectron2_results = evaluate(COCOEvaluator(tiny_dataset, tasks=("bbox", "segm"), distributed=False,
                                                output_dir=str(tmp_path_factory.mktemp("cpp")),
                                                use_fast_impl=True))
    assert sorted(cpp_evaluations) == ["bbox", "segm"]  # Detectron2's C++ COCOeval did the work
    ours = evaluate(FastCOCOEvaluator(tiny_dataset, distributed=False,
                                      output_dir=str(tmp_path_factory.mktemp("ours"))))
    assert list(detectron2_results) == list(ours) == ["bbox", "segm"]
    for task in ours:
        assert 20 < ours[task]["AP"] < 95
        assert list(detectron2_results[task]) == list(ours[task])
        assert detectron2_results[task] == pytest.approx(ours[task], abs=100 * TOLERANCE, nan_ok=True)


def test_fast_coco_evaluator_without_predictions_reports_zeros(
    tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    evaluator = FastCOCOEvaluator(
        tiny_dataset,
        tasks=("bbox",),
        distributed=False,
        output_dir=str(tmp_path_factory.mktemp("d2")),
    )
    inputs, outputs = fake_outputs(DatasetCatalog.get(tiny_dataset), seed=2)
    evaluator.reset()
    evaluator.process(inputs, [{"instances": output["instances"][:0]} for output in outputs])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == 0 and results["bbox"]["AP-ring"] == 0
