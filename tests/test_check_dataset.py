"""tools/check_dataset.py: every class of bad input, named by annotation, image or file; --fix."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from resnet_backbones.data.checks import check_coco_dataset, check_imagenet_folder, fix_coco_dataset, main

WIDTH, HEIGHT = 64, 48


def write_exif_jpeg(path: Path, size, orientation: int) -> None:
    """A real JPEG whose EXIF header asks viewers (and Detectron2) to rotate it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", size, (200, 30, 30)).save(path, exif=exif)
    assert Image.open(path).getexif()[0x0112] == orientation


@pytest.fixture()
def clean(tmp_path) -> tuple:
    """A valid dataset: 2 images of 64x48, one box each, categories 1 and 2 both used."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (WIDTH, HEIGHT), (20, 120, 40)).save(images / name)
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT},
                   {"id": 2, "file_name": "b.png", "width": WIDTH, "height": HEIGHT}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0,
             "segmentation": [[4, 4, 24, 4, 24, 14, 4, 14]]},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0,
             "segmentation": [[10, 10, 40, 10, 40, 30, 10, 30]]},
        ],
    }
    return tmp_path, images, data


def annotation(data, aid):
    return next(a for a in data["annotations"] if a["id"] == aid)


def image(data, iid):
    return next(i for i in data["images"] if i["id"] == iid)


def _missing(root, images, data):
    image(data, 2)["file_name"] = "gone.png"


def _unreadable(root, images, data):
    (images / "dir.png").mkdir()  # a folder where the image should be
    image(data, 2)["file_name"] = "dir.png"


def _not_an_image(root, images, data):
    (images / "b.png").write_bytes(b"<html>not an image</html>")


def _truncated(root, images, data):
    Image.effect_noise((WIDTH, HEIGHT), 64).convert("RGB").save(images / "a.jpg", quality=95)
    full = (images / "a.jpg").read_bytes()
    (images / "a.jpg").write_bytes(full[:len(full) * 2 // 3])  # the header survives, the end does not


def _size_mismatch(root, images, data):
    image(data, 2)["width"] = 65


def _exif_rotated(root, images, data):
    write_exif_jpeg(images / "a.jpg", (WIDTH, HEIGHT), 6)  # shown as 48x64; the json says 64x48


def _exif_consistent(root, images, data):
    write_exif_jpeg(images / "a.jpg", (HEIGHT, WIDTH), 8)  # stored 48x64, shown 64x48 as the json says


def _box(aid, bbox):
    def mutate(root, images, data):
        annotation(data, aid)["bbox"] = bbox
    return mutate


def _polygon(aid, polygons):
    def mutate(root, images, data):
        annotation(data, aid)["segmentation"] = polygons
    return mutate


def _rle_wrong_size(root, images, data):
    annotation(data, 10)["segmentation"] = {"size": [HEIGHT, WIDTH + 1], "counts": "PPYo1"}


def _unknown_category(root, images, data):
    annotation(data, 11)["category_id"] = 7


def _unused_category(root, images, data):
    data["categories"].append({"id": 3, "name": "bird"})


def _duplicate_annotation_id(root, images, data):
    annotation(data, 11)["id"] = 10


def _duplicate_image_id(root, images, data):
    data["images"].append({"id": 2, "file_name": "a.jpg", "width": WIDTH, "height": HEIGHT})


def _unknown_image_id(root, images, data):
    annotation(data, 11)["image_id"] = 99


def _image_without_annotations(root, images, data):
    data["annotations"].pop()


def _crowd(root, images, data):
    annotation(data, 11)["iscrowd"] = 1


def _no_annotations(root, images, data):
    del data["annotations"]


def _empty_annotations(root, images, data):
    data["annotations"] = []


# name, mutation, extra arguments, exit status, what the error line (status 2) or report (0) must name
CASES = [
    ("missing image", _missing, [], 2, "image 2 (<root>/images/gone.png): no such file"),
    ("unreadable image", _unreadable, [], 2, "images/dir.png): cannot read the file"),
    ("not an image", _not_an_image, [], 2, "images/b.png): not an image"),
    ("truncated jpeg", _truncated, [], 2, "images/a.jpg): truncated JPEG"),
    ("size mismatch", _size_mismatch, [], 2, "image 2 (<root>/images/b.png): the file is 64x48, the json says width 65"),
    ("exif rotated", _exif_rotated, [], 2, "images/a.jpg): EXIF orientation 6: Detectron2 rotates the image by 90 "
                                           "degrees clockwise on reading, to 48x64, but the json says width 64, "
                                           "height 48 (the stored size); the json should say width 48, height 64"),
    ("exif consistent", _exif_consistent, [], 0, "warning: image 1 (<root>/images/a.jpg): EXIF orientation 8"),
    ("negative width", _box(10, [30, 4, -20, 10]), [], 2, "annotation 10 (image 1, a.jpg): bbox [30, 4, -20, 10] "
                                                          "has a negative width"),
    ("negative height", _box(11, [10, 30, 30, -20]), [], 2, "annotation 11 (image 2, b.png): bbox [10, 30, 30, -20] "
                                                            "has a negative height"),
    ("nan box", _box(10, [float("nan"), 4, 20, 10]), [], 2, "annotation 10 (image 1, a.jpg): bbox [nan, 4, 20, 10] "
                                                            "is not finite"),
    ("malformed box", _box(10, [4, 4, 20]), [], 2, "annotation 10 (image 1, a.jpg): bbox [4, 4, 20] is not"),
    ("zero-width box", _box(10, [4, 4, 0, 10]), [], 0, "warning: annotation 10 (image 1, a.jpg): bbox [4, 4, 0, 10] "
                                                       "has zero width"),
    ("box outside", _box(10, [70, 4, 20, 10]), [], 0, "warning: annotation 10 (image 1, a.jpg): bbox [70, 4, 20, 10] "
                                                      "lies outside the 64x48 image"),
    ("box partly outside", _box(10, [50, 4, 20, 10]), [], 0, "warning: annotation 10 (image 1, a.jpg): "
                                                             "bbox [50, 4, 20, 10] reaches outside"),
    ("two-point polygon", _polygon(10, [[4, 4, 24, 4]]), [], 0, "warning: annotation 10 (image 1, a.jpg): 1 of 1 "
                                                                "polygons have fewer than 3 points"),
    ("polygon outside", _polygon(10, [[4, 4, 80, 4, 24, 14]]), [], 0, "warning: annotation 10 (image 1, a.jpg): "
                                                                      "polygon points reach (4..80"),
    ("rle of another size", _rle_wrong_size, [], 2, "annotation 10 (image 1, a.jpg): RLE size [48, 65]"),
    ("unknown category", _unknown_category, [], 2, "annotation 11 (image 2, b.png): category_id 7 is not in"),
    ("unused category", _unused_category, [], 0, "warning: category 3 (bird): no annotation has this category"),
    ("too few classes", lambda *a: None, ["--num-classes", "1"], 2, "NUM_CLASSES: is 1, but <root>/ann.json has 2 "
                                                                     "categories"),
    ("duplicate annotation id", _duplicate_annotation_id, [], 2, "annotation 10 (image 2, b.png): id 10 is used by "
                                                                 "2 annotations"),
    ("duplicate image id", _duplicate_image_id, [], 2, "image 2: 2 images have this id"),
    ("unknown image id", _unknown_image_id, [], 0, "warning: annotation 11 (image 99): image_id 99 is not in"),
    ("image without annotations", _image_without_annotations, [], 0, "warning: image 2 (<root>/images/b.png): no "
                                                                     "annotations"),
    ("crowd region", _crowd, [], 0, "note: annotation 11 (image 2, b.png): a crowd region"),
    ("no annotations key", _no_annotations, [], 2, "annotations: the json has no 'annotations' list"),
    ("empty annotations", _empty_annotations, [], 2, "annotations: the 'annotations' list is empty"),
]


@pytest.mark.parametrize("name, mutate, extra, status, names", CASES, ids=[c[0] for c in CASES])
def test_each_bad_input_is_named(clean, capsys, name, mutate, extra, status, names):
    root, images, data = clean
    mutate(root, images, data)
    (root / "ann.json").write_text(json.dumps(data))
    code = main([str(root / "ann.json"), str(images), *extra])
    out, err = capsys.readouterr()
    names = names.replace("<root>", str(root))
    assert code == status, out + err
    if status == 2:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        assert errors[0].startswith(f"error: {root / 'ann.json'}: ") and names in errors[0], errors[0]
    else:
        assert err == "" and names in out, out
    assert f"error: " not in err or status == 2


def test_clean_dataset_has_no_problems_and_counts_categories(clean, capsys):
    root, images, data = clean
    (root / "ann.json").write_text(json.dumps(data))
    assert main([str(root / "ann.json"), str(images)]) == 0
    out = capsys.readouterr().out
    assert "2 images, 2 annotations, 2 categories" in out
    assert " 0 errors\n" in out and " 0 warnings\n" in out
    report = check_coco_dataset(root / "ann.json", images)
    assert report.category_counts == [(1, "cat", 1), (2, "dog", 1)] and report.problems == []


@pytest.mark.parametrize("text, names", [
    ('{"images": [],\n "categories": [], }', "invalid JSON at line 2 column 20"),
    ('[1, 2]', "a COCO json is an object"),
    ('{"annotations": []}', "has no 'images' list"),
])
def test_a_json_that_is_not_coco_is_one_line_naming_the_file(tmp_path, capsys, text, names):
    (tmp_path / "ann.json").write_text(text)
    assert main([str(tmp_path / "ann.json"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'ann.json'}: ") and names in err and err.count("\n") == 1


def test_imagenet_layout_and_images(tmp_path, capsys):
    # the layout rules are pretraining's own (scan_imagenet_layout), message and all
    assert main(["--imagenet", str(tmp_path)]) == 2
    assert "no train/ folder; expected the ImageNet layout" in capsys.readouterr().err
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "x.JPEG")
    assert main(["--imagenet", str(tmp_path)]) == 0
    assert "       0 n01        1" in capsys.readouterr().out
    (tmp_path / "val" / "n02" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    assert main(["--imagenet", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path}: {tmp_path / 'val' / 'n02' / 'broken.jpg'}: ")
    assert len(check_imagenet_folder(tmp_path).errors) == 1


def test_decode_finds_what_headers_cannot(clean):
    root, images, data = clean
    # a PNG whose compressed pixels are garbage but whose chunks and end marker are intact
    full = bytearray((images / "b.png").read_bytes())
    start = full.index(b"IDAT") + 4
    full[start + 2:start + 12] = b"\x00garbage\xff\x00"
    (images / "b.png").write_bytes(bytes(full))
    (root / "ann.json").write_text(json.dumps(data))
    assert check_coco_dataset(root / "ann.json", images).errors == []
    decoded = check_coco_dataset(root / "ann.json", images, decode=True).errors
    assert [p.kind for p in decoded] == ["undecodable_image"] and "b.png" in decoded[0].where


def broken_dataset(root: Path, images: Path, data: dict) -> dict:
    """One json with a problem of each fixable or removable class."""
    data = copy.deepcopy(data)
    _exif_rotated(root, images, data)  # image 1: its size is corrected
    data["images"].append({"id": 3, "file_name": "gone.jpg", "width": WIDTH, "height": HEIGHT})
    add = data["annotations"].append
    add({"id": 12, "image_id": 2, "category_id": 1, "bbox": [50, 40, 30, 30], "iscrowd": 0})  # clipped
    add({"id": 12, "image_id": 2, "category_id": 2, "bbox": [1, 1, 10, 10], "iscrowd": 0})  # renumbered
    add({"id": 13, "image_id": 2, "category_id": 1, "bbox": [5, 5, -3, 4], "iscrowd": 0})  # negative: removed
    add({"id": 14, "image_id": 2, "category_id": 1, "bbox": [5, 5, 0, 4], "iscrowd": 0})  # degenerate: removed
    add({"id": 15, "image_id": 2, "category_id": 9, "bbox": [5, 5, 3, 4], "iscrowd": 0})  # unknown category
    add({"id": 16, "image_id": 3, "category_id": 1, "bbox": [5, 5, 3, 4], "iscrowd": 0})  # its image is missing
    add({"id": 17, "image_id": 2, "category_id": 1, "bbox": [100, 100, 3, 4], "iscrowd": 0})  # outside: removed
    return data


def test_fix_writes_a_copy_without_errors_and_lists_what_it_could_not_fix(clean, capsys):
    root, images, data = clean
    (root / "ann.json").write_text(json.dumps(broken_dataset(root, images, data)))
    before = (root / "ann.json").read_bytes()
    out_json = root / "fixed" / "ann.json"
    assert main([str(root / "ann.json"), str(images), "--fix", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert (root / "ann.json").read_bytes() == before
    assert "wrote " + str(out_json) + ": 3 problems repaired, 3 not fixed" in out
    assert "image 3 (" + str(images / "gone.jpg") + "): no such file -> removed with its annotations (not fixed)" in out
    assert "annotation 13 (image 2, b.png): bbox [5, 5, -3, 4] has a negative width" in out
    assert not list(out_json.parent.glob(".*.tmp"))

    fixed = json.loads(out_json.read_text())
    assert [(i["id"], i["width"], i["height"]) for i in fixed["images"]] == [(1, HEIGHT, WIDTH), (2, WIDTH, HEIGHT)]
    boxes = {a["id"]: a["bbox"] for a in fixed["annotations"]}
    assert boxes == {10: [4, 4, 20, 10], 11: [10, 10, 30, 20], 12: [50.0, 40.0, 14.0, 8.0], 18: [1, 1, 10, 10]}
    report = check_coco_dataset(out_json, images)
    assert report.errors == [], report.format()
    assert {p.kind for p in report.problems} == {"exif_orientation"}  # the rotation stays worth knowing


def test_fix_refuses_to_overwrite_its_input(clean, capsys):
    root, images, data = clean
    (root / "ann.json").write_text(json.dumps(data))
    assert main([str(root / "ann.json"), str(images), "--fix", str(root / "ann.json")]) == 2
    assert "is the input json" in capsys.readouterr().err
    with pytest.raises(ValueError):
        fix_coco_dataset(root / "ann.json", images, os.path.relpath(root / "ann.json"))
