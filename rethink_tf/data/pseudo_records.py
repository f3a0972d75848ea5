"""The on-disk format of pseudo labels (sharded TFRecords of canonical examples + a manifest)
and its reader, the `pseudo:<dir>` source; `rethink_tf.pseudo.records` writes it.

A pseudo-label directory holds

    pseudo-XXXXX-of-YYYYY.tfrecord        the records of output shard XXXXX (complete shards only)
    pseudo-XXXXX-of-YYYYY.stats.json      that shard's counts (written just before the shard)
    settings.json                         how the labels were made (teacher, thresholds, ...)
    manifest.json                         settings + the counts merged over the finished shards

Each shard is written under a temporary name (`<name>.tmp-<host>-<pid>-<random>`) and renamed when
complete, so a name matching `pseudo-?????-of-?????.tfrecord` is always a whole shard. An image
belongs to shard `shard_of(source_id, YYYYY)` (FarmHash of its `source_id`, the same on every
machine), so the split of the data into shards depends on nothing but the ids.

One record (a `tf.train.Example`) per pseudo-labelled image:

    image/encoded      bytes    the original image: the source's stored bytes (default, TFDS
                                sources), else PNG (lossless), or JPEG on request
    image/format       bytes    b"png" | b"jpeg" (| b"gif" | b"bmp" when copied from a source)
    image/height       int64    original height
    image/width        int64    original width
    source_id          bytes    the unlabeled source's `source_id`
    task               bytes    b"detection" | b"segmentation" | b"classification"
  detection:
    boxes/xmin, boxes/ymin, boxes/xmax, boxes/ymax
                       float    [N] absolute pixels of the original image (xyxy)
    classes            int64    [N] class ids 0..C-1
    scores             float    [N] teacher scores (every one >= the score threshold)
  segmentation:
    mask/encoded       bytes    PNG uint8 [H, W, 1]: class ids, 255 = ignore (low confidence)
    mask/mean_confidence float  mean over pixels of the teacher's top softmax probability
    mask/kept_fraction float    fraction of pixels that are not 255
  classification (hard labels; noisy student's "ImageNet++" on a classification corpus):
    label              int64    the teacher's top class
    score              float    its softmax probability (>= the score threshold)
    probabilities      float    [C] the teacher's whole softmax (kept for soft-label students
                                and for inspection; `load_pseudo_labels` yields `label`)

`load_pseudo_labels` reads them back as canonical examples (`image`, `source_id`, and
`boxes`/`classes`, `mask` or `label`); scores are not canonical keys, so
`load_pseudo_records` is the reader that keeps them.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from typing import Iterable, Mapping

import tensorflow as tf

from rethink_tf.data import example as ex

FORMAT = "rethink_tf.pseudo/1"
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
DETECTION = "detection"
SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"
TASKS = (DETECTION, SEGMENTATION, CLASSIFICATION)
MAX_LISTED_SKIPS = 100  # skipped file paths kept in the manifest (all are counted)

_SHARD_RE = re.compile(r"^pseudo-(\d{5})-of-(\d{5})\.tfrecord$")


# ------------------------------------------------------------------------------------------
# Names.
# ------------------------------------------------------------------------------------------

def shard_name(index: int, num_shards: int) -> str:
    """`pseudo-XXXXX-of-YYYYY.tfrecord`."""
    return f"pseudo-{index:05d}-of-{num_shards:05d}.tfrecord"


def stats_name(index: int, num_shards: int) -> str:
    """The per-shard counts file written next to the shard."""
    return shard_name(index, num_shards)[:-len(".tfrecord")] + ".stats.json"


def shard_of(source_id, num_shards: int):
    """The output shard of each `source_id` (FarmHash Fingerprint64; machine independent).

    Args:
        source_id: a string tensor (any shape) or Python string(s).
        num_shards: the number of output shards.

    Returns:
        An int64 tensor of `source_id`'s shape, values in [0, num_shards).
    """
    return tf.strings.to_hash_bucket_fast(source_id, int(num_shards))


def list_shards(directory: str) -> dict[int, str]:
    """The complete shards in `directory`: {shard index: path}.

    Raises:
        ValueError: shards of different `-of-` counts are mixed in one directory.
    """
    found, totals = {}, set()
    for path in tf.io.gfile.glob(os.path.join(directory, "pseudo-*-of-*.tfrecord")):
        match = _SHARD_RE.match(os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
            totals.add(int(match.group(2)))
    if len(totals) > 1:
        raise ValueError(f"{directory!r} mixes shards of {sorted(totals)} output shards; it must "
                         "hold one labeling run")
    return dict(sorted(found.items()))


def read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------
# Manifest.
# ------------------------------------------------------------------------------------------

def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def empty_stats(num_classes: int) -> dict:
    """The counters of one shard (see `merge_stats`)."""
    return {"num_images": 0, "num_images_seen": 0, "num_dropped_empty": 0, "num_negatives": 0,
            "num_boxes": 0, "class_counts": [0] * int(num_classes), "num_pixels": 0,
            "num_pixels_kept": 0, "confidence_sum": 0.0, "skipped_files": {}}


def merge_stats(stats: Iterable[Mapping], num_classes: int) -> dict:
    """Sums shard counters; skipped files are a union (every pass sees every bad file)."""
    total = empty_stats(num_classes)
    for s in stats:
        for key in ("num_images", "num_images_seen", "num_dropped_empty", "num_negatives",
                    "num_boxes", "num_pixels", "num_pixels_kept", "confidence_sum"):
            total[key] += s.get(key, 0)
        total["class_counts"] = [a + b for a, b in zip(total["class_counts"],
                                                       s.get("class_counts", []))]
        total["skipped_files"].update(s.get("skipped_files", {}))
    return total


def build_manifest(settings: Mapping, shard_stats: Mapping[int, Mapping]) -> dict:
    """The manifest: `settings` plus the counts of the finished shards.

    Args:
        settings: what `labeler` writes to settings.json (task, num_classes, class_names,
            teacher, thresholds, num_output_shards, labeled_counts, ...).
        shard_stats: {shard index: that shard's stats} for the finished shards.

    Returns:
        The manifest dict (see the fields in `labeler.pseudo_label`).
    """
    task = settings["task"]
    num_classes = int(settings["num_classes"])
    names = list(settings.get("class_names") or [str(c) for c in range(num_classes)])
    total = merge_stats(shard_stats.values(), num_classes)
    n_out = int(settings["num_output_shards"])
    missing = [i for i in range(n_out) if i not in shard_stats]
    skipped = total.pop("skipped_files")
    manifest = {
        "format": FORMAT, **settings,
        "shards_complete": n_out - len(missing), "complete": not missing,
        "missing_shards": missing[:20],
        "num_images": total["num_images"], "num_images_seen": total["num_images_seen"],
        "num_dropped_empty": total["num_dropped_empty"],
        "skipped_unreadable": len(skipped),
        "skipped_files": dict(sorted(skipped.items())[:MAX_LISTED_SKIPS]),
        "updated": now(),
    }
    labeled = settings.get("labeled_counts")
    counts = total["class_counts"]
    if task == DETECTION:
        manifest.update(num_boxes=total["num_boxes"], num_negatives=total["num_negatives"],
                        boxes_per_image=total["num_boxes"] / max(total["num_images"], 1))
        unit = "boxes"
    elif task == CLASSIFICATION:
        # An image below the score threshold is dropped (counted in num_dropped_empty).
        manifest.update(mean_confidence=total["confidence_sum"] / max(total["num_images"], 1))
        unit = "images"
    else:
        manifest.update(num_pixels=total["num_pixels"], num_pixels_kept=total["num_pixels_kept"],
                        kept_fraction=total["num_pixels_kept"] / max(total["num_pixels"], 1),
                        mean_confidence=total["confidence_sum"] / max(total["num_images_seen"],
                                                                      1))
        unit = "pixels"
    per_class = {}
    pseudo_total, labeled_total = max(sum(counts), 1), max(sum(labeled or []), 1)
    for c, name in enumerate(names):
        row = {f"pseudo_{unit}": counts[c], "pseudo_fraction": counts[c] / pseudo_total}
        if labeled:
            row.update({f"labeled_{unit}": labeled[c], "labeled_fraction": labeled[c] / labeled_total})
        per_class[name] = row
    manifest["per_class"] = per_class
    return manifest


def finished_stats(directory, settings):
    """{shard index: stats} of the finished shards of a pseudo-label directory."""
    n_out = int(settings["num_output_shards"])
    stats = {}
    for index in list_shards(directory):
        if index >= n_out:
            raise ValueError(f"{directory!r}: shard {index} is outside the {n_out} output shards "
                             "of its settings.json")
        path = os.path.join(directory, stats_name(index, n_out))
        if not tf.io.gfile.exists(path):
            raise ValueError(f"{directory!r}: shard {index} has no {os.path.basename(path)}; "
                             "was it written by another tool?")
        stats[index] = read_json(path)
    return stats


def read_manifest(directory: str) -> dict:
    """The manifest of a pseudo-label directory, current with the shards present.

    When `manifest.json` is missing or older than the shards (another machine finished a shard
    after it was written), the counts are merged again in memory; nothing is written.

    Raises:
        FileNotFoundError: `directory` is not a pseudo-label directory.
    """
    path = os.path.join(directory, MANIFEST)
    if tf.io.gfile.exists(path):
        manifest = read_json(path)
        if manifest.get("complete") or manifest.get("shards_complete") == len(
                list_shards(directory)):
            return manifest
    if not tf.io.gfile.exists(os.path.join(directory, SETTINGS)):
        raise FileNotFoundError(f"{directory!r} holds no pseudo labels (no {MANIFEST} or "
                                f"{SETTINGS}); make them with `python -m rethink_tf.pseudo_label`")
    settings = read_json(os.path.join(directory, SETTINGS))
    return build_manifest(settings, finished_stats(directory, settings))


# ------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------

def _parse_fn(task, where):
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "source_id": tf.io.FixedLenFeature([], tf.string),
        "task": tf.io.FixedLenFeature([], tf.string),
    }
    if task == DETECTION:
        for key in ("boxes/xmin", "boxes/ymin", "boxes/xmax", "boxes/ymax", "scores"):
            features[key] = tf.io.FixedLenSequenceFeature([], tf.float32, allow_missing=True)
        features["classes"] = tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)
    elif task == CLASSIFICATION:
        features["label"] = tf.io.FixedLenFeature([], tf.int64)
        features["score"] = tf.io.FixedLenFeature([], tf.float32)
        features["probabilities"] = tf.io.FixedLenSequenceFeature([], tf.float32,
                                                                  allow_missing=True)
    else:
        features["mask/encoded"] = tf.io.FixedLenFeature([], tf.string)
        features["mask/mean_confidence"] = tf.io.FixedLenFeature([], tf.float32)
        features["mask/kept_fraction"] = tf.io.FixedLenFeature([], tf.float32)

    def parse(serialized):
        raw = tf.io.parse_single_example(serialized, features)
        tf.debugging.assert_equal(raw["task"], tf.constant(task),
                                  message=f"a record is not a {task} pseudo label")
        image = tf.io.decode_image(raw["image/encoded"], channels=3, expand_animations=False)
        out = {ex.IMAGE: tf.ensure_shape(image, [None, None, 3]),
               ex.SOURCE_ID: raw["source_id"]}
        if task == DETECTION:
            boxes = tf.reshape(tf.stack([raw["boxes/xmin"], raw["boxes/ymin"],
                                         raw["boxes/xmax"], raw["boxes/ymax"]], -1), [-1, 4])
            out[ex.BOXES] = ex.check_finite_boxes(boxes, raw["source_id"], where)
            out[ex.CLASSES] = tf.cast(raw["classes"], tf.int32)
            out["scores"] = raw["scores"]
        elif task == CLASSIFICATION:
            out[ex.LABEL] = tf.cast(raw["label"], tf.int32)
            out["score"] = raw["score"]
            out["probabilities"] = raw["probabilities"]
        else:
            mask = tf.io.decode_png(raw["mask/encoded"], channels=1)
            out[ex.MASK] = tf.ensure_shape(mask, [None, None, 1])
            out["mean_confidence"] = raw["mask/mean_confidence"]
            out["kept_fraction"] = raw["mask/kept_fraction"]
        return out

    return parse


def load_pseudo_records(directory: str, task: str | None = None, *, shuffle_files=False,
                        seed=None, allow_incomplete=False) -> tf.data.Dataset:
    """Reads pseudo labels with their teacher scores (not canonical: extra keys).

    Args:
        directory: a pseudo-label directory.
        task: the expected task; None = the manifest's. A mismatch raises ValueError.
        shuffle_files: interleave the shards in a seeded random order.
        seed: the shard-order seed.
        allow_incomplete: read the finished shards of an unfinished run instead of failing.

    Returns:
        A dataset of canonical examples plus `scores` float32 [N] (detection),
        `mean_confidence` and `kept_fraction` float32 [] (segmentation), or `score` float32 []
        and `probabilities` float32 [C] (classification).

    Raises:
        FileNotFoundError: no pseudo labels in `directory`.
        ValueError: wrong task, or missing shards (unless `allow_incomplete`).
    """
    manifest = read_manifest(directory)
    made_for = manifest["task"]
    if task is not None and task != made_for:
        raise ValueError(f"{directory!r} holds {made_for} pseudo labels, not {task}")
    shards = list_shards(directory)
    missing = [i for i in range(int(manifest["num_output_shards"])) if i not in shards]
    if missing and not allow_incomplete:
        raise ValueError(f"{directory!r} is incomplete: {len(missing)} of "
                         f"{manifest['num_output_shards']} shards missing (e.g. {missing[:5]}); "
                         "re-run the same pseudo_label command to finish it")
    files = list(shards.values())
    if not files:
        raise ValueError(f"{directory!r} has no finished shard yet")
    names = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))
    if shuffle_files:
        names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        records = names.interleave(tf.data.TFRecordDataset, cycle_length=min(4, len(files)),
                                   num_parallel_calls=tf.data.AUTOTUNE)
    else:
        records = tf.data.TFRecordDataset(files)
    return records.map(_parse_fn(made_for, f"pseudo labels {directory}"),
                       num_parallel_calls=tf.data.AUTOTUNE)


def load_pseudo_labels(directory: str, task: str | None = None, **kwargs) -> tf.data.Dataset:
    """Reads pseudo labels as canonical examples (`rethink_tf.data.sources` `pseudo:<dir>`).

    Args:
        directory: a pseudo-label directory.
        task: the expected task ('detection', 'segmentation' or 'classification'); None =
            the manifest's.
        **kwargs: `shuffle_files`, `seed`, `allow_incomplete` (see `load_pseudo_records`).

    Returns:
        A dataset of {'image', 'source_id', 'boxes', 'classes'}, {'image', 'source_id',
        'mask'} (255 = ignore) or {'image', 'source_id', 'label'}; it passes
        `example.check_example_spec`.
    """
    extras = ("scores", "mean_confidence", "kept_fraction", "score", "probabilities")
    ds = load_pseudo_records(directory, task, **kwargs).map(
        lambda e: {k: v for k, v in e.items() if k not in extras})
    ex.check_example_spec(ds.element_spec, f"pseudo:{directory}")
    return ds


def existing_settings(directory: str):
    """settings.json of `directory`, or None."""
    path = os.path.join(directory, SETTINGS)
    return read_json(path) if tf.io.gfile.exists(path) else None

