"""COCO mAP evaluation without Detectron2's C++ extension.

- :func:`evaluate_coco`: metrics of a results file (or list), named and scaled as Detectron2's.
- :func:`run_evaluate_coco`: the body of ``tools/evaluate_coco.py``.
- :class:`FastCOCOEvaluator`: Detectron2 ``COCOEvaluator`` for training-time evaluation.
- :func:`run_coco_eval`: the summarized COCOeval itself, from faster-coco-eval (the default when
  installed) or pycocotools, which give the same numbers.
- :class:`SemSegEvaluator`: Detectron2's semantic-segmentation evaluator (mIoU, fwIoU, pixel
  accuracy, per-class IoU) on NumPy 2 (``sem_seg.py``).
"""

from typing import Any

from .backends import BACKENDS, COCO_MAX_DETS, available_backends, default_backend, run_coco_eval
from .coco import (
    SummaryMetric,
    evaluate_coco,
    format_report,
    run_evaluate_coco,
    summary_metrics,
    write_metrics_json,
)
from .inputs import (
    IOU_TYPES,
    COCOEvaluationInputError,
    EmptyResultsWarning,
    load_ground_truth,
    load_results,
)

__all__ = [
    "BACKENDS",
    "COCO_MAX_DETS",
    "IOU_TYPES",
    "COCOEvaluationInputError",
    "EmptyResultsWarning",
    "FastCOCOEvaluator",
    "SemSegEvaluator",
    "SummaryMetric",
    "available_backends",
    "default_backend",
    "evaluate_coco",
    "format_report",
    "load_ground_truth",
    "load_results",
    "run_coco_eval",
    "run_evaluate_coco",
    "summary_metrics",
    "write_metrics_json",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: it pulls in detectron2.evaluation, which the command line tool and
    # plain COCO evaluation do not need.
    if name == "FastCOCOEvaluator":
        from .detectron2_evaluator import FastCOCOEvaluator

        return FastCOCOEvaluator
    if name == "SemSegEvaluator":
        from .sem_seg import SemSegEvaluator

        return SemSegEvaluator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
