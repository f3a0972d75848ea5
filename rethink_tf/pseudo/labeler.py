"""Pseudo-labeling: the teacher labels an unlabeled source into sharded TFRecords.

    from rethink_tf.pseudo import labeler
    manifest = labeler.pseudo_label("/runs/teacher", "digit_scenes/detection", "/runs/pseudo",
                                    split="unlabeled", score_threshold=0.5)

Detection: boxes after NMS with score >= `score_threshold` become hard labels (with their scores
kept in the record); an image with none is kept as a negative unless `drop_empty`.
Segmentation: the per-pixel argmax where the top probability is >= `pixel_threshold`, 255
(ignore) elsewhere; an image with no pixel kept is dropped only with `drop_empty`.
Classification (noisy student on a classification corpus, "ImageNet++"): the teacher's top
class is a hard label when its softmax probability is >= `score_threshold` (the record keeps
the whole softmax); an image below it is dropped (counted in `num_dropped_empty`).

Faults and scale:
- An image goes to output shard `records.shard_of(source_id, num_output_shards)`; machine
  `shard_index` of `num_shards` owns the output shards j with j % num_shards == shard_index.
- Each shard is written under a temporary name and renamed when complete; a re-run skips the
  shards that exist, so a killed run re-run gives exactly one record per readable image, the
  same records as an uninterrupted run (a shard's records depend only on its images, in
  source order, and the teacher).
- The unlabeled source is streamed (nothing is materialised). One pass over it writes
  `shards_per_pass` shards at once (default: all of this machine's unfinished shards, so each
  image is read and decoded once); a smaller number finishes shards earlier, so less work is
  lost to a kill, at the price of reading the source once per pass. Images of other shards
  are read but not run through the model.
- The hidden ground truth of a source (digit_scenes `unlabeled`) is never read: only `image`
  and `source_id` enter the labeling stream.

The manifest (`manifest.json`, see `records.build_manifest`) holds: format, task,
num_classes, class_names, teacher (kind, path, checkpoint, step), unlabeled (source, split),
score_threshold or pixel_threshold, nms_iou_threshold, max_detections, flip_tta, drop_empty,
num_output_shards, image_format, created, labeled_counts (the teacher's labelled set, per class),
shards_complete, complete, missing_shards, num_images (records), num_images_seen,
num_dropped_empty, skipped_unreadable, skipped_files, and num_boxes, num_negatives,
boxes_per_image (detection), num_pixels, num_pixels_kept, kept_fraction, mean_confidence
(segmentation) or mean_confidence of the kept labels (classification),
per_class {name: pseudo count and fraction next to the labelled set's}, updated.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from absl import logging

from rethink_tf.data import example as ex
from rethink_tf.pseudo import records
from rethink_tf.pseudo import teacher as teacher_lib

DEFAULT_MIN_OUTPUT_SHARDS = 8
# Settings that must match for a re-run (or another machine) to add shards to a directory.
_MUST_MATCH = ("format", "task", "num_classes", "unlabeled", "score_threshold",
               "pixel_threshold", "nms_iou_threshold", "max_detections", "flip_tta",
               "drop_empty", "num_output_shards", "image_format")


def default_num_output_shards(num_shards: int) -> int:
    """max(8, num_shards): a function of `num_shards` only, so every machine agrees."""
    return max(DEFAULT_MIN_OUTPUT_SHARDS, int(num_shards))


def check_arguments(*, score_threshold=0.5, pixel_threshold=0.5, num_shards=1, shard_index=None,
                    num_output_shards=None, batch_size=32, image_format="source",
                    shards_per_pass=None):
    """Raises ValueError naming the bad argument (run before any work)."""
    for name, value in (("score_threshold", score_threshold),
                        ("pixel_threshold", pixel_threshold)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if int(num_shards) < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if shard_index is not None and not 0 <= int(shard_index) < int(num_shards):
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got {shard_index}")
    if num_output_shards is not None and not 1 <= int(num_output_shards) <= 99999:
        raise ValueError(f"num_output_shards must be in [1, 99999], got {num_output_shards}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image_format not in records.IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {records.IMAGE_FORMATS}, "
                         f"got {image_format!r}")
    if shards_per_pass is not None and int(shards_per_pass) < 1:
        raise ValueError(f"shards_per_pass must be >= 1, got {shards_per_pass}")


def default_split(name: str) -> str:
    """'all' for `images:`, `coco_json:` and `pseudo:` sources, else 'unlabeled'."""
    return "all" if name.split(":", 1)[0] in ("images", "coco_json", "pseudo") else "unlabeled"


def load_unlabeled(name: str, split: str | None = None, *, data_dir=None, skip_counter=None):
    """A source's images and ids only (labels, e.g. hidden ground truth, are dropped).

    TFDS sources also keep `image/encoded`, the stored bytes, for `image_format="source"`.
    """
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    split = split or default_split(name)
    # TFDS caches a split under 250 MiB in memory while it is read (autocache); a stream
    # read once must not, or memory grows with the data (experiments/bench/PSEUDO.md).
    read_config = tfds.ReadConfig(try_autocache=False)
    ds = sources.load(name, split, data_dir=data_dir, skip_counter=skip_counter,
                      read_config=read_config, keep_encoded=True, images_only=True)
    return ds



def labeled_class_counts(config, num_classes: int):
    """Per-class boxes (detection), mask pixels (segmentation) or images (classification) of a
    config's training set.

    Args:
        config: the teacher's training config.
        num_classes: classes of the task.

    Returns:
        A list of `num_classes` ints.
    """
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    ds = sources.load(config.dataset.name, config.dataset.train_split,
                      data_dir=config.dataset.data_dir or None,
                      fraction=config.dataset.fraction if config.dataset.fraction < 1.0 else None)
    key = {"detection": ex.CLASSES, "classification": ex.LABEL}.get(config.task, ex.MASK)
    counts = np.zeros(num_classes + 1, np.int64)
    for values in ds.map(lambda e: tf.reshape(tf.cast(e[key], tf.int32), [-1])).map(
            lambda v: tf.math.bincount(v, minlength=num_classes + 1, maxlength=num_classes + 1)):
        counts += values.numpy()
    return counts[:num_classes].tolist()  # the extra bin caught 255 (ignore)


def _settings(teacher, unlabeled_desc, *, score_threshold, pixel_threshold, flip_tta,
              drop_empty, num_output_shards, image_format):
    det = teacher.task == teacher_lib.DETECTION
    scored = det or teacher.task == teacher_lib.CLASSIFICATION
    return {
        "format": records.FORMAT, "task": teacher.task, "num_classes": teacher.num_classes,
        "class_names": list(teacher.class_names), "teacher": teacher.identity,
        "unlabeled": unlabeled_desc,
        "score_threshold": float(score_threshold) if scored else None,
        "pixel_threshold": None if scored else float(pixel_threshold),
        "nms_iou_threshold": teacher.nms_iou_threshold if det else None,
        "max_detections": teacher.max_detections if det else None,
        "flip_tta": bool(flip_tta), "drop_empty": bool(drop_empty),
        "num_output_shards": int(num_output_shards), "image_format": image_format,
        "created": records.now(),
    }


def _teacher_key(identity):
    checkpoint = identity.get("checkpoint")
    return (identity.get("kind"), identity.get("step"),
            os.path.basename(checkpoint) if checkpoint else None)


def _check_same_settings(existing, new, output_dir):
    diffs = [k for k in _MUST_MATCH if existing.get(k) != new.get(k)]
    if _teacher_key(existing.get("teacher", {})) != _teacher_key(new["teacher"]):
        diffs.append("teacher")
    if diffs:
        detail = ", ".join(f"{k}: {existing.get(k)!r} there vs {new.get(k)!r} now" for k in diffs)
        raise ValueError(f"--output={output_dir!r} holds pseudo labels made with other settings "
                         f"({detail}); use a new output directory or delete it")


class _ShardSink:
    """The records, counts and temporary file of one output shard being written."""

    def __init__(self, output_dir, index, num_output_shards, num_classes):
        self.path = os.path.join(output_dir, records.shard_name(index, num_output_shards))
        self.stats = records.empty_stats(num_classes)
        self.stats["shard"] = index
        for stale in tf.io.gfile.glob(self.path + ".tmp-*"):
            tf.io.gfile.remove(stale)
        self.tmp = records.temporary_path(self.path)
        self.writer = tf.io.TFRecordWriter(self.tmp)

    def finish(self, skipped):
        self.writer.close()
        self.stats["skipped_files"] = dict(skipped)
        records.write_json(self.path[:-len(".tfrecord")] + ".stats.json", self.stats)
        tf.io.gfile.rename(self.tmp, self.path, overwrite=True)

    def abandon(self):
        self.writer.close()
        if tf.io.gfile.exists(self.tmp):
            tf.io.gfile.remove(self.tmp)


def _encode_fn(image_format, num_output_shards):
    """The record's image bytes and output shard of an example (inside tf.data)."""
    def encode(example):
        image = example[ex.IMAGE]
        if image_format == "source" and ex.ENCODED in example:
            data = example[ex.ENCODED]  # the source's own bytes: no re-encoding
        elif image_format == "jpeg":
            data = tf.io.encode_jpeg(image, quality=95)
        else:
            data = tf.io.encode_png(image, compression=records.PNG_COMPRESSION)
        return {"encoded": data,
                "shard": records.shard_of(example[ex.SOURCE_ID], num_output_shards)}
    return encode


def _record_format(encoded, image_format, source_id):
    """The encoding of a record's image bytes (sniffed for `image_format="source"`)."""
    if image_format != "source":
        return image_format
    found = ex.encoded_format(encoded)
    if found is None:
        raise ValueError(f"image {source_id!r}: the source's bytes are not PNG, JPEG, GIF or "
                         f"BMP (they start {bytes(encoded[:8])!r}); use image_format='png'")
    return found


def _record(fields, prediction, task, stats, *, score_threshold, pixel_threshold, drop_empty,
            image_format):
    """One image's record (or None when dropped); updates `stats`."""
    stats["num_images_seen"] += 1
    height, width = (int(s) for s in fields["size"])
    source_id = fields[ex.SOURCE_ID]
    if task == teacher_lib.DETECTION:
        keep = prediction["scores"] >= score_threshold
        boxes, classes = prediction["boxes"][keep], prediction["classes"][keep]
        if not len(boxes):
            if drop_empty:
                stats["num_dropped_empty"] += 1
                return None
            stats["num_negatives"] += 1
        stats["num_images"] += 1
        stats["num_boxes"] += int(len(boxes))
        counts = np.bincount(classes, minlength=len(stats["class_counts"]))
        stats["class_counts"] = [a + int(b) for a, b in zip(stats["class_counts"], counts)]
        return records.serialize_detection(
            fields["encoded"], source_id, height, width, boxes, classes,
            prediction["scores"][keep], _record_format(fields["encoded"], image_format, source_id))
    if task == teacher_lib.CLASSIFICATION:
        if prediction["score"] < score_threshold:
            stats["num_dropped_empty"] += 1
            return None
        stats["num_images"] += 1
        stats["confidence_sum"] += prediction["score"]
        stats["class_counts"][prediction["label"]] += 1
        return records.serialize_classification(
            fields["encoded"], source_id, height, width, prediction["probabilities"],
            _record_format(fields["encoded"], image_format, source_id))
    confidence = prediction["confidence"]
    kept = confidence >= pixel_threshold
    mask = np.where(kept, prediction["mask"], ex.IGNORE_LABEL).astype(np.uint8)
    n_kept = int(kept.sum())
    if n_kept == 0 and drop_empty:
        stats["num_dropped_empty"] += 1
        return None
    stats["num_images"] += 1
    stats["num_pixels"] += int(mask.size)
    stats["num_pixels_kept"] += n_kept
    stats["confidence_sum"] += float(confidence.mean())
    counts = np.bincount(prediction["mask"][kept].ravel(), minlength=len(stats["class_counts"]))
    stats["class_counts"] = [a + int(b) for a, b in zip(stats["class_counts"], counts)]
    return records.serialize_segmentation(
        fields["encoded"], source_id, height, width, mask, float(confidence.mean()),
        _record_format(fields["encoded"], image_format, source_id))


def prepare_output(teacher, unlabeled_desc, output_dir, *, score_threshold, pixel_threshold,
                   flip_tta, drop_empty, num_output_shards, image_format, labeled_counts="auto"):
    """Creates `output_dir` and its settings.json, or checks that an existing one matches.

    Args:
        teacher: a loaded `teacher.Teacher`.
        unlabeled_desc: {"source", "split"} for the manifest.
        output_dir: the pseudo-label directory.
        score_threshold, pixel_threshold, flip_tta, drop_empty, num_output_shards,
            image_format: as for `pseudo_label`.
        labeled_counts: as for `pseudo_label`.

    Returns:
        The settings in force (the existing ones on a re-run).

    Raises:
        ValueError: `output_dir` holds pseudo labels made with other settings.
    """
    tf.io.gfile.makedirs(output_dir)
    settings = _settings(teacher, unlabeled_desc, score_threshold=score_threshold,
                         pixel_threshold=pixel_threshold, flip_tta=flip_tta,
                         drop_empty=drop_empty, num_output_shards=num_output_shards,
                         image_format=image_format)
    existing = records.existing_settings(output_dir)
    if existing is not None:
        _check_same_settings(existing, settings, output_dir)
        return existing
    if labeled_counts == "auto":
        labeled_counts = None
        if teacher.config is not None:
            try:
                labeled_counts = labeled_class_counts(teacher.config, teacher.num_classes)
            except Exception as err:  # pylint: disable=broad-except
                # The counts are informative only; a missing labelled set must not stop it.
                logging.warning("cannot count the labelled set's classes: %s", err)
    settings["labeled_counts"] = list(labeled_counts) if labeled_counts else None
    records.write_json(os.path.join(output_dir, records.SETTINGS), settings)
    return settings


def check_flip_tta(teacher, unlabeled, flip_tta):
    """Raises ValueError (before any work) if `teacher` cannot label `unlabeled` with flip TTA:
    the teacher cannot do it, or a mirror changes the labels of its data or of the images
    (`sources.hflip_keeps_labels`; digit_scenes: a mirrored digit or glyph is another glyph)."""
    teacher.check_flip_tta(flip_tta)
    if not flip_tta:
        return
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    if not teacher.flip_keeps_labels():
        raise ValueError("flip_tta: the teacher learnt labels that a mirror changes (a mirrored "
                         "digit or glyph is another glyph); label without flip test-time "
                         "augmentation")
    if isinstance(unlabeled, str) and not sources.hflip_keeps_labels(unlabeled):
        raise ValueError(f"flip_tta: a mirrored image of {unlabeled} does not keep its labels; "
                         "label without flip test-time augmentation")


def pseudo_label(teacher, unlabeled, output_dir, *, task=None, split=None, data_dir=None,
                 score_threshold=0.5, pixel_threshold=0.5, drop_empty=False, flip_tta=False,
                 num_shards=1, shard_index=None, num_output_shards=None, batch_size=32,
                 image_format="source", shards_per_pass=None, skip_counter=None,
                 labeled_counts="auto", progress=True, on_shard_done=None):
    """Labels `unlabeled` with `teacher` into `output_dir`; resumable and shardable.

    Args:
        teacher: a `teacher.Teacher`, or a workdir / SavedModel path (`teacher.load_teacher`).
        unlabeled: a source name for `rethink_tf.data.sources.load` (`digit_scenes/detection`,
            `images:<glob>`, ...) or a `tf.data.Dataset` of canonical examples (in a fixed
            order; only `image` and `source_id` are read).
        output_dir: where shards, settings.json and manifest.json go (created).
        task: the expected task; None = the teacher's. A mismatch raises ValueError.
        split: the source's split; None = 'all' for images:/coco_json: sources, else
            'unlabeled'.
        data_dir: TFDS data dir.
        score_threshold: detection: lowest teacher score that becomes a box; classification:
            lowest top-class probability that becomes a label.
        pixel_threshold: segmentation: lowest top-class probability that labels a pixel.
        drop_empty: drop images without any box (detection) or kept pixel (segmentation)
            instead of keeping them as negatives.
        flip_tta: horizontal-flip test-time augmentation.
        num_shards: machines sharing the work.
        shard_index: this machine's index in [0, num_shards); None = all output shards.
        num_output_shards: output files; None = `default_num_output_shards(num_shards)`.
            Must be the same on every machine and in every re-run.
        batch_size: images per forward pass.
        image_format: how records store the image: "source" (the source's own bytes where
            it supplies them, i.e. TFDS sources, else PNG), "png" (lossless re-encoding) or
            "jpeg" (lossy, quality 95).
        shards_per_pass: output shards written per pass over the source; None = all of this
            machine's unfinished shards in one pass.
        skip_counter: an `image_folder.SkipCounter` the caller passes with a Dataset from an
            `images:` source; a source name gets its own.
        labeled_counts: per-class counts of the labelled set for the manifest: a list, None,
            or "auto" (the workdir teacher's training set, counted once per output dir).
        progress: show a progress bar (images/s) on stderr.
        on_shard_done: `fn(shard_index, stats)` called after each shard is published.

    Returns:
        The manifest (also written to `output_dir/manifest.json`).

    Raises:
        ValueError: a bad argument, or `output_dir` made with other settings.
    """
    check_arguments(score_threshold=score_threshold, pixel_threshold=pixel_threshold,
                    num_shards=num_shards, shard_index=shard_index,
                    num_output_shards=num_output_shards, batch_size=batch_size,
                    image_format=image_format, shards_per_pass=shards_per_pass)
    if isinstance(teacher, (str, os.PathLike)):
        teacher = teacher_lib.load_teacher(os.fspath(teacher))
    if task is not None and task != teacher.task:
        raise ValueError(f"task={task!r} but the teacher is a {teacher.task} model")
    check_flip_tta(teacher, unlabeled, flip_tta)
    num_output_shards = int(num_output_shards or default_num_output_shards(num_shards))
    if teacher.task == teacher_lib.DETECTION:
        teacher.set_score_threshold(score_threshold)

    from rethink_tf.data import image_folder  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    if isinstance(unlabeled, str):
        split = split or default_split(unlabeled)
        desc = {"source": unlabeled, "split": split}
        skip_counter = skip_counter or image_folder.SkipCounter()
        examples = load_unlabeled(unlabeled, split, data_dir=data_dir, skip_counter=skip_counter)
    else:
        desc = {"source": "<tf.data.Dataset>", "split": split}
        skip_counter = skip_counter or image_folder.SkipCounter()
        examples = sources.keep_images_only(unlabeled)

    prepare_output(teacher, desc, output_dir, score_threshold=score_threshold,
                   pixel_threshold=pixel_threshold, flip_tta=flip_tta, drop_empty=drop_empty,
                   num_output_shards=num_output_shards, image_format=image_format,
                   labeled_counts=labeled_counts)
    mine = [j for j in range(num_output_shards)
            if shard_index is None or j % int(num_shards) == int(shard_index)]
    done = records.list_shards(output_dir)
    pending = [j for j in mine if j not in done]
    if done and pending:
        print(f"Resuming: {len(mine) - len(pending)} of this machine's {len(mine)} shards are "
              "done", flush=True)
    per_pass = int(shards_per_pass or len(pending) or 1)
    total = None
    if len(pending) == num_output_shards:
        cardinality = int(examples.cardinality())
        total = cardinality if cardinality >= 0 else None
    bar = _progress_bar(total, progress)
    try:
        for start in range(0, len(pending), per_pass):
            group = pending[start:start + per_pass]
            _label_pass(teacher, examples, output_dir, group, num_output_shards, skip_counter, flip_tta=flip_tta, batch_size=batch_size,
                        drop_empty=drop_empty, score_threshold=score_threshold,
                        pixel_threshold=pixel_threshold, image_format=image_format, bar=bar,
                        on_shard_done=on_shard_done)
    finally:
        if bar is not None:
            bar.close()
    return records.write_manifest(output_dir)


def _progress_bar(total, enabled):
    if not enabled:
        return None
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    return tqdm(total=total, unit="img", desc="pseudo-labeling", smoothing=0.1)


def _label_pass(teacher, examples, output_dir, group, num_output_shards, skip_counter, *,
                flip_tta, batch_size, drop_empty, score_threshold, pixel_threshold,
                image_format, bar, on_shard_done):
    """One pass over the source writing the output shards in `group`."""
    selected = examples
    if len(group) < num_output_shards:
        wanted = tf.constant(group, tf.int64)
        selected = examples.filter(lambda e: tf.reduce_any(
            tf.equal(records.shard_of(e[ex.SOURCE_ID], num_output_shards), wanted)))
    sinks = {j: _ShardSink(output_dir, j, num_output_shards, teacher.num_classes) for j in group}
    ok = False
    try:
        stream = teacher.predict_stream(selected, batch_size=batch_size, flip_tta=flip_tta,
                                        passthrough=(ex.SOURCE_ID, "encoded", "shard"),
                                        map_fn=_encode_fn(image_format, num_output_shards))
        for fields, prediction in stream:
            sink = sinks[int(fields["shard"])]
            record = _record(fields, prediction, teacher.task, sink.stats,
                             score_threshold=score_threshold, pixel_threshold=pixel_threshold,
                             drop_empty=drop_empty, image_format=image_format)
            if record is not None:
                sink.writer.write(record)
            if bar is not None:
                bar.update(1)
        ok = True
    finally:
        if not ok:
            for sink in sinks.values():
                sink.abandon()
    skipped = skip_counter.paths
    finished = set()
    try:
        for j in group:
            sinks[j].finish(skipped)
            finished.add(j)
            logging.info("shard %d of %d published: %d records", j, num_output_shards,
                         sinks[j].stats["num_images"])
            if on_shard_done is not None:
                on_shard_done(j, sinks[j].stats)
    finally:
        for j in group:
            if j not in finished:
                sinks[j].abandon()
