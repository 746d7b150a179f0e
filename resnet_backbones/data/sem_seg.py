"""Semantic-segmentation datasets: Detectron2's image + label PNG layout, and the synthetic split.

* The layout Detectron2 reads with ``load_sem_seg``: an image folder and a label folder whose PNGs
  have the images' names (``a/b.jpg`` <-> ``a/b.png``), one class index per pixel, ``255`` (or
  ``MODEL.SEM_SEG_HEAD.IGNORE_VALUE``) where a pixel counts nowhere. On the command line:
  ``--dataset NAME=IMAGE_DIR:LABEL_DIR`` (:func:`parse_sem_seg_spec`). Unlike ``load_sem_seg``,
  an image without a label, or a label without an image, is an error naming it rather than a
  warning and a silently smaller dataset.
* The synthetic semantic split (:func:`ensure_synthetic_sem_seg`): label PNGs drawn from the
  synthetic shapes' instance masks, class 0 the background and class ``k`` the shape category
  ``k`` (``SYNTHETIC_STUFF_CLASSES``), next to the COCO files, generated on first use.
  ``synthetic_shapes_sem_seg_{train,val}`` name it, and ``synthetic_shapes_panoptic_{train,val}``
  the same images with both the instances and the stuff labels Panoptic FPN's semantic branch
  learns, in Detectron2's convention (``prepare_panoptic_fpn.py``): every thing pixel is class 0,
  the stuff classes follow (here one, the background), since its panoptic combination takes
  semantic class 0 for "things" and turns every other class into stuff segments.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .. import compat  # noqa: F401  (must precede every detectron2 import)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..fileio import ensure_generated
from .synthetic_coco import CATEGORIES, SYNTHETIC_COCO_SPLITS, coco_split_paths

__all__ = [
    "IMAGE_EXTENSIONS",
    "SEM_SEG_SPEC_SYNTAX",
    "SYNTHETIC_PANOPTIC_NAMES",
    "SYNTHETIC_SEM_SEG_NAMES",
    "SYNTHETIC_STUFF_CLASSES",
    "SemSegDatasetSpec",
    "ensure_synthetic_sem_seg",
    "load_sem_seg_pairs",
    "is_sem_seg_spec",
    "parse_sem_seg_spec",
    "register_sem_seg",
    "register_synthetic_panoptic",
    "register_synthetic_sem_seg",
    "sem_seg_label_dir",
    "write_sem_seg_labels",
]

PathLike = Union[str, "os.PathLike[str]"]

SYNTHETIC_SEM_SEG_NAMES = ("synthetic_shapes_sem_seg_train", "synthetic_shapes_sem_seg_val")
SYNTHETIC_PANOPTIC_NAMES = ("synthetic_shapes_panoptic_train", "synthetic_shapes_panoptic_val")
#: Class 0 is the background; class k is the synthetic shapes' category id k.
SYNTHETIC_STUFF_CLASSES = ("background",) + tuple(category["name"] for category in CATEGORIES)
#: Panoptic FPN's semantic classes: the things merged into class 0, then the stuff
SYNTHETIC_PANOPTIC_STUFF_CLASSES = ("things", "background")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SEM_SEG_SPEC_SYNTAX = "NAME=IMAGE_DIR:LABEL_DIR"
DEFAULT_IGNORE_LABEL = 255

_LABELS_VERSION = 2
_MANIFEST_NAME = "synthetic_sem_seg_manifest.json"


# ---- the image + label PNG layout ---------------------------------------------------------------


def _files_by_stem(root: Path, extensions: Sequence[str]) -> Dict[str, Path]:
    found: Dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in extensions:
            stem = path.relative_to(root).with_suffix("").as_posix()
            if stem in found:
                raise ValueError(f"{root}: two images for one label: {found[stem].name} and {path.name}")
            found[stem] = path
    return found


def load_sem_seg_pairs(image_root: PathLike, label_root: PathLike) -> List[Dict[str, Any]]:
    """Detectron2 dataset dicts (``file_name``, ``sem_seg_file_name``) of matching files.

    Raises ``ValueError`` naming the first image without a label or label without an image,
    or an empty folder.
    """
    image_root, label_root = Path(image_root), Path(label_root)
    labels = _files_by_stem(label_root, (".png",))
    images = _files_by_stem(image_root, IMAGE_EXTENSIONS)
    if not labels:
        raise ValueError(f"label folder {label_root} has no PNG labels")
    for stem in labels:
        if stem not in images:
            raise ValueError(f"label {labels[stem]} has no image {stem}.* in {image_root}")
    for stem in images:
        if stem not in labels:
            raise ValueError(f"image {images[stem]} has no label {stem}.png in {label_root}")
    return [{"file_name": str(images[stem]), "sem_seg_file_name": str(labels[stem])} for stem in sorted(labels)]


def _registered_roots(name: str) -> Optional[tuple]:
    if name not in DatasetCatalog.list():
        return None
    metadata = MetadataCatalog.get(name)
    return (os.path.abspath(metadata.get("image_root", "")), os.path.abspath(metadata.get("sem_seg_root", "")))


def register_sem_seg(name: str, image_root: PathLike, label_root: PathLike,
                     stuff_classes: Optional[Sequence[str]] = None,
                     ignore_label: int = DEFAULT_IGNORE_LABEL) -> str:
    """Register the pairs of ``image_root`` and ``label_root`` as dataset ``name``; return it.

    Evaluated as ``sem_seg`` with ``stuff_classes`` (set later from the config's
    ``NUM_CLASSES`` when None) and ``ignore_label``. A no-op for the same folders; a
    ``ValueError`` when ``name`` is registered for others.
    """
    wanted = (os.path.abspath(os.fspath(image_root)), os.path.abspath(os.fspath(label_root)))
    registered = _registered_roots(name)
    if registered == wanted:
        return name
    if registered is not None:
        raise ValueError(f"dataset {name!r} is already registered for other files; choose another name for "
                         f"{wanted[1]}")
    DatasetCatalog.register(name, lambda: load_sem_seg_pairs(image_root, label_root))
    metadata = {"image_root": wanted[0], "sem_seg_root": wanted[1], "evaluator_type": "sem_seg",
                "ignore_label": ignore_label}
    if stuff_classes is not None:
        metadata["stuff_classes"] = list(stuff_classes)
    MetadataCatalog.get(name).set(**metadata)
    return name


@dataclass(frozen=True)
class SemSegDatasetSpec:
    """A semantic-segmentation dataset named on the command line."""

    name: str
    image_root: Path
    label_root: Path


# A colon separates the folders; one right after a single drive letter ("C:\...") does not.
_SEM_SEG_SPEC = re.compile(r"(?P<name>[A-Za-z0-9_.\-]+)=(?P<images>(?:[A-Za-z]:)?[^:]+):(?P<labels>(?:[A-Za-z]:)?[^:]+)")


def is_sem_seg_spec(spec: str) -> bool:
    """Whether ``spec`` has the form ``NAME=IMAGE_DIR:LABEL_DIR`` (the folders unchecked)."""
    return _SEM_SEG_SPEC.fullmatch(spec.strip()) is not None


def parse_sem_seg_spec(spec: str) -> SemSegDatasetSpec:
    """Parse ``NAME=IMAGE_DIR:LABEL_DIR`` and check both folders exist (``ValueError`` otherwise)."""
    match = _SEM_SEG_SPEC.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"dataset spec {spec!r} is not {SEM_SEG_SPEC_SYNTAX} (e.g. mine_train=images/train:labels/train)")
    name = match["name"]
    folders = []
    for part, what in (("images", "image folder"), ("labels", "label folder")):
        path = Path(match[part]).expanduser().absolute()
        if not path.is_dir():
            problem = "is a file, not a directory" if path.exists() else "does not exist"
            raise ValueError(f"dataset {name!r}: {what} {path} {problem}")
        folders.append(path)
    return SemSegDatasetSpec(name, *folders)


# ---- the synthetic semantic split ---------------------------------------------------------------


def sem_seg_label_dir(root: PathLike, split_name: str) -> Path:
    """Where the label PNGs of a split of the synthetic dataset under ``root`` live."""
    return Path(root) / "sem_seg" / split_name


def panoptic_stuff_label_dir(root: PathLike, split_name: str) -> Path:
    """Where the Panoptic FPN stuff labels (things 0, background 1) of a synthetic split live."""
    return Path(root) / "sem_seg_panoptic" / split_name


def write_panoptic_stuff_labels(label_dir: PathLike, stuff_dir: PathLike) -> int:
    """The synthetic labels in Panoptic FPN's convention: every shape 0 ("things"), background 1."""
    stuff_dir = Path(stuff_dir)
    stuff_dir.mkdir(parents=True, exist_ok=True)
    labels = sorted(Path(label_dir).glob("*.png"))
    for path in labels:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(stuff_dir / path.name), (label == 0).astype(np.uint8))
    return len(labels)


def write_sem_seg_labels(json_file: PathLike, label_dir: PathLike) -> int:
    """One label PNG per image of a COCO instances file: 0 background, else the category id.

    The synthetic shapes' annotations are their visible parts, which do not overlap, so the order
    of painting does not matter (later annotations win where a real dataset's overlap). Category
    ids must be 1..254. Returns the number of labels written.
    """
    label_dir = Path(label_dir)
    label_dir.mkdir(parents=True, exist_ok=True)
    data = json.loads(Path(json_file).read_text())
    by_image: Dict[int, list] = {}
    for annotation in data["annotations"]:
        if not 1 <= annotation["category_id"] < DEFAULT_IGNORE_LABEL:
            raise ValueError(f"{json_file}: category id {annotation['category_id']} cannot be a label value")
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    for image in data["images"]:
        height, width = image["height"], image["width"]
        label = np.zeros((height, width), dtype=np.uint8)
        for annotation in by_image.get(image["id"], []):
            rle = mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], height, width))
            label[mask_utils.decode(rle).astype(bool)] = annotation["category_id"]
        name = Path(image["file_name"]).with_suffix(".png")
        cv2.imwrite(str(label_dir / name), label)
    return len(data["images"])


def ensure_synthetic_sem_seg(root: PathLike, force: bool = False) -> Dict[str, Path]:
    """Write the label PNGs of the synthetic COCO splits under ``root`` (already generated by
    ``ensure_synthetic_coco``) unless the same ones are there; returns ``{split: label folder}``.

    The manifest holds the COCO manifest it was drawn from, so a regenerated COCO set redraws them.
    """
    root = Path(root)
    coco_manifest = root / "synthetic_coco_manifest.json"
    if not coco_manifest.is_file():
        raise ValueError(f"{root}: no synthetic COCO dataset (generate it first with ensure_synthetic_coco)")
    manifest = {"generator": "resnet_backbones.data.sem_seg", "version": _LABELS_VERSION,
                "classes": list(SYNTHETIC_STUFF_CLASSES), "coco": json.loads(coco_manifest.read_text())}
    folders = {split: sem_seg_label_dir(root, split) for split in SYNTHETIC_COCO_SPLITS}
    stuff_folders = {split: panoptic_stuff_label_dir(root, split) for split in SYNTHETIC_COCO_SPLITS}

    def generate() -> None:
        for split, folder in folders.items():
            for stale in list(folder.glob("*.png")) + list(stuff_folders[split].glob("*.png")):
                stale.unlink()
            write_sem_seg_labels(coco_split_paths(root, split)[0], folder)
            write_panoptic_stuff_labels(folder, stuff_folders[split])

    def complete() -> bool:
        return all(len(list(folder.glob("*.png"))) == len(list(coco_split_paths(root, split)[1].glob("*.png")))
                   for split in SYNTHETIC_COCO_SPLITS for folder in (folders[split], stuff_folders[split]))

    ensure_generated(root / _MANIFEST_NAME, manifest, generate, force=force, is_complete=complete)
    return folders


def register_synthetic_sem_seg(root: PathLike, names: Sequence[str] = SYNTHETIC_SEM_SEG_NAMES) -> List[str]:
    """Register the synthetic semantic split written under ``root``; returns the (train, val) names."""
    for name, split in zip(names, SYNTHETIC_COCO_SPLITS):
        register_sem_seg(name, coco_split_paths(root, split)[1], sem_seg_label_dir(root, split),
                         SYNTHETIC_STUFF_CLASSES, DEFAULT_IGNORE_LABEL)
    return list(names)


def _load_panoptic(json_file: Path, image_root: Path, label_root: Path, name: str) -> List[Dict[str, Any]]:
    labels = {record["file_name"]: record["sem_seg_file_name"] for record in load_sem_seg_pairs(image_root, label_root)}
    records = load_coco_json(str(json_file), str(image_root), name)
    for record in records:
        record["sem_seg_file_name"] = labels[record["file_name"]]
    return records


def register_synthetic_panoptic(root: PathLike, names: Sequence[str] = SYNTHETIC_PANOPTIC_NAMES) -> List[str]:
    """Register the synthetic images with their instances and semantic labels (Panoptic FPN)."""
    for name, split in zip(names, SYNTHETIC_COCO_SPLITS):
        if name in DatasetCatalog.list():
            continue
        json_file, image_root = coco_split_paths(root, split)
        label_root = panoptic_stuff_label_dir(root, split)
        DatasetCatalog.register(name, lambda j=json_file, i=image_root, s=label_root, n=name: _load_panoptic(j, i, s, n))
        MetadataCatalog.get(name).set(
            json_file=str(json_file), image_root=str(image_root), sem_seg_root=str(label_root),
            evaluator_type="coco_panoptic_seg", ignore_label=DEFAULT_IGNORE_LABEL,
            thing_classes=[category["name"] for category in CATEGORIES],
            stuff_classes=list(SYNTHETIC_PANOPTIC_STUFF_CLASSES))
    return list(names)
