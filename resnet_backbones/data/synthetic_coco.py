"""A synthetic COCO-format instance-segmentation dataset: coloured shapes on textured backgrounds.

The images are small enough for a CPU to train Mask R-CNN on them in minutes, yet they have what
real data has: several categories, objects from COCO "small" to "large", partial occlusions and
backgrounds that are not flat.

Every image is drawn from its own random stream, derived from (seed, split name, image index), so
a dataset is byte-for-byte reproducible and an image does not depend on how many others are made.

Occlusion: objects are painted in order on a supersampled label map (later objects on top), so
each object's visible region is known exactly, and its annotation polygons are traced from that
region. An occluder that would hide most of an earlier object, punch a hole in it (COCO polygons
cannot express holes) or leave a sliver of it is re-sampled rather than placed, so every shape
that shows in an image is annotated, and annotated by its visible part only.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from ..fileio import ensure_generated, write_json_atomic

__all__ = [
    "CATEGORIES",
    "GENERATOR_VERSION",
    "SYNTHETIC_COCO_SPLITS",
    "Scene",
    "SceneObject",
    "SceneStyle",
    "coco_split_paths",
    "ensure_synthetic_coco",
    "generate_coco_dataset",
    "render_scene",
]

PathLike = Union[str, "os.PathLike[str]"]

# Bump whenever the output for a given seed changes: manifests written by an older version then
# no longer match, so `ensure_synthetic_coco` regenerates.
GENERATOR_VERSION = 1

SYNTHETIC_COCO_SPLITS = ("train", "val")
_MANIFEST_NAME = "synthetic_coco_manifest.json"
_FIXED_POINT_BITS = 4  # cv2.fillPoly sub-pixel precision: 1/16 of a (supersampled) pixel


# ---- shapes ------------------------------------------------------------------------------------
# A shape builder returns a closed polygon (N x 2, x then y) centred on the origin and inside the
# circle of the given radius. Curved shapes are fine polygons, so every mask is an exact polygon.

_CURVE_VERTICES = 64


def _ellipse(semi_major: float, semi_minor: float, angle: float) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, _CURVE_VERTICES, endpoint=False)
    return _rotate(np.stack([semi_major * np.cos(t), semi_minor * np.sin(t)], axis=1), angle)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _circle_shape(rng: np.random.Generator, radius: float) -> np.ndarray:
    return _ellipse(radius, radius, 0.0)


def _rectangle_shape(rng: np.random.Generator, radius: float) -> np.ndarray:
    aspect = rng.uniform(0.4, 1.0)  # squares included
    half_w = radius / np.sqrt(1.0 + aspect**2)
    half_h = half_w * aspect
    corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    return _rotate(corners, rng.uniform(0.0, np.pi))


def _triangle_shape(rng: np.random.Generator, radius: float) -> np.ndarray:
    # Jittered corners keep triangles varied without producing slivers that look like lines.
    angles = rng.uniform(0.0, 2.0 * np.pi) + np.array([0.0, 2.0, 4.0]) * np.pi / 3.0
    angles = angles + rng.uniform(-0.3, 0.3, size=3)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _ellipse_shape(rng: np.random.Generator, radius: float) -> np.ndarray:
    # Clearly elongated, so that an ellipse is never mistaken for a circle.
    return _ellipse(radius, radius * rng.uniform(0.35, 0.6), rng.uniform(0.0, np.pi))


def _star_shape(rng: np.random.Generator, radius: float) -> np.ndarray:
    points = 5
    angles = rng.uniform(0.0, 2.0 * np.pi) + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, radius, radius * rng.uniform(0.4, 0.5))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


ShapeBuilder = Callable[[np.random.Generator, float], np.ndarray]

_SHAPES: dict[str, ShapeBuilder] = {
    "circle": _circle_shape,
    "rectangle": _rectangle_shape,
    "triangle": _triangle_shape,
    "ellipse": _ellipse_shape,
    "star": _star_shape,
}

#: The COCO ``categories`` of the dataset; ids start at 1 as in COCO.
CATEGORIES: tuple[dict[str, Any], ...] = tuple(
    {"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(_SHAPES, start=1)
)


# ---- backgrounds -------------------------------------------------------------------------------
# A texture is a float32 field in [0, 1] that blends between two background colours.


def _normalized(field_: np.ndarray) -> np.ndarray:
    low, high = float(field_.min()), float(field_.max())
    return ((field_ - low) / max(high - low, 1e-6)).astype(np.float32)


def _projected_coordinates(size: int, angle: float) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))


def _smooth_noise_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(3, 9))
    grid = rng.random((cells, cells), dtype=np.float32)
    return _normalized(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC))


def _gradient_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    return _normalized(_projected_coordinates(size, rng.uniform(0.0, 2.0 * np.pi)))


def _stripes_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    period = rng.uniform(0.05, 0.25) * size
    phase = rng.uniform(0.0, 2.0 * np.pi)
    waves = np.sin(
        _projected_coordinates(size, rng.uniform(0.0, np.pi)) * (2.0 * np.pi / period) + phase
    )
    return (0.5 + 0.5 * waves).astype(np.float32)


_TEXTURES: tuple[Callable[[np.random.Generator, int], np.ndarray], ...] = (
    _smooth_noise_texture,
    _gradient_texture,
    _stripes_texture,
)


def _background(
    rng: np.random.Generator, size: int, contrast: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A textured background and the two colours (2 x 3) it blends between."""
    first = rng.uniform(0.0, 255.0, size=3)
    direction = rng.normal(size=3)
    second = np.clip(first + direction / np.linalg.norm(direction) * rng.uniform(*contrast), 0, 255)
    texture = _TEXTURES[int(rng.integers(len(_TEXTURES)))](rng, size)
    image = first + (second - first) * texture[..., None]
    return image.astype(np.float32), np.stack([first, second])


def _distance_to_segment(points: np.ndarray, ends: np.ndarray) -> np.ndarray:
    direction = ends[1] - ends[0]
    t = np.clip((points - ends[0]) @ direction / max(float(direction @ direction), 1e-6), 0.0, 1.0)
    return np.linalg.norm(points - (ends[0] + t[:, None] * direction), axis=1)


def _colours_of_hue(rng: np.random.Generator, hue: float, count: int) -> np.ndarray:
    """``count`` RGB colours (0-255) near ``hue`` (a fraction of the colour wheel), varied
    in saturation and brightness."""
    hsv = np.stack(
        [
            (hue + rng.uniform(-0.04, 0.04, count)) % 1.0 * 360.0,
            rng.uniform(0.65, 1.0, count),
            rng.uniform(0.6, 1.0, count),
        ],
        axis=1,
    ).astype(np.float32)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0].astype(np.float64) * 255.0


def _object_colour(
    rng: np.random.Generator,
    background_colours: np.ndarray,
    other_colours: list[np.ndarray],
    hue: float | None = None,
) -> np.ndarray:
    """A random colour (near ``hue`` if given) far from every background shade and from the
    image's other objects.

    Shapes that blend into the background or into their occluder would be invisible yet
    annotated; the best of a batch of candidates is taken when none meets both margins.
    """
    if hue is None:
        candidates = rng.uniform(0.0, 255.0, size=(32, 3))
    else:
        candidates = _colours_of_hue(rng, hue, 32)
    score = _distance_to_segment(candidates, background_colours) / 90.0
    for colour in other_colours:
        score = np.minimum(score, np.linalg.norm(candidates - colour, axis=1) / 60.0)
    good = np.flatnonzero(score >= 1.0)
    return candidates[good[0] if good.size else int(np.argmax(score))]


# ---- scenes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneStyle:
    """What a generated image contains. The defaults suit 256 px images."""

    min_objects: int = 1
    max_objects: int = 6
    #: Object diameter (of its bounding circle) as a fraction of the image size, sampled
    #: log-uniformly: at 256 px this spans COCO's small, medium and large objects.
    size_range: tuple[float, float] = (0.1, 0.8)
    #: Distance in RGB (0-255) between the two colours a background texture blends: enough for
    #: the texture to be seen, little enough for shapes to stand out. (0, 0): flat backgrounds.
    background_contrast: tuple[float, float] = (30.0, 80.0)
    #: Give each category its own hue (saturation and brightness still vary). Off, colour says
    #: nothing about the category and a detector must learn the shapes; on, colour is a shortcut
    #: that a detector trained from scratch for a few hundred iterations learns much faster.
    category_colours: bool = False
    #: Probability that an object is placed against an earlier one rather than anywhere.
    overlap_probability: float = 0.5
    #: An occluder may hide at most this much of an earlier object.
    min_visible_fraction: float = 0.5
    #: The smallest connected piece of a visible region, in image pixels.
    min_part_area: float = 12.0
    #: Label-map resolution factor: it anti-aliases the image and makes the traced polygons
    #: follow the true outlines within a fraction of a pixel.
    supersample: int = 4
    placement_attempts: int = 40
    #: Standard deviation of the per-pixel noise added to the final image (0-255 scale).
    noise_std: float = 3.0

    def __post_init__(self) -> None:
        # Objects are labelled 1..n in a uint8 map.
        if not 0 <= self.min_objects <= self.max_objects <= 254:
            raise ValueError(f"need 0 <= min_objects <= max_objects <= 254, got {self}")
        if not 0.0 < self.size_range[0] <= self.size_range[1] <= 1.0:
            raise ValueError(f"size_range must be fractions 0 < low <= high <= 1, got {self}")
        if not 0.0 <= self.background_contrast[0] <= self.background_contrast[1]:
            raise ValueError(f"background_contrast must be 0 <= low <= high, got {self}")
        if not 0.0 <= self.min_visible_fraction <= 1.0 or self.supersample < 1:
            raise ValueError(
                f"need 0 <= min_visible_fraction <= 1 and supersample >= 1, got {self}"
            )


#: The style of the registered ``synthetic_shapes_train`` / ``_val`` datasets and of ``make demo``:
#: each category its own hue, at most 4 objects, gentler textures. Trained from random
#: initialisation for 400 CPU iterations, the demo's detector got about 1 box AP on the defaults
#: above (colour says nothing of the category) and about 20 on these.
DEMO_STYLE = SceneStyle(category_colours=True, background_contrast=(10.0, 40.0), size_range=(0.15, 0.7),
                        max_objects=4)


@dataclass
class SceneObject:
    """One annotated object: its category and the polygons of its visible region."""

    category_id: int
    #: COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` in pixel coordinates (pixel (i, j) covers
    #: [i, i+1) x [j, j+1)); several when an occluder splits the object.
    polygons: list[list[float]]
    visible_fraction: float


@dataclass
class Scene:
    """A rendered image (H x W x 3 uint8 RGB) and its objects in painting order."""

    image: np.ndarray
    objects: list[SceneObject] = field(default_factory=list)


@dataclass
class _Placed:
    category_id: int
    centre: np.ndarray  # image pixels
    radius: float  # image pixels
    colour: np.ndarray
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in label-map pixels, multiples of supersample
    full_area: int  # label-map pixels
    visible_area: int


class _LabelMap:
    """Which object is on top at each point of a supersampled image (0 = background)."""

    def __init__(self, image_size: int, style: SceneStyle):
        self.scale = style.supersample
        self.size = image_size * self.scale
        self.labels = np.zeros((self.size, self.size), np.uint8)
        self.objects: list[_Placed] = []
        self._min_visible_fraction = style.min_visible_fraction
        self._min_part_area = style.min_part_area * self.scale**2

    def try_add(
        self,
        polygon: np.ndarray,
        category_id: int,
        centre: np.ndarray,
        radius: float,
        colour: np.ndarray,
    ) -> bool:
        """Paint ``polygon`` (image pixels) on top; undo and return False if it occludes badly."""
        box = self._box_of(polygon)
        x0, y0, x1, y1 = box
        before = self.labels[y0:y1, x0:x1].copy()
        label = len(self.objects) + 1
        self._fill(polygon, box, label)
        covered = self.labels[y0:y1, x0:x1] == label
        area = int(covered.sum())
        hidden = np.bincount(before[covered], minlength=label)
        acceptable = area > 0 and all(
            self._still_visible(obj, int(hidden[i + 1]), i + 1)
            for i, obj in enumerate(self.objects)
        )
        if not acceptable:
            self.labels[y0:y1, x0:x1] = before
            return False
        for i, obj in enumerate(self.objects):
            obj.visible_area -= int(hidden[i + 1])
        self.objects.append(_Placed(category_id, centre, radius, colour, box, area, area))
        return True

    def mask(self, index: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The visible region of object ``index`` (uint8, cropped to its box) and that box."""
        x0, y0, x1, y1 = box = self.objects[index].box
        return (self.labels[y0:y1, x0:x1] == index + 1).astype(np.uint8), box

    def _box_of(self, polygon: np.ndarray) -> tuple[int, int, int, int]:
        # Whole image pixels, so that a crop of the label map downsamples to a crop of the image.
        low = np.clip(np.floor(polygon.min(axis=0)), 0, None).astype(int) * self.scale
        high = np.clip(np.ceil(polygon.max(axis=0)) * self.scale, None, self.size).astype(int)
        return int(low[0]), int(low[1]), int(high[0]), int(high[1])

    def _fill(self, polygon: np.ndarray, box: tuple[int, int, int, int], label: int) -> None:
        x0, y0, x1, y1 = box
        # cv2 puts integer coordinates at pixel centres; image coordinates put them at corners.
        points = polygon * self.scale - 0.5 - np.array([x0, y0])
        fixed = np.round(points * (1 << _FIXED_POINT_BITS)).astype(np.int32)
        cv2.fillPoly(
            self.labels[y0:y1, x0:x1], [fixed], label, lineType=cv2.LINE_8, shift=_FIXED_POINT_BITS
        )

    def _still_visible(self, obj: _Placed, newly_hidden: int, label: int) -> bool:
        if newly_hidden == 0:
            return True
        if obj.visible_area - newly_hidden < self._min_visible_fraction * obj.full_area:
            return False
        x0, y0, x1, y1 = obj.box
        region = (self.labels[y0:y1, x0:x1] == label).astype(np.uint8)
        _, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is not None and (hierarchy[0][:, 3] >= 0).any():
            return False  # a hole
        _, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        return bool((stats[1:, cv2.CC_STAT_AREA] >= self._min_part_area).all())


def _sample_centre(
    rng: np.random.Generator,
    radius: float,
    image_size: int,
    placed: list[_Placed],
    style: SceneStyle,
) -> np.ndarray:
    if placed and rng.random() < style.overlap_probability:
        # Against an earlier object, close enough that the two usually overlap.
        anchor = placed[int(rng.integers(len(placed)))]
        angle = rng.uniform(0.0, 2.0 * np.pi)
        distance = (anchor.radius + radius) * rng.uniform(0.3, 0.9)
        centre = anchor.centre + distance * np.array([np.cos(angle), np.sin(angle)])
    else:
        centre = rng.uniform(0.0, image_size, size=2)
    return np.clip(centre, radius, image_size - radius)


def _place_objects(
    rng: np.random.Generator, image_size: int, style: SceneStyle, background_colours: np.ndarray
) -> _LabelMap:
    label_map = _LabelMap(image_size, style)
    wanted = int(rng.integers(style.min_objects, style.max_objects + 1))
    log_low, log_high = np.log(np.asarray(style.size_range) * image_size / 2.0)
    for _ in range(style.placement_attempts):
        if len(label_map.objects) == wanted:
            break
        category_index = int(rng.integers(len(CATEGORIES)))
        radius = float(np.exp(rng.uniform(log_low, log_high)))
        polygon = _SHAPES[CATEGORIES[category_index]["name"]](rng, radius)
        centre = _sample_centre(rng, radius, image_size, label_map.objects, style)
        hue = category_index / len(CATEGORIES) if style.category_colours else None
        other_colours = [obj.colour for obj in label_map.objects]
        colour = _object_colour(rng, background_colours, other_colours, hue)
        label_map.try_add(
            polygon + centre, CATEGORIES[category_index]["id"], centre, radius, colour
        )
    return label_map


def _trace_polygons(
    mask: np.ndarray, box: tuple[int, int, int, int], scale: int
) -> list[list[float]]:
    """COCO polygons (image pixels) of a supersampled mask crop whose corner is at ``box``."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    polygons = []
    for contour in contours:
        # Simplify within a quarter of an image pixel: straight edges need only their corners.
        simplified = cv2.approxPolyDP(contour, epsilon=1.0, closed=True).reshape(-1, 2)
        if len(simplified) < 3:
            continue
        points = (simplified + np.array(box[:2]) + 0.5) / scale
        polygons.append([round(float(v), 2) for v in points.ravel()])
    return polygons


def _shading(rng: np.random.Generator, obj: _Placed, scale: int) -> np.ndarray:
    """A soft linear light ramp over an object's box, so that shapes are not perfectly flat."""
    x0, y0, x1, y1 = (v // scale for v in obj.box)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + np.float32(0.5)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (
        (xs - obj.centre[0]) * np.cos(angle) + (ys - obj.centre[1]) * np.sin(angle)
    ) / obj.radius
    return (1.0 + 0.15 * np.clip(ramp, -1.0, 1.0)).astype(np.float32)


def _composite(
    rng: np.random.Generator, background: np.ndarray, label_map: _LabelMap, style: SceneStyle
) -> np.ndarray:
    image = background.copy()
    scale = label_map.scale
    for index, obj in enumerate(label_map.objects):
        mask, (x0, y0, x1, y1) = label_map.mask(index)
        # Area-averaging the supersampled mask gives each image pixel its covered fraction
        # (anti-aliased edges). Visible regions are disjoint, so a pixel is exactly the
        # coverage-weighted sum of background and objects: each object adds its own share.
        width, height = (x1 - x0) // scale, (y1 - y0) // scale
        coverage = cv2.resize(
            mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA
        )
        colour = obj.colour.astype(np.float32) * _shading(rng, obj, scale)[..., None]
        rows, columns = slice(y0 // scale, y1 // scale), slice(x0 // scale, x1 // scale)
        image[rows, columns] += coverage[..., None] * (colour - background[rows, columns])
    image += rng.normal(0.0, style.noise_std, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_scene(
    rng: np.random.Generator, image_size: int = 256, style: SceneStyle | None = None
) -> Scene:
    """Draw one image of shapes on a textured background, with its visible-region polygons."""
    style = style or SceneStyle()
    background, background_colours = _background(rng, image_size, style.background_contrast)
    label_map = _place_objects(rng, image_size, style, background_colours)
    image = _composite(rng, background, label_map, style)
    objects = []
    for index, placed in enumerate(label_map.objects):
        polygons = _trace_polygons(*label_map.mask(index), label_map.scale)
        if polygons:
            objects.append(
                SceneObject(placed.category_id, polygons, placed.visible_area / placed.full_area)
            )
    return Scene(image, objects)


# ---- COCO files --------------------------------------------------------------------------------


def _image_rng(seed: int, split_name: str, index: int) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process, which would break determinism.
    return np.random.default_rng(
        np.random.SeedSequence([seed, zlib.crc32(split_name.encode()), index])
    )


def _annotation(
    obj: SceneObject, annotation_id: int, image_id: int, image_size: int
) -> dict[str, Any] | None:
    rles = mask_utils.frPyObjects(obj.polygons, image_size, image_size)
    # The area of what the polygons rasterize to: exactly what COCO evaluation compares against.
    area = int(mask_utils.area(mask_utils.merge(rles)))
    if area == 0:
        return None
    points = np.concatenate([np.reshape(p, (-1, 2)) for p in obj.polygons])
    low, high = points.min(axis=0), points.max(axis=0)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": obj.category_id,
        "bbox": [round(float(v), 2) for v in (low[0], low[1], high[0] - low[0], high[1] - low[1])],
        "area": area,
        "segmentation": obj.polygons,
        "iscrowd": 0,
    }


def coco_split_paths(root: PathLike, split_name: str) -> tuple[Path, Path]:
    """Where a split of a generated dataset lives: (annotation json, image folder)."""
    root = Path(root)
    return root / "annotations" / f"instances_{split_name}.json", root / split_name


def _write_json_atomically(path: Path, data: Any) -> None:
    write_json_atomic(path, data, separators=(",", ":"))


def _remove_stale_images(image_dir: Path, keep: set[str]) -> None:
    # Only files named like ours: a regeneration with fewer images must not leave extra ones.
    for path in image_dir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].png"):
        if path.name not in keep:
            path.unlink()


def generate_coco_dataset(
    output_dir: PathLike,
    num_images: int,
    seed: int = 0,
    image_size: int = 256,
    split_name: str = "train",
    style: SceneStyle | None = None,
) -> Path:
    """Write ``num_images`` PNG images and their COCO instance annotations; return the json path.

    Images go to ``output_dir/<split_name>/000001.png ...`` and annotations to
    ``output_dir/annotations/instances_<split_name>.json`` (see :func:`coco_split_paths`). The
    same arguments always produce byte-identical files; splits with different names get
    independent images from the same seed.
    """
    if num_images < 0 or image_size < 32:  # below 32 px the smallest shapes are a pixel or two
        raise ValueError(
            f"need num_images >= 0 and image_size >= 32, got {num_images} and {image_size}"
        )
    json_path, image_dir = coco_split_paths(output_dir, split_name)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        scene = render_scene(_image_rng(seed, split_name, index), image_size, style)
        image_id = index + 1  # COCO ids start at 1; some tools treat id 0 as missing
        file_name = f"{image_id:06d}.png"
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
        for obj in scene.objects:
            annotation = _annotation(obj, len(annotations) + 1, image_id, image_size)
            if annotation is not None:
                annotations.append(annotation)
    _remove_stale_images(image_dir, {image["file_name"] for image in images})
    _write_json_atomically(
        json_path,
        {
            "info": {
                "description": f"resnet_backbones synthetic shapes, {split_name} split",
                "version": str(GENERATOR_VERSION),
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": list(CATEGORIES),
        },
    )
    return json_path


def _synthetic_coco_manifest(
    num_train: int, num_val: int, seed: int, image_size: int, style: SceneStyle
) -> dict[str, Any]:
    return {
        "generator": "resnet_backbones.data.synthetic_coco",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "num_images": {"train": num_train, "val": num_val},
        "style": asdict(style),
    }


def _splits_complete(root: Path, manifest: dict[str, Any]) -> bool:
    for split_name, count in manifest["num_images"].items():
        json_path, image_dir = coco_split_paths(root, split_name)
        if not json_path.is_file() or len(list(image_dir.glob("*.png"))) != count:
            return False
    return True


def ensure_synthetic_coco(
    root: PathLike,
    num_train: int = 400,
    num_val: int = 50,
    seed: int = 0,
    image_size: int = 256,
    style: SceneStyle | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Generate the train and val splits under ``root`` unless the same ones are already there.

    A manifest of the parameters is written last, so a changed parameter or an interrupted run
    regenerates. Returns ``{"train": json path, "val": json path}``.
    """
    root = Path(root)
    style = style or SceneStyle()
    manifest = _synthetic_coco_manifest(num_train, num_val, seed, image_size, style)

    def generate() -> None:
        for split_name, count in manifest["num_images"].items():
            generate_coco_dataset(root, count, seed, image_size, split_name, style)

    ensure_generated(root / _MANIFEST_NAME, manifest, generate, force=force,
                     is_complete=lambda: _splits_complete(root, manifest))
    return {
        split_name: coco_split_paths(root, split_name)[0] for split_name in SYNTHETIC_COCO_SPLITS
    }
