"""Running COCOeval through pycocotools or faster-coco-eval, with the same numbers from both.

faster-coco-eval (on the package index) implements COCOeval's per-image matching and
accumulation in C++, needs no Detectron2 extension and gives pycocotools' numbers; it is the
default when installed. pycocotools is the reference and the fallback.

Where the time goes, and the fast path (measured on 1,000 images x 100 mask results, 2 CPU cores;
pycocotools about 6 s in all, of which 3.5 s Python ``evaluateImg`` and 0.9 s ``accumulate``):
faster-coco-eval's C++ matching and accumulation take 0.4 s, but its mask helpers convert every
RLE dict through pybind11 at about 5-10 us each, and each mask result goes through them three
times (area and box in ``loadRes``, RLE again in ``_prepare``), so its segm evaluation took about
4.7 s, barely faster than pycocotools. The faster-coco-eval backend here therefore:

- loads results itself (:func:`_load_results_fast`): the same fields as ``COCO.loadRes``
  (``id``, ``iscrowd``, ``area``, the box of a mask-only result), with mask areas and boxes from
  batched calls of pycocotools' C mask code;
- computes mask IoUs with pycocotools' ``mask.iou`` on the results' compressed RLE as they are
  (:class:`_MaskIoUMixin`: ``computeIoU``; faster-coco-eval's own RLE preparation is skipped),
  keeping faster-coco-eval's C++ matching and accumulation;
- pauses Python's cyclic garbage collector while it runs (:func:`gc_paused`): evaluation builds
  millions of small dicts and lists, and full collections walking them cost as much again.

The numbers are pycocotools' (the tests compare all of them); segm evaluation takes about a third
of the time. Without pycocotools installed, or for other IoU types, faster-coco-eval runs as
shipped.

Both backends return an evaluator after ``evaluate()``, ``accumulate()`` and ``summarize()``: its
``stats`` holds the summary numbers in COCOeval's order (12 for bbox/segm, 10 for keypoints; -1
where no ground truth defines one) and ``eval["precision"]`` the [IoU, recall, category, area,
maxDets] precision array that per-category AP is read from.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import importlib.util
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .inputs import COCOEvaluationInputError

__all__ = [
    "BACKENDS",
    "COCO_MAX_DETS",
    "available_backends",
    "default_backend",
    "gc_paused",
    "resolve_max_dets",
    "run_coco_eval",
]

BACKENDS = ("faster-coco-eval", "pycocotools")

# COCO's limits on detections per image: 100 for boxes and masks (AP and AR100), 20 for keypoints.
COCO_MAX_DETS = {"bbox": 100, "segm": 100, "keypoints": 20}


@dataclass(frozen=True)
class _Backend:
    name: str
    coco_class: type
    cocoeval_class: type
    # The faster-coco-eval fast path (module doc): results loading and mask IoUs.
    fast_results: bool = False
    segm_cocoeval_class: type | None = None


def available_backends() -> tuple[str, ...]:
    """The backends whose package is installed, fastest first."""
    modules = {"faster-coco-eval": "faster_coco_eval", "pycocotools": "pycocotools"}
    return tuple(name for name in BACKENDS if importlib.util.find_spec(modules[name]) is not None)


def default_backend() -> str:
    """faster-coco-eval when installed, otherwise pycocotools."""
    available = available_backends()
    if not available:
        raise COCOEvaluationInputError(
            "COCO evaluation needs faster-coco-eval or pycocotools; neither is installed"
        )
    return available[0]


def resolve_max_dets(iou_type: str, max_dets: int | None) -> list[int]:
    """COCOeval's ``params.maxDets`` for ``iou_type``: [1, 10, N] for bbox/segm, [20] for keypoints.

    ``max_dets`` None means COCO's limit. For boxes and masks N must be more than 10: COCOeval
    sorts maxDets and reads AP at the last one. Keypoint evaluation is defined at 20 only:
    pycocotools' keypoint summary reads 20 whatever maxDets holds.
    """
    if max_dets is None:
        max_dets = COCO_MAX_DETS[iou_type]
    if isinstance(max_dets, bool) or not isinstance(max_dets, int):
        raise COCOEvaluationInputError(f"max_dets must be an integer, got {max_dets!r}")
    if iou_type == "keypoints":
        if max_dets != COCO_MAX_DETS["keypoints"]:
            raise COCOEvaluationInputError(
                f"keypoint evaluation uses COCO's 20 detections per image, got max_dets={max_dets}"
            )
        return [max_dets]
    if max_dets <= 10:
        raise COCOEvaluationInputError(
            f"max_dets must be more than 10 (maxDets is [1, 10, max_dets]), got {max_dets}"
        )
    return [1, 10, max_dets]


def run_coco_eval(
    ground_truth: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    iou_type: str,
    *,
    backend: str | None = None,
    max_dets: int | None = None,
    image_ids: Sequence[int] | None = None,
    kpt_oks_sigmas: Sequence[float] | None = None,
) -> Any:
    """Evaluates ``results`` against ``ground_truth`` and returns the summarized COCOeval.

    Inputs are COCO dicts/lists as checked by :mod:`.inputs`; neither is modified (COCO's
    loaders write ids, areas and masks into the dicts they get, so they get copies).

    Args:
        ground_truth: COCO annotations ({"images", "annotations", "categories"}).
        results: COCO results; may be empty (every metric is then 0, or -1 without ground truth).
        iou_type: "bbox", "segm" or "keypoints".
        backend: "faster-coco-eval" or "pycocotools"; None picks :func:`default_backend`.
        max_dets: detections per image, see :func:`resolve_max_dets`.
        image_ids: evaluate these images only (default: all of ``ground_truth``'s).
        kpt_oks_sigmas: per-keypoint OKS sigmas (default: COCO's 17).
    """
    selected = _load_backend(backend)
    max_dets_list = resolve_max_dets(iou_type, max_dets)
    with _quiet(), gc_paused():
        coco_gt = _coco_from_dict(selected, _copy_dataset(ground_truth))
        coco_dt = _load_results(selected, coco_gt, results)
        cocoeval_class = selected.cocoeval_class
        if iou_type == "segm" and selected.segm_cocoeval_class is not None:
            cocoeval_class = selected.segm_cocoeval_class
        evaluator = cocoeval_class(coco_gt, coco_dt, iou_type)
        _set_params(evaluator.params, coco_gt, max_dets_list, image_ids, kpt_oks_sigmas, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if selected.name == "pycocotools" and iou_type != "keypoints" and max_dets_list[-1] != 100:
        _fix_pycocotools_headline_ap(evaluator)
    return evaluator


def _load_backend(name: str | None) -> _Backend:
    name = name or default_backend()
    if name == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError:
            raise COCOEvaluationInputError(
                "backend faster-coco-eval is not installed: "
                "`pip install faster-coco-eval`, or choose pycocotools"
            ) from None
        segm_class = _fast_segm_cocoeval_class(COCOeval_faster)
        return _Backend(
            name,
            COCO,
            COCOeval_faster,
            fast_results=_pycocotools_mask() is not None,
            segm_cocoeval_class=segm_class,
        )
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return _Backend(name, COCO, COCOeval)
    raise COCOEvaluationInputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


@contextlib.contextmanager
def gc_paused():
    """Python's cyclic garbage collector is off inside the block, and back as it was after.

    COCO evaluation allocates millions of small dicts and lists (one per result, and their
    boxes) that form no reference cycles; with the collector on, each full collection walks all
    of them, which doubled the time of JSON loading and results loading here. Nothing is leaked:
    reference counting frees them as usual, and cycles made in the block are collected later.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def _quiet():
    # pycocotools prints progress and its summary table to stdout; callers print their own report.
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _copy_dataset(dataset: Mapping[str, Any]) -> dict[str, Any]:
    # COCO and COCOeval write into the top level of image and annotation dicts (int ids, "ignore",
    # RLE masks in place of polygons); one level of copying keeps the caller's data intact.
    copied = dict(dataset)
    copied["images"] = [dict(image) for image in dataset["images"]]
    copied["annotations"] = [dict(annotation) for annotation in dataset["annotations"]]
    return copied


def _coco_from_dict(backend: _Backend, dataset: dict[str, Any]) -> Any:
    coco = backend.coco_class()  # pycocotools' constructor takes only a file name
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _load_results(backend: _Backend, coco_gt: Any, results: Sequence[Mapping[str, Any]]) -> Any:
    if not results:
        # pycocotools' loadRes fails on an empty list (it inspects results[0]); an empty result
        # set over the same images and categories is what it would mean.
        empty = {
            "images": coco_gt.dataset["images"],
            "categories": coco_gt.dataset["categories"],
            "annotations": [],
        }
        return _coco_from_dict(backend, empty)
    if backend.fast_results:
        loaded = _load_results_fast(backend, coco_gt, results)
        if loaded is not None:
            return loaded
    return coco_gt.loadRes([dict(result) for result in results])


# ---------------------------------------------------------------------------------------------
# The faster-coco-eval fast path (see the module doc)

# pycocotools' area() builds a uint8 array of the batch length first (a bug that NumPy 2 turns
# into OverflowError beyond 255 masks), so masks go to it in batches of at most 255.
_MASK_BATCH = 255


def _pycocotools_mask() -> Any:
    try:
        from pycocotools import mask
    except ImportError:
        return None
    return mask


def _load_results_fast(backend: _Backend, coco_gt: Any, results: Sequence[Mapping[str, Any]]) -> Any:
    """``coco_gt.loadRes(results)`` for box and mask results, with batched mask computations.

    As ``loadRes``, the layout of every result is taken from the first one: with a non-empty
    ``bbox`` every result is a box (area = box area; a box polygon as ``segmentation`` where it
    has none); otherwise every result is a compressed-RLE mask (area = mask area; ``bbox`` = the
    mask's box where it has none). Each result gets ``id`` (from 1) and ``iscrowd`` 0. Returns
    None for other results (keypoints, captions), which ``loadRes`` handles.
    """
    annotations = [dict(result) for result in results]
    first = annotations[0]
    if "caption" in first:
        return None
    if "bbox" in first and first["bbox"] != []:
        for index, annotation in enumerate(annotations, start=1):
            x, y, w, h = annotation["bbox"]
            if "segmentation" not in annotation:
                annotation["segmentation"] = [[x, y, x, y + h, x + w, y + h, x + w, y]]
            annotation["area"] = w * h
            annotation["id"] = index
            annotation["iscrowd"] = 0
    elif "segmentation" in first:
        masks = [annotation["segmentation"] for annotation in annotations]
        if not all(_is_compressed_rle(mask) for mask in masks):
            return None
        areas, boxes = _mask_areas_and_boxes(masks)
        for index, (annotation, area, box) in enumerate(zip(annotations, areas, boxes), start=1):
            annotation["area"] = area
            if "bbox" not in annotation:
                annotation["bbox"] = box
            annotation["id"] = index
            annotation["iscrowd"] = 0
    else:
        return None
    dataset = coco_gt.dataset
    loaded = backend.coco_class()
    loaded.dataset = {
        "info": copy.deepcopy(dataset.get("info", {})),
        "images": list(dataset["images"]),
        "categories": copy.deepcopy(dataset["categories"]),
        "annotations": annotations,
    }
    loaded.createIndex()
    return loaded


def _is_compressed_rle(mask: Any) -> bool:
    return isinstance(mask, Mapping) and isinstance(mask.get("counts"), (str, bytes))


def _mask_areas_and_boxes(masks: list[Any]) -> tuple[list[float], list[list[float]]]:
    """Areas (pixels) and [x, y, w, h] boxes of compressed-RLE masks, from pycocotools' C code."""
    mask_utils = _pycocotools_mask()
    areas: list[float] = []
    boxes: list[list[float]] = []
    for start in range(0, len(masks), _MASK_BATCH):
        batch = masks[start : start + _MASK_BATCH]
        areas += mask_utils.area(batch).astype(np.float64).tolist()
        boxes += mask_utils.toBbox(batch).tolist()
    return areas, boxes


def _to_rle(segmentation: Any, height: int, width: int) -> Any:
    """A compressed RLE of a COCO segmentation (polygons, uncompressed or compressed RLE)."""
    if type(segmentation) is dict and type(segmentation.get("counts")) in _COMPRESSED_COUNTS:
        return segmentation  # the usual mask result, first: there are hundreds of thousands
    mask_utils = _pycocotools_mask()
    if isinstance(segmentation, list):  # polygons of one object
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE (crowd regions)
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


_COMPRESSED_COUNTS = (str, bytes)


def _negative_score(annotation: Mapping[str, Any]) -> float:
    return -annotation["score"]


class _MaskIoUMixin:
    """Mask IoUs from pycocotools' ``mask.iou`` for faster-coco-eval's ``COCOeval_faster``.

    ``_prepare`` runs with ``params.compute_rle`` off, so faster-coco-eval does not convert
    every mask into its own RLE dicts; ``computeIoU`` then takes each (image, category)'s ground
    truth and detections in the order faster-coco-eval's C++ matching uses (its per-image,
    per-category lists; detections by decreasing score, stable, cut at ``maxDets``, as COCOeval
    does) and returns the same IoU matrix. Evaluations this does not cover (no categories,
    LVIS style, boundary IoU) run as shipped.
    """

    def _prepare(self) -> None:
        params = self.params
        self._pycocotools_ious = (
            params.iouType == "segm"
            and bool(params.useCats)
            and not getattr(self, "lvis_style", False)
            and not getattr(params, "compute_boundary", False)
        )
        if self._pycocotools_ious:
            params.compute_rle = False
        super()._prepare()

    def evaluate(self) -> None:
        try:
            super().evaluate()
        finally:
            if getattr(self, "_pycocotools_ious", False):
                self.params.compute_rle = True

    def computeIoU(self, imgId: int, catId: int) -> Any:  # noqa: N802, N803 (COCOeval's names)
        if not getattr(self, "_pycocotools_ious", False):
            return super().computeIoU(imgId, catId)
        ground_truth = self.gt_dataset.get_instances([imgId], [catId], True)[0][0]
        if len(ground_truth) == 0:
            return []
        detections = self.dt_dataset.get_instances([imgId], [catId], True)[0][0]
        if len(detections) == 0:
            return []
        detections = sorted(detections, key=_negative_score)[: self.params.maxDets[-1]]
        image = self.cocoGt.imgs[imgId]
        height, width = image["height"], image["width"]
        mask_utils = _pycocotools_mask()
        return mask_utils.iou(
            [_to_rle(d["segmentation"], height, width) for d in detections],
            [_to_rle(g["segmentation"], height, width) for g in ground_truth],
            [int(g.get("iscrowd", 0)) for g in ground_truth],
        )


@functools.lru_cache(maxsize=None)
def _fast_segm_cocoeval_class(cocoeval_faster: type) -> type | None:
    """``COCOeval_faster`` with :class:`_MaskIoUMixin`, where pycocotools and the internals it
    relies on (``_prepare``, ``computeIoU``, the per-image datasets) are there."""
    if _pycocotools_mask() is None:
        return None
    try:
        from faster_coco_eval import faster_eval_api_cpp
    except ImportError:
        return None
    needed = ("_prepare", "computeIoU", "evaluate")
    if not all(hasattr(cocoeval_faster, name) for name in needed):
        return None
    if not hasattr(getattr(faster_eval_api_cpp, "Dataset", None), "get_instances"):
        return None
    return type("COCOevalFasterMaskIoU", (_MaskIoUMixin, cocoeval_faster), {})


def _set_params(
    params: Any,
    coco_gt: Any,
    max_dets: list[int],
    image_ids: Sequence[int] | None,
    kpt_oks_sigmas: Sequence[float] | None,
    iou_type: str,
) -> None:
    # faster-coco-eval evaluates keypoints over the categories that have annotations only, and
    # pycocotools over all; fixing the list keeps the category axis (per-category AP) identical.
    params.catIds = sorted(coco_gt.getCatIds())
    params.maxDets = list(max_dets)
    if image_ids is not None:
        params.imgIds = sorted(image_ids)
    if iou_type == "keypoints" and kpt_oks_sigmas:
        params.kpt_oks_sigmas = np.asarray(kpt_oks_sigmas, dtype=float)


def _fix_pycocotools_headline_ap(evaluator: Any) -> None:
    # pycocotools' summarize() reads the headline AP (stats[0]) at maxDets=100 whatever maxDets
    # holds, giving -1 for any other limit; its 11 other numbers use maxDets[2]. Recompute AP the
    # way summarize() does, at the configured limit (Detectron2's COCOevalMaxDets does the same).
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    defined = precision[precision > -1]
    evaluator.stats[0] = float(np.mean(defined)) if defined.size else -1.0
