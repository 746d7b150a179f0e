"""Running COCOeval through pycocotools or faster-coco-eval, with the same numbers from both.

faster-coco-eval (on the package index) implements COCOeval's per-image matching and
accumulation in C++, needs no Detectron2 extension and gives pycocotools' numbers; it is the
default when installed. pycocotools is the reference and the fallback.

Both backends return an evaluator after ``evaluate()``, ``accumulate()`` and ``summarize()``: its
``stats`` holds the summary numbers in COCOeval's order (12 for bbox/segm, 10 for keypoints; -1
where no ground truth defines one) and ``eval["precision"]`` the [IoU, recall, category, area,
maxDets] precision array that per-category AP is read from.
"""

from __future__ import annotations

import contextlib
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
    with _quiet():
        coco_gt = _coco_from_dict(selected, _copy_dataset(ground_truth))
        coco_dt = _load_results(selected, coco_gt, results)
        evaluator = selected.cocoeval_class(coco_gt, coco_dt, iou_type)
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
        return _Backend(name, COCO, COCOeval_faster)
    if name == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return _Backend(name, COCO, COCOeval)
    raise COCOEvaluationInputError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


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
    return coco_gt.loadRes([dict(result) for result in results])


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
