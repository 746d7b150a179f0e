"""Loading and checking COCO annotations and detection results before they reach COCOeval.

pycocotools and faster-coco-eval trust their input: a NaN score, a result for an unknown image or
a box with negative size gives an ``AssertionError``, a ``KeyError`` deep in the evaluation or,
worse, a wrong number. Here each problem becomes one :class:`COCOEvaluationInputError` whose
message names the file and the offending entry.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any, Union

__all__ = [
    "IOU_TYPES",
    "COCOEvaluationInputError",
    "EmptyResultsWarning",
    "load_ground_truth",
    "load_results",
]

IOU_TYPES = ("bbox", "segm", "keypoints")

AnnotationsSource = Union[str, "os.PathLike[str]", Mapping[str, Any]]
ResultsSource = Union[str, "os.PathLike[str]", Sequence[Mapping[str, Any]]]

# Fields COCOeval reads from every ground-truth annotation, per IoU type.
_GT_FIELDS = {
    "bbox": ("id", "image_id", "category_id", "area", "bbox"),
    "segm": ("id", "image_id", "category_id", "area", "segmentation"),
    "keypoints": ("id", "image_id", "category_id", "area", "bbox", "keypoints", "num_keypoints"),
}
_RESULT_PAYLOAD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}
_RESULT_KEYS = frozenset({"image_id", "category_id", "score"})
_PLAIN_NUMBER_TYPES = frozenset({float, int})


class COCOEvaluationInputError(ValueError):
    """Annotations, results or options that COCO evaluation cannot use.

    The message names the file (or ``<annotations>``/``<results>`` for in-memory data) and the
    offending entry, e.g. ``dets.json: result #3 (image_id=7, category_id=1): score is nan``.
    """


class EmptyResultsWarning(UserWarning):
    """The result list is empty: every metric is 0 (NaN where there is no ground truth)."""


def load_ground_truth(
    source: AnnotationsSource, iou_type: str, *, name: str | None = None
) -> dict[str, Any]:
    """Reads (if a path) and checks COCO annotations for evaluating ``iou_type``.

    ``name`` labels in-memory data in messages (default ``<annotations>``; a path names itself).

    Raises:
        COCOEvaluationInputError: the file is missing or not JSON, a section ("images",
            "annotations", "categories") is missing, or an entry lacks what COCOeval reads.
    """
    name, dataset = _read_source(source, name or "<annotations>", "annotations")
    _check_iou_type(iou_type)
    if not isinstance(dataset, Mapping):
        raise COCOEvaluationInputError(
            f"{name}: expected a COCO annotations object with 'images', 'annotations' and "
            f"'categories', got a JSON {_json_type(dataset)}"
        )
    missing = [key for key in ("images", "annotations", "categories") if key not in dataset]
    if missing:
        raise COCOEvaluationInputError(
            f"{name}: not a COCO annotations file: missing {', '.join(repr(k) for k in missing)} "
            f"(has {', '.join(repr(k) for k in dataset) or 'no keys'})"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset[key], list):
            raise COCOEvaluationInputError(
                f"{name}: '{key}' must be a list, got a JSON {_json_type(dataset[key])}"
            )
    image_ids = _check_ids(
        name, dataset["images"], "image", need=("height", "width") if iou_type == "segm" else ()
    )
    category_ids = _check_ids(name, dataset["categories"], "category", need=("name",))
    _check_gt_annotations(name, dataset["annotations"], iou_type, image_ids, category_ids)
    return dict(dataset)


def load_results(
    source: ResultsSource,
    ground_truth: Mapping[str, Any],
    iou_type: str,
    *,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """Reads (if a path) and checks detection results against checked ``ground_truth``.

    An empty list is valid: it warns with :class:`EmptyResultsWarning` and evaluates to zeros.
    ``name`` labels in-memory data in messages (default ``<results>``; a path names itself).

    Raises:
        COCOEvaluationInputError: the file is missing or not JSON, the results are not a list, or
            a result has an unknown image or category id, no or a non-finite score, or no valid
            payload for ``iou_type`` (a bbox of 4 numbers with non-negative size, a compressed-RLE
            mask of the image's size, or 3 numbers per keypoint).
    """
    name, results = _read_source(source, name or "<results>", "results")
    _check_iou_type(iou_type)
    if not isinstance(results, list):
        raise COCOEvaluationInputError(
            f"{name}: expected a JSON list of results ({{'image_id', 'category_id', "
            f"'{_RESULT_PAYLOAD[iou_type]}', 'score'}}), got a JSON {_json_type(results)}"
        )
    if not results:
        warnings.warn(
            f"{name}: the result list is empty: every metric is 0 "
            "(NaN where there is no ground truth)",
            EmptyResultsWarning,
            stacklevel=2,
        )
        return []
    _ResultChecker(name, ground_truth, iou_type, results).check_all()
    return results


def _read_source(source: Any, default_name: str, role: str) -> tuple[str, Any]:
    if not isinstance(source, (str, os.PathLike)):
        return default_name, source
    name = os.fspath(source)
    try:
        with open(name, "rb") as file:
            return name, json.load(file)
    except FileNotFoundError:
        raise COCOEvaluationInputError(f"{name}: {role} file does not exist") from None
    except IsADirectoryError:
        raise COCOEvaluationInputError(
            f"{name}: {role} path is a directory, not a JSON file"
        ) from None
    except OSError as error:
        raise COCOEvaluationInputError(
            f"{name}: cannot read {role} file: {error.strerror}"
        ) from None
    except UnicodeDecodeError as error:
        raise COCOEvaluationInputError(
            f"{name}: {role} file is not JSON text: {error.reason}"
        ) from None
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise COCOEvaluationInputError(
            f"{name}: {role} file is not valid JSON: {error.msg} at {where}"
        ) from None


def _check_iou_type(iou_type: str) -> None:
    if iou_type not in IOU_TYPES:
        raise COCOEvaluationInputError(
            f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}"
        )


def _check_ids(name: str, entries: list[Any], kind: str, need: tuple[str, ...]) -> set[int]:
    ids: set[int] = set()
    for index, entry in enumerate(entries):
        where = f"{name}: {kind} #{index}"
        if not isinstance(entry, Mapping) or not _is_int(entry.get("id")):
            raise COCOEvaluationInputError(f"{where}: needs an integer 'id', got {_short(entry)}")
        missing = [key for key in need if key not in entry]
        if missing:
            raise COCOEvaluationInputError(
                f"{where} (id={entry['id']}): missing {', '.join(repr(k) for k in missing)}"
            )
        if entry["id"] in ids:
            raise COCOEvaluationInputError(f"{where}: id {entry['id']} appears twice")
        ids.add(entry["id"])
    return ids


def _check_gt_annotations(
    name: str, annotations: list[Any], iou_type: str, image_ids: set[int], category_ids: set[int]
) -> None:
    seen_ids: set[int] = set()
    for index, annotation in enumerate(annotations):
        problem = _annotation_problem(annotation, iou_type, image_ids, category_ids, seen_ids)
        if problem:
            raise COCOEvaluationInputError(f"{name}: annotation #{index}{problem}")
        seen_ids.add(annotation["id"])


def _annotation_problem(
    annotation: Any, iou_type: str, image_ids: set[int], category_ids: set[int], seen_ids: set[int]
) -> str | None:
    """What is wrong with one ground-truth annotation, as ": <problem>" after its index."""
    if not isinstance(annotation, Mapping):
        return f": expected an object, got {_short(annotation)}"
    missing = [key for key in _GT_FIELDS[iou_type] if key not in annotation]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        return f" (id={annotation.get('id')!r}): missing {keys}, which {iou_type} evaluation reads"
    annotation_id = annotation["id"]
    if not _is_int(annotation_id):
        return f": id must be an integer, got {_short(annotation_id)}"
    if annotation_id == 0:
        # COCOeval records a detection's match as the ground truth's id, 0 meaning "unmatched":
        # a ground truth with id 0 would silently never count as found.
        return ": id 0 is read as 'unmatched' by COCOeval; number annotation ids from 1"
    if annotation_id in seen_ids:
        return f": id {annotation_id} appears twice"
    image_id, category_id = annotation["image_id"], annotation["category_id"]
    if not _is_int(image_id) or image_id not in image_ids:
        return f" (id={annotation_id}): image_id {image_id!r} is not in 'images'"
    if not _is_int(category_id) or category_id not in category_ids:
        return f" (id={annotation_id}): category_id {category_id!r} is not in 'categories'"
    return None


class _ResultChecker:
    """Checks every result; stops at the first problem with a message naming it."""

    def __init__(
        self, name: str, ground_truth: Mapping[str, Any], iou_type: str, results: list[Any]
    ) -> None:
        self.name = name
        self.iou_type = iou_type
        self.results = results
        self.image_sizes = {
            img["id"]: (img.get("height"), img.get("width")) for img in ground_truth["images"]
        }
        self.category_ids = {cat["id"] for cat in ground_truth["categories"]}
        self.num_keypoint_values = (
            _num_keypoint_values(ground_truth) if iou_type == "keypoints" else None
        )
        # COCO's loadRes takes the layout of every result from the first one: when it has a box,
        # every result's box is read (and its area decides the area range).
        first = results[0]
        self.boxes_required = iou_type == "bbox" or (isinstance(first, Mapping) and "bbox" in first)

    def check_all(self) -> None:
        for index, result in enumerate(self.results):
            problem = self._problem(result)
            if problem:
                raise COCOEvaluationInputError(f"{self._where(index, result)}: {problem}")

    def _where(self, index: int, result: Any) -> str:
        where = f"{self.name}: result #{index}"
        if isinstance(result, Mapping):
            ids = f"image_id={result.get('image_id')!r}, category_id={result.get('category_id')!r}"
            where += f" ({ids})"
        return where

    def _problem(self, result: Any) -> str | None:
        if type(result) is not dict and not isinstance(result, Mapping):
            return f"expected an object, got {_short(result)}"
        missing = _RESULT_KEYS - result.keys()
        if missing:
            return f"missing {', '.join(repr(k) for k in sorted(missing))}"
        image_id, category_id, score = result["image_id"], result["category_id"], result["score"]
        if not _is_int(image_id) or image_id not in self.image_sizes:
            return f"image_id {image_id!r} is not in the annotations' images"
        if not _is_int(category_id) or category_id not in self.category_ids:
            return f"category_id {category_id!r} is not in the annotations' categories"
        if not _is_finite_number(score):
            return f"score must be a finite number, got {score!r}"
        if self.boxes_required or "bbox" in result:
            problem = _bbox_problem(result.get("bbox"), self.iou_type != "bbox")
            if problem:
                return problem
        if self.iou_type == "segm":
            return _mask_problem(result.get("segmentation"), self.image_sizes[image_id])
        if self.iou_type == "keypoints":
            return _keypoints_problem(result.get("keypoints"), self.num_keypoint_values)
        return None


def _bbox_problem(bbox: Any, first_has_box: bool) -> str | None:
    if bbox is None:
        if first_has_box:
            return "no 'bbox', but result #0 has one (COCO's loadRes then reads every result's box)"
        return "missing 'bbox'"
    if not _is_four_finite_numbers(bbox):
        expected = "a list of 4 finite numbers [x, y, width, height]"
        return f"bbox must be {expected}, got {_short(bbox)}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {list(bbox)} has a negative width or height"
    return None


def _is_four_finite_numbers(values: Any) -> bool:
    if not isinstance(values, list) or len(values) != 4:  # COCO's IoU code reads lists only
        return False
    if {type(v) for v in values} <= _PLAIN_NUMBER_TYPES and math.isfinite(sum(values)):
        return True  # the fast path for the usual box: result files hold up to millions
    return all(_is_finite_number(v) for v in values)


def _mask_problem(segmentation: Any, image_size: tuple[Any, Any]) -> str | None:
    if segmentation is None:
        return "missing 'segmentation': segm results need a mask (compressed RLE)"
    is_compressed_rle = isinstance(segmentation, Mapping) and isinstance(
        segmentation.get("counts"), (str, bytes)
    )
    if not is_compressed_rle:  # pycocotools' loadRes takes result areas from compressed RLE only
        expected = "compressed RLE {'size': [height, width], 'counts': str}"
        return f"segmentation must be {expected}, got {_short(segmentation)}"
    size = segmentation.get("size")
    if not isinstance(size, (list, tuple)) or list(size) != list(image_size):
        return f"mask size {size!r} differs from the image's [height, width] {list(image_size)}"
    return None


def _keypoints_problem(keypoints: Any, expected_length: int | None) -> str | None:
    if keypoints is None:
        return "missing 'keypoints'"
    if not isinstance(keypoints, (list, tuple)) or not keypoints or len(keypoints) % 3:
        return f"keypoints must be a list of [x, y, v] triples, got {_short(keypoints)}"
    if expected_length is not None and len(keypoints) != expected_length:
        return f"{len(keypoints) // 3} keypoints, but the ground truth has {expected_length // 3}"
    if not all(_is_finite_number(v) for v in keypoints):
        return f"keypoints must be finite numbers, got {_short(keypoints)}"
    return None


def _num_keypoint_values(ground_truth: Mapping[str, Any]) -> int | None:
    for annotation in ground_truth["annotations"]:
        return len(annotation["keypoints"])
    return None


def _is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, Integral) and not isinstance(value, bool))


def _is_finite_number(value: Any) -> bool:
    if type(value) is float:  # the common case, checked first: results hold millions of numbers
        return math.isfinite(value)
    if type(value) is int:
        return True
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "boolean" if isinstance(value, bool) else "number"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
