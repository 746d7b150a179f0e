"""Semantic-segmentation metrics: mIoU, fwIoU, mean and pixel accuracy, per-class IoU and accuracy.

Detectron2 v0.6's ``SemSegEvaluator`` uses ``np.int``/``np.float`` (gone since NumPy 1.24), so
it fails in ``process``. :class:`SemSegEvaluator` here keeps its interface, metadata
(``stuff_classes``, ``ignore_label``) and output names (``sem_seg/mIoU``, ``IoU-<class>``, ...)
and replaces the two methods. It counts what Detectron2's main branch counts:

* a pixel whose ground truth is ``ignore_label`` counts nowhere, whatever was predicted there;
* a class absent from the ground truth of the whole set has no IoU or accuracy (NaN) and is left
  out of the means, even where it was predicted (v0.6 counted it as IoU 0 in mIoU's denominator);
  its false positives still lower the IoU of the classes whose pixels they took.

A ground-truth value that is neither a class nor ``ignore_label`` is an error naming the file:
v0.6 would have folded it silently into another class's counts.
"""
from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, Optional, Sequence

import numpy as np
from detectron2.evaluation import SemSegEvaluator as Detectron2SemSegEvaluator
from detectron2.utils.comm import all_gather, is_main_process, synchronize
from PIL import Image

from ..fileio import write_json_atomic

__all__ = ["SemSegEvaluator", "confusion_matrix", "sem_seg_metrics"]

logger = logging.getLogger(__name__)


def confusion_matrix(prediction: np.ndarray, ground_truth: np.ndarray, num_classes: int,
                     ignore_label: Optional[int]) -> np.ndarray:
    """``(num_classes + 1)^2`` counts, ``[predicted, true]``; the last column holds ignored pixels.

    Raises ``ValueError`` for a ground-truth value that is neither a class nor ``ignore_label``,
    or a prediction outside the classes.
    """
    prediction = np.asarray(prediction, dtype=np.int64)
    truth = np.asarray(ground_truth, dtype=np.int64).copy()
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction of shape {prediction.shape} for ground truth of shape {truth.shape}")
    ignored = truth == ignore_label if ignore_label is not None else np.zeros(truth.shape, bool)
    bad = ~ignored & ((truth < 0) | (truth >= num_classes))
    if bad.any():
        values = sorted(set(np.unique(truth[bad]).tolist()))[:5]
        raise ValueError(f"ground-truth values {values} are neither a class (0..{num_classes - 1}) nor the "
                         f"ignore label {ignore_label}")
    if prediction.size and (prediction.min() < 0 or prediction.max() >= num_classes):
        raise ValueError(f"predicted classes outside 0..{num_classes - 1}")
    truth[ignored] = num_classes
    size = num_classes + 1
    return np.bincount(size * prediction.ravel() + truth.ravel(), minlength=size * size).reshape(size, size)


def sem_seg_metrics(matrix: np.ndarray, class_names: Sequence[str]) -> Dict[str, float]:
    """Detectron2's metrics (in percent) of a :func:`confusion_matrix` summed over a set."""
    counts = np.asarray(matrix, dtype=np.float64)[:-1, :-1]  # ignored pixels left out
    true_positive = counts.diagonal()
    ground_truth = counts.sum(axis=0)
    predicted = counts.sum(axis=1)
    present = ground_truth > 0
    union = ground_truth + predicted - true_positive
    accuracy = np.full(len(class_names), np.nan)
    iou = np.full(len(class_names), np.nan)
    accuracy[present] = true_positive[present] / ground_truth[present]
    iou[present] = true_positive[present] / union[present]
    total = ground_truth.sum()
    frequency = ground_truth / total if total else np.zeros_like(ground_truth)
    results = {
        "mIoU": 100 * float(iou[present].mean()) if present.any() else float("nan"),
        "fwIoU": 100 * float((iou[present] * frequency[present]).sum()) if present.any() else float("nan"),
    }
    results.update({f"IoU-{name}": 100 * float(value) for name, value in zip(class_names, iou)})
    results["mACC"] = 100 * float(accuracy[present].mean()) if present.any() else float("nan")
    results["pACC"] = 100 * float(true_positive.sum() / total) if total else float("nan")
    results.update({f"ACC-{name}": 100 * float(value) for name, value in zip(class_names, accuracy)})
    return results


class SemSegEvaluator(Detectron2SemSegEvaluator):
    """Detectron2's ``SemSegEvaluator`` (same arguments, metadata and results), on NumPy 2.

    Ground truth comes from each record's ``sem_seg_file_name``; the results are
    ``{"sem_seg": {"mIoU": ..., "fwIoU": ..., "IoU-<class>": ..., "mACC": ..., "pACC": ...,
    "ACC-<class>": ...}}``. With ``output_dir`` it also writes ``sem_seg_evaluation.json`` (the
    metrics) and, with ``write_predictions``, Detectron2's ``sem_seg_predictions.json`` (RLEs).
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None, *,
                 write_predictions: bool = False):
        super().__init__(dataset_name, distributed=distributed, output_dir=output_dir)
        self._write_predictions = write_predictions

    def process(self, inputs, outputs):
        for record, output in zip(inputs, outputs):
            prediction = output["sem_seg"].argmax(dim=0).to(self._cpu_device).numpy()
            gt_file = self.input_file_to_gt_file[record["file_name"]]
            with Image.open(gt_file) as image:
                truth = np.asarray(image, dtype=np.int64)
            try:
                self._conf_matrix += confusion_matrix(prediction, truth, self._num_classes, self._ignore_label)
            except ValueError as error:
                raise ValueError(f"{gt_file}: {error}") from None
            if self._write_predictions:
                self._predictions.extend(self.encode_json_sem_seg(prediction, record["file_name"]))

    def evaluate(self):
        if self._distributed:
            synchronize()
            matrices = all_gather(self._conf_matrix)
            predictions = all_gather(self._predictions)
            if not is_main_process():
                return None
            self._conf_matrix = np.sum(matrices, axis=0)
            self._predictions = list(itertools.chain(*predictions))
        results = sem_seg_metrics(self._conf_matrix, self._class_names)
        if self._output_dir:
            if self._write_predictions:
                write_json_atomic(os.path.join(self._output_dir, "sem_seg_predictions.json"), self._predictions)
            write_json_atomic(os.path.join(self._output_dir, "sem_seg_evaluation.json"), results, indent=2)
        logger.info("Semantic segmentation on %s: mIoU %.2f, fwIoU %.2f, mACC %.2f, pACC %.2f", self._dataset_name,
                    results["mIoU"], results["fwIoU"], results["mACC"], results["pACC"])
        return OrderedDict({"sem_seg": results})
