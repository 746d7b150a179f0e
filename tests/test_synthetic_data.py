"""The synthetic datasets (COCO shapes, ImageFolder) and COCO-format dataset registration."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

import resnet_backbones  # noqa: F401  (installs detectron2's stand-ins before detectron2 loads)
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from pycocotools.coco import COCO

from resnet_backbones.data import (
    CATEGORIES,
    IMAGEFOLDER_CLASSES,
    SceneStyle,
    coco_split_paths,
    ensure_imagefolder,
    ensure_object_crops,
    ensure_synthetic_coco,
    generate_coco_dataset,
    generate_imagefolder,
    parse_dataset_spec,
    register_coco_from_detectron2_datasets,
    register_coco_json,
    register_dataset_specs,
    register_synthetic_coco,
    render_scene,
    write_corrupt_image,
    write_object_crops,
)

# pycocotools' mask decoding (annToMask) trips a NumPy 2 deprecation inside pycocotools itself.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
COCO_SMALL, COCO_LARGE = 32**2, 96**2  # COCO's object size thresholds, in pixels of area
ANNOTATION_KEYS = {"id", "image_id", "category_id", "bbox", "area", "segmentation", "iscrowd"}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    generate_coco_dataset(root, 30, seed=0)
    return root


@pytest.fixture(scope="module")
def shapes(shapes_root: Path) -> COCO:
    return _load_coco(coco_split_paths(shapes_root, "train")[0])


@pytest.fixture
def catalog_names():
    """Records dataset names a test registers; removes them from Detectron2's global catalogs."""
    names: list[str] = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _load_coco(json_path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(str(json_path))


def _file_bytes(folder: Path, pattern: str) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob(pattern))}


def _polygon_area(flat: list[float]) -> float:
    x, y = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return 0.5 * abs(float(x @ np.roll(y, 1) - y @ np.roll(x, 1)))


# ---- COCO shapes: files ------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path):
    runs = {
        name: generate_coco_dataset(tmp_path / name, 4, seed=seed)
        for name, seed in [("first", 7), ("again", 7), ("other", 8)]
    }
    images = {
        name: _file_bytes(path.parent.parent / "train", "*.png") for name, path in runs.items()
    }

    assert runs["first"].read_bytes() == runs["again"].read_bytes()
    assert images["first"] == images["again"] and len(images["first"]) == 4
    assert runs["first"].read_bytes() != runs["other"].read_bytes()
    assert all(images["first"][name] != images["other"][name] for name in images["first"])


def test_splits_get_different_images_from_one_seed(tmp_path: Path):
    for split_name in ("train", "val"):
        generate_coco_dataset(tmp_path, 2, seed=0, split_name=split_name)
    assert _file_bytes(tmp_path / "train", "*.png") != _file_bytes(tmp_path / "val", "*.png")


def test_json_has_complete_coco_fields(shapes_root: Path, shapes: COCO):
    data = json.loads(coco_split_paths(shapes_root, "train")[0].read_text())
    assert len(data["images"]) == 30
    for image in data["images"]:
        assert set(image) == {"id", "file_name", "width", "height"}
        assert (shapes_root / "train" / image["file_name"]).is_file()
        with Image.open(shapes_root / "train" / image["file_name"]) as png:
            assert png.size == (256, 256)
    for annotation in data["annotations"]:
        assert set(annotation) == ANNOTATION_KEYS
        assert annotation["iscrowd"] == 0 and len(annotation["bbox"]) == 4
        assert all(
            len(polygon) >= 6 and len(polygon) % 2 == 0 for polygon in annotation["segmentation"]
        )
    assert data["categories"] == [dict(category) for category in CATEGORIES]
    assert len({annotation["id"] for annotation in data["annotations"]}) == len(data["annotations"])


def test_polygon_masks_match_area_and_lie_inside_bbox(shapes: COCO):
    for annotation in shapes.loadAnns(shapes.getAnnIds()):
        mask = shapes.annToMask(annotation)
        assert mask.sum() == annotation["area"] > 0
        # The area is that of the polygons, not of some other estimate of the shape.
        polygon_area = sum(_polygon_area(polygon) for polygon in annotation["segmentation"])
        assert polygon_area == pytest.approx(annotation["area"], rel=0.1, abs=4)
        ys, xs = np.nonzero(mask)
        x, y, w, h = annotation["bbox"]
        # Pixel centres inside the box, give or take the half pixel that rasterization rounds.
        assert x - 0.5 <= xs.min() + 0.5 and xs.max() + 0.5 <= x + w + 0.5
        assert y - 0.5 <= ys.min() + 0.5 and ys.max() + 0.5 <= y + h + 0.5


def test_every_category_and_coco_size_range_occurs(shapes: COCO):
    annotations = shapes.loadAnns(shapes.getAnnIds())
    assert {annotation["category_id"] for annotation in annotations} == {
        c["id"] for c in CATEGORIES
    }
    areas = np.array([annotation["area"] for annotation in annotations])
    assert (areas < COCO_SMALL).any() and ((areas >= COCO_SMALL) & (areas < COCO_LARGE)).any()
    assert (areas >= COCO_LARGE).any()
    objects_per_image = [len(shapes.getAnnIds(imgIds=image_id)) for image_id in shapes.getImgIds()]
    assert min(objects_per_image) >= 1 and max(objects_per_image) <= 6


def test_occluded_objects_are_annotated_by_their_visible_part_only(shapes: COCO):
    touching_pairs = 0
    for image_id in shapes.getImgIds():
        masks = [shapes.annToMask(a) for a in shapes.loadAnns(shapes.getAnnIds(imgIds=image_id))]
        for first, second in itertools.combinations(masks, 2):
            # Neighbouring outlines may share a pixel where rasterization rounds both ways.
            assert (first & second).sum() <= 2
            grown = np.zeros((first.shape[0] + 2, first.shape[1] + 2), np.uint8)
            for dy, dx in itertools.product(range(3), range(3)):
                grown[dy : dy + first.shape[0], dx : dx + first.shape[1]] |= first
            touching_pairs += int((grown[1:-1, 1:-1] & second).sum() >= 5)
    assert touching_pairs >= 5  # occluder and occluded meet along the occluder's outline


def test_scenes_have_partial_occlusions_within_the_style_limits():
    style = SceneStyle()
    fractions = [
        obj.visible_fraction
        for seed in range(20)
        for obj in render_scene(np.random.default_rng(seed), 128, style).objects
    ]
    assert min(fractions) >= style.min_visible_fraction
    assert sum(fraction < 0.95 for fraction in fractions) >= 3


def test_occluders_that_would_punch_a_hole_or_hide_too_much_are_refused():
    from resnet_backbones.data.synthetic_coco import _ellipse, _LabelMap

    def disc(centre: tuple[float, float], radius: float) -> dict:
        return dict(
            polygon=_ellipse(radius, radius, 0.0) + centre,
            category_id=1,
            centre=np.array(centre),
            radius=radius,
            colour=np.zeros(3),
        )

    label_map = _LabelMap(128, SceneStyle(min_visible_fraction=0.5))
    assert label_map.try_add(**disc((64, 64), 40))
    before = label_map.labels.copy()
    assert not label_map.try_add(**disc((64, 64), 10))  # inside: COCO polygons have no holes
    assert not label_map.try_add(**disc((64, 64), 45))  # would hide it all
    assert (label_map.labels == before).all()  # refused occluders leave no trace
    assert label_map.try_add(**disc((104, 64), 15))  # across the edge: fine
    assert 0.5 <= label_map.objects[0].visible_area / label_map.objects[0].full_area < 1


def test_category_colours_give_each_category_its_own_hue(tmp_path: Path):
    style = SceneStyle(category_colours=True, background_contrast=(0.0, 0.0))
    shapes = _load_coco(generate_coco_dataset(tmp_path, 6, seed=0, style=style))
    for annotation in shapes.loadAnns(shapes.getAnnIds()):
        bgr = cv2.imread(str(tmp_path / "train" / shapes.imgs[annotation["image_id"]]["file_name"]))
        # Away from the anti-aliased outline, the pixels are the object's own colour.
        inside = cv2.erode(shapes.annToMask(annotation), np.ones((5, 5), np.uint8)).astype(bool)
        if inside.sum() < 10:
            continue
        hue = np.median(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV_FULL)[..., 0][inside]) / 256.0
        offset = abs(hue - (annotation["category_id"] - 1) / len(CATEGORIES))
        assert min(offset, 1.0 - offset) < 0.08


# ---- registration --------------------------------------------------------------------------------


def test_registered_synthetic_dataset_loads_with_xywh_boxes(
    tmp_path: Path, catalog_names: list[str]
):
    ensure_synthetic_coco(tmp_path, num_train=5, num_val=3, seed=0, image_size=128)
    names = ("test_shapes_train", "test_shapes_val")
    catalog_names.extend(register_synthetic_coco(tmp_path, names=names))

    for name, count in zip(names, (5, 3)):
        records = DatasetCatalog.get(name)
        assert len(records) == count
        for record in records:
            assert Path(record["file_name"]).is_file() and (record["height"], record["width"]) == (
                128,
                128,
            )
            assert record["annotations"]
            for annotation in record["annotations"]:
                assert annotation["bbox_mode"] == BoxMode.XYWH_ABS
                assert 0 <= annotation["category_id"] < len(CATEGORIES)  # contiguous ids
                assert annotation["segmentation"]
        assert MetadataCatalog.get(name).thing_classes == [c["name"] for c in CATEGORIES]


def test_ensure_synthetic_coco_regenerates_only_when_parameters_change(tmp_path: Path):
    train_json = ensure_synthetic_coco(tmp_path, num_train=4, num_val=2, seed=0, image_size=64)[
        "train"
    ]
    written = train_json.stat().st_mtime_ns
    content = train_json.read_bytes()

    ensure_synthetic_coco(tmp_path, num_train=4, num_val=2, seed=0, image_size=64)
    assert train_json.stat().st_mtime_ns == written

    ensure_synthetic_coco(tmp_path, num_train=3, num_val=2, seed=1, image_size=64)
    assert train_json.read_bytes() != content
    assert len(list((tmp_path / "train").glob("*.png"))) == 3  # the fourth, stale image is gone


def test_register_coco_json_is_idempotent_and_refuses_a_taken_name(
    tmp_path: Path, catalog_names: list[str]
):
    json_file = generate_coco_dataset(tmp_path, 1, seed=0, image_size=64)
    catalog_names.append(register_coco_json("test_register_json", json_file, tmp_path / "train"))
    register_coco_json("test_register_json", json_file, tmp_path / "train")  # same files: no-op
    with pytest.raises(ValueError, match="already registered"):
        register_coco_json("test_register_json", tmp_path / "other.json", tmp_path / "train")


def test_coco_2017_names_are_reused_or_repointed_never_duplicated(tmp_path: Path):
    try:
        names = register_coco_from_detectron2_datasets()
        assert names == ["coco_2017_train", "coco_2017_val"]
        assert register_coco_from_detectron2_datasets() == names  # already there: no error
        assert all(name in DatasetCatalog.list() for name in names)

        register_coco_from_detectron2_datasets(tmp_path)
        metadata = MetadataCatalog.get("coco_2017_val")
        assert metadata.json_file == str(tmp_path / "coco/annotations/instances_val2017.json")
        assert metadata.image_root == str(tmp_path / "coco/val2017")
        assert len(metadata.thing_classes) == 80
    finally:
        register_coco_from_detectron2_datasets()  # other tests expect detectron2's own paths


def test_dataset_spec_registers_any_coco_json_and_image_folder(
    tmp_path: Path, catalog_names: list[str]
):
    json_file = generate_coco_dataset(tmp_path, 2, seed=0, image_size=64)
    spec = parse_dataset_spec(f"my.data-1={json_file}:{tmp_path / 'train'}")
    assert (spec.name, spec.json_file, spec.image_root) == (
        "my.data-1",
        json_file,
        tmp_path / "train",
    )

    catalog_names.extend(
        register_dataset_specs([f"cli_spec_train={json_file}:{tmp_path / 'train'}"])
    )
    assert len(DatasetCatalog.get("cli_spec_train")) == 2


@pytest.mark.parametrize(
    "spec, message",
    [
        ("just_a_name", "is not NAME=ANNOTATIONS.json:IMAGE_DIR"),
        ("name={json}", "is not NAME=ANNOTATIONS.json:IMAGE_DIR"),
        ("bad name={json}:{images}", "is not NAME=ANNOTATIONS.json:IMAGE_DIR"),
        ("data={root}/missing.json:{images}", "annotation file {root}/missing.json does not exist"),
        ("data={root}/folder.json:{images}", "annotation file {root}/folder.json is a directory"),
        ("data={json}:{root}/no_images", "image folder {root}/no_images does not exist"),
        ("data={json}:{json}", "image folder {json} is a file"),
    ],
)
def test_dataset_spec_errors_name_the_problem(tmp_path: Path, spec: str, message: str):
    paths = {"root": tmp_path, "json": tmp_path / "ann.json", "images": tmp_path / "images"}
    paths["json"].write_text("{}")
    paths["images"].mkdir()
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(ValueError, match=re.escape(message.format(**paths))):
        parse_dataset_spec(spec.format(**paths))


# ---- ImageFolder ---------------------------------------------------------------------------------


def test_imagefolder_layout_loads_with_torchvision(tmp_path: Path):
    from torchvision.datasets import ImageFolder

    generate_imagefolder(
        tmp_path, num_classes=3, train_per_class=4, val_per_class=2, image_size=32, seed=0
    )
    train, val = ImageFolder(str(tmp_path / "train")), ImageFolder(str(tmp_path / "val"))

    assert train.classes == val.classes == sorted(IMAGEFOLDER_CLASSES[:3])
    assert (len(train), len(val)) == (12, 6)
    image, label = val[0]
    assert image.size == (32, 32) and image.mode == "RGB" and 0 <= label < 3
    assert all(path.endswith(".jpg") for path, _ in train.samples + val.samples)


def test_imagefolder_is_deterministic_and_varied(tmp_path: Path):
    for name, seed in [("first", 3), ("again", 3), ("other", 4)]:
        generate_imagefolder(
            tmp_path / name, num_classes=2, train_per_class=3, val_per_class=1, seed=seed
        )
    first = _file_bytes(tmp_path / "first" / "train" / "disc", "*.jpg")
    assert first == _file_bytes(tmp_path / "again" / "train" / "disc", "*.jpg")
    assert first != _file_bytes(tmp_path / "other" / "train" / "disc", "*.jpg")
    assert len(set(first.values())) == 3  # random colour, place and size within a class


def test_ensure_imagefolder_regenerates_only_when_parameters_change(tmp_path: Path):
    kwargs = dict(num_classes=2, train_per_class=2, val_per_class=1, image_size=32)
    ensure_imagefolder(tmp_path, **kwargs)
    image = tmp_path / "train" / "disc" / "disc_00000.jpg"
    written, content = image.stat().st_mtime_ns, image.read_bytes()

    ensure_imagefolder(tmp_path, **kwargs)
    assert image.stat().st_mtime_ns == written
    ensure_imagefolder(tmp_path, **kwargs, seed=5)
    assert image.read_bytes() != content


def test_imagefolder_rejects_unknown_class_counts(tmp_path: Path):
    with pytest.raises(ValueError, match="num_classes"):
        generate_imagefolder(tmp_path, num_classes=len(IMAGEFOLDER_CLASSES) + 1)


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_image_cannot_be_decoded(tmp_path: Path, kind: str):
    path = write_corrupt_image(tmp_path / "class_a" / "bad.jpg", kind=kind)
    assert path.stat().st_size > 0
    with pytest.raises(OSError):  # PIL.UnidentifiedImageError is an OSError too
        with Image.open(path) as image:
            image.convert("RGB")


# ---- command line --------------------------------------------------------------------------------


def _cli():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_data", REPO / "tools" / "make_synthetic_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_generates_both_kinds(tmp_path: Path):
    cli = _cli()
    cli.main(
        [
            "coco",
            "--output-dir",
            str(tmp_path / "coco"),
            "--num-train",
            "2",
            "--num-val",
            "1",
            "--image-size",
            "64",
            "--seed",
            "3",
        ]
    )
    cli.main(
        [
            "imagefolder",
            "--output-dir",
            str(tmp_path / "folder"),
            "--num-classes",
            "2",
            "--train-per-class",
            "2",
            "--val-per-class",
            "1",
            "--image-size",
            "32",
        ]
    )

    assert len(_load_coco(tmp_path / "coco/annotations/instances_train.json").getImgIds()) == 2
    assert len(list((tmp_path / "coco/val").glob("*.png"))) == 1
    assert len(list((tmp_path / "folder/train").glob("*/*.jpg"))) == 4

    cli.main(["crops", "--coco-root", str(tmp_path / "coco"), "--output-dir", str(tmp_path / "crops"), "--size", "16"])
    coco = _load_coco(tmp_path / "coco/annotations/instances_train.json")
    crops = list((tmp_path / "crops/train").glob("*/*.png"))
    assert len(crops) == len(coco.getAnnIds()) and Image.open(crops[0]).size == (16, 16)


def test_cli_reports_bad_values_as_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as exit_info:
        _cli().main(["imagefolder", "--output-dir", str(tmp_path), "--num-classes", "99"])
    assert exit_info.value.code == 2
    assert "num_classes must be between" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        _cli().main(["crops", "--coco-root", str(tmp_path / "nothing"), "--output-dir", str(tmp_path / "crops")])
    assert exit_info.value.code == 2
    assert "--coco-root" in capsys.readouterr().err and not (tmp_path / "crops").exists()


def test_object_crops_are_an_imagefolder_of_every_object_centred_in_its_crop(shapes_root: Path, shapes: COCO,
                                                                             tmp_path: Path):
    json_path, image_dir = coco_split_paths(shapes_root, "train")
    counts = write_object_crops(json_path, image_dir, tmp_path / "train", size=48, context=1.0)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    expected = {name: 0 for name in names.values()}
    for annotation in shapes.dataset["annotations"]:
        expected[names[annotation["category_id"]]] += 1
    assert counts == expected
    assert {p.name for p in (tmp_path / "train").iterdir()} == set(names.values())
    assert sum(1 for _ in (tmp_path / "train").glob("*/*.png")) == len(shapes.dataset["annotations"])

    # the crop is centred on the box: its centre pixel is the image's pixel at the box centre
    annotation = max(shapes.dataset["annotations"], key=lambda a: a["area"])
    crop = cv2.imread(str(tmp_path / "train" / names[annotation["category_id"]] / f"{annotation['id']:08d}.png"))
    assert crop.shape == (48, 48, 3)
    x, y, w, h = annotation["bbox"]
    image = cv2.imread(str(image_dir / shapes.imgs[annotation["image_id"]]["file_name"]))
    centre = image[int(y + h / 2), int(x + w / 2)].astype(int)
    assert np.abs(crop[24, 24].astype(int) - centre).max() <= 40


def test_ensure_object_crops_crops_again_only_when_the_detection_data_changes(tmp_path: Path):
    ensure_synthetic_coco(tmp_path / "coco", num_train=4, num_val=2, image_size=64)
    splits = {split: coco_split_paths(tmp_path / "coco", split) for split in ("train", "val")}
    out = ensure_object_crops(splits, tmp_path / "crops", size=32)
    first = {p: p.stat().st_mtime_ns for p in out.glob("*/*/*.png")}
    assert first and {p.parts[-3] for p in first} == {"train", "val"}
    assert ensure_object_crops(splits, tmp_path / "crops", size=32) == out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/*.png")} == first  # nothing rewritten
    ensure_synthetic_coco(tmp_path / "coco", num_train=5, num_val=2, image_size=64)  # new data
    ensure_object_crops(splits, tmp_path / "crops", size=32)
    assert len(list(out.glob("train/*/*.png"))) > len([p for p in first if p.parts[-3] == "train"])
