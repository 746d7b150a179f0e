"""ImageNet-style folders for pretraining: decoding that names bad files, transforms, loaders (the
layout rules live in :mod:`resnet_backbones.data.image_folder`).

Images leave the loader as uint8 RGB tensors; the conversion to the model's input convention
(channel order, mean, std) happens on the device, in :meth:`ImageNetClassifier.forward`, the way
a Detectron2 detector normalises its input. Moving uint8 is also four times less traffic.
"""
from __future__ import annotations

import itertools
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import v2

from ..data.image_folder import ImageFolderLayout
from .config import val_crop_size, val_resize_size

#: How many undecodable files in a row a training sample may step over before giving up.
MAX_CONSECUTIVE_BAD = 100

Failure = Tuple[str, str]  # (path, reason)


class BadImageError(ValueError):
    """An image that cannot be decoded; the message names the file."""


def decode_rgb(path: str) -> Image.Image:
    with open(path, "rb") as f:
        image = Image.open(f)
        return image.convert("RGB")  # forces the full decode, where truncated files fail


class ImageFolderDataset(Dataset):
    """``(uint8 CHW RGB image, class index, failures)`` for each sample.

    A file that cannot be decoded is never raised here: a worker's exception reaches the
    training process as a wrapped traceback, so it is returned as ``(path, reason)`` for the
    training loop to stop with or to count. With ``substitute_bad`` the next decodable file
    takes its place (training: every batch keeps its size, which keeps processes in step);
    without it the image is ``None`` and the batch is one sample short (evaluation).
    """

    def __init__(self, samples: Sequence[Tuple[str, int]], transform, substitute_bad: bool = False):
        self.samples = list(samples)
        self.transform = transform
        self.substitute_bad = substitute_bad
        #: when set (per epoch, by the training loop), sample ``i``'s random augmentation is drawn
        #: from a generator seeded with (seed, i): the same crops whichever worker decodes it and
        #: wherever the epoch started, so that an epoch resumed part-way repeats the uninterrupted one
        self.seed: Optional[int] = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        failures: List[Failure] = []
        attempts = min(MAX_CONSECUTIVE_BAD, len(self.samples)) if self.substitute_bad else 1
        for step in range(attempts):
            path, target = self.samples[(index + step) % len(self.samples)]
            try:
                image = decode_rgb(path)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... by format
                failures.append((path, f"{type(e).__name__}: {e}"))
                continue
            if self.seed is None:
                return self.transform(image), target, failures
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1_000_003 + index)
                return self.transform(image), target, failures
        return None, self.samples[index][1], failures


def collate(batch) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], List[Failure]]:
    failures = [f for _, _, fs in batch for f in fs]
    kept = [(image, target) for image, target, _ in batch if image is not None]
    if not kept:
        return None, None, failures
    return (torch.stack([image for image, _ in kept]),
            torch.tensor([target for _, target in kept], dtype=torch.long), failures)


def check_failures(failures: Sequence[Failure], skip_bad_images: bool) -> None:
    if failures and not skip_bad_images:
        path, reason = failures[0]
        raise BadImageError(f"{path}: cannot decode this image ({reason}); remove or replace the file, "
                            "or pass --skip-bad-images to skip undecodable images and list them at the end")


# ------------------------------------------------------------------------ transforms
def _rgb_mean(cfg) -> List[int]:
    mean = list(cfg.MODEL.PIXEL_MEAN)
    return [round(v) for v in (mean if cfg.INPUT.FORMAT == "RGB" else mean[::-1])]


def train_transform(cfg) -> v2.Compose:
    p = cfg.PRETRAIN
    interpolation = v2.InterpolationMode(p.INTERPOLATION)
    steps = [v2.RandomResizedCrop(p.CROP_SIZE, scale=tuple(p.CROP_SCALE), interpolation=interpolation,
                                  antialias=True),
             v2.RandomHorizontalFlip()]
    if p.AUTO_AUGMENT == "ta_wide":
        steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
    elif p.AUTO_AUGMENT == "randaugment":
        steps.append(v2.RandAugment(interpolation=interpolation))
    elif p.AUTO_AUGMENT == "autoaugment":
        steps.append(v2.AutoAugment(interpolation=interpolation))
    steps.append(v2.PILToTensor())
    if p.RANDOM_ERASE > 0:
        # erased pixels take the mean colour, i.e. zero after normalisation, as in torchvision
        steps.append(v2.RandomErasing(p.RANDOM_ERASE, value=_rgb_mean(cfg)))
    return v2.Compose(steps)


def val_transform(cfg) -> v2.Compose:
    interpolation = v2.InterpolationMode(cfg.PRETRAIN.INTERPOLATION)
    return v2.Compose([v2.Resize(val_resize_size(cfg), interpolation=interpolation, antialias=True),
                       v2.CenterCrop(val_crop_size(cfg)), v2.PILToTensor()])


# ------------------------------------------------------------------------ samplers and loaders
class EpochSampler(DistributedSampler):
    """``DistributedSampler`` whose next epoch can begin ``start`` samples in (a run resumed
    part-way through an epoch); its length stays the whole epoch's."""

    start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each sample evaluated once over all processes.

    ``DistributedSampler`` pads the last shard with repeated samples, which would count some
    images twice in the accuracy.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loaders(cfg, layout: ImageFolderLayout, rank: int, world_size: int, skip_bad_images: bool,
                  pin_memory: bool = False) -> Tuple[DataLoader, DataLoader]:
    """Training and validation loaders of one process, with ``BATCH_SIZE / world_size`` images a batch.

    The training loader's ``generator`` is reseeded by the caller at each epoch, which fixes the
    workers' augmentation seeds: a resumed epoch sees the same crops as an uninterrupted one.
    """
    p = cfg.PRETRAIN
    if p.BATCH_SIZE % world_size:
        raise ValueError(f"PRETRAIN.BATCH_SIZE = {p.BATCH_SIZE} is not allowed with {world_size} processes: "
                         f"it is the batch over all processes and must divide evenly among them")
    per_process = p.BATCH_SIZE // world_size
    if len(layout.train) < p.BATCH_SIZE:
        raise ValueError(f"{layout.root / 'train'}: {len(layout.train)} images, fewer than one batch "
                         f"(PRETRAIN.BATCH_SIZE = {p.BATCH_SIZE}); lower --batch-size")
    train_set = ImageFolderDataset(layout.train, train_transform(cfg), substitute_bad=skip_bad_images)
    val_set = ImageFolderDataset(layout.val, val_transform(cfg))
    common = dict(num_workers=p.NUM_WORKERS, collate_fn=collate, pin_memory=pin_memory,
                  persistent_workers=False)
    if p.NUM_WORKERS:
        common["prefetch_factor"] = 4
    train = DataLoader(train_set, batch_size=per_process, drop_last=True, generator=torch.Generator(),
                       sampler=EpochSampler(train_set, world_size, rank, shuffle=True, seed=p.SEED, drop_last=True),
                       **common)
    val = DataLoader(val_set, batch_size=per_process, sampler=ShardSampler(len(val_set), rank, world_size),
                     **common)
    return train, val
