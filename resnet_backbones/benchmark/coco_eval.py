"""COCO evaluation time: ``tools/evaluate_coco.py``'s function against pycocotools.

A generated set (:mod:`resnet_backbones.evaluation.synthetic_results`: crowd regions, all area
ranges, images without ground truth) of N images with exactly D detections each, bbox and segm,
over C categories (default COCO's 80, as in val2017: 5,000 images, 80 categories), is written as
JSON files, as a user would have them. Timed, from those files:

- ``pycocotools``: its own API as its documentation shows it: ``COCO(annotations)``,
  ``loadRes(results)``, ``COCOeval`` evaluate/accumulate/summarize;
- ``evaluate_coco (faster-coco-eval)``: what ``tools/evaluate_coco.py`` runs by default
  (reading, input checks, evaluation, per-category AP);
- ``evaluate_coco (pycocotools)``: the same with ``--backend pycocotools`` (with
  ``--eval-both-backends``).

The 12 summary numbers of each are compared with pycocotools' (identical: equal up to the
rounding of evaluate_coco's percent scale, 1e-12).
"""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any, Dict, List

from ..evaluation import evaluate_coco, summary_metrics
from ..evaluation.synthetic_results import synthetic_ground_truth, synthetic_results
from ..fileio import write_json_atomic
from .timing import interleaved

__all__ = ["run_coco_eval_benchmark", "coco_files"]

REFERENCE = "pycocotools"
OURS = "evaluate_coco (faster-coco-eval)"
OURS_REFERENCE_BACKEND = "evaluate_coco (pycocotools)"
# evaluate_coco reports percent; back to fractions, the float rounding of x * 100 / 100 is all
# that may differ (about 1e-17).
IDENTICAL = 1e-12


def coco_files(directory: Path, num_images: int, detections: int, seed: int = 0,
               categories: int = 80) -> Dict[str, Path]:
    """Annotations and bbox/segm results files for the benchmark, generated once per setting
    (kept in ``directory`` and reused)."""
    directory = Path(directory) / f"coco_{num_images}x{detections}_{categories}cats_seed{seed}"
    paths = {name: directory / f"{name}.json" for name in ("annotations", "bbox", "segm")}
    if all(p.is_file() for p in paths.values()):
        return paths
    ground_truth = synthetic_ground_truth(num_images, num_categories=categories, seed=seed)
    write_json_atomic(paths["annotations"], ground_truth)
    for iou_type in ("bbox", "segm"):
        results = synthetic_results(ground_truth, iou_type, detections_per_image=detections, seed=seed + 1)
        write_json_atomic(paths[iou_type], results)
    return paths


def _pycocotools(annotations: Path, results: Path, iou_type: str) -> List[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(annotations))
        coco_dt = coco_gt.loadRes(str(results))
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def _ours(annotations: Path, results: Path, iou_type: str, backend: str) -> List[float]:
    metrics = evaluate_coco(annotations, results, iou_type, backend=backend)
    # evaluate_coco gives percent, NaN where COCOeval gives -1.
    return [-1.0 if math.isnan(metrics[m.name]) else metrics[m.name] / 100.0 for m in summary_metrics(iou_type)]


def run_coco_eval_benchmark(options, log) -> Dict[str, Any]:
    paths = coco_files(options.cache_dir, options.eval_images, options.eval_detections, options.seed,
                       options.eval_categories)
    rows: List[Dict[str, Any]] = []
    for iou_type in ("bbox", "segm"):
        stats: Dict[str, List[float]] = {}

        def candidate(name, fn):
            def run():
                stats[name] = fn()
            return run

        candidates = {
            REFERENCE: candidate(REFERENCE, lambda: _pycocotools(paths["annotations"], paths[iou_type], iou_type)),
            OURS: candidate(OURS, lambda: _ours(paths["annotations"], paths[iou_type], iou_type, "faster-coco-eval")),
        }
        if options.eval_both_backends:
            candidates[OURS_REFERENCE_BACKEND] = candidate(
                OURS_REFERENCE_BACKEND,
                lambda: _ours(paths["annotations"], paths[iou_type], iou_type, "pycocotools"))
        timed = interleaved(candidates, warmup=options.eval_warmup, min_repeats=options.eval_repeats,
                            max_repeats=options.eval_repeats, budget_s=0)
        reference = timed[REFERENCE].median
        for name in candidates:
            diff = max(abs(a - b) for a, b in zip(stats[name], stats[REFERENCE]))
            rows.append({
                "iou_type": iou_type, "images": options.eval_images, "detections_per_image": options.eval_detections,
                "categories": options.eval_categories,
                "tool": name, "seconds": timed[name].median, "speedup_vs_pycocotools": reference / timed[name].median,
                "stats": stats[name], "max_abs_diff_vs_pycocotools": diff, "identical": diff <= IDENTICAL,
                **timed[name].to_dict(),
            })
        log(f"  {iou_type}: " + ", ".join(f"{n} {timed[n].median:.2f} s" for n in candidates))
    return {"rows": rows, "files": {k: str(v) for k, v in paths.items()}}

