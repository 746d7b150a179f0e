"""The ImageNet folder layout (``root/{train,val}/<class>/<image>``): its one set of rules, read by
pretraining's loaders (:mod:`resnet_backbones.pretrain.data`) and by the dataset checks
(:mod:`resnet_backbones.data.checks`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderLayout", "expected_layout", "scan_imagenet_layout"]

#: File extensions read as images (torchvision's ImageFolder list).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def expected_layout(root) -> str:
    return (f"expected the ImageNet layout, one folder per class:\n"
            f"  {root}/train/<class>/<image>.JPEG\n"
            f"  {root}/val/<class>/<image>.JPEG   (the same class folders as train/)\n"
            f"image files end in {', '.join(IMAGE_EXTENSIONS)} (any case)")


@dataclass
class ImageFolderLayout:
    root: Path
    classes: List[str]
    train: List[Tuple[str, int]]
    val: List[Tuple[str, int]]


def _images_under(folder: Path) -> List[str]:
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        found += [os.path.join(parent, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def scan_imagenet_layout(root) -> ImageFolderLayout:
    """The classes and ``(path, class index)`` samples of ``root/train`` and ``root/val``.

    Raises ``ValueError`` with the layout expected when ``root`` does not have it.
    """
    root = Path(root)
    layout = expected_layout(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such directory; {layout}")
    classes_of = {}
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise ValueError(f"{root}: no {split}/ folder; {layout}")
        classes_of[split] = sorted(e.name for e in os.scandir(root / split) if e.is_dir())
        if not classes_of[split]:
            raise ValueError(f"{root / split}: no class folders; {layout}")
    classes = classes_of["train"]
    if classes_of["val"] != classes:
        only_train = sorted(set(classes) - set(classes_of["val"]))
        only_val = sorted(set(classes_of["val"]) - set(classes))
        raise ValueError(f"{root}: the class folders of train/ and val/ differ (only in train/: "
                         f"{_few(only_train)}; only in val/: {_few(only_val)}); {layout}")
    samples = {}
    for split in ("train", "val"):
        samples[split] = []
        for index, name in enumerate(classes):
            files = _images_under(root / split / name)
            if not files and split == "train":
                raise ValueError(f"{root / split / name}: no images in this class folder; {layout}")
            samples[split] += [(f, index) for f in files]
    if not samples["val"]:
        raise ValueError(f"{root / 'val'}: no images; {layout}")
    return ImageFolderLayout(root, classes, samples["train"], samples["val"])


def _few(names: Sequence[str], limit: int = 5) -> str:
    return (", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")) or "none"
