"""COCO annotation JSONs to evaluate against: the user's own, or one written from TFDS COCO.

COCO AP must be computed against the dataset's annotations as they are (crowd regions,
annotation areas, every box), not against boxes rebuilt from resized and padded training
batches. `annotation_file_for(name, split)` gives that file for:

- `coco_json:<annotations.json>:<image_dir>`: the user's JSON itself, so our numbers are the
  ones pycocotools gives on it. Only if an annotation lacks a field pycocotools needs
  (`id`, `area`, `iscrowd`) is a completed copy written (area = box area, iscrowd = 0).
- a TFDS COCO dataset (`coco/2017`, ...): a JSON written once from the TFDS split, with each
  image's `image/id`, size and file name and each object's box (normalized yxyx -> pixel
  xywh), `area` and `is_crowd`; category ids are the official ones (`sources.info(name)`).
  It is cached under the prepared dataset's directory (or `cache_dir`) and written
  atomically. TFDS stores `area` as an integer and boxes as normalized float32, so this file
  is within a pixel fraction of the official one; pass the official JSON for paper numbers.

Every image entry also carries `source_id` (= `str(id)`), the id the canonical examples use.
Other sources return None: their ground truth comes from the canonical examples.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re

import numpy as np

from rethink_tf.data import atomic
from rethink_tf.data import sources

_CACHE_SUBDIR = "rethink_tf_annotations"
_REQUIRED_ANNOTATION_FIELDS = ("id", "area", "iscrowd", "bbox")


def annotation_file_for(name: str, split: str, *, data_dir: str | None = None,
                        cache_dir: str | None = None) -> str | None:
    """The COCO annotation JSON to evaluate `name`/`split` against, or None.

    Args:
        name: a source name as for `sources.load`.
        split: the split (TFDS slicing such as `validation[:100]` is allowed).
        data_dir: the TFDS data dir (TFDS names only).
        cache_dir: where a written JSON is cached; default: next to the prepared TFDS data
            (falling back to `~/.cache/rethink_tf/annotations` if that is not writable).

    Returns:
        A local JSON path for a `coco_json:` source or a TFDS COCO dataset; None otherwise.
    """
    if name.startswith(sources.COCO_JSON_PREFIX):
        annotation_file, _ = sources.parse_coco_json_name(name)
        return _complete_user_json(annotation_file, cache_dir)
    if name.startswith((sources.IMAGES_PREFIX, sources.PSEUDO_PREFIX)):
        return None
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.name != "coco":
        return None
    features = builder.info.features
    if "objects" not in features or not {"bbox", "label", "is_crowd", "area"} <= set(
            features["objects"].keys()):
        return None
    builder.download_and_prepare()
    filename = f"{_safe(builder.info.full_name)}_{_safe(split)}.json"
    for directory in _cache_dirs(cache_dir, builder.data_dir):
        path = os.path.join(directory, filename)
        if os.path.isfile(path):
            return path
        try:
            return write_tfds_coco_annotations(name, split, path, data_dir=data_dir)
        except OSError as err:
            logging.warning("cannot write %s (%s); trying the next cache directory", path, err)
    raise OSError(f"no writable directory for the annotation JSON of {name!r} {split!r}; "
                  "pass cache_dir")


def write_tfds_coco_annotations(name: str, split: str, path: str, *,
                                data_dir: str | None = None) -> str:
    """Writes a TFDS COCO split as a COCO annotation JSON at `path` (atomically).

    Args:
        name: a TFDS COCO name (`coco/2017`, `coco/2014`).
        split: the split.
        path: the JSON to write.
        data_dir: the TFDS data dir.

    Returns:
        `path`.

    Raises:
        ValueError: two examples share an `image/id`.
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    info = sources.info(name, data_dir=data_dir)
    category_ids = info.category_ids or tuple(
        range(1, info.num_classes[sources.DETECTION] + 1))
    names = info.class_names[sources.DETECTION]
    builder = tfds.builder(name, data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False)

    def summarize(raw):
        # Only the image's size is needed; dropping the pixels here keeps memory flat.
        objects = raw["objects"]
        out = {"size": tf.shape(raw["image"])[:2], "id": raw["image/id"],
               "bbox": objects["bbox"], "label": objects["label"],
               "is_crowd": objects["is_crowd"], "area": objects["area"]}
        if "image/filename" in raw:
            out["file_name"] = raw["image/filename"]
        return out

    images, annotations, seen = [], [], set()
    for item in tfds.as_numpy(ds.map(summarize, num_parallel_calls=tf.data.AUTOTUNE)):
        image_id = int(item["id"])
        if image_id in seen:
            raise ValueError(f"{name} {split}: image/id {image_id} occurs twice")
        seen.add(image_id)
        height, width = (int(v) for v in item["size"])
        entry = {"id": image_id, "height": height, "width": width,
                 "source_id": str(image_id)}
        if "file_name" in item:
            entry["file_name"] = item["file_name"].decode()
        images.append(entry)
        bbox = np.asarray(item["bbox"], np.float64).reshape(-1, 4)
        # Mocked TFDS data gives each sequence field its own length; real data never does.
        n = min(len(bbox), len(item["label"]), len(item["is_crowd"]), len(item["area"]))
        for k in range(n):
            ymin, xmin, ymax, xmax = bbox[k]
            x1, x2 = min(xmin, xmax) * width, max(xmin, xmax) * width
            y1, y2 = min(ymin, ymax) * height, max(ymin, ymax) * height
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": int(category_ids[int(item["label"][k])]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(item["area"][k]),
                "iscrowd": int(bool(item["is_crowd"][k]))})
    data = {"info": {"description": f"{name} {split}, written by rethink_tf from TFDS"},
            "images": images, "annotations": annotations,
            "categories": [{"id": int(c), "name": str(n)} for c, n in zip(category_ids, names)]}
    atomic.write_json(path, data, "COCO annotation file")
    return path


def _complete_user_json(annotation_file: str, cache_dir: str | None) -> str:
    """The user's JSON if pycocotools can use it as is, else a completed copy."""
    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"coco_json: annotation file {annotation_file!r} does not exist")
    with open(annotation_file, encoding="utf-8") as f:
        data = json.load(f)
    annotations = data.get("annotations", [])
    ids = [a.get("id") for a in annotations]
    complete = all(all(k in a for k in _REQUIRED_ANNOTATION_FIELDS) for a in annotations) and (
        len(set(ids)) == len(ids))
    if complete:
        return annotation_file
    for k, ann in enumerate(annotations):
        _, _, w, h = (float(v) for v in ann["bbox"])
        ann.setdefault("area", w * h)
        ann.setdefault("iscrowd", 0)
        ann["id"] = k + 1  # pycocotools indexes annotations by id: they must be unique
    stat = os.stat(annotation_file)
    key = hashlib.sha1(f"{os.path.abspath(annotation_file)}|{stat.st_mtime_ns}|"
                       f"{stat.st_size}".encode()).hexdigest()[:16]
    filename = f"completed_{_safe(os.path.basename(annotation_file))}_{key}.json"
    for directory in _cache_dirs(cache_dir, None):
        path = os.path.join(directory, filename)
        try:
            if not os.path.isfile(path):
                logging.warning("%s: annotations lack id/area/iscrowd; evaluating against a "
                                "completed copy %s (area = box area, iscrowd = 0)",
                                annotation_file, path)
                atomic.write_json(path, data, "COCO annotation file")
            return path
        except OSError as err:
            logging.warning("cannot write %s (%s)", path, err)
    raise OSError(f"no writable directory for a completed copy of {annotation_file!r}")


def _cache_dirs(cache_dir, dataset_dir):
    if cache_dir:
        return [cache_dir]
    dirs = []
    if dataset_dir and "://" not in str(dataset_dir):
        dirs.append(os.path.join(str(dataset_dir), _CACHE_SUBDIR))
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "rethink_tf", "annotations"))
    return dirs


def _safe(text: str) -> str:
    # Split strings like 'validation[:10%]' become file names; the hash keeps them distinct.
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', text)}-{digest}"

