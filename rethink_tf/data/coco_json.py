"""`coco_json:<annotations.json>:<image_dir>`: a user's own COCO-format detection data.

- Classes: category ids are mapped to contiguous ids 0..K-1 in sorted category-id
  order; `categories(file)` and `category_mapping(file)` give the mapping (evaluation
  maps detections back with it).
- Boxes: COCO `bbox` [x, y, w, h] -> xyxy absolute pixels, clipped to the image.
  Zero-size boxes are dropped with a warning (they carry no signal and break box
  losses); malformed ones (not 4 finite numbers, negative size) are errors.
- Crowd: `iscrowd` annotations are dropped from the targets unless `keep_crowd`.
- Images without annotations are kept, with empty `boxes`/`classes`.
- `source_id` is `str(image id)`, so predictions match the JSON in COCO evaluation.
- Masks (`with_masks=True`): a semantic `mask` from the polygon/RLE segmentations:
  0 = background, class k -> k + 1, crowd regions 255 (ignore) unless `keep_crowd`;
  larger objects are painted first so smaller ones stay visible; annotations without a
  segmentation add no pixels.
- Everything the JSON names is checked before any example is read (file, keys,
  categories, bboxes, image sizes and files); errors name the file, image id or annotation id.
- Boxes wholly outside their image (when the JSON gives its size) are dropped, counted in
  `CocoIndex.dropped_boxes` with their annotation ids, and logged; partly outside ones are
  clipped.
- An image file that cannot be decoded (corrupt, truncated, empty, not an image, or more
  pixels than `image_files.decode_image` accepts) is skipped and counted, never fatal: the
  `image_folder.SkipCounter` passed to `load` (or one of its own) records it, and its
  annotations go with it. An image whose size differs from the JSON's raises, naming it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

import numpy as np
import tensorflow as tf

from rethink_tf.data import example as ex
from rethink_tf.data import image_files
from rethink_tf.data import image_folder
from rethink_tf.data import subsets

# Annotation ids of dropped boxes named in the log (all are counted).
MAX_LOGGED_IDS = 10


@dataclasses.dataclass(frozen=True)
class CocoIndex:
    """A validated COCO annotation file.

    Attributes:
        category_ids: contiguous class id -> original category id.
        category_names: contiguous class id -> name.
        image_ids: the images, in file order.
        paths: image file paths, aligned with `image_ids`.
        sizes: (height, width) from the JSON or (-1, -1) if absent, aligned.
        boxes: per image, float32 [N, 4] xyxy (before clipping).
        classes: per image, int32 [N] contiguous ids.
        crowd: per image, bool [N].
        segmentations: per image, the annotations' `segmentation` (None if absent).
        dropped_boxes: (annotation id, reason) of the boxes left out of the targets:
            'zero size', or 'outside the image' (wholly, by the JSON's image size).
    """

    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    image_ids: tuple
    paths: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]
    boxes: tuple[np.ndarray, ...]
    classes: tuple[np.ndarray, ...]
    crowd: tuple[np.ndarray, ...]
    segmentations: tuple[list, ...]
    dropped_boxes: tuple[tuple, ...] = ()


def categories(annotation_file: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Returns (category ids, names), both indexed by contiguous class id."""
    data = _read_json(annotation_file)
    cats = _parse_categories(data, annotation_file)
    return tuple(c[0] for c in cats), tuple(c[1] for c in cats)


def category_mapping(annotation_file: str) -> dict[int, int]:
    """Returns {original category id: contiguous class id}."""
    ids, _ = categories(annotation_file)
    return {cat_id: i for i, cat_id in enumerate(ids)}


def read_index(annotation_file: str, image_dir: str) -> CocoIndex:
    """Reads and validates a COCO annotation file against its image directory.

    Args:
        annotation_file: the COCO JSON.
        image_dir: the folder that the images' `file_name`s are relative to.

    Returns:
        A `CocoIndex`.

    Raises:
        FileNotFoundError: the JSON, the image folder or an image file is missing.
        ValueError: the JSON is malformed (message names the image/annotation id).
    """
    data = _read_json(annotation_file)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"coco_json: image directory {image_dir!r} does not exist")
    cats = _parse_categories(data, annotation_file)
    contiguous = {cat_id: i for i, (cat_id, _) in enumerate(cats)}
    images = data.get("images")
    if not isinstance(images, list):
        raise ValueError(f"{annotation_file}: needs an 'images' list")
    order, paths, sizes = {}, [], []
    for img in images:
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ValueError(f"{annotation_file}: image entry {img!r} needs 'id' and 'file_name'")
        if img["id"] in order:
            raise ValueError(f"{annotation_file}: duplicate image id {img['id']!r}")
        path = os.path.join(image_dir, img["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{annotation_file}: image id {img['id']!r}: file "
                                    f"{img['file_name']!r} not found in {image_dir!r}")
        order[img["id"]] = len(paths)
        paths.append(path)
        sizes.append(_parse_size(img, annotation_file))
    per_image = [[] for _ in paths]
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{annotation_file}: 'annotations' must be a list")
    dropped = []
    for ann in annotations:
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        where = f"{annotation_file}: annotation {ann_id!r}"
        if not isinstance(ann, dict) or ann.get("image_id") not in order:
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            raise ValueError(f"{where}: image_id {image_id!r} is not in 'images'")
        where += f" (image {ann['image_id']!r})"
        if ann.get("category_id") not in contiguous:
            raise ValueError(f"{where}: unknown category_id {ann.get('category_id')!r}; "
                             f"categories are {sorted(contiguous)}")
        box = _parse_bbox(ann.get("bbox"), where)
        if box is None:
            dropped.append((ann_id, "zero size"))
            continue
        if _outside(box, sizes[order[ann["image_id"]]]):
            dropped.append((ann_id, "outside the image"))
            continue
        per_image[order[ann["image_id"]]].append(
            (box, contiguous[ann["category_id"]], bool(ann.get("iscrowd", 0)),
             ann.get("segmentation"), _parse_area(ann.get("area", box[2] * box[3]), where)))
    _log_dropped(annotation_file, dropped)
    boxes, classes, crowd, segs = [], [], [], []
    for anns in per_image:
        xywh = np.array([a[0] for a in anns], np.float32).reshape(-1, 4)
        boxes.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
        classes.append(np.array([a[1] for a in anns], np.int32))
        crowd.append(np.array([a[2] for a in anns], bool))
        segs.append([(a[3], a[1], a[2], a[4]) for a in anns])
    return CocoIndex(category_ids=tuple(c[0] for c in cats),
                     category_names=tuple(c[1] for c in cats),
                     image_ids=tuple(order), paths=tuple(paths), sizes=tuple(sizes),
                     boxes=tuple(boxes), classes=tuple(classes), crowd=tuple(crowd),
                     segmentations=tuple(segs), dropped_boxes=tuple(dropped))


def load(annotation_file: str, image_dir: str, *, keep_crowd: bool = False,
         with_masks: bool = False, fraction: float | None = None, shuffle: bool = False,
         seed: int | None = None,
         skip_counter: image_folder.SkipCounter | None = None) -> tf.data.Dataset:
    """Loads COCO-format data as canonical detection examples; see the module docstring.

    Args:
        annotation_file: the COCO JSON.
        image_dir: the folder that the images' `file_name`s are relative to.
        keep_crowd: keep crowd annotations as ordinary boxes.
        with_masks: also emit a semantic `mask`.
        fraction: keep the `subsets.in_fraction` subset of the images.
        shuffle: shuffle the image order (reshuffled each epoch).
        seed: the shuffle seed.
        skip_counter: records the image files skipped because they cannot be decoded; a
            new one if None (the skips are logged either way).

    Returns:
        A dataset of {'image', 'boxes', 'classes', 'source_id'} (+ 'mask').
    """
    index = read_index(annotation_file, image_dir)
    counter = skip_counter if skip_counter is not None else image_folder.SkipCounter()
    source_ids = [str(i) for i in index.image_ids]
    selected = np.arange(len(source_ids))
    if fraction is not None and fraction < 1.0 and source_ids:
        selected = selected[subsets.in_fraction(tf.constant(source_ids), fraction).numpy()]
    keep = [np.ones_like(c) if keep_crowd else ~c for c in index.crowd]
    counts = np.array([int(k.sum()) for k in keep], np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    all_boxes = tf.constant(np.concatenate(
        [b[k] for b, k in zip(index.boxes, keep)] + [np.zeros((0, 4), np.float32)]))
    all_classes = tf.constant(np.concatenate(
        [c[k] for c, k in zip(index.classes, keep)] + [np.zeros((0,), np.int32)]))

    def read(i):
        i = int(i)
        try:
            image = image_files.decode_image(index.paths[i])
        except Exception as err:  # pylint: disable=broad-except
            # Any decode failure (truncated, not an image, too large) means skip, as images:.
            counter.add(index.paths[i], f"image id {index.image_ids[i]!r}: "
                                        f"{type(err).__name__}: {err}")
            return np.zeros((1, 1, 3), np.uint8), np.zeros((0, 0, 1), np.uint8), False
        height, width = index.sizes[i]
        if height > 0 and width > 0 and image.shape[:2] != (height, width):
            raise ValueError(f"{annotation_file}: image id {index.image_ids[i]!r}: the JSON "
                             f"says {height}x{width} but {index.paths[i]!r} is "
                             f"{image.shape[0]}x{image.shape[1]}")
        if not with_masks:
            return image, np.zeros((0, 0, 1), np.uint8), True
        return image, _semantic_mask(index.segmentations[i], image.shape[:2], keep_crowd), True

    def decode(i, source_id, start, count):
        # stateful: the counter is a side effect tf.data must not optimize away.
        image, mask, ok = tf.numpy_function(read, [i], [tf.uint8, tf.uint8, tf.bool],
                                            stateful=True)
        image = tf.ensure_shape(image, [None, None, 3])
        height = tf.cast(tf.shape(image)[0], tf.float32)
        width = tf.cast(tf.shape(image)[1], tf.float32)
        boxes = all_boxes[start:start + count]
        boxes = tf.clip_by_value(boxes, 0.0, tf.stack([width, height, width, height]))
        # Boxes wholly outside the image clip to nothing; they would only add noise.
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        out = {ex.IMAGE: image,
               ex.BOXES: tf.reshape(tf.boolean_mask(boxes, valid), [-1, 4]),
               ex.CLASSES: tf.reshape(
                   tf.boolean_mask(all_classes[start:start + count], valid), [-1]),
               ex.SOURCE_ID: source_id}
        if with_masks:
            out[ex.MASK] = tf.ensure_shape(mask, [None, None, 1])
        return out, tf.reshape(ok, [])

    ds = tf.data.Dataset.from_tensor_slices((
        tf.constant(selected, tf.int64),
        tf.constant([source_ids[i] for i in selected], tf.string),
        tf.constant(starts[selected], tf.int64),
        tf.constant(counts[selected], tf.int64)))
    if shuffle:
        ds = ds.shuffle(max(1, len(selected)), seed=seed, reshuffle_each_iteration=True)
    return image_folder.keep_readable(ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE))


def _parse_size(img: dict, annotation_file: str) -> tuple[int, int]:
    """(height, width) of an image entry; (-1, -1) when the JSON does not give both."""
    size = []
    for key in ("height", "width"):
        value = img.get(key)
        if value is None or (not isinstance(value, bool) and value == 0):
            return -1, -1  # unknown (some exporters write 0): taken from the decoded image
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(
                value) or value < 0:
            raise ValueError(f"{annotation_file}: image id {img['id']!r}: bad {key} {value!r}: "
                             "must be a positive integer")
        size.append(int(value))
    return size[0], size[1]


def _parse_area(area, where: str) -> float:
    try:
        value = float(area)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad area {area!r}: must be a number") from err
    if not math.isfinite(value):
        raise ValueError(f"{where}: bad area {area!r}: must be finite")
    return value


def _outside(box, size) -> bool:
    """True when an [x, y, w, h] box lies wholly outside an image of known (height, width)."""
    height, width = size
    if height <= 0 or width <= 0:
        return False  # unknown size: clipped (and dropped if empty) when the image is read
    x, y, w, h = box
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


def _log_dropped(annotation_file: str, dropped) -> None:
    for reason in sorted({r for _, r in dropped}):
        ids = [i for i, r in dropped if r == reason]
        listed = ", ".join(repr(i) for i in ids[:MAX_LOGGED_IDS])
        logging.warning("%s: dropped %d boxes (%s): annotation ids %s%s", annotation_file,
                        len(ids), reason, listed, ", ..." if len(ids) > MAX_LOGGED_IDS else "")


def _read_json(annotation_file: str) -> dict:
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"coco_json: annotation file {annotation_file!r} does not exist")
    try:
        with open(annotation_file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{annotation_file}: not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{annotation_file}: expected a JSON object with 'images', "
                         "'annotations' and 'categories'")
    return data


def _parse_categories(data: dict, annotation_file: str) -> list[tuple[int, str]]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise ValueError(f"{annotation_file}: needs a non-empty 'categories' list")
    seen = {}
    for cat in cats:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise ValueError(f"{annotation_file}: category {cat!r} needs an integer 'id'")
        if cat["id"] in seen:
            raise ValueError(f"{annotation_file}: duplicate category id {cat['id']}")
        seen[cat["id"]] = str(cat.get("name", cat["id"]))
    return sorted(seen.items())


def _parse_bbox(bbox, where: str):
    """Returns [x, y, w, h] floats, None for a zero-size box; raises if malformed."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError(f"{where}: bad bbox {bbox!r}: expected [x, y, width, height]")
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: bad bbox {bbox!r}: values must be numbers") from err
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: bad bbox {bbox!r}: values must be finite")
    if values[2] < 0 or values[3] < 0:
        raise ValueError(f"{where}: bad bbox {bbox!r}: width and height must be >= 0")
    if values[2] == 0 or values[3] == 0:
        return None
    return values


def _semantic_mask(annotations, shape, keep_crowd: bool) -> np.ndarray:
    """Paints segmentations into a class-id mask: 0 bg, k+1 class k, 255 crowd."""
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), np.uint8)
    # Largest first, so smaller objects painted later stay visible.
    for seg, cls, is_crowd, _ in sorted(annotations, key=lambda a: -a[3]):
        if not seg:
            continue
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        pixels = mask_utils.decode(rle).astype(bool)
        if pixels.shape != mask.shape:
            continue
        mask[pixels] = ex.IGNORE_LABEL if (is_crowd and not keep_crowd) else cls + 1
    return mask[..., None]
