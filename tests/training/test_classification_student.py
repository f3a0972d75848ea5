"""Noisy student on a classification corpus ("ImageNet++"): a classifier teacher's hard pseudo
labels (records against the model's own softmax, the threshold, their measured accuracy), the
classification student's losses against a NumPy reference, and pre-training with them."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.data import augment
from rethink_tf.data import example as ex
from rethink_tf.data import sources
from rethink_tf.pseudo import labeler
from rethink_tf.pseudo import quality
from rethink_tf.pseudo import records
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import pretraining
from rethink_tf.training import student
from rethink_tf.training import tasks

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order

CORPUS = "digit_scenes/classification_tiny"
UNLABELED_SPLIT = "validation"  # 16 images whose labels the labeller never reads


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, digit_scenes_data_dir):
    """A classifier pre-trained for a few steps (a real "ImageNet" run, tiny)."""
    workdir = str(tmp_path_factory.mktemp("cls_teacher"))
    config = tiny_config("classification", digit_scenes_data_dir, steps=4)
    pretraining.pretrain(config, workdir)
    return workdir


def _teacher_probabilities(teacher_dir, data_dir):
    """The teacher's softmax on each unlabeled image, computed here from the checkpoint."""
    config, model, _ = tasks.load_model(teacher_dir, "best")
    size = (config.dataset.image_size,) * 2
    probs, labels = {}, {}
    for e in sources.load(CORPUS, UNLABELED_SPLIT, data_dir=data_dir):
        image = augment.eval_resize({ex.IMAGE: e[ex.IMAGE]}, size)[ex.IMAGE]
        logits = model(tf.cast(image, tf.float32)[None], training=False)
        probs[e[ex.SOURCE_ID].numpy()] = tf.nn.softmax(logits[0]).numpy()
        labels[e[ex.SOURCE_ID].numpy()] = int(e[ex.LABEL])
    return probs, labels


def test_classifier_teacher_writes_hard_labels_above_the_threshold(teacher_dir,
                                                                   digit_scenes_data_dir,
                                                                   tmp_path):
    probs, truth = _teacher_probabilities(teacher_dir, digit_scenes_data_dir)
    scores = np.array([p.max() for p in probs.values()])
    threshold = float(np.median(scores))  # about half the images are kept
    out = str(tmp_path / "pseudo")
    manifest = labeler.pseudo_label(teacher_dir, CORPUS, out, split=UNLABELED_SPLIT,
                                    data_dir=digit_scenes_data_dir, score_threshold=threshold,
                                    progress=False, num_output_shards=2)
    kept = {k for k, p in probs.items() if p.max() >= threshold}
    assert manifest["task"] == "classification" and manifest["complete"]
    assert manifest["num_images"] == len(kept)
    assert manifest["num_dropped_empty"] == len(probs) - len(kept) > 0
    assert manifest["score_threshold"] == pytest.approx(threshold)
    assert sum(r["pseudo_images"] for r in manifest["per_class"].values()) == len(kept)
    got = {e[ex.SOURCE_ID].numpy(): e for e in records.load_pseudo_records(out)}
    assert set(got) == kept
    for key, e in got.items():
        np.testing.assert_allclose(e["probabilities"].numpy(), probs[key], atol=1e-5)
        assert int(e[ex.LABEL]) == int(np.argmax(probs[key]))
        assert float(e["score"]) == pytest.approx(float(probs[key].max()), abs=1e-5)
    canonical = sources.load(f"pseudo:{out}", "all")
    assert set(canonical.element_spec) == {ex.IMAGE, ex.SOURCE_ID, ex.LABEL}
    # Quality against the hidden labels: the kept labels' accuracy, per threshold.
    result = quality.report(out, CORPUS, UNLABELED_SPLIT, teacher=teacher_dir,
                            data_dir=digit_scenes_data_dir, thresholds=(0.0, threshold))
    rows = {r["threshold"]: r for r in result["thresholds"]}
    assert rows[0.0]["kept_fraction"] == 1.0
    want = np.mean([int(np.argmax(probs[k])) == truth[k] for k in probs])
    assert rows[0.0]["accuracy"] == pytest.approx(want)
    assert rows[threshold]["kept_fraction"] == pytest.approx(len(kept) / len(probs))


def test_classification_student_losses_match_numpy():
    config = tiny_config("classification")
    model = student.build_student_model(config, num_classes=5)
    model.configure_student("classification", label_smoothing=0.2)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(7, 5)).astype(np.float32)
    h_labels, p_labels = np.array([0, 1, 4]), np.array([2, 2, 3, 0])

    def reference(labels, rows):
        target = np.full((len(labels), 5), 0.2 / 5)
        target[np.arange(len(labels)), labels] += 0.8
        z = rows - rows.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(np.mean(-(target * log_p).sum(1)))

    human, pseudo, extra = model.student_losses(
        (None, None), (tf.constant(h_labels), tf.constant(p_labels)), tf.constant(logits), 3)
    assert float(human) == pytest.approx(reference(h_labels, logits[:3]), rel=1e-5)
    assert float(pseudo) == pytest.approx(reference(p_labels, logits[3:]), rel=1e-5)
    assert float(extra["human_targets"]) == 3 and float(extra["pseudo_targets"]) == 4


def test_pretraining_a_noisy_student_on_pseudo_labels(teacher_dir, digit_scenes_data_dir,
                                                      tmp_path):
    out = str(tmp_path / "pseudo")
    labeler.pseudo_label(teacher_dir, CORPUS, out, split=UNLABELED_SPLIT,
                         data_dir=digit_scenes_data_dir, score_threshold=0.0, progress=False,
                         num_output_shards=2)
    config = tiny_config("classification", digit_scenes_data_dir, steps=4)
    config.self_training.student = True
    config.self_training.pseudo_labels = out
    config.model.dropout = 0.2
    config.model.drop_path_rate = 0.1
    workdir = str(tmp_path / "student")
    metrics = pretraining.pretrain(config, workdir)
    assert os.path.exists(metrics["backbone_weights"])
    assert 0.0 <= metrics["top1"] <= 1.0
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["step"] == 4
    # The student step ran: its per-stream losses and the normaliser are in TensorBoard.
    from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
    tags = set()
    for run in os.listdir(os.path.join(workdir, "tb")):
        acc = event_accumulator.EventAccumulator(os.path.join(workdir, "tb", run))
        acc.Reload()
        tags |= set(acc.Tags().get("scalars", [])) | set(acc.Tags().get("tensors", []))
    assert any("pseudo_loss" in t for t in tags), sorted(tags)
    # A student config without pseudo labels fails before any work.
    config.self_training.pseudo_labels = ""
    with pytest.raises(ValueError, match="pseudo_labels"):
        pretraining.pretrain(config, str(tmp_path / "none"))
    assert not os.path.exists(str(tmp_path / "none"))
