"""Detectron2's ``COCOEvaluator`` with its COCO evaluation run through :mod:`.backends`.

Detectron2's fast path (``COCOeval_opt``) needs its compiled extension, which builds from the
package index lack; its slow path is pure-Python pycocotools. :class:`FastCOCOEvaluator` keeps
everything else of ``COCOEvaluator`` (gathering predictions across processes, the results file,
box-proposal recall, the result names and tables) and evaluates through faster-coco-eval, or
pycocotools where faster-coco-eval is not installed.

It works with detectron2 v0.6 and the main branch: both call ``_eval_predictions(predictions,
img_ids=None)`` from ``evaluate()`` and derive the results with ``_derive_coco_results``; they
differ in how ``_eval_predictions`` picks the COCOeval class (``use_fast_impl`` in v0.6,
``cocoeval_fn`` on main), which is the part replaced here.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

from resnet_backbones import (
    compat,
)  # noqa: F401  (installs stand-ins before detectron2 is imported)

from detectron2.evaluation import COCOEvaluator
from detectron2.utils.file_io import PathManager

from .backends import default_backend, run_coco_eval
from .inputs import COCOEvaluationInputError, load_results

__all__ = ["FastCOCOEvaluator"]


class FastCOCOEvaluator(COCOEvaluator):
    """A ``COCOEvaluator`` that needs no Detectron2 C++ extension and evaluates fast.

    Returns Detectron2's results: ``{"bbox": {"AP": ..., "AP50": ..., "AP-<class>": ...},
    "segm": {...}}``, in percent. Unlike ``COCOEvaluator``, predictions that are empty give 0
    (with a logged warning) rather than NaN, and malformed predictions (a NaN score, a box of
    negative size) raise :class:`COCOEvaluationInputError` instead of skewing the numbers.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] | None = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        backend: str | None = None,
        max_dets_per_image: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Arguments as for Detectron2's ``COCOEvaluator`` (``kpt_oks_sigmas``, and on main
        ``allow_cached_coco``, pass through), plus:

        Args:
            backend: "faster-coco-eval" or "pycocotools"; None: pycocotools if
                ``use_fast_impl=False`` is given (Detectron2's "official API" switch), else
                faster-coco-eval when installed.
        """
        if kwargs.pop("use_fast_impl", True) is False and backend is None:
            backend = "pycocotools"
        # use_fast_impl=False keeps the parent away from Detectron2's C++ COCOeval_opt everywhere.
        super().__init__(
            dataset_name,
            tasks,
            distributed,
            output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=False,
            **kwargs,
        )
        self._backend = backend or default_backend()
        self._max_dets = max_dets_per_image

    def _eval_predictions(
        self, predictions: list[dict[str, Any]], img_ids: Sequence[int] | None = None
    ) -> None:
        """Evaluates ``predictions`` for each task; fills ``self._results[task]``."""
        coco_results = list(itertools.chain.from_iterable(p["instances"] for p in predictions))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._to_dataset_category_ids(coco_results)
        self._save_coco_results(coco_results)
        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return
        self._logger.info(f"Evaluating predictions with {self._backend} ...")
        if not coco_results:
            self._logger.warning("No predictions from the model: every COCO metric is 0.")
        for task in sorted(tasks):
            coco_eval = self._evaluate_task(coco_results, task, img_ids)
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )

    def _evaluate_task(
        self, coco_results: list[dict[str, Any]], task: str, img_ids: Sequence[int] | None
    ) -> Any:
        if task not in ("bbox", "segm", "keypoints"):
            raise ValueError(f"unknown COCO evaluation task {task!r}")
        if task == "segm":
            # As Detectron2 does: without "bbox", COCO takes a result's area from its mask, so
            # small/medium/large mean the same for predicted and ground-truth masks.
            coco_results = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
        ground_truth = self._coco_api.dataset
        if coco_results:
            load_results(
                coco_results, ground_truth, task, name=f"predictions on {self._metadata.name}"
            )
        return run_coco_eval(
            ground_truth,
            coco_results,
            task,
            backend=self._backend,
            max_dets=self._max_dets if task != "keypoints" else None,  # as in Detectron2
            image_ids=img_ids,
            kpt_oks_sigmas=self._kpt_oks_sigmas if task == "keypoints" else None,
        )

    def _to_dataset_category_ids(self, coco_results: list[dict[str, Any]]) -> None:
        """Maps the model's contiguous class indices back to the dataset's category ids."""
        to_contiguous = getattr(self._metadata, "thing_dataset_id_to_contiguous_id", None)
        if not to_contiguous:
            return
        to_dataset = {contiguous: dataset_id for dataset_id, contiguous in to_contiguous.items()}
        for result in coco_results:
            predicted_class = result["category_id"]
            if predicted_class not in to_dataset:
                raise COCOEvaluationInputError(
                    f"predictions on {self._metadata.name}: image_id {result['image_id']} has "
                    f"class {predicted_class}, not one of the dataset's {len(to_dataset)} classes"
                )
            result["category_id"] = to_dataset[predicted_class]

    def _save_coco_results(self, coco_results: list[dict[str, Any]]) -> None:
        if not self._output_dir:
            return
        file_path = os.path.join(self._output_dir, "coco_instances_results.json")
        self._logger.info(f"Saving results to {file_path}")
        with PathManager.open(file_path, "w") as file:
            file.write(json.dumps(coco_results))
