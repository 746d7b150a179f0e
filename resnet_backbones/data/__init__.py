"""Datasets: synthetic data generators and COCO-format dataset registration for Detectron2."""

from .datasets import (
    COCO_2017_SPLITS,
    SYNTHETIC_COCO_NAMES,
    DatasetSpec,
    parse_dataset_spec,
    register_coco_from_detectron2_datasets,
    register_coco_json,
    register_dataset_specs,
    register_synthetic_coco,
)
from .object_crops import ensure_object_crops, write_object_crops
from .synthetic_coco import (
    CATEGORIES,
    DEMO_STYLE,
    GENERATOR_VERSION,
    SYNTHETIC_COCO_SPLITS,
    Scene,
    SceneObject,
    SceneStyle,
    coco_split_paths,
    ensure_synthetic_coco,
    generate_coco_dataset,
    render_scene,
)
from .synthetic_imagefolder import (
    IMAGEFOLDER_CLASSES,
    CorruptionKind,
    ensure_imagefolder,
    generate_imagefolder,
    write_corrupt_image,
)

__all__ = [
    "CATEGORIES",
    "COCO_2017_SPLITS",
    "DEMO_STYLE",
    "GENERATOR_VERSION",
    "IMAGEFOLDER_CLASSES",
    "SYNTHETIC_COCO_NAMES",
    "SYNTHETIC_COCO_SPLITS",
    "CorruptionKind",
    "DatasetSpec",
    "Scene",
    "SceneObject",
    "SceneStyle",
    "coco_split_paths",
    "ensure_imagefolder",
    "ensure_object_crops",
    "ensure_synthetic_coco",
    "generate_coco_dataset",
    "generate_imagefolder",
    "parse_dataset_spec",
    "register_coco_from_detectron2_datasets",
    "register_coco_json",
    "register_dataset_specs",
    "register_synthetic_coco",
    "render_scene",
    "write_corrupt_image",
    "write_object_crops",
]
