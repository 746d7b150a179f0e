"""A small synthetic image-classification dataset in ImageNet's ImageFolder layout.

It lets the pretraining script run anywhere without ImageNet: each class is a kind of shape or
texture that a small network learns to tell apart within a few epochs, drawn with random colours,
position, scale and rotation so that no single pixel statistic gives the class away.

Layout (what ``torchvision.datasets.ImageFolder`` and ImageNet tooling expect)::

    output_dir/train/<class>/<class>_00000.jpg ...
    output_dir/val/<class>/<class>_00000.jpg ...
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any, Callable, Literal, Union

import cv2
import numpy as np
from PIL import Image

from ..fileio import ensure_generated
from .synthetic_coco import _ellipse, _rotate

__all__ = [
    "IMAGEFOLDER_CLASSES",
    "CorruptionKind",
    "ensure_imagefolder",
    "generate_imagefolder",
    "write_corrupt_image",
]

PathLike = Union[str, "os.PathLike[str]"]
CorruptionKind = Literal["truncated", "garbage"]

_GENERATOR_VERSION = 1
_MANIFEST_NAME = "synthetic_imagefolder_manifest.json"
_JPEG_QUALITY = 92
_SUPERSAMPLE = 4  # shapes are drawn larger and area-averaged down: smooth, anti-aliased edges


# ---- class patterns ----------------------------------------------------------------------------
# A pattern returns a float32 coverage map in [0, 1] (1 = foreground colour) for a square image.


def _polygon_coverage(polygon: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of a polygon given in image pixels."""
    big = np.zeros((size * _SUPERSAMPLE, size * _SUPERSAMPLE), np.uint8)
    points = np.round((polygon * _SUPERSAMPLE - 0.5) * 16).astype(np.int32)
    cv2.fillPoly(big, [points], 1, lineType=cv2.LINE_8, shift=4)
    return cv2.resize(big.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)


def _place(rng: np.random.Generator, unit_shape: np.ndarray, size: int) -> np.ndarray:
    """Scale, rotate and move a shape drawn in the unit circle to a random spot of the image."""
    radius = rng.uniform(0.22, 0.42) * size
    centre = rng.uniform(radius, size - radius, size=2)
    return _rotate(unit_shape * radius, rng.uniform(0.0, 2.0 * np.pi)) + centre


def _disc(rng: np.random.Generator, size: int) -> np.ndarray:
    return _polygon_coverage(_place(rng, _ellipse(1.0, 1.0, 0.0), size), size)


def _triangle(rng: np.random.Generator, size: int) -> np.ndarray:
    angles = np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
    return _polygon_coverage(
        _place(rng, np.stack([np.cos(angles), np.sin(angles)], axis=1), size), size
    )


def _square(rng: np.random.Generator, size: int) -> np.ndarray:
    corners = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) / np.sqrt(2.0)
    return _polygon_coverage(_place(rng, corners, size), size)


def _cross(rng: np.random.Generator, size: int) -> np.ndarray:
    arm = 0.3  # half-width of a bar, relative to the half-length
    cross = np.array(
        [
            [-arm, -1],
            [arm, -1],
            [arm, -arm],
            [1, -arm],
            [1, arm],
            [arm, arm],
            [arm, 1],
            [-arm, 1],
            [-arm, arm],
            [-1, arm],
            [-1, -arm],
            [-arm, -arm],
        ]
    ) / np.hypot(1.0, arm)
    return _polygon_coverage(_place(rng, cross, size), size)


def _ring(rng: np.random.Generator, size: int) -> np.ndarray:
    outer = _place(rng, _ellipse(1.0, 1.0, 0.0), size)
    centre = outer.mean(axis=0)
    inner = centre + (outer - centre) * rng.uniform(0.45, 0.65)
    return np.clip(_polygon_coverage(outer, size) - _polygon_coverage(inner, size), 0.0, 1.0)


def _oriented_wave(
    rng: np.random.Generator, size: int, period_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Two coordinates of a randomly rotated, scaled and shifted grid, in periods."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(*period_range) * size
    u = (xs * np.cos(angle) + ys * np.sin(angle)) / period + rng.uniform()
    v = (-xs * np.sin(angle) + ys * np.cos(angle)) / period + rng.uniform()
    return u, v


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    u, _ = _oriented_wave(rng, size, (0.12, 0.3))
    return (0.5 + 0.5 * np.sin(2.0 * np.pi * u)).astype(np.float32)


def _checkerboard(rng: np.random.Generator, size: int) -> np.ndarray:
    u, v = _oriented_wave(rng, size, (0.15, 0.35))
    # Soft squares: the product of two sine waves, sharpened.
    return (0.5 + 0.5 * np.tanh(4.0 * np.sin(2.0 * np.pi * u) * np.sin(2.0 * np.pi * v))).astype(
        np.float32
    )


# Ordered so that the first classes, the ones a small ``num_classes`` picks, differ the most.
_PATTERNS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "disc": _disc,
    "stripes": _stripes,
    "triangle": _triangle,
    "checkerboard": _checkerboard,
    "square": _square,
    "ring": _ring,
    "cross": _cross,
}

#: The class folder names, in the order ``num_classes`` takes them.
IMAGEFOLDER_CLASSES: tuple[str, ...] = tuple(_PATTERNS)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background and a foreground colour far enough apart for the pattern to show."""
    background = rng.uniform(0.0, 255.0, size=3)
    for _ in range(100):
        foreground = rng.uniform(0.0, 255.0, size=3)
        if np.linalg.norm(foreground - background) >= 100.0:
            break
    return background, foreground


def _render(rng: np.random.Generator, class_name: str, size: int) -> np.ndarray:
    background, foreground = _colours(rng)
    coverage = _PATTERNS[class_name](rng, size)[..., None]
    image = background + coverage * (foreground - background)
    image += rng.normal(0.0, 4.0, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---- files -------------------------------------------------------------------------------------


def _write_split(
    root: Path, split: str, class_names: tuple[str, ...], per_class: int, size: int, seed: int
) -> None:
    for class_index, class_name in enumerate(class_names):
        class_dir = root / split / class_name
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            # One stream per image (crc32, not the per-process salted hash()): reproducible.
            entropy = [seed, zlib.crc32(split.encode()), class_index, index]
            image = _render(
                np.random.default_rng(np.random.SeedSequence(entropy)), class_name, size
            )
            Image.fromarray(image).save(
                class_dir / f"{class_name}_{index:05d}.jpg", quality=_JPEG_QUALITY
            )


def generate_imagefolder(
    output_dir: PathLike,
    num_classes: int = 4,
    train_per_class: int = 32,
    val_per_class: int = 8,
    image_size: int = 64,
    seed: int = 0,
) -> Path:
    """Write a synthetic classification dataset in ImageFolder layout; return ``output_dir``.

    Classes are the first ``num_classes`` of :data:`IMAGEFOLDER_CLASSES`. Images are JPEG (as in
    ImageNet) and the same arguments always give byte-identical files.
    """
    if not 2 <= num_classes <= len(IMAGEFOLDER_CLASSES):
        raise ValueError(
            f"num_classes must be between 2 and {len(IMAGEFOLDER_CLASSES)}, got {num_classes}"
        )
    if image_size < 16 or train_per_class < 0 or val_per_class < 0:
        raise ValueError("need image_size >= 16 and non-negative image counts")
    root = Path(output_dir)
    class_names = IMAGEFOLDER_CLASSES[:num_classes]
    _write_split(root, "train", class_names, train_per_class, image_size, seed)
    _write_split(root, "val", class_names, val_per_class, image_size, seed)
    return root


def ensure_imagefolder(
    output_dir: PathLike,
    num_classes: int = 4,
    train_per_class: int = 32,
    val_per_class: int = 8,
    image_size: int = 64,
    seed: int = 0,
    force: bool = False,
) -> Path:
    """:func:`generate_imagefolder` unless a manifest shows the same dataset is already there."""
    root = Path(output_dir)
    manifest: dict[str, Any] = {
        "generator": "resnet_backbones.data.synthetic_imagefolder",
        "version": _GENERATOR_VERSION,
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "image_size": image_size,
        "seed": seed,
    }
    ensure_generated(
        root / _MANIFEST_NAME,
        manifest,
        lambda: generate_imagefolder(root, num_classes, train_per_class, val_per_class, image_size, seed),
        force=force,
    )
    return root


def write_corrupt_image(path: PathLike, kind: CorruptionKind = "truncated") -> Path:
    """Write a ``.jpg`` that cannot be decoded, for testing how loaders handle bad files.

    ``"truncated"``: a real JPEG cut off inside its compressed data. PIL opens it (the header is
    intact) and fails only when it reads the pixels, the way a partly downloaded file behaves;
    it decodes (grey-padded) if ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set.
    ``"garbage"``: bytes that are no image at all; PIL fails to open it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        pixels = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        ok, encoded = cv2.imencode(".jpg", pixels)
        assert ok
        path.write_bytes(encoded.tobytes()[: len(encoded) // 2])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image\n" * 8)
    else:
        raise ValueError(f"unknown corruption kind {kind!r}; expected 'truncated' or 'garbage'")
    return path
