"""An ImageFolder classification dataset of the objects of a COCO-format detection dataset.

Each annotated object becomes one square crop around its box, in the folder of its category:
``<output>/<split>/<category name>/<annotation id>.png``. Pretraining a backbone on these crops
(``tools/pretrain_imagenet.py``) teaches it the detection data's own objects before the detector
trains, which is how ``make demo`` gets a pretrained body with no ImageNet at hand.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Union

import cv2
import numpy as np

from ..fileio import ensure_generated

PathLike = Union[str, "os.PathLike[str]"]

_MANIFEST_NAME = "object_crops_manifest.json"
_VERSION = 1


def write_object_crops(json_path: PathLike, image_dir: PathLike, output_dir: PathLike, *,
                       size: int = 64, context: float = 1.4, min_box_side: float = 4.0) -> dict[str, int]:
    """Crop every non-crowd object of one COCO split into ``output_dir/<category name>/``.

    The crop is the square of side ``context`` times the box's longer side, centred on the box,
    resized to ``size`` pixels (borders reflected where it leaves the image). Objects whose box
    is under ``min_box_side`` pixels are skipped. Returns the number of crops per category.
    """
    if size < 8 or context < 1.0:
        raise ValueError(f"need size >= 8 and context >= 1, got size={size}, context={context}")
    dataset = json.loads(Path(json_path).read_text())
    categories = {c["id"]: c["name"] for c in dataset["categories"]}
    file_names = {image["id"]: image["file_name"] for image in dataset["images"]}
    output_dir = Path(output_dir)
    counts = {name: 0 for name in categories.values()}
    for name in counts:
        (output_dir / name).mkdir(parents=True, exist_ok=True)

    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in dataset["annotations"]:
        if not annotation.get("iscrowd", 0) and max(annotation["bbox"][2:]) >= min_box_side:
            by_image.setdefault(annotation["image_id"], []).append(annotation)
    for image_id, annotations in sorted(by_image.items()):
        path = Path(image_dir) / file_names[image_id]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise OSError(f"{path}: cannot read the image of image id {image_id} in {json_path}")
        for annotation in annotations:
            x, y, w, h = annotation["bbox"]
            side = context * max(w, h)
            zoom = size / side
            # maps the crop square, centred on the box centre, onto size x size pixels
            transform = np.float32([[zoom, 0, size / 2 - (x + w / 2) * zoom],
                                    [0, zoom, size / 2 - (y + h / 2) * zoom]])
            crop = cv2.warpAffine(image, transform, (size, size), flags=cv2.INTER_AREA,
                                  borderMode=cv2.BORDER_REFLECT)
            name = categories[annotation["category_id"]]
            cv2.imwrite(str(output_dir / name / f"{annotation['id']:08d}.png"), crop)
            counts[name] += 1
    return counts


def ensure_object_crops(splits: Mapping[str, tuple[PathLike, PathLike]], output_dir: PathLike, *,
                        size: int = 64, context: float = 1.4) -> Path:
    """:func:`write_object_crops` for each ``{split: (json path, image dir)}`` into
    ``output_dir/<split>/``, unless a manifest shows the same crops are already there.

    The manifest records the sources' sizes and modification times, so regenerated detection
    data is cropped again. Returns ``output_dir``.
    """
    output_dir = Path(output_dir)
    manifest: dict[str, Any] = {"generator": __name__, "version": _VERSION, "size": size, "context": context,
                                "splits": {}}
    for split, (json_path, image_dir) in sorted(splits.items()):
        stat = Path(json_path).stat()
        manifest["splits"][split] = {"json": str(Path(json_path).resolve()), "image_dir": str(Path(image_dir).resolve()),
                                     "json_size": stat.st_size, "json_mtime_ns": stat.st_mtime_ns}

    def generate() -> None:
        for split, (json_path, image_dir) in splits.items():
            write_object_crops(json_path, image_dir, output_dir / split, size=size, context=context)

    ensure_generated(output_dir / _MANIFEST_NAME, manifest, generate)
    return output_dir
