"""Writes pseudo labels: sharded TFRecords of canonical examples + a manifest.

The format (file names, record features, manifest) and its reader are data:
`rethink_tf.data.pseudo_records` (the `pseudo:<dir>` source). This module is the writer the
labeler uses; the format's names are re-exported here for its callers.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf

from rethink_tf.data import example as ex
from rethink_tf.data.pseudo_records import CLASSIFICATION
from rethink_tf.data.pseudo_records import DETECTION
from rethink_tf.data.pseudo_records import FORMAT  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import MANIFEST
from rethink_tf.data.pseudo_records import MAX_LISTED_SKIPS  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import SEGMENTATION
from rethink_tf.data.pseudo_records import SETTINGS
from rethink_tf.data.pseudo_records import TASKS  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import build_manifest
from rethink_tf.data.pseudo_records import empty_stats  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import existing_settings  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import finished_stats
from rethink_tf.data.pseudo_records import list_shards  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import load_pseudo_labels  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import load_pseudo_records  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import merge_stats  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import now  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import read_json
from rethink_tf.data.pseudo_records import read_manifest  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import shard_name  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import shard_of  # noqa: F401 (API)
from rethink_tf.data.pseudo_records import stats_name  # noqa: F401 (API)

# How records store images: "source" copies the source's own encoded bytes where it supplies
# them (TFDS sources; no re-encoding, the exact stored file) and PNG elsewhere; "png"
# re-encodes losslessly, "jpeg" lossily (quality 95).
IMAGE_FORMATS = ("source", "png", "jpeg")
# zlib level 1: 6x faster than TF's default level on 128 px photos, files ~3% larger (measured
# in experiments/bench/PSEUDO.md); encoding is on the labeling critical path.
PNG_COMPRESSION = 1


# ------------------------------------------------------------------------------------------
# Encoding.
# ------------------------------------------------------------------------------------------

def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(
        value=np.asarray(values, np.float32).ravel().tolist()))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(
        value=np.asarray(values, np.int64).ravel().tolist()))


def _as_bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def encode_image(image: np.ndarray, image_format: str = "png") -> bytes:
    """Encodes uint8 [H, W, 3] (PNG is lossless, so records keep the exact pixels)."""
    if image_format == "png":
        return tf.io.encode_png(image, compression=PNG_COMPRESSION).numpy()
    if image_format == "jpeg":
        return tf.io.encode_jpeg(image, quality=95).numpy()
    raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")


def serialize_detection(encoded_image: bytes, source_id, height: int, width: int,
                        boxes, classes, scores, image_format: str = "png") -> bytes:
    """Serializes one detection pseudo label.

    Args:
        encoded_image: the image's encoded bytes (a format `tf.io.decode_image` reads).
        source_id: the image's `source_id` (str or bytes).
        height: original image height.
        width: original image width.
        boxes: float [N, 4] absolute xyxy pixels.
        classes: int [N].
        scores: float [N] teacher scores.
        image_format: what `encoded_image` is: "png", "jpeg", "gif" or "bmp".

    Returns:
        A serialized `tf.train.Example`.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.asarray(classes, np.int64).reshape(-1)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if not len(boxes) == len(classes) == len(scores):
        raise ValueError(f"{len(boxes)} boxes, {len(classes)} classes and {len(scores)} scores "
                         f"for {source_id!r}")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"pseudo label for {source_id!r}: non-finite box coordinates or scores "
                         "(NaN or inf; a diverged teacher?): boxes "
                         f"{boxes[~np.isfinite(boxes).all(-1)].tolist()[:5]}")
    feature = _common(encoded_image, source_id, height, width, DETECTION, image_format)
    feature.update({
        "boxes/xmin": _floats(boxes[:, 0]), "boxes/ymin": _floats(boxes[:, 1]),
        "boxes/xmax": _floats(boxes[:, 2]), "boxes/ymax": _floats(boxes[:, 3]),
        "classes": _ints(classes), "scores": _floats(scores),
    })
    return _serialize(feature)


def serialize_segmentation(encoded_image: bytes, source_id, height: int, width: int,
                           mask, mean_confidence: float, image_format: str = "png") -> bytes:
    """Serializes one segmentation pseudo label.

    Args:
        encoded_image: the image's encoded bytes (a format `tf.io.decode_image` reads).
        source_id: the image's `source_id`.
        height: original image height.
        width: original image width.
        mask: uint8 [H, W] or [H, W, 1] class ids, 255 = ignore.
        mean_confidence: mean top softmax probability over the image's pixels.
        image_format: what `encoded_image` is: "png", "jpeg", "gif" or "bmp".

    Returns:
        A serialized `tf.train.Example`.
    """
    mask = np.asarray(mask, np.uint8)
    if mask.ndim == 2:
        mask = mask[..., None]
    if mask.shape != (height, width, 1):
        raise ValueError(f"mask {mask.shape} does not match image ({height}, {width}) "
                         f"for {source_id!r}")
    kept = float(np.mean(mask != ex.IGNORE_LABEL))
    feature = _common(encoded_image, source_id, height, width, SEGMENTATION, image_format)
    feature.update({
        "mask/encoded": _bytes([tf.io.encode_png(mask, compression=PNG_COMPRESSION).numpy()]),
        "mask/mean_confidence": _floats([mean_confidence]),
        "mask/kept_fraction": _floats([kept]),
    })
    return _serialize(feature)


def serialize_classification(encoded_image: bytes, source_id, height: int, width: int,
                             probabilities, image_format: str = "png") -> bytes:
    """Serializes one classification pseudo label: the top class of `probabilities` (a hard
    label), its probability, and the whole softmax.

    Args:
        encoded_image: the image's encoded bytes (a format `tf.io.decode_image` reads).
        source_id: the image's `source_id`.
        height: original image height.
        width: original image width.
        probabilities: float [C], the teacher's softmax.
        image_format: what `encoded_image` is: "png", "jpeg", "gif" or "bmp".

    Returns:
        A serialized `tf.train.Example`.
    """
    probabilities = np.asarray(probabilities, np.float32).reshape(-1)
    if not len(probabilities):
        raise ValueError(f"no class probabilities for {source_id!r}")
    label = int(np.argmax(probabilities))
    feature = _common(encoded_image, source_id, height, width, CLASSIFICATION, image_format)
    feature.update({"label": _ints([label]), "score": _floats([probabilities[label]]),
                    "probabilities": _floats(probabilities)})
    return _serialize(feature)


def _serialize(feature):
    # deterministic=True: the feature map's order is otherwise random per process (upb), and
    # a resumed run, another machine or a Beam worker must write the same bytes.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def _common(encoded_image, source_id, height, width, task, image_format):
    if image_format not in ex.ENCODED_MAGIC:
        raise ValueError(f"image_format must be one of {tuple(ex.ENCODED_MAGIC)}, "
                         f"got {image_format!r}")
    return {
        "image/encoded": _bytes([encoded_image]),
        "image/format": _bytes([image_format.encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "source_id": _bytes([_as_bytes(source_id)]),
        "task": _bytes([task.encode()]),
    }


# ------------------------------------------------------------------------------------------
# Writing.
# ------------------------------------------------------------------------------------------

def temporary_path(path: str) -> str:
    """Where `path` is written before the rename that publishes it (unique per writer)."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_json(path: str, value) -> None:
    """Writes JSON under a temporary name, then renames it (readers never see half a file)."""
    tmp = temporary_path(path)
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True, default=_json_default))
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {value!r}")


def write_shard(path: str, records: Iterable[bytes], stats: Mapping | None = None) -> int:
    """Writes serialized records as one shard: to a temporary name, renamed when complete.

    Stale temporary files of the same shard (from a killed run) are removed first. If `stats`
    is given it is written to the shard's `.stats.json` just before the shard is renamed, so
    a published shard always has its counts.

    Args:
        path: the final shard path (`.../pseudo-XXXXX-of-YYYYY.tfrecord`).
        records: serialized `tf.train.Example`s, consumed lazily (memory stays flat).
        stats: the shard's counts; may be a dict the caller keeps filling while `records`
            is consumed (it is read after the last record).

    Returns:
        The number of records written.
    """
    for stale in tf.io.gfile.glob(path + ".tmp-*"):
        tf.io.gfile.remove(stale)
    tmp = temporary_path(path)
    count = 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
            writer.write(record)
            count += 1
    if stats is not None:
        write_json(path[:-len(".tfrecord")] + ".stats.json", dict(stats))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return count


def write_manifest(directory: str) -> dict:
    """Merges settings.json and the finished shards' stats into manifest.json; returns it.

    Machines finishing their shards of one directory at the same moment each write the
    manifest from the shards they see; each then looks again and rewrites it if more shards
    finished meanwhile, so the last manifest written counts every finished shard (a manifest
    written from fewer is always followed by one from all).
    """
    settings = read_json(os.path.join(directory, SETTINGS))
    stats = finished_stats(directory, settings)
    while True:
        manifest = build_manifest(settings, stats)
        write_json(os.path.join(directory, MANIFEST), manifest)
        now = finished_stats(directory, settings)
        if now == stats:
            return manifest
        stats = now
