"""Registering COCO-format datasets in Detectron2's ``DatasetCatalog``.

Three sources: the synthetic shapes dataset, COCO 2017 in its standard layout under
``$DETECTRON2_DATASETS/coco``, and any COCO json plus image folder named on the command line as
``NAME=ANNOTATIONS.json:IMAGE_DIR`` (see :func:`parse_dataset_spec`), or, for semantic
segmentation, an image folder and a label folder as ``NAME=IMAGE_DIR:LABEL_DIR`` (``sem_seg.py``).

Registering a name twice with the same files is a no-op, so callers need not track what is
registered; registering a taken name with other files is an error rather than a silent swap.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from .. import compat  # noqa: F401  (must precede every detectron2 import)
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

from .sem_seg import DEFAULT_IGNORE_LABEL, SemSegDatasetSpec, is_sem_seg_spec, parse_sem_seg_spec, register_sem_seg
from .synthetic_coco import CATEGORIES, SYNTHETIC_COCO_SPLITS, coco_split_paths

__all__ = [
    "COCO_2017_SPLITS",
    "DatasetReadError",
    "FileNamingDatasetMapper",
    "SYNTHETIC_COCO_NAMES",
    "DatasetSpec",
    "parse_dataset_spec",
    "register_coco_from_detectron2_datasets",
    "register_coco_json",
    "register_dataset_specs",
    "register_synthetic_coco",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

SYNTHETIC_COCO_NAMES = ("synthetic_shapes_train", "synthetic_shapes_val")

#: COCO 2017 instance splits: name -> (image folder, annotation json), relative to the datasets
#: root. The same paths as detectron2's ``builtin.py``.
COCO_2017_SPLITS: Mapping[str, tuple[str, str]] = {
    "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
}


def _absolute(path: Any) -> str:
    return os.path.abspath(os.fspath(path)) if path else ""


def _registered_paths(name: str) -> Optional[tuple[str, str]]:
    """(json file, image root) of a registered dataset ("" where it has none), None if free."""
    if name not in DatasetCatalog.list():
        return None
    metadata = MetadataCatalog.get(name)
    return _absolute(metadata.get("json_file")), _absolute(metadata.get("image_root"))


def register_coco_json(
    name: str, json_file: PathLike, image_root: PathLike, metadata: Optional[dict[str, Any]] = None,
    *, replace: bool = False,
) -> str:
    """Register a COCO instances json and its image folder as dataset ``name``; return ``name``.

    A no-op if ``name`` is already registered with the same files; a ``ValueError`` if it is
    registered with other files, unless ``replace`` (a built-in name whose root moved, e.g. with
    ``DETECTRON2_DATASETS``). The files are read when the dataset is first loaded.
    """
    wanted = (_absolute(json_file), _absolute(image_root))
    registered = _registered_paths(name)
    if registered == wanted:
        return name
    if registered is not None and replace:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    elif registered is not None:
        taken_by = (
            f"json {registered[0]} and images {registered[1]}"
            if registered[0]
            else "a dataset that is not a COCO json"
        )
        raise ValueError(
            f"dataset {name!r} is already registered for {taken_by}; "
            f"choose another name for {wanted[0]}"
        )
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    # as detectron2's register_coco_instances, with errors that name the json
    DatasetCatalog.register(name, lambda: load_coco_json_naming_the_file(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  **dict(metadata or {}))
    return name


class DatasetReadError(ValueError):
    """Reading an annotation json or an image failed; the message names the file."""


def _naming(path: str, error: BaseException) -> DatasetReadError:
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    if path not in message:
        message = f"{path}: {type(error).__name__}: {message}"
    return DatasetReadError(message)


def load_coco_json_naming_the_file(json_file: str, image_root: str, name: str) -> list:
    """Detectron2's ``load_coco_json``; what it raises (invalid JSON, an unknown category id, duplicate
    annotation ids ...) becomes a :class:`DatasetReadError` naming ``json_file``."""
    try:
        return load_coco_json(json_file, image_root, name)
    except Exception as error:
        raise _naming(json_file, error) from error


class FileNamingDatasetMapper(DatasetMapper):
    """Detectron2's ``DatasetMapper``; an image that fails to read or to match its annotations raises
    a :class:`DatasetReadError` naming the file (Detectron2's own messages often do not)."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as error:
            raise _naming(dataset_dict.get("file_name", "an image"), error) from error


def register_synthetic_coco(
    root: PathLike, names: tuple[str, str] = SYNTHETIC_COCO_NAMES
) -> list[str]:
    """Register the train and val splits that :func:`ensure_synthetic_coco` wrote under ``root``.

    ``names`` are the (train, val) dataset names. Returns them as a list.
    """
    if len(names) != len(SYNTHETIC_COCO_SPLITS):
        raise ValueError(f"need one name per split {SYNTHETIC_COCO_SPLITS}, got {names!r}")
    # Known up front, so that visualisation and evaluation work before the json is first loaded.
    metadata = {"thing_classes": [category["name"] for category in CATEGORIES]}
    for name, split_name in zip(names, SYNTHETIC_COCO_SPLITS):
        json_file, image_root = coco_split_paths(root, split_name)
        register_coco_json(name, json_file, image_root, metadata, replace=True)
    return list(names)


def _datasets_root(root: Optional[PathLike]) -> str:
    return os.fspath(root) if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")


def register_coco_from_detectron2_datasets(root: Optional[PathLike] = None) -> list[str]:
    """Make ``coco_2017_train`` and ``coco_2017_val`` point at ``<root>/coco``; return the names.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` or ``datasets``, as in detectron2. Importing
    ``detectron2.data`` already registers these names, with the root as it was at import time:
    a name that is missing is added, one that points elsewhere (the root was given, or the
    variable changed after that import) is re-pointed, and one that is right is left alone.
    """
    root = _datasets_root(root)
    metadata = _get_builtin_metadata("coco")
    for name, (image_dir, json_name) in COCO_2017_SPLITS.items():
        json_file, image_root = os.path.join(root, json_name), os.path.join(root, image_dir)
        registered = _registered_paths(name)
        if registered is not None and registered != (_absolute(json_file), _absolute(image_root)):
            logger.info("Re-pointing dataset %s from %s to %s", name, registered[0], json_file)
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_json(name, json_file, image_root, metadata)
    return list(COCO_2017_SPLITS)


@dataclass(frozen=True)
class DatasetSpec:
    """A COCO-format dataset named on the command line."""

    name: str
    json_file: Path
    image_root: Path


# NAME=ANNOTATIONS.json:IMAGE_DIR. The json part must end in ".json", so the separating colon is
# the first one after it, and Windows drive letters ("C:\...") in either path still parse.
_SPEC_PATTERN = re.compile(
    r"(?P<name>[A-Za-z0-9_.\-]+)=(?P<json>.+?\.json):(?P<images>.+)", re.IGNORECASE
)
SPEC_SYNTAX = "NAME=ANNOTATIONS.json:IMAGE_DIR or NAME=IMAGE_DIR:LABEL_DIR"


def parse_dataset_spec(spec: str) -> Union[DatasetSpec, SemSegDatasetSpec]:
    """Parse ``NAME=ANNOTATIONS.json:IMAGE_DIR`` (COCO) or ``NAME=IMAGE_DIR:LABEL_DIR`` (semantic
    segmentation: image and label PNG folders) and check that both paths exist.

    For example ``mydata_train=data/ann/train.json:data/images/train``. ``NAME`` may hold
    letters, digits, ``_``, ``-`` and ``.``. Raises ``ValueError`` naming the offending part.
    """
    match = _SPEC_PATTERN.fullmatch(spec.strip())
    if match is None and ".json" not in spec.lower() and is_sem_seg_spec(spec):
        return parse_sem_seg_spec(spec)
    if match is None:
        raise ValueError(
            f"dataset spec {spec!r} is not {SPEC_SYNTAX} "
            "(e.g. mydata_train=annotations/train.json:images/train)"
        )
    name = match["name"]
    json_file = Path(match["json"]).expanduser().absolute()
    image_root = Path(match["images"]).expanduser().absolute()
    if not json_file.is_file():
        problem = "is a directory, not a file" if json_file.is_dir() else "does not exist"
        raise ValueError(f"dataset {name!r}: annotation file {json_file} {problem}")
    if not image_root.is_dir():
        problem = "is a file, not a directory" if image_root.exists() else "does not exist"
        raise ValueError(f"dataset {name!r}: image folder {image_root} {problem}")
    return DatasetSpec(name, json_file, image_root)


def register_dataset_specs(specs: Iterable[Union[str, DatasetSpec, SemSegDatasetSpec]],
                           ignore_label: int = DEFAULT_IGNORE_LABEL) -> list[str]:
    """Parse (where needed) and register each spec; return the dataset names in order.

    ``ignore_label`` is the label value of semantic-segmentation specs' pixels that count nowhere.
    """
    names = []
    for spec in specs:
        parsed = parse_dataset_spec(spec) if isinstance(spec, str) else spec
        if isinstance(parsed, SemSegDatasetSpec):
            names.append(register_sem_seg(parsed.name, parsed.image_root, parsed.label_root,
                                          ignore_label=ignore_label))
        else:
            names.append(register_coco_json(parsed.name, parsed.json_file, parsed.image_root))
    return names
