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


def test_mask_class_offset_tightens_boxes_in_the_pipeline():
    # Boxes drawn on random masks get re-tightened to pixels of class c+1 inside them.
    ds = pipelines.build_dataset(examples(), "detection", image_size=64, batch_size=4,
                                 training=False, mask_class_offset=1)
    batch = next(iter(ds))
    assert batch["bounding_boxes"]["boxes"].shape == (4, 100, 4)


@pytest.mark.parametrize("ratio,expected", [(1.0, 4), (0.5, 2), (2.0, 8), (0.1, 1)])
def test_mix_streams_batches_have_exact_sizes(ratio, expected):
    human = pipelines.preprocess(examples(n=6), "detection", image_size=64)
    pseudo = pipelines.preprocess(examples(n=30, prefix="p"), "detection", image_size=64)
    pairs = pipelines.mix_streams(human, pseudo, ratio, human_batch_size=4, seed=0)
    for human_batch, pseudo_batch in pairs.take(5):
        assert human_batch["images"].shape[0] == 4
        assert pseudo_batch["images"].shape[0] == expected
        assert all(s.startswith(b"h") for s in human_batch["source_id"].numpy())
        assert all(s.startswith(b"p") for s in pseudo_batch["source_id"].numpy())


def test_mix_streams_rejects_mismatched_streams_and_bad_ratio():
    det = pipelines.preprocess(examples(), "detection", image_size=64)
    seg = pipelines.preprocess(examples(), "segmentation", image_size=64)
    with pytest.raises(ValueError, match="differ in keys"):
        pipelines.mix_streams(det, seg, human_batch_size=2)
    with pytest.raises(ValueError, match="ratio must be > 0"):
        pipelines.mix_streams(det, det, 0.0, human_batch_size=2)


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
