"""Record format round trip, quality report numbers, and the Beam pipeline against local."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import example as ex
from rethink_tf.pseudo import labeler
from rethink_tf.pseudo import quality
from rethink_tf.pseudo import records

UNLABELED = "digit_scenes/detection_tiny"


def _settings(task, n_out=1, num_classes=3, **extra):
    return {"format": records.FORMAT, "task": task, "num_classes": num_classes,
            "class_names": [str(c) for c in range(num_classes)], "num_output_shards": n_out,
            "score_threshold": 0.5 if task == "detection" else None,
            "pixel_threshold": 0.5 if task == "segmentation" else None,
            "labeled_counts": [5, 3, 2], **extra}


def test_records_round_trip_and_manifest(tmp_path):
    image = np.random.RandomState(0).randint(0, 256, (20, 30, 3), np.uint8)
    png = records.encode_image(image)
    serialized = [
        records.serialize_detection(png, "a", 20, 30, [[1, 2, 10, 12], [3, 4, 5, 6]], [2, 0],
                                    [0.9, 0.6]),
        records.serialize_detection(png, b"b", 20, 30, np.zeros((0, 4)), [], []),
    ]
    records.write_json(str(tmp_path / records.SETTINGS), _settings("detection"))
    stats = dict(records.empty_stats(3), num_images=2, num_images_seen=2, num_boxes=2,
                 num_negatives=1, class_counts=[1, 0, 1])
    path = str(tmp_path / records.shard_name(0, 1))
    assert records.write_shard(path, iter(serialized), stats) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([
        records.shard_name(0, 1), records.stats_name(0, 1), records.SETTINGS])
    manifest = records.write_manifest(str(tmp_path))
    assert manifest["complete"] and manifest["num_boxes"] == 2
    assert manifest["per_class"]["2"] == {"pseudo_boxes": 1, "pseudo_fraction": 0.5,
                                          "labeled_boxes": 2, "labeled_fraction": 0.2}
    ds = records.load_pseudo_labels(str(tmp_path))
    ex.check_example_spec(ds.element_spec)
    a, b = list(ds)
    np.testing.assert_array_equal(a[ex.IMAGE].numpy(), image)
    np.testing.assert_allclose(a[ex.BOXES].numpy(), [[1, 2, 10, 12], [3, 4, 5, 6]])
    assert a[ex.CLASSES].numpy().tolist() == [2, 0] and a[ex.SOURCE_ID].numpy() == b"a"
    assert b[ex.BOXES].shape == (0, 4) and b[ex.CLASSES].shape == (0,)
    scored = next(iter(records.load_pseudo_records(str(tmp_path))))
    np.testing.assert_allclose(scored["scores"].numpy(), [0.9, 0.6])


def test_non_finite_pseudo_boxes_are_refused_when_written_and_when_read(tmp_path):
    png = records.encode_image(np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(ValueError, match=r"'a'.*non-finite"):
        records.serialize_detection(png, "a", 20, 30, [[1, 2, np.nan, 12]], [0], [0.9])
    with pytest.raises(ValueError, match=r"'a'.*non-finite"):
        records.serialize_detection(png, "a", 20, 30, [[1, 2, 3, 12]], [0], [np.inf])
    # A record written by another tool with a NaN coordinate: reading names it.
    # pylint: disable=protected-access
    feature = records._common(png, "bad-id", 20, 30, records.DETECTION, "png")
    feature.update({"boxes/xmin": records._floats([1.0]), "boxes/ymin": records._floats([2.0]),
                    "boxes/xmax": records._floats([np.nan]), "boxes/ymax": records._floats([5]),
                    "classes": records._ints([0]), "scores": records._floats([0.9])})
    bad_record = records._serialize(feature)
    # pylint: enable=protected-access
    records.write_json(str(tmp_path / records.SETTINGS), _settings("detection"))
    records.write_shard(str(tmp_path / records.shard_name(0, 1)), [bad_record],
                        records.empty_stats(3))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"(?s)pseudo labels \S+: example.*bad-id.*non-finite"):
        list(records.load_pseudo_labels(str(tmp_path)))


def test_segmentation_record_keeps_ignore(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    mask = np.array([[0, 1, 255, 2, 2]] * 4, np.uint8)
    data = records.serialize_segmentation(records.encode_image(image), "s", 4, 5, mask, 0.7)
    records.write_json(str(tmp_path / records.SETTINGS), _settings("segmentation"))
    records.write_shard(str(tmp_path / records.shard_name(0, 1)), [data],
                        records.empty_stats(3))
    e = next(iter(records.load_pseudo_records(str(tmp_path))))
    np.testing.assert_array_equal(e[ex.MASK].numpy()[..., 0], mask)
    assert e["kept_fraction"].numpy() == pytest.approx(0.8)
    assert e["mean_confidence"].numpy() == pytest.approx(0.7)


def test_detection_quality_perfect_and_half():
    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
          "classes": np.array([0, 1])}
    perfect = quality.DetectionQuality(2, thresholds=(0.3, 0.9))
    perfect.update({**gt, "scores": np.array([0.95, 0.95], np.float32)}, gt)
    for row in perfect.result()["thresholds"]:
        assert row["precision"] == row["recall"] == 1.0
        assert row["AP"] == pytest.approx(1.0) and row["AP50"] == pytest.approx(1.0)
    # One right box at 0.8, one wrong-class box at 0.4, one missed object.
    pred = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 40, 40]], np.float32),
            "classes": np.array([0, 0]), "scores": np.array([0.8, 0.4], np.float32)}
    half = quality.DetectionQuality(2, thresholds=(0.3, 0.5, 0.9))
    half.update(pred, gt)
    rows = {r["threshold"]: r for r in half.result()["thresholds"]}
    assert (rows[0.3]["precision"], rows[0.3]["recall"]) == (0.5, 0.5)
    assert (rows[0.5]["precision"], rows[0.5]["recall"]) == (1.0, 0.5)
    assert (rows[0.9]["num_boxes"], rows[0.9]["recall"]) == (0, 0.0)


def test_segmentation_quality():
    gt = np.array([[0, 1], [1, 255]])
    metric = quality.SegmentationQuality(2, thresholds=(0.5, 0.8))
    metric.update(np.array([[0, 1], [0, 1]]), np.array([[0.9, 0.9], [0.6, 0.9]]), gt)
    rows = metric.result()["thresholds"]
    assert rows[0]["kept_fraction"] == 1.0 and rows[0]["pixel_accuracy"] == pytest.approx(2 / 3)
    assert rows[1]["kept_fraction"] == pytest.approx(2 / 3)
    assert rows[1]["pixel_accuracy"] == 1.0 and rows[1]["mIoU"] == 1.0


def test_report_against_hidden_ground_truth(detection_teacher_dir, tmp_path,
                                            digit_scenes_data_dir):
    out = str(tmp_path / "pseudo")
    labeler.pseudo_label(detection_teacher_dir, UNLABELED, out, split="unlabeled",
                         data_dir=digit_scenes_data_dir, progress=False, num_output_shards=2,
                         score_threshold=0.3)
    result = quality.report(out, UNLABELED, "unlabeled", teacher=detection_teacher_dir,
                            data_dir=digit_scenes_data_dir, thresholds=(0.3, 0.5, 0.9))
    rows = result["thresholds"]
    assert result["num_images"] == 48 and result["num_ground_truth"] > 48
    assert [r["threshold"] for r in rows] == [0.3, 0.5, 0.9]
    assert rows[0]["num_boxes"] >= rows[1]["num_boxes"] >= rows[2]["num_boxes"]
    assert rows[0]["recall"] >= rows[1]["recall"] >= rows[2]["recall"]
    assert json.load(open(os.path.join(out, quality.QUALITY_FILE)))["thresholds"] == rows
    # Scored from the records: same numbers at thresholds >= the labeling threshold.
    from_records = quality.report(out, UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir,
                                  thresholds=(0.3, 0.5, 0.9))
    for a, b in zip(rows, from_records["thresholds"]):
        assert a["num_boxes"] == b["num_boxes"]
        assert a["precision"] == pytest.approx(b["precision"])
        assert a["recall"] == pytest.approx(b["recall"])
    tags = set()
    for path in tf.io.gfile.glob(os.path.join(out, "tb", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert {"pseudo/scores", "pseudo/boxes_per_image", "quality/precision"} <= tags


def _shard_records(directory):
    """{shard file name: its records as `tf.train.Example`s, in file order}.

    Compared as messages, not bytes: a `tf.train.Example`'s feature map is serialised in an
    order that differs between processes (see tests/faults/test_record_bytes.py).
    """
    return {os.path.basename(p): [tf.train.Example.FromString(r.numpy())
                                  for r in tf.data.TFRecordDataset(p)]
            for p in records.list_shards(str(directory)).values()}


def _file_identities(directory):
    """{shard file name: (inode, mtime)}: changes if the file is rewritten."""
    return {os.path.basename(p): (os.stat(p).st_ino, os.stat(p).st_mtime_ns)
            for p in records.list_shards(str(directory)).values()}


def test_beam_on_two_worker_processes_equals_local_and_a_rerun_adds_nothing(
        detection_teacher_dir, tmp_path, digit_scenes_data_dir):
    """Beam's DirectRunner with 2 worker processes (each loads the teacher and writes whole
    shards) gives the local loop's records; a re-run after a worker died mid-shard (its shard
    unpublished, a stale temporary file left) redoes that shard only, and no record is lost
    or duplicated."""
    from rethink_tf.pseudo import beam_pipeline  # pylint: disable=g-import-not-at-top
    kwargs = dict(split="unlabeled", data_dir=digit_scenes_data_dir, num_output_shards=4,
                  score_threshold=0.4, batch_size=16)
    local = labeler.pseudo_label(detection_teacher_dir, UNLABELED, str(tmp_path / "local"),
                                 progress=False, **kwargs)
    out = tmp_path / "beam"
    workers = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    manifest = beam_pipeline.run(detection_teacher_dir, UNLABELED, str(out),
                                 runner="DirectRunner", pipeline_args=workers, **kwargs)
    expected = _shard_records(tmp_path / "local")
    assert len(expected) == 4 and sum(map(len, expected.values())) == 48
    assert _shard_records(out) == expected
    for key in ("num_images", "num_boxes", "num_negatives", "per_class", "complete"):
        assert manifest[key] == local[key]

    # What a worker killed mid-shard leaves: its shard unpublished and a temporary file.
    victim = sorted(records.list_shards(str(out)).values())[1]
    os.remove(victim)
    with open(records.temporary_path(victim), "wb") as f:
        f.write(b"partial")
    finished = _file_identities(out)
    rerun = beam_pipeline.run(detection_teacher_dir, UNLABELED, str(out),
                              runner="DirectRunner", pipeline_args=workers, **kwargs)
    assert _shard_records(out) == expected
    # The finished shards were not rewritten, only the victim's.
    assert {k: v for k, v in _file_identities(out).items() if k in finished} == finished
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    ids = [e[ex.SOURCE_ID].numpy() for e in records.load_pseudo_records(str(out))]
    assert len(ids) == len(set(ids)) == 48 and rerun["num_images"] == 48
