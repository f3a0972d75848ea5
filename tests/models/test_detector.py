"""RetinaNet detector: forward pass, losses per term and per sub-batch, training, decoding."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from rethink_tf.models import detector as detector_lib  # pylint: disable=wrong-import-position

IMAGE = 64
NUM_CLASSES = 3


def _tiny_detector():
    return detector_lib.build_detector(
        "resnet_tiny", NUM_CLASSES, IMAGE, max_level=5, anchor_sizes=(16.0, 32.0, 64.0),
        fpn_filters=8, head_filters=8, head_depth=1)


@pytest.fixture(scope="module")
def model():
    return _tiny_detector()


def _batch():
    images = np.random.RandomState(0).uniform(0, 255, (2, IMAGE, IMAGE, 3)).astype("float32")
    # Second image has no boxes at all: only -1 padding rows.
    boxes = np.array([[[4, 4, 30, 30], [30, 20, 60, 50]],
                      [[-1, -1, -1, -1], [-1, -1, -1, -1]]], "float32")
    classes = np.array([[0, 2], [-1, -1]], "float32")
    return images, {"boxes": boxes, "classes": classes}


def test_forward_pass_shapes(model):
    images, _ = _batch()
    out = model(images)
    num_anchors = (8 * 8 + 4 * 4 + 2 * 2) * 9
    assert tuple(out["box"].shape) == (2, num_anchors, 4)
    assert tuple(out["classification"].shape) == (2, num_anchors, NUM_CLASSES)


def test_bad_image_size_and_anchor_count_raise():
    with pytest.raises(ValueError, match="divisible"):
        detector_lib.build_detector("resnet_tiny", 3, 100, max_level=5,
                                    anchor_sizes=(16, 32, 64))
    with pytest.raises(ValueError, match="one size per level"):
        detector_lib.build_detector("resnet_tiny", 3, 64, max_level=5, anchor_sizes=(16, 32))


def test_loss_terms_equal_keras_cv_compute_loss(model):
    images, y = _batch()
    model.compile(optimizer="sgd", box_loss="smoothl1", classification_loss="focal")
    y_pred = model(images, training=False)
    terms = detector_lib.detector_loss_terms(model, images, y, y_pred)
    expected = float(model.compute_loss(images, y, y_pred, None))
    np.testing.assert_allclose(float(terms["loss"]), expected, rtol=1e-5)
    np.testing.assert_allclose(float(terms["box_loss"] + terms["classification_loss"]),
                               expected, rtol=1e-5)
    assert float(terms["num_positives"]) > 0
    assert float(terms["num_positives_per_image"][1]) == 0.0
    # The box-less image still contributes background classification loss.
    assert float(terms["classification_loss_per_image"][1]) > 0.0


def test_sub_batch_losses_partition_the_full_batch(model):
    images, y = _batch()
    y_pred = model(images)
    full = detector_lib.detector_loss_terms(model, images, y, y_pred)
    parts = [detector_lib.detector_loss_terms(
        model, images[i:i + 1], {k: v[i:i + 1] for k, v in y.items()},
        detector_lib.slice_predictions(y_pred, i, i + 1)) for i in range(2)]
    for key in ("box_loss_per_image", "classification_loss_per_image",
                "num_positives_per_image"):
        np.testing.assert_allclose(np.concatenate([np.asarray(p[key]) for p in parts]),
                                   np.asarray(full[key]), rtol=1e-5)
    # A sub-batch without any box: its background loss divided by 1, never 0 or NaN (Keras-CV
    # zeroed it, so negative-only images taught nothing).
    empty = parts[1]
    assert float(empty["num_positives"]) == 0.0 and float(empty["box_loss"]) == 0.0
    np.testing.assert_allclose(float(empty["classification_loss"]),
                               float(full["classification_loss_per_image"][1]), rtol=1e-6)
    assert float(empty["loss"]) > 0.0


def test_loss_is_divided_by_at_least_one_positive(model):
    """NumPy reference: (sum of box and focal losses) / max(1, positive anchors)."""
    images, y = _batch()
    y_pred = model(images)
    terms = detector_lib.detector_loss_terms(model, images, y, y_pred)
    per_box = np.asarray(terms["box_loss_per_image"])
    per_cls = np.asarray(terms["classification_loss_per_image"])
    positives = np.asarray(terms["num_positives_per_image"])
    for start, stop in ((0, 2), (0, 1), (1, 2)):
        sub = detector_lib.sub_batch_loss_terms(terms, start, stop)
        divisor = max(1.0, positives[start:stop].sum())
        np.testing.assert_allclose(
            float(sub["loss"]), (per_box[start:stop].sum() + per_cls[start:stop].sum()) / divisor,
            rtol=1e-5)


def test_train_on_batch_with_an_empty_image_is_finite_and_overfits():
    keras.utils.set_random_seed(0)  # an unlucky init of a 14k-parameter net can stall
    model = _tiny_detector()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), box_loss="smoothl1",
                  classification_loss="focal")
    images, y = _batch()
    first = model.train_on_batch(images, y, return_dict=True)["loss"]
    assert np.isfinite(first)
    history = model.fit(images, y, epochs=20, batch_size=2, verbose=0).history["loss"]
    assert all(np.isfinite(history))
    assert history[-1] < 0.5 * first
    empty_y = {"boxes": -np.ones((2, 2, 4), "float32"), "classes": -np.ones((2, 2), "float32")}
    logs = model.train_on_batch(images, empty_y, return_dict=True)
    assert logs["loss"] > 0.0 and all(np.isfinite(v) for v in logs.values())


def test_images_without_boxes_teach_background():
    """On negative-only batches the focal loss still falls (Keras-CV's loss was 0 there)."""
    keras.utils.set_random_seed(0)
    model = _tiny_detector()
    model.compile(optimizer=keras.optimizers.SGD(0.1), box_loss="smoothl1",
                  classification_loss="focal")
    images, _ = _batch()
    empty_y = {"boxes": -np.ones((2, 2, 4), "float32"), "classes": -np.ones((2, 2), "float32")}
    losses = [model.train_on_batch(images, empty_y, return_dict=True)["loss"] for _ in range(5)]
    assert losses[0] > 0.0 and losses[-1] < losses[0]


def _one_hot_prediction(anchor_index, logit_high, extra=None):
    """Raw outputs with zero deltas and a single (or two) confident anchor(s)."""
    num_anchors = 756
    cls = np.full((1, num_anchors, NUM_CLASSES), -10.0, "float32")
    cls[0, anchor_index, 1] = logit_high
    if extra is not None:
        cls[0, extra[0], 2] = extra[1]
    return {"box": np.zeros((1, num_anchors, 4), "float32"), "classification": cls}


def test_decoding_returns_xyxy_anchor_boxes(model):
    images = np.zeros((1, IMAGE, IMAGE, 3), "float32")
    anchors = model.anchor_generator(image_shape=(IMAGE, IMAGE, 3))
    anchors = np.concatenate([np.asarray(a) for a in anchors.values()], axis=0)
    k = 100
    out = detector_lib.decode_detections(model, _one_hot_prediction(k, 10.0), images)
    assert int(out["num_detections"][0]) == 1
    assert int(out["classes"][0, 0]) == 1
    np.testing.assert_allclose(np.asarray(out["boxes"][0, 0]), anchors[k], atol=1e-3)
    x1, y1, x2, y2 = anchors[k]
    assert x2 > x1 and y2 > y1  # xyxy, not yxyx: anchors are generated in the model's format


def test_decoder_threshold_switch(model):
    images = np.zeros((1, IMAGE, IMAGE, 3), "float32")
    # sigmoid(-1) = 0.27: kept at the evaluation threshold 0.05, dropped at 0.5.
    raw = _one_hot_prediction(100, 10.0, extra=(500, -1.0))
    assert int(detector_lib.decode_detections(model, raw, images)["num_detections"][0]) == 2
    try:
        detector_lib.set_decoder_threshold(model, 0.5, max_detections=10)
        out = detector_lib.decode_detections(model, raw, images)
        assert int(out["num_detections"][0]) == 1
        assert tuple(model.predict(images, verbose=0)["boxes"].shape) == (1, 10, 4)
    finally:
        detector_lib.set_decoder_threshold(model, 0.05, max_detections=100)
    assert tuple(model.predict(images, verbose=0)["boxes"].shape) == (1, 100, 4)


def test_keras_file_round_trip(model, tmp_path):
    images, _ = _batch()
    path = str(tmp_path / "det.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(restored(images)["classification"]),
                               np.asarray(model(images)["classification"]), atol=1e-6)
    assert restored.prediction_decoder.confidence_threshold == 0.05


def test_model_only_tf_checkpoint_restores_every_weight(tmp_path):
    """FPN and head convs live in lists; a `tf.train.Checkpoint(model=...)` must still see them
    (the student's `init=teacher:` and pseudo-labelling restore the model without optimiser)."""
    import numpy as np  # pylint: disable=g-import-not-at-top,reimported
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,reimported
    from rethink_tf.models import detector as det  # pylint: disable=g-import-not-at-top

    def build():
        m = det.build_detector("resnet_tiny", 3, 64, max_level=5, anchor_sizes=(16, 32, 64),
                               fpn_filters=8, head_filters=8, head_depth=2)
        m(tf.zeros([1, 64, 64, 3]))
        return m

    source, target = build(), build()
    path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=target).restore(path).assert_existing_objects_matched()
    for a, b in zip(source.get_weights(), target.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_group_norm_heads_build_train_and_checkpoint(tmp_path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top,reimported
    from rethink_tf.models import detector as det  # pylint: disable=g-import-not-at-top
    model = det.build_detector("resnet_tiny", 3, 64, max_level=5, anchor_sizes=(16, 32, 64),
                               fpn_filters=8, head_filters=8, head_depth=2, head_norm="group")
    out = model(tf.zeros([2, 64, 64, 3]))
    assert out["classification"].shape[-1] == 3
    names = [w.path for w in model.weights]
    assert any("hidden_norm_0" in n for n in names)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "c"))
    assert any("hidden_norm" in n for n, _ in tf.train.list_variables(path))
    with pytest.raises(ValueError, match="norm must be 'none' or 'group'"):
        det.PredictionHead(4, norm="batch")


def test_trim_box_padding_keeps_every_real_box():
    import numpy as np  # pylint: disable=g-import-not-at-top,reimported
    from rethink_tf.models import detector as det  # pylint: disable=g-import-not-at-top
    classes = np.array([[1, 2, -1, -1, -1], [0, -1, -1, -1, -1]], np.float32)
    boxes = np.arange(40, dtype=np.float32).reshape(2, 5, 4)
    out = det.trim_box_padding({"boxes": boxes, "classes": classes})
    np.testing.assert_array_equal(np.asarray(out["classes"]), classes[:, :2])
    np.testing.assert_array_equal(np.asarray(out["boxes"]), boxes[:, :2])
    empty = det.trim_box_padding({"boxes": boxes, "classes": -np.ones_like(classes)})
    assert np.asarray(empty["classes"]).shape == (2, 1)


def _pipeline_encoded(images, y):
    """`y` with anchor targets encoded in a tf.data map (as `train.encode_targets=pipeline`)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    encode = detector_lib.pipeline_target_encoder(detector_lib.build_label_encoder(
        max_level=5, anchor_sizes=(16.0, 32.0, 64.0)))
    dataset = tf.data.Dataset.from_tensors((images, y)).map(encode)
    return {key: np.asarray(value) for key, value in next(iter(dataset)).items()}


def test_targets_encoded_in_the_pipeline_equal_the_step_and_give_the_same_loss(model):
    images, y = _batch()
    model.compile(optimizer="sgd", box_loss="smoothl1", classification_loss="focal")
    encoded = _pipeline_encoded(images, y)
    np.testing.assert_array_equal(encoded["boxes"], y["boxes"])  # kept for anything else
    box_targets, class_targets = detector_lib.encode_detection_targets(model, images, y)
    np.testing.assert_array_equal(encoded["class_targets"], np.asarray(class_targets))
    np.testing.assert_array_equal(encoded["box_targets"], np.asarray(box_targets))
    assert (encoded["class_targets"][0] >= 0).sum() > 0  # image 0 has positive anchors
    assert (encoded["class_targets"][1] >= 0).sum() == 0  # the box-less image has none
    y_pred = model(images, training=False)
    np.testing.assert_allclose(float(model.compute_loss(images, encoded, y_pred)),
                               float(model.compute_loss(images, y, y_pred)), rtol=1e-6)
    # The pre-encoded targets are what the loss reads: corrupting them changes it.
    wrong = dict(encoded, class_targets=np.full_like(encoded["class_targets"], -1.0))
    assert float(model.compute_loss(images, wrong, y_pred)) != pytest.approx(
        float(model.compute_loss(images, y, y_pred)), rel=1e-3)
    terms = detector_lib.detector_loss_terms(model, images, encoded, y_pred)
    np.testing.assert_allclose(float(terms["loss"]), float(model.compute_loss(images, y, y_pred)),
                               rtol=1e-5)
