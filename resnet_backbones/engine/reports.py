"""What a training run leaves for people to look at: curves of loss and AP, and predictions drawn."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..fileio import PathLike, atomic_output

LOSS_KEY = "total_loss"


def read_metrics(path: PathLike) -> List[Dict]:
    """The JSON lines Detectron2's ``JSONWriter`` appended to ``metrics.json``.

    A resumed run appends again from its checkpoint, so for an iteration logged twice the later
    line wins; a line cut off by a kill is skipped.
    """
    by_iteration: Dict[Tuple[int, bool], Dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            # loss lines and evaluation lines of the same iteration are separate records
            by_iteration[(record.get("iteration", -1), LOSS_KEY in record)] = record
    return [by_iteration[key] for key in sorted(by_iteration)]


def curves(records: Sequence[Dict]) -> Dict[str, Tuple[List[int], List[float]]]:
    """``{name: (iterations, values)}`` for the total loss and every ``*/AP`` metric."""
    # x is the number of iterations done: Detectron2 logs losses and periodic evaluations with
    # the index of the last iteration, and the evaluation after training with the count
    done = max((r["iteration"] + 1 for r in records if LOSS_KEY in r), default=0)
    found: Dict[str, Tuple[List[int], List[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key == LOSS_KEY or key.endswith("/AP"):
                iterations, values = found.setdefault(key, ([], []))
                iterations.append(min(record["iteration"] + 1, done))
                values.append(float(value))
    return found


def plot_training_curves(metrics_json: PathLike, output_png: PathLike) -> Path:
    """A PNG with the total loss (left axis) and box/mask AP (right axis) over iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = curves(read_metrics(metrics_json))
    if LOSS_KEY not in found:
        raise ValueError(f"{metrics_json}: no '{LOSS_KEY}' records to plot")
    figure, loss_axis = plt.subplots(figsize=(7, 4), dpi=100)
    loss_axis.plot(*found[LOSS_KEY], color="tab:gray", label="total loss")
    loss_axis.set_xlabel("iteration")
    loss_axis.set_ylabel("total loss")
    ap_axis = loss_axis.twinx()
    for key in sorted(k for k in found if k.endswith("/AP")):
        ap_axis.plot(*found[key], marker="o", label=f"{key.split('/')[0]} AP")
    ap_axis.set_ylabel("AP (%)")
    ap_axis.set_ylim(0, 100)
    handles = loss_axis.get_legend_handles_labels()[0] + ap_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="center right")
    figure.tight_layout()
    with atomic_output(output_png) as f:
        figure.savefig(f, format="png")
    plt.close(figure)
    return Path(output_png)


@torch.no_grad()
def draw_predictions(cfg, model: torch.nn.Module, dataset_name: str, output_dir: PathLike,
                     num_images: int = 4, score_threshold: float = 0.5) -> List[Path]:
    """Draw ``model``'s boxes and masks on the first ``num_images`` of ``dataset_name``; PNG paths."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import ColorMode, Visualizer

    # the test-time resize of DefaultPredictor, applied to the model we already hold
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    model.eval()
    metadata = MetadataCatalog.get(dataset_name)
    written = []
    for record in DatasetCatalog.get(dataset_name)[:num_images]:
        image = read_image(record["file_name"], format=cfg.INPUT.FORMAT)
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        height, width = image.shape[:2]
        instances = model([{"image": tensor, "height": height, "width": width}])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= score_threshold]
        rgb = image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1]
        drawn = Visualizer(rgb, metadata, scale=2.0, instance_mode=ColorMode.IMAGE).draw_instance_predictions(instances)
        path = Path(output_dir) / f"{Path(record['file_name']).stem}.png"
        with atomic_output(path) as f:
            f.write(_png_bytes(drawn.get_image()))
        written.append(path)
    return written


def _png_bytes(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()
