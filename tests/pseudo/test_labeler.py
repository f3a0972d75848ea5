"""Pseudo-labeling: thresholds, negatives, teacher untouched, kill-and-rerun, sharding, TTA."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import example as ex
from rethink_tf.data import sources
from rethink_tf.pseudo import labeler
from rethink_tf.pseudo import records
from rethink_tf.pseudo import teacher as teacher_lib

UNLABELED = "digit_scenes/detection_tiny"  # its `unlabeled` split keeps hidden ground truth
NUM_UNLABELED = 48


@pytest.fixture(scope="module")
def det_teacher(detection_teacher_dir):
    return teacher_lib.load_teacher(detection_teacher_dir)


@pytest.fixture(scope="module")
def reference(det_teacher, digit_scenes_data_dir):
    """The teacher's detections at a low threshold, keyed by source_id."""
    det_teacher.set_score_threshold(0.05)
    ds = labeler.load_unlabeled(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir)
    return {f[ex.SOURCE_ID]: p for f, p in det_teacher.predict_stream(
        ds, batch_size=16, passthrough=(ex.SOURCE_ID,))}


def _label(teacher, out, data_dir, **kwargs):
    kwargs.setdefault("score_threshold", 0.5)
    return labeler.pseudo_label(teacher, UNLABELED, str(out), split="unlabeled",
                                data_dir=data_dir, progress=False, batch_size=16, **kwargs)


def _read(out):
    return {e[ex.SOURCE_ID].numpy(): {k: v.numpy() for k, v in e.items()}
            for e in records.load_pseudo_records(str(out))}


def _shard_bytes(out):
    return {os.path.basename(p): open(p, "rb").read()
            for p in records.list_shards(str(out)).values()}


def test_boxes_are_the_teachers_above_threshold_and_teacher_unchanged(
        det_teacher, reference, tmp_path, digit_scenes_data_dir):
    before = [w.copy() for w in det_teacher.model.get_weights()]
    manifest = _label(det_teacher, tmp_path, digit_scenes_data_dir, score_threshold=0.5)
    after = det_teacher.model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after))

    got = _read(tmp_path)
    assert len(got) == NUM_UNLABELED == manifest["num_images"] and manifest["complete"]
    kept = 0
    for source_id, record in got.items():
        ref = reference[source_id]
        want = ref["scores"] >= 0.5
        np.testing.assert_allclose(record["boxes"], ref["boxes"][want], atol=1e-4)
        np.testing.assert_array_equal(record["classes"], ref["classes"][want])
        assert np.all(record["scores"] >= 0.5)
        height, width = record[ex.IMAGE].shape[:2]
        assert np.all(record["boxes"] >= 0) and np.all(record["boxes"][:, [2]] <= width)
        assert np.all(record["boxes"][:, [3]] <= height)
        kept += int(want.sum())
    # Not vacuous: the threshold keeps some boxes and drops others.
    assert 0 < kept < sum(len(r["scores"]) for r in reference.values())
    assert manifest["num_boxes"] == kept
    assert sum(v["pseudo_boxes"] for v in manifest["per_class"].values()) == kept
    assert manifest["labeled_counts"] and len(manifest["labeled_counts"]) == 10
    assert manifest["teacher"]["kind"] == "workdir" and manifest["teacher"]["step"] == 3
    assert manifest["score_threshold"] == 0.5 and manifest["skipped_unreadable"] == 0
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]

    # The records read back as a canonical source; images are the source's exact pixels.
    ds = sources.load(f"pseudo:{tmp_path}", "all")
    ex.check_example_spec(ds.element_spec)
    assert set(ds.element_spec) == {ex.IMAGE, ex.SOURCE_ID, ex.BOXES, ex.CLASSES}
    info = sources.info(f"pseudo:{tmp_path}")
    assert info.tasks == ("detection",) and info.num_classes["detection"] == 10
    original = {e[ex.SOURCE_ID].numpy(): e[ex.IMAGE].numpy() for e in labeler.load_unlabeled(
        UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir)}
    for e in ds.take(5):
        np.testing.assert_array_equal(e[ex.IMAGE].numpy(), original[e[ex.SOURCE_ID].numpy()])


def _raw_images(out):
    """{source_id: (image/format, image/encoded)} straight from the shards' bytes."""
    features = {k: tf.io.FixedLenFeature([], tf.string)
                for k in ("source_id", "image/format", "image/encoded")}
    ds = tf.data.TFRecordDataset(sorted(records.list_shards(str(out)).values()))
    return {r["source_id"].numpy(): (r["image/format"].numpy(), r["image/encoded"].numpy())
            for r in ds.map(lambda s: tf.io.parse_single_example(s, features))}


def test_records_copy_the_sources_stored_bytes_or_reencode(det_teacher, tmp_path,
                                                           digit_scenes_data_dir):
    stored = {e[ex.SOURCE_ID].numpy(): (e[ex.ENCODED].numpy(), e[ex.IMAGE].numpy())
              for e in sources.load(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir,
                                    keep_encoded=True)}
    # keep_encoded decodes the image from the very bytes it keeps.
    for encoded, image in list(stored.values())[:3]:
        np.testing.assert_array_equal(tf.io.decode_image(encoded, channels=3).numpy(), image)
    # The labeler reads only images and ids: the hidden ground truth is not even decoded.
    unlabeled = labeler.load_unlabeled(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir)
    assert set(unlabeled.element_spec) == {ex.IMAGE, ex.SOURCE_ID, ex.ENCODED}
    first = next(iter(unlabeled))
    np.testing.assert_array_equal(first[ex.IMAGE].numpy(),
                                  stored[first[ex.SOURCE_ID].numpy()][1])
    # Default ("source"): each record holds the TFDS file's JPEG bytes, unchanged.
    _label(det_teacher, tmp_path / "source", digit_scenes_data_dir, num_output_shards=2)
    raw = _raw_images(tmp_path / "source")
    assert len(raw) == NUM_UNLABELED
    assert all(fmt == b"jpeg" and data == stored[sid][0] for sid, (fmt, data) in raw.items())
    # "png": re-encoded losslessly, so the same pixels in other bytes.
    _label(det_teacher, tmp_path / "png", digit_scenes_data_dir, num_output_shards=2,
           image_format="png")
    raw = _raw_images(tmp_path / "png")
    assert all(fmt == b"png" and data != stored[sid][0] for sid, (fmt, data) in raw.items())
    for sid, (_, data) in list(raw.items())[:3]:
        np.testing.assert_array_equal(tf.io.decode_png(data).numpy(), stored[sid][1])
    # A dataset without stored bytes falls back to PNG under "source".
    ds = labeler.load_unlabeled(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir)
    decoded_only = ds.map(lambda e: {ex.IMAGE: e[ex.IMAGE], ex.SOURCE_ID: e[ex.SOURCE_ID]})
    labeler.pseudo_label(det_teacher, decoded_only, str(tmp_path / "dataset"), progress=False,
                         batch_size=16, num_output_shards=2)
    assert {fmt for fmt, _ in _raw_images(tmp_path / "dataset").values()} == {b"png"}
    with pytest.raises(ValueError, match="image_format must be one of"):
        _label(det_teacher, tmp_path / "bad", digit_scenes_data_dir, image_format="webp")


def test_predict_stream_stops_its_thread_and_raises_its_errors(det_teacher,
                                                               digit_scenes_data_dir):
    import threading  # pylint: disable=g-import-not-at-top

    def prediction_threads():
        # By name: the process's total thread count also moves with TF's and earlier tests'
        # own threads (a CI run saw it drop by one between two lines of this test).
        return [t for t in threading.enumerate() if t.name == "teacher-predict"]

    ds = labeler.load_unlabeled(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir)
    assert not prediction_threads()
    stream = det_teacher.predict_stream(ds, batch_size=4)
    next(stream)
    assert len(prediction_threads()) == 1  # the stream runs its forward passes in a thread
    stream.close()  # the consumer stops early: the prediction thread ends too
    assert not prediction_threads()

    class Broken(teacher_lib.WorkdirTeacher):
        def predict(self, batch, flip_tta):
            raise RuntimeError("forward failed")

    broken = Broken.__new__(Broken)
    broken.__dict__.update(det_teacher.__dict__)
    with pytest.raises(RuntimeError, match="forward failed"):
        list(broken.predict_stream(ds, batch_size=4))
    assert not prediction_threads()


def test_negatives_kept_or_dropped(det_teacher, reference, tmp_path, digit_scenes_data_dir):
    top = sorted(float(p["scores"].max(initial=0.0)) for p in reference.values())
    # About half the images have no box at this threshold (midway: no score sits on it).
    half = len(top) // 2
    threshold = (top[half - 1] + top[half]) / 2
    assert top[half - 1] < threshold < top[half]
    empty = sum(t < threshold for t in top)
    assert 0 < empty < NUM_UNLABELED
    kept = _label(det_teacher, tmp_path / "kept", digit_scenes_data_dir,
                  score_threshold=threshold)
    dropped = _label(det_teacher, tmp_path / "dropped", digit_scenes_data_dir,
                     score_threshold=threshold, drop_empty=True)
    assert kept["num_images"] == NUM_UNLABELED and kept["num_negatives"] == empty
    assert sum(len(r["boxes"]) == 0 for r in _read(tmp_path / "kept").values()) == empty
    assert dropped["num_images"] == NUM_UNLABELED - empty
    assert dropped["num_dropped_empty"] == empty
    assert all(len(r["boxes"]) for r in _read(tmp_path / "dropped").values())


def test_killed_run_rerun_equals_uninterrupted_and_machines_agree(
        det_teacher, tmp_path, digit_scenes_data_dir):
    whole = _label(det_teacher, tmp_path / "whole", digit_scenes_data_dir, num_output_shards=4)

    def die_after_first(index, stats):
        raise KeyboardInterrupt(f"killed after shard {index}")

    with pytest.raises(KeyboardInterrupt):
        _label(det_teacher, tmp_path / "killed", digit_scenes_data_dir, num_output_shards=4,
               shards_per_pass=1, on_shard_done=die_after_first)
    assert len(records.list_shards(str(tmp_path / "killed"))) == 1
    with pytest.raises(ValueError, match="incomplete"):
        records.load_pseudo_labels(str(tmp_path / "killed"))
    done = []
    resumed = _label(det_teacher, tmp_path / "killed", digit_scenes_data_dir, num_output_shards=4,
                     on_shard_done=lambda i, s: done.append(i))
    assert len(done) == 3  # the finished shard was skipped
    assert _shard_bytes(tmp_path / "killed") == _shard_bytes(tmp_path / "whole")
    assert resumed["num_images"] == whole["num_images"] == NUM_UNLABELED

    for index in (1, 0):  # two "machines", in any order, into one directory
        _label(det_teacher, tmp_path / "machines", digit_scenes_data_dir, num_output_shards=4,
               num_shards=2, shard_index=index)
    assert _shard_bytes(tmp_path / "machines") == _shard_bytes(tmp_path / "whole")
    assert records.read_manifest(str(tmp_path / "machines"))["num_images"] == NUM_UNLABELED

    with pytest.raises(ValueError, match="other settings"):
        _label(det_teacher, tmp_path / "whole", digit_scenes_data_dir, num_output_shards=4,
               score_threshold=0.7)


def test_corrupt_image_skipped_and_counted(det_teacher, tmp_path, digit_scenes_data_dir):
    folder = tmp_path / "images"
    folder.mkdir()
    ds = labeler.load_unlabeled(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir)
    for i, e in enumerate(ds.take(5)):
        (folder / f"{i}.png").write_bytes(tf.io.encode_png(e[ex.IMAGE]).numpy())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    manifest = labeler.pseudo_label(det_teacher, f"images:{folder}/*", str(tmp_path / "out"),
                                    progress=False, num_output_shards=2)
    assert manifest["num_images"] == 5 and manifest["skipped_unreadable"] == 1
    assert list(manifest["skipped_files"]) == [str(folder / "broken.jpg")]
    assert manifest["unlabeled"] == {"source": f"images:{folder}/*", "split": "all"}
    assert len(_read(tmp_path / "out")) == 5


def test_flip_tta_is_the_union_of_both_passes_after_nms(det_teacher, digit_scenes_data_dir):
    det_teacher.set_score_threshold(0.3)
    ds = labeler.load_unlabeled(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir)
    images = [e[ex.IMAGE].numpy() for e in ds.take(4)]
    plain = det_teacher.predict_images(images)
    mirrored = det_teacher.predict_images([im[:, ::-1] for im in images])
    tta = det_teacher.predict_images(images, flip_tta=True)
    for image, p, m, t in zip(images, plain, mirrored, tta):
        want = teacher_lib.merge_flip_detections(p, m, image.shape[1])
        np.testing.assert_allclose(t["boxes"], want["boxes"], atol=1e-3)
        np.testing.assert_array_equal(t["classes"], want["classes"])
    assert sum(len(t["boxes"]) for t in tta) > sum(len(p["boxes"]) for p in plain) > 0


def test_classwise_nms_and_flip_merge():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    keep = teacher_lib.nms_classwise(boxes, [0.9, 0.8, 0.7, 0.6], [1, 1, 2, 1])
    assert keep.tolist() == [0, 2, 3]  # box 1 overlaps box 0 of its class; box 2 is class 2
    plain = {"boxes": np.array([[0, 0, 10, 10]], np.float32), "classes": np.array([3]),
             "scores": np.array([0.6], np.float32)}
    # The same object seen in the flipped image of width 100 (x mirrored) scores higher.
    flipped = {"boxes": np.array([[90, 0, 100, 10], [0, 0, 5, 5]], np.float32),
               "classes": np.array([3, 4]), "scores": np.array([0.8, 0.5], np.float32)}
    merged = teacher_lib.merge_flip_detections(plain, flipped, 100)
    np.testing.assert_allclose(merged["boxes"], [[0, 0, 10, 10], [95, 0, 100, 5]])
    np.testing.assert_allclose(merged["scores"], [0.8, 0.5])


def test_segmentation_low_confidence_is_ignore(segmentation_teacher_dir, tmp_path,
                                               digit_scenes_data_dir):
    teacher = teacher_lib.load_teacher(segmentation_teacher_dir)
    manifest = labeler.pseudo_label(teacher, UNLABELED, str(tmp_path), split="unlabeled",
                                    data_dir=digit_scenes_data_dir, pixel_threshold=0.7,
                                    progress=False, num_output_shards=2)
    got = _read(tmp_path)
    assert len(got) == NUM_UNLABELED
    ds = labeler.load_unlabeled(UNLABELED, "unlabeled", data_dir=digit_scenes_data_dir).take(3)
    for e in ds:
        pred = teacher.predict_images([e[ex.IMAGE].numpy()])[0]
        want = np.where(pred["confidence"] >= 0.7, pred["mask"], 255)
        record = got[e[ex.SOURCE_ID].numpy()]
        np.testing.assert_array_equal(record[ex.MASK][..., 0], want)
        np.testing.assert_allclose(record["mean_confidence"], pred["confidence"].mean(),
                                   rtol=1e-5)
    assert 0.05 < manifest["kept_fraction"] < 0.95  # the threshold bites both ways
    loaded = records.load_pseudo_labels(str(tmp_path), "segmentation")
    ex.check_example_spec(loaded.element_spec)
    assert set(loaded.element_spec) == {ex.IMAGE, ex.SOURCE_ID, ex.MASK}
    with pytest.raises(ValueError, match="not detection"):
        records.load_pseudo_labels(str(tmp_path), "detection")
    tta = teacher.predict_images([e[ex.IMAGE].numpy() for e in ds.take(1)], flip_tta=True)[0]
    assert tta["mask"].shape == (128, 128) and np.all(tta["confidence"] <= 1.0)


def test_cli_runs_and_rejects_bad_flags(detection_teacher_dir, tmp_path, digit_scenes_data_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    base = [sys.executable, "-m", "rethink_tf.pseudo_label", f"--teacher={detection_teacher_dir}",
            f"--unlabeled={UNLABELED}", f"--data_dir={digit_scenes_data_dir}",
            f"--output={tmp_path / 'cli'}"]
    bad = subprocess.run(base + ["--score_threshold=1.5"], capture_output=True, text=True,
                         env=env, cwd=root, timeout=300)
    assert bad.returncode != 0 and "score_threshold must be in [0, 1]" in bad.stderr
    assert not (tmp_path / "cli").exists()
    good = subprocess.run(base + ["--num_output_shards=2", "--quality"], capture_output=True,
                          text=True, env=env, cwd=root, timeout=600)
    assert good.returncode == 0, good.stderr[-3000:]
    assert records.read_manifest(str(tmp_path / "cli"))["num_images"] == NUM_UNLABELED
    assert (tmp_path / "cli" / "quality.json").exists()


# ----------------------------------------------------------------------------------------
# An oracle teacher: the real Teacher / labeler / records path with only the network's
# prediction replaced by boxes derived from known truth, so that the recovered pseudo boxes
# (in original pixels) can be checked against that truth.
# ----------------------------------------------------------------------------------------

# (height, width) of the source images: non-square, larger and smaller than the 64 px model.
_ORACLE_SIZES = [(40, 100), (150, 90), (48, 30), (97, 211), (33, 64), (120, 50)]
# Truth per image, in original pixels (xyxy, class, score). Boxes may extend past the image
# (a prediction can), the expected pseudo box is then the truth clipped to the image.
_ORACLE_TRUTH = [
    # Slightly negative x1 and y1 (also at model resolution); a box reaching into the padding
    # below the resized image (y2 = 46 > height 40); one under the 0.5 threshold (dropped).
    [([-3.0, -2.0, 20.0, 15.0], 3, 0.93), ([55.0, 10.0, 90.0, 46.0], 7, 0.71),
     ([60.0, 0.0, 70.0, 8.0], 1, 0.30)],
    [([10.0, 20.0, 60.0, 140.0], 0, 0.88), ([65.0, 5.0, 95.0, 30.0], 9, 0.55)],
    [([2.5, 3.5, 27.0, 44.0], 4, 0.99)],
    [([100.0, 40.0, 205.0, 96.0], 2, 0.66), ([-1.0, 10.0, 50.0, 60.0], 5, 0.81),
     ([150.0, 0.0, 180.0, 20.0], 6, 0.52)],
    [],  # a negative: no box at all
    [([0.0, 100.0, 49.0, 125.0], 8, 0.77), ([5.0, -4.0, 30.0, 40.0], 8, 0.60)],
]
_ORACLE_THRESHOLD = 0.5
_MODEL_SIZE = 64  # the teacher fixture's config.dataset.image_size
_ORACLE_SLOTS = 6  # detections per image, padded as the decoder pads (-1)


def _model_scale(height, width, size=_MODEL_SIZE):
    """(y_scale, x_scale) of evaluation's resize-and-pad (RetinaNet style), computed here:
    fit inside size x size keeping the aspect ratio, resized size rounded to whole pixels."""
    s = min(size / height, size / width)
    return round(height * s) / height, round(width * s) / width


def _oracle_images():
    """Per image: id in channel 0 (constant: survives the resize exactly), and a marker in
    channel 1, dark on the left half and bright on the right, that tells the flipped pass."""
    images = []
    for i, (h, w) in enumerate(_ORACLE_SIZES):
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = 20 * (i + 1)
        image[:, : w // 2, 1] = 40
        image[:, w // 2:, 1] = 220
        image[..., 2] = 128
        images.append(image)
    return images


def _oracle_rows(index, flipped):
    """The decoder's output rows for image `index` at model resolution (maybe flipped)."""
    h, w = _ORACLE_SIZES[index]
    sy, sx = _model_scale(h, w)
    rows = []
    for box, cls, score in _ORACLE_TRUTH[index]:
        x1, y1, x2, y2 = box
        if flipped:
            # The flipped pass sees the mirrored object, slightly more confident.
            x1, x2 = w - x2, w - x1
            score = min(score + 0.02, 1.0)
        rows.append(([x1 * sx, y1 * sy, x2 * sx, y2 * sy], cls, score))
    if flipped and index == 1:
        # An object only the flipped pass finds (mirrored: x in [w - 30, w - 20] there).
        rows.append(([20.0 * sx, 100.0 * sy, 30.0 * sx, 120.0 * sy], 6, 0.9))
    return rows


class _OracleTeacher(teacher_lib.WorkdirTeacher):
    """A workdir teacher whose forward pass returns the oracle's rows (all else is real)."""

    def flip_keeps_labels(self):
        return True  # the oracle's rows are mirror-symmetric, unlike the digits it trained on

    def _make_forward(self):
        def forward(images):
            images = np.asarray(images)
            assert images.shape[1:] == (_MODEL_SIZE, _MODEL_SIZE, 3)
            n = len(images)
            boxes = -np.ones((n, _ORACLE_SLOTS, 4), np.float32)
            confidence = -np.ones((n, _ORACLE_SLOTS), np.float32)
            classes = -np.ones((n, _ORACLE_SLOTS), np.float32)
            num = np.zeros((n,), np.int32)
            for b, image in enumerate(images):
                index = int(image[0, 0, 0]) // 20 - 1
                assert int(image[0, 0, 0]) == 20 * (index + 1), image[0, 0]
                flipped = int(image[0, 0, 1]) > 128
                rows = _oracle_rows(index, flipped)
                num[b] = len(rows)
                for k, (box, cls, score) in enumerate(rows):
                    boxes[b, k], classes[b, k], confidence[b, k] = box, cls, score
            return {"boxes": tf.constant(boxes), "confidence": tf.constant(confidence),
                    "classes": tf.constant(classes), "num_detections": tf.constant(num)}
        return forward


def _expected_oracle(index, flip_tta):
    """{(class, score): clipped truth box} that the pseudo labels must hold for an image."""
    h, w = _ORACLE_SIZES[index]
    want = {}
    for box, cls, score in _ORACLE_TRUTH[index]:
        if flip_tta:
            score = min(score + 0.02, 1.0)  # NMS keeps the flipped pass's (higher) score
        if score >= _ORACLE_THRESHOLD:
            want[(cls, round(score, 4))] = np.clip(box, 0, [w, h, w, h])
    if flip_tta and index == 1:
        want[(6, 0.9)] = np.array([w - 30.0, 100.0, w - 20.0, 120.0])
    return want


@pytest.fixture(scope="module")
def oracle_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oracle_images")
    for i, image in enumerate(_oracle_images()):
        (folder / f"img{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return folder


@pytest.mark.parametrize("flip_tta", [False, True])
def test_oracle_teacher_boxes_come_back_in_original_pixels(flip_tta, detection_teacher_dir,
                                                           oracle_folder, tmp_path):
    teacher = _OracleTeacher(detection_teacher_dir)
    assert teacher.image_size == (_MODEL_SIZE, _MODEL_SIZE)
    out = tmp_path / "pseudo"
    manifest = labeler.pseudo_label(teacher, f"images:{oracle_folder}/*.png", str(out),
                                    score_threshold=_ORACLE_THRESHOLD, flip_tta=flip_tta,
                                    progress=False, batch_size=4, num_output_shards=2,
                                    labeled_counts=None)
    assert manifest["num_images"] == len(_ORACLE_SIZES) and manifest["num_negatives"] == 1
    scored = {e[ex.SOURCE_ID].numpy().decode(): {k: v.numpy() for k, v in e.items()}
              for e in records.load_pseudo_records(str(out))}
    canonical = {e[ex.SOURCE_ID].numpy().decode(): {k: v.numpy() for k, v in e.items()}
                 for e in sources.load(f"pseudo:{out}", "all")}
    images = _oracle_images()
    assert len(canonical) == len(scored) == len(images)
    total = 0
    for name, record in canonical.items():
        index = int(os.path.basename(name)[len("img"):-len(".png")])
        h, w = _ORACLE_SIZES[index]
        np.testing.assert_array_equal(record[ex.IMAGE], images[index])  # the original pixels
        want = _expected_oracle(index, flip_tta)
        scores = scored[name]["scores"]
        np.testing.assert_array_equal(scored[name][ex.BOXES], record[ex.BOXES])
        got = {(int(c), round(float(s), 4)): b
               for b, c, s in zip(record[ex.BOXES], record[ex.CLASSES], scores)}
        assert len(got) == len(record[ex.BOXES])
        assert set(got) == set(want), (name, (h, w), sorted(got), sorted(want))
        for key, box in want.items():
            # Resize rounding is inverted exactly by the recorded scale: well under a pixel.
            np.testing.assert_allclose(got[key], box, atol=0.5,
                                       err_msg=f"{name} ({h}x{w}) box {key}")
        assert np.all(np.diff(scores) <= 0)  # highest score first
        total += len(want)
    assert manifest["num_boxes"] == total > 0


def test_flip_tta_is_rejected_where_a_mirror_changes_the_labels(det_teacher, tmp_path):
    """The digit teacher's labels change under a mirror: labelling with flip TTA fails before
    anything is written, whatever the images; labelling without it is untouched."""
    out = tmp_path / "pseudo"
    with pytest.raises(ValueError, match="flip_tta.*mirror"):
        labeler.pseudo_label(det_teacher, "images:/nowhere/*.png", str(out), flip_tta=True,
                             progress=False)
    assert not out.exists()
