"""COCO mAP of a results file: the numbers, their Detectron2 names, the report and the JSON file.

:func:`evaluate_coco` is the library entry; :func:`run_evaluate_coco` is what
``tools/evaluate_coco.py`` runs (it reports input problems as ``error: ...`` and exit status 2).

Metric names and scale follow Detectron2's ``COCOEvaluator``: AP, AP50, AP75, APs, APm, APl (no
APs for keypoints) and per-category ``AP-<name>``, in percent, NaN where COCOeval gives -1 (no
ground truth in that range). The recall numbers COCOeval also summarizes are added as
AR1, AR10, AR100 (AR<N> for another ``max_dets``), ARs, ARm, ARl; for keypoints AR, AR50, AR75,
ARm, ARl.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from ..fileio import write_json_atomic
from .backends import gc_paused, resolve_max_dets, run_coco_eval
from .inputs import (
    AnnotationsSource,
    COCOEvaluationInputError,
    EmptyResultsWarning,
    ResultsSource,
    load_ground_truth,
    load_results,
)

__all__ = [
    "SummaryMetric",
    "evaluate_coco",
    "format_report",
    "run_evaluate_coco",
    "summary_metrics",
    "write_metrics_json",
]

CATEGORY_PREFIX = "AP-"


@dataclass(frozen=True)
class SummaryMetric:
    """One of COCOeval's summary numbers: its Detectron2 name and what it averages over."""

    name: str
    kind: str  # "AP" or "AR"
    iou: str  # "0.50:0.95", "0.50" or "0.75"
    area: str  # "all", "small", "medium" or "large"
    max_dets: int

    def describe(self, value: float) -> str:
        """The line pycocotools' ``summarize()`` prints for this number."""
        title = "Average Precision" if self.kind == "AP" else "Average Recall"
        scope = f"IoU={self.iou:<9} | area={self.area:>6s} | maxDets={self.max_dets:>3d}"
        return f" {title:<18} ({self.kind}) @[ {scope} ] = {value:0.3f}"


def summary_metrics(iou_type: str, max_dets: int | None = None) -> list[SummaryMetric]:
    """COCOeval's summary numbers for ``iou_type``, in the order of ``COCOeval.stats``."""
    limits = resolve_max_dets(iou_type, max_dets)
    top = limits[-1]
    if iou_type == "keypoints":
        return [
            SummaryMetric(f"{kind}{suffix}", kind, iou, area, top)
            for kind in ("AP", "AR")
            for suffix, iou, area in (
                ("", "0.50:0.95", "all"),
                ("50", "0.50", "all"),
                ("75", "0.75", "all"),
                ("m", "0.50:0.95", "medium"),
                ("l", "0.50:0.95", "large"),
            )
        ]
    everything = "0.50:0.95"
    return [
        SummaryMetric("AP", "AP", everything, "all", top),
        SummaryMetric("AP50", "AP", "0.50", "all", top),
        SummaryMetric("AP75", "AP", "0.75", "all", top),
        SummaryMetric("APs", "AP", everything, "small", top),
        SummaryMetric("APm", "AP", everything, "medium", top),
        SummaryMetric("APl", "AP", everything, "large", top),
        *(SummaryMetric(f"AR{limit}", "AR", everything, "all", limit) for limit in limits),
        SummaryMetric("ARs", "AR", everything, "small", top),
        SummaryMetric("ARm", "AR", everything, "medium", top),
        SummaryMetric("ARl", "AR", everything, "large", top),
    ]


def evaluate_coco(
    annotations: AnnotationsSource,
    results: ResultsSource,
    iou_type: str,
    backend: str | None = None,
    max_dets: int | None = None,
) -> dict[str, float]:
    """COCO metrics of ``results`` against ``annotations``, named and scaled as in Detectron2.

    Args:
        annotations: path of a COCO annotations JSON file, or its dict.
        results: path of a COCO results JSON file, or its list.
        iou_type: "bbox", "segm" or "keypoints".
        backend: "faster-coco-eval" or "pycocotools"; None: faster-coco-eval when installed.
        max_dets: detections per image (default: COCO's 100; 20 for keypoints, the only value
            keypoint evaluation allows).

    Returns:
        ``{"AP": ..., "AP50": ..., ..., "AR1": ..., ..., "AP-<category name>": ...}`` in percent,
        NaN where undefined; summary numbers first, in COCOeval's order. See
        :func:`summary_metrics`.

    Raises:
        COCOEvaluationInputError: unreadable or malformed input; the message names the file and
            entry. An empty result list is not an error: it warns (:class:`EmptyResultsWarning`)
            and evaluates to 0.
    """
    with gc_paused():  # reading and checking build millions of small objects: see gc_paused
        ground_truth = load_ground_truth(annotations, iou_type)
        checked_results = load_results(results, ground_truth, iou_type)
        evaluator = run_coco_eval(
            ground_truth, checked_results, iou_type, backend=backend, max_dets=max_dets
        )
    metrics = {
        metric.name: _percent(value)
        for metric, value in zip(summary_metrics(iou_type, max_dets), evaluator.stats)
    }
    names = {category["id"]: category["name"] for category in ground_truth["categories"]}
    metrics.update(_category_ap(evaluator, names))
    return metrics


def _percent(value: float) -> float:
    return float(value) * 100 if value >= 0 else math.nan


def _category_ap(evaluator: Any, names: Mapping[int, str]) -> dict[str, float]:
    """Per-category AP as Detectron2 computes it: the mean precision over IoUs and recalls,
    all areas, the largest maxDets, without undefined (-1) cells."""
    precision = evaluator.eval["precision"]
    category_ap = {}
    for index, category_id in enumerate(evaluator.params.catIds):
        cells = precision[:, :, index, 0, -1]
        defined = cells[cells > -1]
        category_ap[CATEGORY_PREFIX + names[category_id]] = (
            float(np.mean(defined)) * 100 if defined.size else math.nan
        )
    return category_ap


def format_report(metrics: Mapping[str, float], iou_type: str, max_dets: int | None = None) -> str:
    """The summary lines (in pycocotools' layout and 0-1 scale) and a per-category AP table (%)."""
    lines = []
    for metric in summary_metrics(iou_type, max_dets):
        value = metrics[metric.name]
        lines.append(metric.describe(-1.0 if math.isnan(value) else value / 100))
    categories = {
        key[len(CATEGORY_PREFIX) :]: value
        for key, value in metrics.items()
        if key.startswith(CATEGORY_PREFIX)
    }
    if categories:
        width = max(len("category"), *(len(name) for name in categories))
        lines += ["", f"Per-category {iou_type} AP (%):", f"{'category':<{width}}  {'AP':>7}"]
        lines += [f"{name:<{width}}  {value:7.3f}" for name, value in categories.items()]
    return "\n".join(lines)


def write_metrics_json(
    path: str | os.PathLike[str], metrics_by_task: Mapping[str, Mapping[str, float]]
) -> None:
    """Writes ``{iou_type: metrics}`` (Detectron2's results layout) to ``path`` atomically.

    NaN is written as null (JSON has no NaN). The file appears complete or not at all: it is
    written under a temporary name in the same directory, then renamed over ``path``.
    """
    payload = {
        task: {k: (None if math.isnan(v) else v) for k, v in m.items()}
        for task, m in metrics_by_task.items()
    }
    write_json_atomic(path, payload, indent=2, allow_nan=False)


def run_evaluate_coco(
    annotations: str | os.PathLike[str],
    results: str | os.PathLike[str],
    iou_type: str,
    *,
    output: str | os.PathLike[str] | None = None,
    backend: str | None = None,
    max_dets: int | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """What ``tools/evaluate_coco.py`` does; returns its exit status.

    Prints the report to ``stdout`` and, with ``output``, writes the metrics as JSON
    (``{iou_type: {...}}``). Input problems print one ``error: ...`` line to ``stderr`` and
    return 2 (1 if the output file cannot be written); an empty result list prints a
    ``warning: ...`` line and evaluates to zeros.
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EmptyResultsWarning)
            metrics = evaluate_coco(
                annotations, results, iou_type, backend=backend, max_dets=max_dets
            )
    except COCOEvaluationInputError as error:
        print(f"error: {error}", file=stderr)
        return 2
    _report_warnings(caught, stderr)
    print(format_report(metrics, iou_type, max_dets), file=stdout)
    if output is not None:
        try:
            write_metrics_json(output, {iou_type: metrics})
        except OSError as error:
            print(
                f"error: {output}: cannot write the metrics: {error.strerror or error}", file=stderr
            )
            return 1
        print(f"\nWrote {output}", file=stdout)
    return 0


def _report_warnings(caught: list[warnings.WarningMessage], stderr: TextIO) -> None:
    for warning in caught:
        if issubclass(warning.category, EmptyResultsWarning):
            print(f"warning: {warning.message}", file=stderr)
        else:  # not ours to reword: show it as Python would have
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
