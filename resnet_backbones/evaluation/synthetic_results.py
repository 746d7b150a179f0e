"""Seeded COCO ground truth and detection results, made without any image pixels.

Tests and benchmarks of the COCO evaluation need sets that exercise what COCOeval does
differently from a naive AP: objects in all three area ranges, crowd regions (whose matches are
ignored), images without ground truth, images without detections and images with more than
100 detections (cut at ``maxDets``). These generators make such sets from a seed, so every run
evaluates the same numbers.

Geometry: every object is an octagon inscribed in its box (a polygon, so segmentation IoU differs
from box IoU); crowd regions are rectangles stored as uncompressed RLE, like COCO's own crowd
annotations. Detections are jittered copies of the ground truth (better copies score higher),
some with a wrong category, plus false positives. Segmentation results are compressed RLE, the
format Detectron2 writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "COCO_KEYPOINT_NAMES",
    "synthetic_ground_truth",
    "synthetic_keypoint_set",
    "synthetic_results",
]

IMAGE_HEIGHT = 480
IMAGE_WIDTH = 640

# Octagons cut 1/4 of each side at every corner: polygon area = 7/8 of the box area.
_CORNER_CUT = 0.25
_OCTAGON_AREA_FRACTION = 1.0 - 2.0 * _CORNER_CUT**2

# Object areas (in pixels) per COCO area range, kept clear of the 32² and 96² boundaries so that
# jittered detections of an object mostly stay in its range.
_AREA_BANDS = {
    "small": (6.0**2, 28.0**2),
    "medium": (36.0**2, 88.0**2),
    "large": (104.0**2, 280.0**2),
}

COCO_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip


def synthetic_ground_truth(
    num_images: int,
    *,
    num_categories: int = 4,
    max_objects_per_image: int = 10,
    empty_image_every: int = 8,
    crowd_probability: float = 0.06,
    seed: int = 0,
) -> dict[str, Any]:
    """COCO instance annotations (a dict as in ``instances_*.json``) for ``num_images`` images.

    Every ``empty_image_every``-th image has no annotations. Image and category ids are not
    contiguous (as in COCO), so code that confuses ids with indices fails on them.
    """
    rng = np.random.default_rng(seed)
    category_ids = [1 + 3 * k for k in range(num_categories)]
    categories = [
        {"id": cid, "name": f"shape{cid}", "supercategory": "shape"} for cid in category_ids
    ]
    images, annotations = [], []
    for index in range(num_images):
        image_id = 100 + 2 * index
        images.append(_image_entry(image_id))
        if _every(empty_image_every, index):
            continue
        count = int(rng.integers(1, max_objects_per_image + 1))
        crowd = rng.random(count) < crowd_probability
        area_ranges = np.where(
            crowd,
            rng.choice(["medium", "large"], size=count),
            rng.choice(list(_AREA_BANDS), size=count),
        )
        boxes = _random_boxes(rng, count, area_ranges)
        for box, category_id, is_crowd in zip(
            boxes, rng.choice(category_ids, size=count).tolist(), crowd
        ):
            make = _crowd_annotation if is_crowd else _object_annotation
            annotation = make(box, image_id, category_id)
            annotation["id"] = len(annotations) + 1  # COCOeval reads id 0 as "unmatched"
            annotations.append(annotation)
    return {"images": images, "annotations": annotations, "categories": categories}


def synthetic_results(
    ground_truth: dict[str, Any],
    iou_type: str,
    *,
    detections_per_image: int | None = None,
    miss_probability: float = 0.15,
    wrong_category_probability: float = 0.08,
    undetected_image_every: int = 9,
    dense_image_every: int = 10,
    dense_detections: int = 130,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Detection results (COCO results format) for ``ground_truth``; ``iou_type`` "bbox" or "segm".

    Without ``detections_per_image``, every ``undetected_image_every``-th image gets no
    detections and every ``dense_image_every``-th image gets ``dense_detections`` (more than
    COCO's 100, so the maxDets cut matters). With ``detections_per_image``, every image gets
    exactly that many (the benchmark's shape). The same seed gives the same detections for both
    IoU types: bbox results carry boxes, segm results carry only masks (compressed RLE), so mask
    area decides their area range, as in Detectron2.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(
            f"iou_type must be 'bbox' or 'segm' (for keypoints: synthetic_keypoint_set), "
            f"got {iou_type!r}"
        )
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in ground_truth["categories"]]
    boxes_by_image: dict[int, list[tuple[list[float], int]]] = {
        img["id"]: [] for img in ground_truth["images"]
    }
    for annotation in ground_truth["annotations"]:
        boxes_by_image[annotation["image_id"]].append(
            (annotation["bbox"], annotation["category_id"])
        )

    results: list[dict[str, Any]] = []
    for index, (image_id, objects) in enumerate(boxes_by_image.items()):
        count = detections_per_image
        if count is None:
            if _every(undetected_image_every, index):
                continue
            count = dense_detections if _every(dense_image_every, index) else None
        detections = _detect(
            rng, objects, category_ids, miss_probability, wrong_category_probability, count
        )
        results.extend(_result_entries(image_id, detections, iou_type))
    return results


def synthetic_keypoint_set(
    num_images: int, *, seed: int = 0, max_people_per_image: int = 6
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Person keypoint ground truth (17 COCO keypoints) and matching keypoint results.

    Includes people with no labelled keypoint and crowd regions (both ignored by COCOeval),
    medium and large people, images without people and false-positive detections.
    """
    rng = np.random.default_rng(seed)
    ground_truth: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(COCO_KEYPOINT_NAMES),
            }
        ],
    }
    results: list[dict[str, Any]] = []
    for index in range(num_images):
        image_id = 1 + index
        ground_truth["images"].append(_image_entry(image_id))
        if _every(7, index):
            continue
        for _ in range(rng.integers(1, max_people_per_image + 1)):
            person = _person_annotation(rng, image_id, crowd=rng.random() < 0.05)
            person["id"] = len(ground_truth["annotations"]) + 1
            ground_truth["annotations"].append(person)
            if not person["iscrowd"] and rng.random() > 0.15:
                results.append(_keypoint_detection(rng, person))
        for _ in range(rng.poisson(1.0)):
            results.append(_keypoint_false_positive(rng, image_id))
    return ground_truth, results


def _every(period: int, index: int) -> bool:
    """Whether ``index`` is the last of a run of ``period`` (never for period 0)."""
    return bool(period) and index % period == period - 1


def _image_entry(image_id: int) -> dict[str, Any]:
    return {
        "id": image_id,
        "width": IMAGE_WIDTH,
        "height": IMAGE_HEIGHT,
        "file_name": f"{image_id:012d}.jpg",
    }


def _random_boxes(
    rng: np.random.Generator, count: int, area_ranges: Sequence[str] | None = None
) -> np.ndarray:
    """``count`` boxes [x, y, w, h] inside the image whose octagons' areas lie in the given
    area ranges (one per box; default: drawn evenly from small, medium and large)."""
    if area_ranges is None:
        area_ranges = rng.choice(list(_AREA_BANDS), size=count)
    bands = np.array([_AREA_BANDS[name] for name in area_ranges], dtype=float).reshape(count, 2)
    polygon_area = np.exp(rng.uniform(np.log(bands[:, 0]), np.log(bands[:, 1])))
    box_area = polygon_area / _OCTAGON_AREA_FRACTION
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=count))
    width = np.minimum(np.sqrt(box_area * aspect), IMAGE_WIDTH - 1.0)
    height = np.minimum(box_area / width, IMAGE_HEIGHT - 1.0)
    x = rng.uniform(0.0, IMAGE_WIDTH - width)
    y = rng.uniform(0.0, IMAGE_HEIGHT - height)
    return np.round(np.column_stack([x, y, width, height]), 2)


def _octagons(boxes: np.ndarray) -> np.ndarray:
    """Polygons [n, 16] (x1, y1, ..., x8, y8) of the octagons inscribed in boxes [n, 4]."""
    x, y, w, h = np.asarray(boxes, dtype=float).reshape(-1, 4).T
    cx, cy = _CORNER_CUT * w, _CORNER_CUT * h
    xs = [x + cx, x + w - cx, x + w, x + w, x + w - cx, x + cx, x, x]
    ys = [y, y, y + cy, y + h - cy, y + h, y + h, y + h - cy, y + cy]
    return np.round(np.stack([c for point in zip(xs, ys) for c in point], axis=1), 2)


def _object_annotation(box: np.ndarray, image_id: int, category_id: int) -> dict[str, Any]:
    polygon = _octagons(box)[0].tolist()
    box = box.tolist()
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": box,
        "segmentation": [polygon],
        "area": round(box[2] * box[3] * _OCTAGON_AREA_FRACTION, 2),
        "iscrowd": 0,
    }


def _crowd_annotation(box: np.ndarray, image_id: int, category_id: int) -> dict[str, Any]:
    x, y, w, h = (int(v) for v in box)
    w, h = max(w, 1), max(h, 1)
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [float(x), float(y), float(w), float(h)],
        "segmentation": _rectangle_rle(x, y, w, h),
        "area": float(w * h),
        "iscrowd": 1,
    }


def _rectangle_rle(x: int, y: int, w: int, h: int) -> dict[str, Any]:
    """Uncompressed RLE of a filled rectangle, computed without a pixel array.

    RLE runs alternate background/foreground in column-major order, starting with background:
    each of the w covered columns holds one run of h foreground pixels.
    """
    total = IMAGE_HEIGHT * IMAGE_WIDTH
    leading = x * IMAGE_HEIGHT + y
    counts = [leading]
    for column in range(w):
        counts.append(h)
        if column < w - 1:
            counts.append(IMAGE_HEIGHT - h)
    counts.append(total - leading - w * IMAGE_HEIGHT + (IMAGE_HEIGHT - h))
    return {"size": [IMAGE_HEIGHT, IMAGE_WIDTH], "counts": counts}


def _detect(
    rng: np.random.Generator,
    objects: list[tuple[list[float], int]],
    category_ids: list[int],
    miss_probability: float,
    wrong_category_probability: float,
    count: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one image as (boxes [n, 4], category ids [n], scores [n]): jittered objects,
    then false positives.

    ``count`` None keeps the natural number (a few false positives per image); otherwise the
    detections are filled up with false positives or cut to the ``count`` best scores.
    """
    boxes = np.array([box for box, _ in objects], dtype=float).reshape(-1, 4)
    categories = np.array([category for _, category in objects], dtype=int)
    found = rng.random(len(boxes)) >= miss_probability
    boxes, categories = boxes[found], categories[found]
    # A larger jitter gives a worse box and, on average, a lower score, so AP is neither 0 nor 1.
    jitter = rng.uniform(0.01, 0.15, size=len(boxes))
    scores = np.clip(1.0 - 4.0 * jitter + rng.normal(0.0, 0.12, size=len(boxes)), 0.02, 0.999)
    confused = rng.random(len(boxes)) < wrong_category_probability
    categories[confused] = rng.choice(category_ids, size=int(confused.sum()))
    boxes = _jitter_boxes(rng, boxes, jitter)

    num_false_positives = rng.poisson(2.0) if count is None else max(count - len(boxes), 0)
    boxes = np.concatenate([boxes, _random_boxes(rng, num_false_positives)])
    categories = np.concatenate([categories, rng.choice(category_ids, size=num_false_positives)])
    scores = np.concatenate([scores, rng.uniform(0.01, 0.7, size=num_false_positives)])
    if count is not None:
        best = np.argsort(-scores, kind="stable")[:count]
        boxes, categories, scores = boxes[best], categories[best], scores[best]
    return boxes, categories, scores


def _jitter_boxes(rng: np.random.Generator, boxes: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    x, y, w, h = boxes.T
    noise = rng.normal(0.0, 1.0, size=(4, len(boxes))) * jitter
    cx, cy = x + w / 2 + noise[0] * w, y + h / 2 + noise[1] * h
    w, h = w * np.exp(noise[2]), h * np.exp(noise[3])
    x0, y0 = np.maximum(cx - w / 2, 0.0), np.maximum(cy - h / 2, 0.0)
    x1, y1 = np.minimum(cx + w / 2, IMAGE_WIDTH), np.minimum(cy + h / 2, IMAGE_HEIGHT)
    return np.round(
        np.column_stack([x0, y0, np.maximum(x1 - x0, 1.0), np.maximum(y1 - y0, 1.0)]), 2
    )


def _result_entries(
    image_id: int, detections: tuple[np.ndarray, np.ndarray, np.ndarray], iou_type: str
) -> list[dict[str, Any]]:
    boxes, categories, scores = (array.tolist() for array in detections)
    entries = [
        {"image_id": image_id, "category_id": c, "score": s} for c, s in zip(categories, scores)
    ]
    if iou_type == "bbox":
        for entry, box in zip(entries, boxes):
            entry["bbox"] = box
    elif entries:
        # One call rasterises all of the image's polygons into RLE (no pixel array is built).
        rles = mask_utils.frPyObjects(
            _octagons(np.array(boxes)).tolist(), IMAGE_HEIGHT, IMAGE_WIDTH
        )
        for entry, rle in zip(entries, rles):
            entry["segmentation"] = {
                "size": [IMAGE_HEIGHT, IMAGE_WIDTH],
                "counts": rle["counts"].decode("ascii"),
            }
    return entries


def _person_annotation(rng: np.random.Generator, image_id: int, crowd: bool) -> dict[str, Any]:
    box = _random_boxes(rng, 1, [rng.choice(["small", "medium", "large", "large"])])[0].tolist()
    x, y, w, h = box
    keypoints = np.zeros((len(COCO_KEYPOINT_NAMES), 3))
    if not crowd and rng.random() > 0.1:  # 10% of people have no labelled keypoint
        visibility = rng.choice([0, 1, 2], size=len(COCO_KEYPOINT_NAMES), p=[0.25, 0.15, 0.6])
        keypoints[:, 0] = np.round(rng.uniform(x, x + w, size=len(keypoints)))
        keypoints[:, 1] = np.round(rng.uniform(y, y + h, size=len(keypoints)))
        keypoints[:, 2] = visibility
        keypoints[visibility == 0] = 0
    return {
        "image_id": image_id,
        "category_id": 1,
        "bbox": box,
        "area": round(0.6 * w * h, 2),
        "iscrowd": int(crowd),
        "keypoints": [int(v) for v in keypoints.ravel()],
        "num_keypoints": int(np.count_nonzero(keypoints[:, 2])),
    }


def _keypoint_detection(rng: np.random.Generator, person: dict[str, Any]) -> dict[str, Any]:
    truth = np.asarray(person["keypoints"], dtype=float).reshape(-1, 3)
    x, y, w, h = person["bbox"]
    jitter = rng.uniform(0.01, 0.12)
    points = truth[:, :2] + rng.normal(0.0, jitter * np.sqrt(w * h), size=(len(truth), 2))
    # Unlabelled keypoints still get a guess somewhere in the box, as a model would give.
    unlabelled = truth[:, 2] == 0
    points[unlabelled] = np.column_stack(
        [rng.uniform(x, x + w, unlabelled.sum()), rng.uniform(y, y + h, unlabelled.sum())]
    )
    return _keypoint_entry(
        person["image_id"],
        points,
        float(np.clip(1.0 - 5 * jitter + rng.normal(0, 0.1), 0.02, 0.99)),
    )


def _keypoint_false_positive(rng: np.random.Generator, image_id: int) -> dict[str, Any]:
    x, y, w, h = _random_boxes(rng, 1)[0]
    points = np.column_stack(
        [
            rng.uniform(x, x + w, len(COCO_KEYPOINT_NAMES)),
            rng.uniform(y, y + h, len(COCO_KEYPOINT_NAMES)),
        ]
    )
    return _keypoint_entry(image_id, points, float(rng.uniform(0.01, 0.6)))


def _keypoint_entry(image_id: int, points: np.ndarray, score: float) -> dict[str, Any]:
    keypoints = np.column_stack([points, np.ones(len(points))])
    return {
        "image_id": image_id,
        "category_id": 1,
        "keypoints": [round(float(v), 2) for v in keypoints.ravel()],
        "score": score,
    }
