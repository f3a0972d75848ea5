"""tf.data pipelines: Keras-CV batch format, student batch pairs, per-replica batching."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import pipelines


def examples(n=10, size=(72, 90), with_mask=True, with_label=False, prefix="h"):
    rng = np.random.default_rng(0)

    def gen():
        for i in range(n):
            k = i % 4  # 0..3 objects, including images with none
            x1 = rng.uniform(0, 40, k)
            y1 = rng.uniform(0, 30, k)
            boxes = np.stack([x1, y1, x1 + 20, y1 + 25], -1).astype(np.float32).reshape(k, 4)
            out = {
                "image": rng.integers(0, 255, size + (3,), dtype=np.uint8),
                "boxes": boxes, "classes": np.arange(k, dtype=np.int32),
                "source_id": f"{prefix}{i}",
            }
            if with_mask:
                out["mask"] = rng.integers(0, 3, size + (1,), dtype=np.uint8)
            if with_label:
                out["label"] = np.int32(i % 3)
            yield out

    sig = {
        "image": tf.TensorSpec(size + (3,), tf.uint8), "boxes": tf.TensorSpec([None, 4], tf.float32),
        "classes": tf.TensorSpec([None], tf.int32), "source_id": tf.TensorSpec([], tf.string),
    }
    if with_mask:
        sig["mask"] = tf.TensorSpec(size + (1,), tf.uint8)
    if with_label:
        sig["label"] = tf.TensorSpec([], tf.int32)
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


@pytest.mark.parametrize("training", [True, False])
def test_detection_batches_in_keras_cv_format(training):
    ds = pipelines.build_dataset(examples(), "detection", image_size=64, batch_size=4,
                                 policy="s4", training=training, max_boxes=7)
    batch = next(iter(ds))
    assert batch["images"].shape == (4, 64, 64, 3) and batch["images"].dtype == tf.float32
    boxes, classes = batch["bounding_boxes"]["boxes"], batch["bounding_boxes"]["classes"]
    assert boxes.shape == (4, 7, 4) and classes.shape == (4, 7)
    valid = classes.numpy() >= 0
    assert np.all(boxes.numpy()[~valid] == -1) and np.all(classes.numpy()[~valid] == -1)
    assert np.all(boxes.numpy()[valid] >= 0) and np.all(boxes.numpy()[valid] <= 64)
    assert "segmentation_masks" not in batch and batch["image_info"].shape == (4, 4, 2)


def test_eval_pipeline_keeps_every_example_in_order():
    ds = pipelines.build_dataset(examples(n=10), "detection", image_size=64, batch_size=4,
                                 training=False)
    ids = [s.decode() for b in ds for s in b["source_id"].numpy()]
    assert ids == [f"h{i}" for i in range(10)]  # the last partial batch is kept


def test_segmentation_batches():
    ds = pipelines.build_dataset(examples(), "segmentation", image_size=(48, 64), batch_size=3,
                                 policy="s3")
    batch = next(iter(ds))
    masks = batch["segmentation_masks"]
    assert masks.shape == (3, 48, 64, 1) and masks.dtype == tf.int32
    assert set(np.unique(masks.numpy())) <= {0, 1, 2, 255}
    assert "bounding_boxes" not in batch


def test_classification_batches():
    ds = pipelines.build_dataset(examples(with_label=True), "classification", image_size=32,
                                 batch_size=5, policy="s1")
    batch = next(iter(ds))
    assert batch["labels"].shape == (5,) and batch["labels"].dtype == tf.int32


def test_task_without_its_labels_is_a_clear_error():
    with pytest.raises(ValueError, match=r"task 'segmentation' needs example keys \['mask'\]"):
        pipelines.build_dataset(examples(with_mask=False), "segmentation", image_size=64,
                                batch_size=2)
    with pytest.raises(ValueError, match="task 'keypoints' is not one of"):
        pipelines.build_dataset(examples(), "keypoints", image_size=64, batch_size=2)


def blob_examples(n=6, size=(72, 90)):
    """Loose boxes around solid blobs of mask id class + 1 (the only pixels of that id)."""
    def gen():
        for i in range(n):
            image = np.full(size + (3,), 40 + 10 * i, np.uint8)
            mask = np.zeros(size + (1,), np.uint8)
            boxes = np.array([[4 + i, 6, 40 + i, 50], [48, 20 + i, 86, 66]], np.float32)
            for c, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
                mask[y1 + 8:y2 - 6, x1 + 7:x2 - 9] = c + 1  # the blob, well inside its box
                image[y1 + 8:y2 - 6, x1 + 7:x2 - 9] = 200
            yield {"image": image, "mask": mask, "boxes": boxes,
                   "classes": np.arange(2, dtype=np.int32), "source_id": f"b{i}"}

    sig = {"image": tf.TensorSpec(size + (3,), tf.uint8),
           "mask": tf.TensorSpec(size + (1,), tf.uint8),
           "boxes": tf.TensorSpec([None, 4], tf.float32),
           "classes": tf.TensorSpec([None], tf.int32), "source_id": tf.TensorSpec([], tf.string)}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


def _seeded(task, policy="s1", count=12, **kwargs):
    seed = pipelines.stream_seed(3, "train")
    numbered = pipelines.seeded_examples(blob_examples(), seed=seed, shuffle_buffer=4)
    return pipelines.preprocess(numbered, task, image_size=64, policy=policy, seed=seed,
                                **kwargs).take(count)


def test_mask_class_offset_tightens_boxes_to_the_mask_extent():
    # Same seeds: the segmentation stream shows the mask the detection stream tightened to.
    tight = list(_seeded("detection", mask_class_offset=1))
    loose = list(_seeded("detection"))
    masks = list(_seeded("segmentation"))
    shrunk = 0
    for t, l, m in zip(tight, loose, masks):
        mask = m["segmentation_masks"].numpy()[..., 0]
        boxes, classes = t["bounding_boxes"]["boxes"].numpy(), t["bounding_boxes"]["classes"].numpy()
        valid = classes >= 0
        expected_classes = [c for c in (0, 1) if (mask == c + 1).any()]
        np.testing.assert_array_equal(classes[valid], expected_classes)
        for box, c in zip(boxes[valid], classes[valid]):
            ys, xs = np.where(mask == c + 1)
            np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        loose_boxes = l["bounding_boxes"]["boxes"].numpy()[l["bounding_boxes"]["classes"].numpy() >= 0]
        if len(loose_boxes) == valid.sum():
            shrunk += int(np.any(np.abs(loose_boxes - boxes[valid]) > 2))
    assert shrunk >= 6, "the loose boxes were not tightened"


def test_seeded_preprocess_is_deterministic_and_seed_dependent():
    a = [e["images"].numpy() for e in _seeded("detection", policy="s4", count=6)]
    b = [e["images"].numpy() for e in _seeded("detection", policy="s4", count=6)]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    other = pipelines.stream_seed(4, "train")
    numbered = pipelines.seeded_examples(blob_examples(), seed=other, shuffle_buffer=4)
    c = [e["images"].numpy() for e in pipelines.preprocess(
        numbered, "detection", image_size=64, policy="s4", seed=other).take(6)]
    assert not np.array_equal(np.stack(a), np.stack(c))


def test_seeded_examples_start_mid_stream_and_ignore_the_global_seed():
    data = tf.data.Dataset.range(10)
    seed = pipelines.stream_seed(0, "train")
    tf.random.set_seed(1)
    full = [(int(i), int(x)) for i, x in pipelines.seeded_examples(
        data, seed=seed, shuffle_buffer=4).take(35)]
    tf.random.set_seed(2)
    again = [(int(i), int(x)) for i, x in pipelines.seeded_examples(
        data, seed=seed, shuffle_buffer=4).take(35)]
    assert full == again
    # Resume inside the third epoch; also with an unknown cardinality (counted).
    for source in (data, data.filter(lambda x: True)):
        resumed = [(int(i), int(x)) for i, x in pipelines.seeded_examples(
            source, seed=seed, shuffle_buffer=4, start=23).take(12)]
        assert resumed == full[23:35]
    epochs = [sorted(x for _, x in full[e * 10:(e + 1) * 10]) for e in range(3)]
    assert all(e == list(range(10)) for e in epochs)  # every example once per epoch
    assert full[:10] != full[10:20]  # reshuffled each epoch
    with pytest.raises(ValueError, match="no examples"):
        pipelines.seeded_examples(data.take(0), seed=seed, shuffle_buffer=4)


@pytest.mark.parametrize("ratio,expected", [(1.0, 4), (0.5, 2), (2.0, 8), (0.25, 1)])
def test_mix_streams_batches_have_exact_sizes(ratio, expected):
    human = pipelines.preprocess(examples(n=6), "detection", image_size=64)
    pseudo = pipelines.preprocess(examples(n=30, prefix="p"), "detection", image_size=64)
    classes = pipelines.preprocess(examples(n=5, with_label=True, prefix="c"), "classification",
                                   image_size=32)
    batches = pipelines.mix_streams(
        {"human": human, "pseudo": pseudo, "classification": classes},
        {"human": 4, "pseudo": pipelines.pseudo_batch_size(4, ratio), "classification": 3},
        seed=0)
    for b in batches.take(5):
        assert set(b) == {"human", "pseudo", "classification"}
        assert b["human"]["images"].shape[0] == 4
        assert b["pseudo"]["images"].shape[0] == expected
        assert b["classification"]["images"].shape[1:] == (32, 32, 3)
        assert b["classification"]["labels"].shape == (3,)
        assert all(s.startswith(b"h") for s in b["human"]["source_id"].numpy())
        assert all(s.startswith(b"p") for s in b["pseudo"]["source_id"].numpy())


def test_mix_streams_rejects_mismatched_streams_and_bad_sizes():
    det = pipelines.preprocess(examples(), "detection", image_size=64)
    seg = pipelines.preprocess(examples(), "segmentation", image_size=64)
    with pytest.raises(ValueError, match="differ in keys"):
        pipelines.mix_streams({"human": det, "pseudo": seg}, {"human": 2, "pseudo": 2})
    with pytest.raises(ValueError, match="names must be among"):
        pipelines.mix_streams({"humans": det}, {"humans": 2})
    with pytest.raises(ValueError, match="stream 'pseudo' must be a positive whole number"):
        pipelines.mix_streams({"human": det, "pseudo": det}, {"human": 2, "pseudo": 0})
    with pytest.raises(ValueError, match="ratio must be > 0"):
        pipelines.pseudo_batch_size(2, 0.0)
    with pytest.raises(ValueError, match="self_training.ratio"):
        pipelines.pseudo_batch_size(4, 0.1)  # 0.4 pseudo images


def test_global_pseudo_batch_fixes_the_ratio_globally():
    assert pipelines.global_pseudo_batch(64, 1.0, 8) == 64
    assert pipelines.global_pseudo_batch(64, 0.5, 8) == 32
    assert pipelines.global_pseudo_batch(16, 3.0, 2) == 48
    assert pipelines.global_pseudo_batch(10, 0.1, 1) == 1  # 0.1 is not exact in binary
    # The same global ratio for any replica count (per-replica rounding used to drift:
    # 8 replicas x max(1, round(2 x 0.25)) = 8 pseudo images for 16 human ones, ratio 0.5).
    for replicas in (1, 2, 4):
        assert pipelines.global_pseudo_batch(16, 0.25, replicas) == 4
    with pytest.raises(ValueError, match=r"self_training.ratio=0.3 .* not a whole"):
        pipelines.global_pseudo_batch(16, 0.3, 1)
    with pytest.raises(ValueError, match=r"self_training.ratio=0.25 .* does not divide over 8"):
        pipelines.global_pseudo_batch(16, 0.25, 8)
    with pytest.raises(ValueError, match="must be > 0"):
        pipelines.global_pseudo_batch(16, -1.0, 1)


def test_distribute_gives_per_replica_batches():
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")][:2])
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(per_replica, context):
        src = pipelines.shard_for(examples(n=16), context)
        return pipelines.build_dataset(src, "detection", image_size=64, batch_size=per_replica)

    dist = pipelines.distribute(strategy, dataset_fn, global_batch_size=4)
    batch = next(iter(dist))
    per_replica = strategy.experimental_local_results(batch["images"])
    assert len(per_replica) == replicas
    assert sum(t.shape[0] for t in per_replica) == 4
    assert replicas == 2, "conftest configures 2 logical CPU devices"
    with pytest.raises(ValueError, match="not divisible"):
        pipelines.distribute(strategy, dataset_fn, global_batch_size=3)
