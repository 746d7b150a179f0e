"""Checking a dataset before training: every problem, with the annotation, image or file it concerns.

:func:`check_coco_dataset` reads a COCO-format json and the headers of its images (size, EXIF
orientation, and an end-of-file marker for JPEG/PNG, not a full decode unless ``decode=True``)
and sorts what it finds by what Detectron2 would do with it:

* ``error``: training would fail (a missing or undecodable image, a size that differs from the
  file's, an unknown category id, duplicate ids, an RLE mask of another size, no annotations) or
  train on wrong data (a box of negative width, which Detectron2's min/max turns into its mirror
  image; a NaN box; ``NUM_CLASSES`` below the number of categories; duplicate image ids);
* ``warning``: Detectron2 tolerates it, silently (degenerate boxes and boxes outside their image
  are dropped, boxes partly outside are clipped, polygons of fewer than 3 points dropped, images
  without annotations skipped, unused categories learnt as never-seen classes);
* ``note``: worth knowing (crowd regions, which Detectron2 ignores in training).

:func:`fix_coco_dataset` writes a copy in which every error and every silently dropped or
clipped box is resolved: repaired where the repair is unambiguous (sizes from the real files,
boxes clipped to the image, duplicate annotation ids renumbered), otherwise the annotation or
image is removed and listed as not fixed. :func:`check_imagenet_folder` checks the pretraining
layout (through :func:`resnet_backbones.data.image_folder.scan_imagenet_layout`) and its images.
:func:`check_sem_seg_dataset` checks Detectron2's semantic layout (image + label PNG pairs): every
label a single-channel class map of its image's size whose values are classes or the ignore label
(any other value fails the loss mid-training, or is trained as a class the head does not have).
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..cli import exits_cleanly
from ..fileio import write_json_atomic
from .image_folder import scan_imagenet_layout

__all__ = ["DatasetReport", "Problem", "check_coco_dataset", "check_imagenet_folder", "check_sem_seg_dataset",
           "fix_coco_dataset", "load_coco_json_file", "main"]

PathLike = Union[str, "os.PathLike[str]"]

ERROR, WARNING, NOTE = "error", "warning", "note"

#: kind -> (severity, how a count of them reads)
KINDS: Dict[str, Tuple[str, str]] = {
    "missing_image": (ERROR, "missing images"),
    "unreadable_image": (ERROR, "unreadable images"),
    "undecodable_image": (ERROR, "undecodable images"),
    "size_mismatch": (ERROR, "images whose size differs from the json's"),
    "exif_rotation": (ERROR, "images that Detectron2 rotates (EXIF) to another size than the json's"),
    "bad_image_entry": (ERROR, "image entries without file_name, width or height"),
    "duplicate_image_id": (ERROR, "duplicate image ids"),
    "no_annotations": (ERROR, "datasets without annotations"),
    "bad_annotation_id": (ERROR, "duplicate or missing annotation ids"),
    "unknown_category": (ERROR, "annotations of unknown category ids"),
    "bad_category": (ERROR, "duplicate or malformed categories"),
    "too_few_classes": (ERROR, "NUM_CLASSES below the number of categories"),
    "bad_box": (ERROR, "missing or malformed boxes"),
    "nan_box": (ERROR, "NaN or infinite boxes"),
    "negative_box": (ERROR, "boxes of negative width or height"),
    "rle_size": (ERROR, "RLE masks of another size than their image"),
    "degenerate_box": (WARNING, "boxes of zero width or height (dropped by Detectron2)"),
    "box_outside_image": (WARNING, "boxes entirely outside their image (dropped by Detectron2)"),
    "box_partly_outside": (WARNING, "boxes partly outside their image (clipped by Detectron2)"),
    "bad_polygon": (WARNING, "polygons of fewer than 3 points (dropped by Detectron2)"),
    "polygon_outside_image": (WARNING, "polygons reaching outside their image"),
    "unknown_image_id": (WARNING, "annotations of unknown image ids (ignored by Detectron2)"),
    "exif_orientation": (WARNING, "images that Detectron2 rotates or flips (EXIF orientation)"),
    "image_without_annotations": (WARNING, "images without annotations (skipped in training)"),
    "unused_category": (WARNING, "categories without annotations"),
    "crowd": (NOTE, "crowd regions (ignored in training)"),
    # semantic-segmentation labels
    "unpaired_file": (ERROR, "images without a label or labels without an image"),
    "bad_label_mode": (ERROR, "labels that are not one class index per pixel"),
    "label_size_mismatch": (ERROR, "labels of another size than their image"),
    "label_out_of_range": (ERROR, "labels with values that are neither a class nor the ignore label"),
    "unused_class": (WARNING, "classes no label has"),
}

#: Detectron2's EXIF orientations (detection_utils._apply_exif_orientation); 5-8 swap width and height.
EXIF_ORIENTATION_TAG = 0x0112
EXIF_TRANSFORMS = {2: "flips the image left-right", 3: "rotates the image by 180 degrees",
                   4: "flips the image top-bottom", 5: "transposes the image", 6: "rotates the image by 90 degrees "
                   "clockwise", 7: "transverses the image", 8: "rotates the image by 90 degrees counter-clockwise"}
SWAPS_SIDES = (5, 6, 7, 8)

#: How far (pixels) a box or polygon may reach past the image before it counts as outside.
TOLERANCE = 0.5


@dataclass(frozen=True)
class Problem:
    kind: str
    where: str  # "annotation 12 (image 3, a.jpg)", "image 3 (a.jpg)", "category 4", a path
    message: str
    fix: str = ""  # what fix_coco_dataset did ("" for check only, or when it left it)
    fixed: bool = False  # repaired (True) or removed / left as is (False)

    @property
    def severity(self) -> str:
        return KINDS[self.kind][0]

    def line(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass
class DatasetReport:
    source: str  # the json file or the ImageNet root
    image_root: str = ""
    num_images: int = 0
    num_annotations: int = 0
    category_counts: List[Tuple[Any, str, int]] = field(default_factory=list)  # (id, name, annotations)
    problems: List[Problem] = field(default_factory=list)
    counted: str = "annotations"  # what category_counts count

    def of(self, severity: str) -> List[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def errors(self) -> List[Problem]:
        return self.of(ERROR)

    @property
    def warnings(self) -> List[Problem]:
        return self.of(WARNING)

    def counts(self, severity: str) -> str:
        """``"boxes of negative width or height: 2; missing images: 1"`` for one severity."""
        counted = collections.Counter(p.kind for p in self.of(severity))
        return "; ".join(f"{KINDS[kind][1]}: {n}" for kind, n in counted.items())

    def first_error_line(self) -> str:
        """One line: the first error, where it is, and how many more there are."""
        errors = self.errors
        first = errors[0]
        more = f" ({len(errors)} errors in all: {self.counts(ERROR)})" if len(errors) > 1 else ""
        return f"{first.where}: {first.message}{more}"

    def format(self, limit: Optional[int] = None) -> str:
        """The full report: summary, per-category counts, then every problem (``limit`` per kind)."""
        lines = [f"dataset {self.source}" + (f" (images in {self.image_root})" if self.image_root else ""),
                 f"  {self.num_images} images, " + (f"{self.num_annotations} annotations, " if self.counted ==
                                                     "annotations" else "") + f"{len(self.category_counts)} categories"]
        if self.category_counts:
            lines.append(f"  {self.counted} per category:")
            width = max(len(str(name)) for _, name, _ in self.category_counts)
            lines += [f"    {str(cid):>4} {str(name):<{width}} {count:>8}" for cid, name, count in self.category_counts]
        for severity in (ERROR, WARNING, NOTE):
            found = self.of(severity)
            lines.append(f"  {len(found)} {severity}s" + (f": {self.counts(severity)}" if found else ""))
        shown: collections.Counter = collections.Counter()
        for problem in self.problems:
            shown[problem.kind] += 1
            if limit is None or shown[problem.kind] <= limit:
                lines.append(problem.line() + (f" -> {problem.fix}" if problem.fix else ""))
        for kind, n in shown.items():
            if limit is not None and n > limit:
                lines.append(f"... {n - limit} more {KINDS[kind][1]}")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------ images
@dataclass(frozen=True)
class ImageHeader:
    size: Optional[Tuple[int, int]] = None  # (width, height) of the file as stored
    orientation: int = 1
    failure: str = ""  # kind of failure ("missing_image", ...) or ""
    reason: str = ""

    @property
    def displayed_size(self) -> Optional[Tuple[int, int]]:
        """The size after Detectron2 applies the EXIF orientation (what its size check compares)."""
        if self.size is None:
            return None
        return self.size[::-1] if self.orientation in SWAPS_SIDES else self.size


def _exif_orientation(image: Image.Image) -> int:
    try:
        if image.format == "PNG":  # Pillow's getexif() would decode a PNG to look for a late eXIf chunk
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = image.getexif()  # JPEG/WebP/TIFF: parsed from the header
        return int(exif.get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # as Detectron2: an unreadable EXIF block means no orientation
        return 1


def _ends_cleanly(path: str, image_format: str) -> bool:
    """JPEG and PNG files end with a marker; without it the file is truncated (cheap: the last 1 KiB)."""
    marker = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}.get(image_format)
    if marker is None:
        return True
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 1024))
        return marker in f.read()


def read_image_header(path: str, decode: bool = False) -> ImageHeader:
    """Size and EXIF orientation from the file's header; ``decode`` also decodes the pixels."""
    try:
        with Image.open(path) as image:  # lazy: reads the header only
            size, orientation, image_format = image.size, _exif_orientation(image), image.format
            if decode:
                image.load()
    except FileNotFoundError:
        return ImageHeader(failure="missing_image", reason="no such file")
    except (PermissionError, IsADirectoryError) as e:
        return ImageHeader(failure="unreadable_image", reason=f"cannot read the file ({e.strerror})")
    except UnidentifiedImageError:
        return ImageHeader(failure="undecodable_image", reason="not an image PIL can identify")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... by format
        return ImageHeader(failure="undecodable_image", reason=f"cannot decode it ({type(e).__name__}: {e})")
    if not decode and not _ends_cleanly(path, image_format):
        return ImageHeader(size, orientation, "undecodable_image",
                           f"truncated {image_format} file (no end-of-image marker)")
    return ImageHeader(size, orientation)


def read_image_headers(paths: Sequence[str], decode: bool = False, workers: int = 8) -> List[ImageHeader]:
    """:func:`read_image_header` of each path, ``workers`` files at a time (I/O bound on real disks)."""
    if workers <= 1 or len(paths) < 64:
        return [read_image_header(p, decode) for p in paths]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: read_image_header(p, decode), paths, chunksize=64))


# ------------------------------------------------------------------------ COCO
def load_coco_json_file(json_file: PathLike) -> Dict[str, Any]:
    """The json as a dict, with ``ValueError`` naming the file (and line, column) when it is not COCO."""
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{json_file}: no such annotation file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
        raise ValueError(f"{json_file}: cannot read it as a JSON text ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: a COCO json is an object with 'images', 'annotations' and "
                         f"'categories', not a {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            problem = "has no" if key not in data else "has a non-list"
            raise ValueError(f"{json_file}: {problem} {key!r} list")
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise ValueError(f"{json_file}: 'annotations' is not a list")
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _polygon_array(polygon: Any) -> Optional[np.ndarray]:
    """The coordinates of a polygon Detectron2 keeps (3 or more points, finite), else None."""
    if not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2:
        return None
    try:
        coordinates = np.asarray(polygon, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return coordinates if coordinates.ndim == 1 and np.isfinite(coordinates).all() else None


class _CocoChecker:
    """One pass over the json: the problems, and (``fixing``) the corrected copy."""

    def __init__(self, data: Dict[str, Any], image_root: str, fixing: bool):
        self.data = data
        self.image_root = image_root
        self.fixing = fixing
        self.problems: List[Problem] = []

    def add(self, kind: str, where: str, message: str, fix: str = "", fixed: bool = False) -> None:
        self.problems.append(Problem(kind, where, message, fix if self.fixing else "", fixed and self.fixing))

    # -------------------------------------------------------------- categories
    def categories(self) -> Dict[Any, str]:
        names: Dict[Any, str] = {}
        for index, category in enumerate(self.data["categories"]):
            cid = category.get("id") if isinstance(category, dict) else None
            if cid is None or not isinstance(cid, int) or isinstance(cid, bool):
                self.add("bad_category", f"categories[{index}]", "has no integer 'id'")
            elif cid in names:
                self.add("bad_category", f"category {cid}", f"the id is used by two categories "
                         f"({names[cid]!r} and {category.get('name')!r})")
            else:
                names[cid] = str(category.get("name", cid))
        return names

    # -------------------------------------------------------------- images
    def images(self, decode: bool, workers: int) -> Tuple[Dict[Any, Dict[str, Any]], Dict[Any, Tuple[int, int]], set]:
        """(image id -> entry, image id -> (width, height) the annotations are checked against, removed ids)."""
        entries, seen, removed = {}, collections.Counter(), set()
        for index, image in enumerate(self.data["images"]):
            if isinstance(image, dict) and "id" in image:
                seen[image["id"]] += 1
        for index, image in enumerate(self.data["images"]):
            if not isinstance(image, dict) or "id" not in image:
                self.add("bad_image_entry", f"images[{index}]", "has no 'id'", "removed (not fixed)")
                continue
            iid = image["id"]
            if seen[iid] > 1:
                if iid not in removed:
                    self.add("duplicate_image_id", f"image {iid}",
                             f"{seen[iid]} images have this id, so their annotations cannot be told apart "
                             "(Detectron2 keeps one of them with all the annotations)",
                             "removed with their annotations (not fixed)")
                removed.add(iid)
                continue
            if not isinstance(image.get("file_name"), str) or not image["file_name"]:
                self.add("bad_image_entry", f"image {iid}", "has no 'file_name'", "removed with its annotations "
                         "(not fixed)")
                removed.add(iid)
                continue
            entries[iid] = image
        ids = list(entries)
        headers = read_image_headers([os.path.join(self.image_root, entries[i]["file_name"]) for i in ids],
                                     decode, workers)
        sizes: Dict[Any, Tuple[int, int]] = {}
        for iid, header in zip(ids, headers):
            image = entries[iid]
            where = f"image {iid} ({os.path.join(self.image_root, image['file_name'])})"
            if header.failure:
                self.add(header.failure, where, header.reason, "removed with its annotations (not fixed)")
                removed.add(iid)
                continue
            sizes[iid] = self._check_size(image, header, where)
        return entries, sizes, removed

    def _check_size(self, image: Dict[str, Any], header: ImageHeader, where: str) -> Tuple[int, int]:
        real = header.displayed_size
        stated = (image.get("width"), image.get("height"))
        if not all(_number(v) for v in stated):
            self.add("bad_image_entry", where, f"width/height {stated[0]!r}/{stated[1]!r} are not numbers; "
                     f"the file is {real[0]}x{real[1]}", f"set to {real[0]}x{real[1]}", fixed=True)
        elif stated != real:
            if header.orientation in SWAPS_SIDES and stated == header.size:
                self.add("exif_rotation", where,
                         f"EXIF orientation {header.orientation}: Detectron2 {EXIF_TRANSFORMS[header.orientation]} "
                         f"on reading, to {real[0]}x{real[1]}, but the json says width {stated[0]}, "
                         f"height {stated[1]} (the stored size); the json should say width {real[0]}, height "
                         f"{real[1]}, with the annotations drawn on the rotated image",
                         f"set to {real[0]}x{real[1]}; check that the annotations were drawn on the rotated image",
                         fixed=True)
            else:
                rotated = (f" (after its EXIF orientation {header.orientation}, which Detectron2 applies)"
                           if header.orientation in SWAPS_SIDES else "")
                self.add("size_mismatch", where, f"the file is {real[0]}x{real[1]}{rotated}, the json says "
                         f"width {stated[0]}, height {stated[1]}", f"set to {real[0]}x{real[1]}", fixed=True)
        elif header.orientation in EXIF_TRANSFORMS:
            self.add("exif_orientation", where,
                     f"EXIF orientation {header.orientation}: Detectron2 {EXIF_TRANSFORMS[header.orientation]} "
                     f"on reading; the json's size matches that ({real[0]}x{real[1]}), so the "
                     "annotations must be drawn on the image as displayed, not as stored")
        if self.fixing:
            image["width"], image["height"] = real
        return real

    # -------------------------------------------------------------- annotations
    def annotations(self, categories: Dict[Any, str], entries: Dict[Any, Dict[str, Any]],
                    sizes: Dict[Any, Tuple[int, int]], removed_images: set):
        annotations = self.data.get("annotations")
        if not annotations:
            self.add("no_annotations", "annotations", "the json has no 'annotations' list" if annotations is None
                     else "the 'annotations' list is empty", "not fixed")
            return [], collections.Counter(), set()
        kept, per_category, annotated = [], collections.Counter(), set()
        id_counts = collections.Counter(a.get("id") for a in annotations if isinstance(a, dict))
        next_id = max([i for i in id_counts if isinstance(i, int) and not isinstance(i, bool)] + [0]) + 1
        ids_taken: set = set()
        for index, annotation in enumerate(annotations):
            if not isinstance(annotation, dict):
                self.add("bad_box", f"annotations[{index}]", "is not an object", "removed (not fixed)")
                continue
            aid = annotation.get("id")
            iid = annotation.get("image_id")
            image = entries.get(iid)
            where = f"annotation {aid}" + (f" (image {iid}, {image['file_name']})" if image else f" (image {iid})")
            if iid in removed_images:
                continue  # listed with its image
            if aid is None or aid in ids_taken:  # the first of a duplicated id keeps it
                next_id = self._renumber(annotation, aid, id_counts, where, next_id)
            else:
                ids_taken.add(aid)
            if image is not None:
                annotated.add(iid)  # even if the annotation is dropped below: then that is the problem
            if image is None:
                self.add("unknown_image_id", where, f"image_id {iid!r} is not in 'images'", "removed")
                continue
            cid = annotation.get("category_id")
            if cid not in categories:
                self.add("unknown_category", where, f"category_id {cid!r} is not in 'categories' "
                         f"(ids {sorted(categories, key=str)})", "removed (not fixed)")
                continue
            if not self._box(annotation, sizes[iid], where):
                continue
            if not self._segmentation(annotation, sizes[iid], where):
                continue
            if annotation.get("iscrowd"):
                self.add("crowd", where, "a crowd region: Detectron2 ignores it in training "
                         "(and evaluation does not count detections on it as false positives)")
            else:
                per_category[cid] += 1
            kept.append(annotation)
        return kept, per_category, annotated

    def _renumber(self, annotation, aid, id_counts, where: str, next_id: int) -> int:
        problem = "has no 'id'" if aid is None else f"id {aid} is used by {id_counts[aid]} annotations"
        self.add("bad_annotation_id", where, problem + " (Detectron2 refuses duplicates)",
                 f"renumbered {next_id}", fixed=True)
        if self.fixing:
            annotation["id"] = next_id
        return next_id + 1

    def _box(self, annotation: Dict[str, Any], size: Tuple[int, int], where: str) -> bool:
        """Check (and when fixing, clip) the box; False when the annotation is dropped."""
        box = annotation.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_number(v) for v in box):
            self.add("bad_box", where, f"bbox {box!r} is not [x, y, width, height]", "removed (not fixed)")
            return False
        x, y, w, h = (float(v) for v in box)
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            self.add("nan_box", where, f"bbox {box} is not finite", "removed (not fixed)")
            return False
        if w < 0 or h < 0:
            self.add("negative_box", where, f"bbox {box} has a negative {'width' if w < 0 else 'height'}: "
                     "Detectron2 would train on its mirror image as a real object", "removed (not fixed)")
            return False
        if w == 0 or h == 0:
            self.add("degenerate_box", where, f"bbox {box} has zero {'width' if w == 0 else 'height'}",
                     "removed")
            return False
        width, height = size
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if x1 <= x0 or y1 <= y0:
            self.add("box_outside_image", where, f"bbox {box} lies outside the {width}x{height} image", "removed")
            return False
        if x < -TOLERANCE or y < -TOLERANCE or x + w > width + TOLERANCE or y + h > height + TOLERANCE:
            clipped = [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]
            self.add("box_partly_outside", where, f"bbox {box} reaches outside the {width}x{height} image",
                     f"clipped to {clipped}", fixed=True)
            if self.fixing:
                annotation["bbox"] = clipped
        return True

    def _segmentation(self, annotation: Dict[str, Any], size: Tuple[int, int], where: str) -> bool:
        segmentation = annotation.get("segmentation")
        if not segmentation:
            return True
        width, height = size
        if isinstance(segmentation, dict):
            rle_size = segmentation.get("size")
            if list(rle_size or []) != [height, width]:
                self.add("rle_size", where, f"RLE size {rle_size} (height, width) is not the image's "
                         f"[{height}, {width}]", "removed (not fixed)")
                return False
            return True
        if not isinstance(segmentation, list):
            self.add("bad_polygon", where, f"segmentation of type {type(segmentation).__name__}", "removed")
            return False
        arrays = [_polygon_array(p) for p in segmentation]
        good = [p for p, a in zip(segmentation, arrays) if a is not None]
        if len(good) < len(segmentation):
            bad = len(segmentation) - len(good)
            whole = "; no polygon is left, so Detectron2 drops the annotation" if not good else ""
            self.add("bad_polygon", where, f"{bad} of {len(segmentation)} polygons have fewer than 3 points "
                     f"(or an odd or non-finite coordinate){whole}",
                     "annotation removed" if not good else "those polygons removed", fixed=bool(good))
            if not good:
                return False
            if self.fixing:
                annotation["segmentation"] = good
        points = np.concatenate([a for a in arrays if a is not None]).reshape(-1, 2)
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        if x0 < -TOLERANCE or y0 < -TOLERANCE or x1 > width + TOLERANCE or y1 > height + TOLERANCE:
            self.add("polygon_outside_image", where, f"polygon points reach ({x0:g}..{x1:g}, "
                     f"{y0:g}..{y1:g}), outside the {width}x{height} image (the mask is cut at its edge)")
        return True


def _examine(json_file: PathLike, image_root: PathLike, num_classes: Optional[int], decode: bool, workers: int,
             fixing: bool, num_classes_key: str = "NUM_CLASSES") -> Tuple[DatasetReport, Dict[str, Any]]:
    data = load_coco_json_file(json_file)
    if fixing:
        data = copy.deepcopy(data)
    checker = _CocoChecker(data, os.fspath(image_root), fixing)
    categories = checker.categories()
    entries, sizes, removed = checker.images(decode, workers)
    kept, per_category, annotated = checker.annotations(categories, entries, sizes, removed)
    for cid, name in categories.items():
        if not per_category[cid]:
            checker.add("unused_category", f"category {cid} ({name})", "no annotation has this category "
                        "(the model learns a class it never sees)")
    for iid, image in entries.items():
        if iid not in removed and iid not in annotated and data.get("annotations"):
            path = os.path.join(checker.image_root, image["file_name"])
            checker.add("image_without_annotations", f"image {iid} ({path})", "no annotations "
                        "(Detectron2 skips it in training, DATALOADER.FILTER_EMPTY_ANNOTATIONS)")
    if num_classes is not None and num_classes < len(categories):
        checker.add("too_few_classes", num_classes_key,
                    f"is {num_classes}, but {json_file} has {len(categories)} categories: the last "
                    f"{len(categories) - num_classes} would be trained as background; set it to {len(categories)}")
    report = DatasetReport(
        source=os.fspath(json_file), image_root=os.fspath(image_root),
        num_images=len(data["images"]), num_annotations=len(data.get("annotations") or []),
        category_counts=[(cid, name, per_category[cid]) for cid, name in sorted(categories.items())],
        problems=checker.problems)
    if fixing:
        data["images"] = [image for image in data["images"]
                          if isinstance(image, dict) and image.get("id") in entries and image["id"] not in removed]
        if data.get("annotations"):
            data["annotations"] = kept
    return report, data


def check_coco_dataset(json_file: PathLike, image_root: PathLike, *, num_classes: Optional[int] = None,
                       num_classes_key: str = "NUM_CLASSES", decode: bool = False, workers: int = 8) -> DatasetReport:
    """Every problem of a COCO json and its image folder (see the module's docstring).

    ``num_classes`` (the model's config key ``num_classes_key``) adds the check that it covers
    every category. Raises ``ValueError`` naming the file when the json cannot be read as COCO.
    """
    return _examine(json_file, image_root, num_classes, decode, workers, False, num_classes_key)[0]


def fix_coco_dataset(json_file: PathLike, image_root: PathLike, output: PathLike, *, decode: bool = False,
                     workers: int = 8) -> DatasetReport:
    """Write a corrected copy of ``json_file`` to ``output`` (atomically); return the report of what was
    found, each problem's ``fix`` saying what the copy does about it (``fixed`` when repaired).

    Refuses to overwrite ``json_file`` itself.
    """
    if Path(output).resolve() == Path(json_file).resolve():
        raise ValueError(f"--fix {output}: is the input json; write the corrected copy elsewhere")
    report, data = _examine(json_file, image_root, None, decode, workers, fixing=True)
    write_json_atomic(output, data)
    return report


def not_fixed(report: DatasetReport) -> List[Problem]:
    """What a fixed copy could not repair: errors left or removed, and silently dropped boxes."""
    return [p for p in report.problems if p.severity == ERROR and not p.fixed]


# ------------------------------------------------------------------------ ImageNet layout
def check_imagenet_folder(root: PathLike, *, decode: bool = False, workers: int = 8) -> DatasetReport:
    """The layout (``ValueError`` as pretraining gives it) and every undecodable image of an ImageNet folder."""
    layout = scan_imagenet_layout(root)
    samples = layout.train + layout.val
    headers = read_image_headers([path for path, _ in samples], decode, workers)
    problems = [Problem(h.failure, path, h.reason) for (path, _), h in zip(samples, headers) if h.failure]
    counts = collections.Counter(label for _, label in layout.train)
    return DatasetReport(source=os.fspath(root), num_images=len(samples), problems=problems,
                         category_counts=[(i, name, counts[i]) for i, name in enumerate(layout.classes)],
                         counted="training images")


# ------------------------------------------------------------------------ semantic labels
#: PIL modes that hold one class index per pixel (P: a palette PNG, whose indices are the classes)
LABEL_MODES = ("L", "P", "I;16", "I")


def _label_classes(label_path: str, image_size: Optional[Tuple[int, int]]) -> Tuple[Optional[np.ndarray], str, str]:
    """(the label's distinct values, failure kind, reason); values None when it cannot be used."""
    try:
        with Image.open(label_path) as label:
            if label.mode not in LABEL_MODES:
                return None, "bad_label_mode", (f"PNG mode {label.mode} ({len(label.getbands())} channels); a label "
                                                "holds one class index per pixel (mode L or P)")
            if image_size is not None and label.size != image_size:
                return None, "label_size_mismatch", (f"is {label.size[0]}x{label.size[1]}, its image "
                                                     f"{image_size[0]}x{image_size[1]}")
            return np.unique(np.asarray(label)), "", ""
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError ... by format
        return None, "undecodable_image", f"cannot decode it ({type(e).__name__}: {e})"


def check_sem_seg_dataset(image_root: PathLike, label_root: PathLike, *, num_classes: Optional[int] = None,
                          ignore_label: int = 255, num_classes_key: str = "NUM_CLASSES",
                          workers: int = 8) -> DatasetReport:
    """Every problem of an image folder and its label PNGs (Detectron2's ``sem_seg`` layout).

    The labels are decoded (their values are what is checked); the images' headers are read.
    With ``num_classes`` (the model's ``num_classes_key``), a value that is neither below it nor
    ``ignore_label`` is an error; the report counts the labels that hold each class.
    """
    from .sem_seg import load_sem_seg_pairs  # one home of the pairing rules

    problems: List[Problem] = []
    try:
        pairs = load_sem_seg_pairs(image_root, label_root)
    except ValueError as e:
        return DatasetReport(source=os.fspath(label_root), image_root=os.fspath(image_root),
                             problems=[Problem("unpaired_file", os.fspath(label_root), str(e))], counted="labels")
    headers = read_image_headers([pair["file_name"] for pair in pairs], workers=workers)
    for pair, header in zip(pairs, headers):
        if header.failure:
            problems.append(Problem(header.failure, pair["file_name"], header.reason))

    def examine(item):
        pair, header = item
        return _label_classes(pair["sem_seg_file_name"], header.displayed_size)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PNG decoding releases the GIL
        found = list(pool.map(examine, zip(pairs, headers)))
    labels_with: collections.Counter = collections.Counter()
    for pair, (values, failure, reason) in zip(pairs, found):
        where = pair["sem_seg_file_name"]
        if values is None:
            problems.append(Problem(failure, where, reason))
            continue
        classes = [int(v) for v in values if int(v) != ignore_label]
        labels_with.update(classes)
        if num_classes is not None:
            outside = [v for v in classes if not 0 <= v < num_classes]
            if outside:
                shown = ", ".join(map(str, outside[:5])) + (", ..." if len(outside) > 5 else "")
                problems.append(Problem("label_out_of_range", where,
                                        f"has values {shown}: {num_classes_key} is {num_classes} (classes 0.."
                                        f"{num_classes - 1}) and the ignore label {ignore_label}"))
    counted = range(num_classes) if num_classes is not None else sorted(labels_with)
    for cid in counted:
        if not labels_with[cid]:
            problems.append(Problem("unused_class", f"class {cid}", "no label has it (the model learns a class "
                                                                    "it never sees)"))
    return DatasetReport(source=os.fspath(label_root), image_root=os.fspath(image_root), num_images=len(pairs),
                         category_counts=[(cid, "", labels_with[cid]) for cid in counted],
                         problems=problems, counted="labels")


# ------------------------------------------------------------------------ command line
def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="check_dataset.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a COCO-format dataset (or an ImageNet folder) before training: every problem, "
                    "with the annotation, image or file it concerns. Exit status 2 when something would "
                    "fail or train wrongly.",
        epilog="examples:\n"
               "  check_dataset.py annotations/train.json images/train\n"
               "  check_dataset.py annotations/train.json images/train --fix annotations/train_fixed.json\n"
               "  check_dataset.py --imagenet /data/imagenet\n"
               "  check_dataset.py --sem-seg images/train labels/train --num-classes 19")
    parser.add_argument("json_file", nargs="?", metavar="ANNOTATIONS.json")
    parser.add_argument("image_root", nargs="?", metavar="IMAGE_DIR")
    parser.add_argument("--imagenet", metavar="DIR", help="check an ImageNet folder (train/ and val/) instead")
    parser.add_argument("--sem-seg", nargs=2, metavar=("IMAGE_DIR", "LABEL_DIR"),
                        help="check a semantic-segmentation folder pair (label PNGs) instead")
    parser.add_argument("--ignore-label", type=int, default=255, help="with --sem-seg: the ignore value (default 255)")
    parser.add_argument("--fix", metavar="OUT.json", help="write a corrected copy of the json")
    parser.add_argument("--num-classes", type=int, help="the model's NUM_CLASSES, checked against the categories")
    parser.add_argument("--decode", action="store_true", help="decode every image fully (slow; default: headers "
                                                              "and end-of-file markers)")
    parser.add_argument("--limit", type=int, default=20, help="problems listed per kind (default 20; 0 = all)")
    parser.add_argument("--workers", type=int, default=8, help="files read at a time (default 8)")
    return parser


@exits_cleanly
def main(argv: Optional[List[str]] = None) -> int:
    args = argument_parser().parse_args(argv)
    limit = args.limit or None
    if args.imagenet:
        if args.json_file or args.fix:
            raise ValueError("--imagenet DIR takes no ANNOTATIONS.json, IMAGE_DIR or --fix")
        report = check_imagenet_folder(args.imagenet, decode=args.decode, workers=args.workers)
    elif args.sem_seg:
        if args.json_file or args.fix:
            raise ValueError("--sem-seg IMAGE_DIR LABEL_DIR takes no ANNOTATIONS.json, IMAGE_DIR or --fix")
        for folder in args.sem_seg:
            if not os.path.isdir(folder):
                raise ValueError(f"{folder}: no such folder")
        report = check_sem_seg_dataset(*args.sem_seg, num_classes=args.num_classes, ignore_label=args.ignore_label,
                                       workers=args.workers)
    else:
        if not (args.json_file and args.image_root):
            raise ValueError("give ANNOTATIONS.json and IMAGE_DIR (or --imagenet DIR)")
        if not os.path.isdir(args.image_root):
            raise ValueError(f"{args.image_root}: no such image folder")
        if args.fix:
            report = fix_coco_dataset(args.json_file, args.image_root, args.fix, decode=args.decode,
                                      workers=args.workers)
        else:
            report = check_coco_dataset(args.json_file, args.image_root, num_classes=args.num_classes,
                                        decode=args.decode, workers=args.workers)
    sys.stdout.write(report.format(limit))
    if args.fix:
        left = not_fixed(report)
        repaired = sum(p.fixed for p in report.problems)
        print(f"wrote {args.fix}: {repaired} problems repaired, {len(left)} not fixed"
              + (" (listed above with 'not fixed': the annotation or image was removed, or the problem left)"
                 if left else ""))
        still = [p for p in left if "removed" not in p.fix]
        if still:
            print(f"error: {args.fix}: still {still[0].where}: {still[0].message}", file=sys.stderr)
            return 2
        return 0
    if report.errors:
        print(f"error: {report.source}: {report.first_error_line()}", file=sys.stderr)
        return 2
    return 0
