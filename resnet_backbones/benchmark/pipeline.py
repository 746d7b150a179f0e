"""Pretraining input pipeline throughput: images decoded and augmented per second, by worker
count.

The data is a synthetic ImageFolder (:func:`resnet_backbones.data.ensure_imagefolder`, JPEG,
kept in the cache directory and reused); the pipeline is the pretraining one
(:mod:`resnet_backbones.pretrain.data`: decode to RGB, random-resized crop, flip, uint8 tensor;
normalization happens on the device there), or, where that package is absent,
torchvision's ``ImageFolder`` with RandomResizedCrop, flip, ToTensor and Normalize.
:func:`training_pipeline` is the one place that chooses.

Each worker count gets its own ``DataLoader`` with persistent workers, warmed up by one pass;
a timed call is one full pass over the images, and the passes of all worker counts are
interleaved.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .timing import interleaved

__all__ = ["run_pipeline", "training_pipeline"]


def training_pipeline(root: Path, crop_size: int) -> Tuple[Dataset, Callable, str]:
    """(dataset of the ``train`` split, collate function, description) of the pretraining input
    pipeline; the pretraining package's own where it exists (an error inside it is raised, not
    papered over)."""
    if importlib.util.find_spec(f"{__package__.rsplit('.', 1)[0]}.pretrain") is None:
        return _torchvision_pipeline(root, crop_size)
    from ..pretrain.config import get_pretrain_default_config
    from ..data.image_folder import scan_imagenet_layout
    from ..pretrain.data import ImageFolderDataset, collate, train_transform
    cfg = get_pretrain_default_config()
    cfg.PRETRAIN.CROP_SIZE = crop_size
    layout = scan_imagenet_layout(root)
    description = ("resnet_backbones.pretrain: decode, RandomResizedCrop, flip, uint8 tensor "
                   f"(AUTO_AUGMENT {cfg.PRETRAIN.AUTO_AUGMENT or 'off'})")
    return ImageFolderDataset(layout.train, train_transform(cfg)), collate, description


def _torchvision_pipeline(root: Path, crop_size: int) -> Tuple[Dataset, Callable, str]:
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.RandomResizedCrop(crop_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    dataset = datasets.ImageFolder(str(Path(root) / "train"), transform=transform)
    return dataset, torch.utils.data.default_collate, "torchvision ImageFolder: RandomResizedCrop, flip, ToTensor, Normalize"


def _image_folder(cache_dir: Path, num_images: int, image_size: int) -> Path:
    from ..data import ensure_imagefolder

    num_classes = 4
    per_class = -(-num_images // num_classes)
    root = Path(cache_dir) / f"imagefolder_{num_classes}x{per_class}_{image_size}px"
    ensure_imagefolder(root, num_classes=num_classes, train_per_class=per_class, val_per_class=1,
                       image_size=image_size)
    return root


def _one_pass(loader: DataLoader) -> Callable[[], int]:
    def run() -> int:
        count = 0
        for batch in loader:
            images = batch[0]
            count += 0 if images is None else len(images)
        return count

    return run


def run_pipeline(options, log) -> Dict[str, Any]:
    root = _image_folder(options.cache_dir, options.pipeline_images, options.pipeline_image_size)
    dataset, collate, description = training_pipeline(root, options.pipeline_crop)
    loaders = {}
    for workers in options.pipeline_workers:
        kwargs: Dict[str, Any] = {}
        if workers:
            kwargs = {"persistent_workers": True, "prefetch_factor": 4}
        loaders[workers] = DataLoader(dataset, batch_size=options.pipeline_batch, shuffle=True,
                                      num_workers=workers, collate_fn=collate,
                                      generator=torch.Generator().manual_seed(options.seed), **kwargs)
    candidates = {f"{w} workers": _one_pass(loader) for w, loader in loaders.items()}
    timed = interleaved(candidates, warmup=1, min_repeats=options.pipeline_repeats,
                        max_repeats=options.pipeline_repeats, budget_s=0)
    rows: List[Dict[str, Any]] = []
    base = timed[next(iter(candidates))].median
    for workers, name in zip(loaders, candidates):
        m = timed[name]
        rows.append({"workers": workers, "images": len(dataset), "images_per_s": len(dataset) / m.median,
                     "ratio_vs_first": base / m.median, **m.to_dict()})
    log("  " + ", ".join(f"{r['workers']} workers {r['images_per_s']:.0f} img/s" for r in rows))
    del loaders
    return {"rows": rows, "pipeline": description, "image_size": options.pipeline_image_size,
            "crop_size": options.pipeline_crop, "root": str(root)}
