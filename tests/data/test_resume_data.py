"""Training data is a pure function of (seed, stream, position): resumed runs see the batches
an uninterrupted run sees; the student's two streams share one box geometry."""

import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import pipelines
from rethink_tf.data import sources
from rethink_tf.training import config as config_lib
from rethink_tf.training import tasks

BATCH = 4  # the tiny train split has 24 scenes: 6 batches per epoch


def data_config(task, data_dir, policy="s1", seed=0):
    c = config_lib.base_config(task)
    c.dataset.name = "digit_scenes/detection_tiny"
    c.dataset.data_dir = data_dir
    c.dataset.image_size = 64
    c.dataset.shuffle_buffer = 16
    c.augment = policy
    c.seed = seed
    return c


def _arrays(batches):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in batches]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)


def _train(config, start_step, count, input_context=None):
    info = tasks.dataset_info(config)
    return _arrays(tasks.train_dataset(config, info, BATCH, input_context,
                                       start_step=start_step).take(count))


@pytest.mark.parametrize("policy", ["s1", "s4"])
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_resumed_train_data_equals_the_uninterrupted_runs(task, policy, digit_scenes_data_dir):
    config = data_config(task, digit_scenes_data_dir, policy)
    full = _train(config, 0, 9)
    # Resume inside the second epoch: skips one whole epoch and one batch.
    assert_same_batches(_train(config, 7, 2), full[7:9])
    with pytest.raises(AssertionError):
        assert_same_batches(full[0:2], full[7:9])


def test_same_seed_same_data_other_seed_other_data(digit_scenes_data_dir):
    # (s4 runs built twice are compared in the resume tests.)
    config = data_config("detection", digit_scenes_data_dir)
    first = _train(config, 0, 3)
    assert_same_batches(first, _train(config, 0, 3))
    other = _train(data_config("detection", digit_scenes_data_dir, seed=1), 0, 3)
    assert not np.array_equal(first[0][0], other[0][0])


def test_one_pipeline_feeding_two_replicas_resumes_at_the_right_example(
        digit_scenes_data_dir):
    # One input pipeline feeds 2 replicas: each step takes 2 of its batches.
    config = data_config("detection", digit_scenes_data_dir)
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    full = _train(config, 0, 8, context)
    assert_same_batches(_train(config, 3, 2, context), full[6:8])


def test_distributed_dataset_resumes(digit_scenes_data_dir):
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")][:2])
    assert strategy.num_replicas_in_sync == 2
    config = data_config("detection", digit_scenes_data_dir)
    info = tasks.dataset_info(config)

    def step_images(start_step, steps):
        dist = pipelines.distribute(
            strategy, lambda bs, ctx: tasks.train_dataset(config, info, bs, ctx, start_step),
            2 * BATCH)
        out, iterator = [], iter(dist)
        for _ in range(steps):
            batch = next(iterator)
            images = strategy.experimental_local_results(batch[0])
            out.append(np.concatenate([t.numpy() for t in images]))
        return out

    full = step_images(0, 5)
    np.testing.assert_array_equal(np.stack(step_images(4, 1)), np.stack(full[4:5]))


def test_input_pipelines_have_distinct_streams(digit_scenes_data_dir):
    config = data_config("detection", digit_scenes_data_dir)
    info = tasks.dataset_info(config)
    ids = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=2)
        model_examples = tasks.train_examples(config, info, context).take(12)
        ids.append({e["source_id"].numpy() for e in model_examples})
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # sharded: disjoint examples


def _fake_pseudo(data_dir, task):
    """Pseudo examples: the human train scenes, ids renamed; detection ones have no masks."""
    def pseudo_examples(config, input_context=None):
        examples = sources.load("digit_scenes/detection_tiny", "train", data_dir=data_dir)
        keys = ("image", "boxes", "classes") if task == "detection" else ("image", "mask")

        def to_pseudo(e):
            out = {k: e[k] for k in keys}
            out["source_id"] = tf.strings.join(["p", e["source_id"]])
            return out
        return pipelines.shard_for(examples.map(to_pseudo), input_context)
    return pseudo_examples


def _student(config, start_step, count, human_batch=BATCH):
    info = tasks.dataset_info(config)
    batches = _arrays(tasks.student_dataset(config, info, human_batch,
                                            start_step=start_step).take(count))
    assert all(set(b) == {"human", "pseudo"} for b in batches)  # named streams
    return [(b["human"], b["pseudo"]) for b in batches]


@pytest.mark.parametrize("policy", ["s1", "s4"])
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_resumed_student_pairs_equal_the_uninterrupted_runs(task, policy, monkeypatch,
                                                            digit_scenes_data_dir):
    monkeypatch.setattr(tasks, "pseudo_examples", _fake_pseudo(digit_scenes_data_dir, task))
    config = data_config(task, digit_scenes_data_dir, policy)
    config.self_training.ratio = 1.5
    full = _student(config, 0, 6)
    (h_images, _), (p_images, _) = full[0]
    assert h_images.shape[0] == BATCH and p_images.shape[0] == 6
    assert_same_batches(_student(config, 5, 1), full[5:6])


def test_student_rejects_a_ratio_without_a_whole_pseudo_batch(monkeypatch,
                                                             digit_scenes_data_dir):
    monkeypatch.setattr(tasks, "pseudo_examples",
                        _fake_pseudo(digit_scenes_data_dir, "detection"))
    config = data_config("detection", digit_scenes_data_dir)
    config.self_training.ratio = 0.3
    with pytest.raises(ValueError, match="self_training.ratio"):
        tasks.student_dataset(config, tasks.dataset_info(config), BATCH)


def test_student_streams_share_one_box_geometry(monkeypatch, digit_scenes_data_dir):
    # Identical human and pseudo examples under identical seeds must get identical boxes:
    # human boxes (which have masks) are not re-tightened, since pseudo ones cannot be.
    monkeypatch.setattr(tasks, "pseudo_examples",
                        _fake_pseudo(digit_scenes_data_dir, "detection"))
    stream_seed = pipelines.stream_seed
    monkeypatch.setattr(pipelines, "stream_seed",
                        lambda seed, stream, pipeline_id=0: stream_seed(seed, "same", pipeline_id))
    config = data_config("detection", digit_scenes_data_dir, "s4")
    assert tasks.mask_class_offset(tasks.dataset_info(config)) is not None  # human masks exist
    for (h_images, h_targets), (p_images, p_targets) in _student(config, 0, 4):
        np.testing.assert_array_equal(h_images, p_images)
        tf.nest.map_structure(np.testing.assert_array_equal, h_targets, p_targets)
