"""SavedModel export for TF Serving: round trip against the Keras model, layout, signatures.

The workdirs are built directly (config.json + a CheckpointManager checkpoint of a tiny model)
instead of trained, so the module fixtures cost seconds; one `slow` test exports a workdir
written by the real trainer. The detector's class head is given random weights with a spread
of scores, so that the score threshold keeps some boxes and the comparisons are not vacuous.
"""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rethink_tf.data import augment
from rethink_tf.models import detector
from rethink_tf.serving import export as export_lib
from rethink_tf.training import checkpoints
from rethink_tf.training import config as config_lib
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import tasks

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order

# The Keras reference calls the functional model with a tensor, not its input dict: harmless.
pytestmark = pytest.mark.filterwarnings("ignore:The structure of `inputs`:UserWarning")

IMAGE_SIZE = 64
SCORE_THRESHOLD = 0.3
BEST_STEP, LATEST_STEP = 3, 5
# Boxes from serving vs the Keras model + hand mapping (pixels), and scores. Both run the same
# float32 kernels on the same pixels, so the measured differences are ~1e-5 px; the tolerance
# leaves room for other CPUs' kernel choices.
BOX_ATOL, SCORE_ATOL = 1e-3, 1e-5


def _config(task, data_dir):
    c = tiny_config(task, data_dir, steps=LATEST_STEP)
    c.dataset.image_size = IMAGE_SIZE
    return c


def _make_workdir(workdir, task, data_dir):
    """config.json, best checkpoint (step 3) and a different latest one (step 5).

    Returns:
        The model holding the best checkpoint's weights (the Keras reference).
    """
    config = _config(task, data_dir)
    config_lib.save(config, workdir)
    keras.utils.set_random_seed(0)
    model = tasks.build_model(config, tasks.num_classes(config))
    if task == "detection":
        # Spread scores (5..30 boxes per image above 0.3) instead of the focal prior's 0.01.
        rng = np.random.RandomState(0)
        head = model.classification_head
        for layer, std in [(layer, 0.1) for layer in head.hidden] + [(head.prediction, 0.5)]:
            kernel, bias = layer.get_weights()
            layer.set_weights([rng.normal(0.0, std, kernel.shape).astype(np.float32),
                               np.full(bias.shape, -2.0 if layer is head.prediction else 0.0,
                                       np.float32)])
    optimizer = optimizer_lib.build_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    manager = checkpoints.CheckpointManager(str(workdir), model=model, optimizer=optimizer)
    manager.save(BEST_STEP)
    manager.maybe_save_best(BEST_STEP, "AP", 0.5)
    best = model.get_weights()
    model.set_weights([w + 0.1 for w in best])
    manager.save(LATEST_STEP)
    model.set_weights(best)
    return model


@pytest.fixture(scope="module")
def det(tmp_path_factory, digit_scenes_data_dir):
    """A detection workdir exported once: namespace with workdir, base, path, model, loaded."""
    root = tmp_path_factory.mktemp("det")
    workdir = str(root / "workdir")
    model = _make_workdir(workdir, "detection", digit_scenes_data_dir)
    detector.set_decoder_threshold(model, SCORE_THRESHOLD, max_detections=100)
    base = str(root / "serving" / "digits")
    path = export_lib.export(workdir, base)
    return type("Exported", (), {"workdir": workdir, "base": base, "path": path,
                                 "model": model, "loaded": tf.saved_model.load(path)})


@pytest.fixture(scope="module")
def real_images(digit_scenes_data_dir):
    """Four real digit_scenes validation images, uint8 [128, 128, 3]."""
    ds = tfds.load("digit_scenes/detection_tiny", split="validation",
                   data_dir=digit_scenes_data_dir, shuffle_files=False)
    return [e["image"].numpy() for e in ds.take(4)]


def _keras_detections(model, image):
    """The Keras model's decoded detections for one uint8 image, mapped to original pixels.

    Preprocessing is evaluation's (`augment.eval_resize`), the mapping back the evaluator's
    image_info arithmetic, then clipping to the image.
    """
    state = augment.eval_resize({"image": tf.constant(image)}, (IMAGE_SIZE, IMAGE_SIZE))
    images = tf.cast(state["image"], tf.float32)[None]
    out = detector.decode_detections(model, model(images, training=False), images)
    n = int(out["num_detections"][0])
    y_scale, x_scale = state["image_info"][2].numpy()
    boxes = out["boxes"][0, :n].numpy() / np.array([x_scale, y_scale, x_scale, y_scale])
    height, width = image.shape[:2]
    boxes = np.clip(boxes, 0.0, [width, height, width, height])
    return boxes, out["confidence"][0, :n].numpy(), out["classes"][0, :n].numpy().astype(int)


def _rows(outputs, i):
    n = int(outputs["num_detections"][i])
    return (outputs["detection_boxes"][i, :n].numpy(), outputs["detection_scores"][i, :n].numpy(),
            outputs["detection_classes"][i, :n].numpy())


def _jpeg(image):
    return tf.io.encode_jpeg(image, quality=95).numpy()


def test_serving_default_matches_keras_model_on_real_jpegs(det, real_images):
    encoded = [_jpeg(image) for image in real_images]
    outputs = det.loaded.signatures["serving_default"](encoded_images=tf.constant(encoded))
    assert outputs["detection_boxes"].shape == (4, 100, 4)
    assert outputs["image_sizes"].numpy().tolist() == [[128, 128]] * 4
    total = 0
    for i, data in enumerate(encoded):
        decoded = tf.io.decode_jpeg(data, channels=3).numpy()  # the same pixels serving sees
        want_boxes, want_scores, want_classes = _keras_detections(det.model, decoded)
        boxes, scores, classes = _rows(outputs, i)
        assert len(scores) == len(want_scores)
        np.testing.assert_allclose(boxes, want_boxes, atol=BOX_ATOL)
        np.testing.assert_allclose(scores, want_scores, atol=SCORE_ATOL)
        np.testing.assert_array_equal(classes, want_classes)
        assert np.all(scores >= SCORE_THRESHOLD)
        # Padding rows are documented as zeros / -1.
        assert np.all(outputs["detection_classes"][i, len(scores):] == -1)
        assert np.all(outputs["detection_scores"][i, len(scores):] == 0.0)
        total += len(scores)
    assert total >= 4, "the test model should keep some boxes above the threshold"


def test_boxes_map_back_to_pixels_of_an_image_of_another_size(det, real_images):
    # A 96x160 image (wider than the 64x64 model input), in a batch with a 128x128 one.
    wide = tf.cast(tf.round(tf.image.resize(real_images[0], (96, 160))), tf.uint8).numpy()
    outputs = det.loaded.signatures["serving_default"](
        encoded_images=tf.constant([tf.io.encode_png(wide).numpy(), _jpeg(real_images[1])]))
    assert outputs["image_sizes"].numpy().tolist() == [[96, 160], [128, 128]]
    # By hand: scale min(64/96, 64/160) = 0.4 -> 38x64 pixels, padded bottom/right to 64x64.
    resized = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(wide, (38, 64))), 0, 255),
                      tf.uint8)
    padded = tf.image.pad_to_bounding_box(resized, 0, 0, IMAGE_SIZE, IMAGE_SIZE)
    images = tf.cast(padded, tf.float32)[None]
    out = detector.decode_detections(det.model, det.model(images, training=False), images)
    n = int(out["num_detections"][0])
    want = out["boxes"][0, :n].numpy() / np.array([64 / 160, 38 / 96, 64 / 160, 38 / 96])
    want = np.clip(want, 0.0, [160, 96, 160, 96])
    boxes, scores, _ = _rows(outputs, 0)
    assert n > 0 and len(boxes) == n
    np.testing.assert_allclose(boxes, want, atol=BOX_ATOL)
    np.testing.assert_allclose(scores, out["confidence"][0, :n].numpy(), atol=SCORE_ATOL)
    assert boxes[:, [0, 2]].max() <= 160 and boxes[:, [1, 3]].max() <= 96
    # The uint8 signature gives the same detections for the same pixels.
    tensor_out = det.loaded.signatures["image_tensor"](images=tf.constant(wide[None]))
    np.testing.assert_allclose(tensor_out["detection_boxes"][0].numpy(),
                               outputs["detection_boxes"][0].numpy(), atol=1e-5)
    assert tensor_out["image_sizes"].numpy().tolist() == [[96, 160]]


def test_malformed_bytes_raise_invalid_argument_naming_the_image(det, real_images):
    serve = det.loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"encoded_images\[1\] is not a JPEG, PNG, GIF or BMP"):
        serve(encoded_images=tf.constant([_jpeg(real_images[0]), b"not an image at all"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"encoded_images\[0\].*0 bytes"):
        serve(encoded_images=tf.constant([b""]))


def test_empty_batch_returns_zero_rows(det):
    for name, inputs in (("serving_default", {"encoded_images": tf.zeros([0], tf.string)}),
                         ("image_tensor", {"images": tf.zeros([0, 50, 70, 3], tf.uint8)})):
        outputs = det.loaded.signatures[name](**inputs)
        assert outputs["detection_boxes"].shape == (0, 100, 4)
        assert outputs["detection_scores"].shape == (0, 100)
        assert outputs["detection_classes"].shape == (0, 100)
        assert outputs["num_detections"].shape == (0,)
        assert outputs["image_sizes"].shape == (0, 2)


def _cli_signatures(path):
    """`saved_model_cli show --all` -> {signature: {"inputs"/"outputs": {name: (dtype, shape)}}}."""
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    text = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True,
                          check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}).stdout
    signatures = {}
    for block in text.split("signature_def['")[1:]:
        name = block.split("'", 1)[0]
        entries = {"inputs": {}, "outputs": {}}
        pattern = r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: \(([^)]*)\)"
        for kind, tensor, dtype, shape in re.findall(pattern, block):
            entries[kind][tensor] = (dtype, shape.replace(" ", ""))
        signatures[name] = entries
    return signatures


def test_saved_model_cli_lists_both_signatures(det):
    signatures = _cli_signatures(det.path)
    assert {"serving_default", "image_tensor"} <= set(signatures)
    outputs = {"detection_boxes": ("DT_FLOAT", "-1,100,4"),
               "detection_classes": ("DT_INT32", "-1,100"),
               "detection_scores": ("DT_FLOAT", "-1,100"),
               "num_detections": ("DT_INT32", "-1"),
               "image_sizes": ("DT_INT32", "-1,2")}
    assert signatures["serving_default"]["inputs"] == {"encoded_images": ("DT_STRING", "-1")}
    assert signatures["image_tensor"]["inputs"] == {"images": ("DT_UINT8", "-1,-1,-1,3")}
    assert signatures["serving_default"]["outputs"] == outputs
    assert signatures["image_tensor"]["outputs"] == outputs


def test_layout_labels_and_export_info(det):
    assert det.path == os.path.join(det.base, "1")
    assert sorted(os.listdir(det.base)) == ["1"]  # no staging directory left behind
    assert os.path.exists(os.path.join(det.path, "saved_model.pb"))
    with open(os.path.join(det.path, "assets", "labels.txt")) as f:
        assert f.read().splitlines() == [str(d) for d in range(10)]
    with open(os.path.join(det.path, "assets.extra", "export_info.json")) as f:
        info = json.load(f)
    assert info["step"] == BEST_STEP
    assert info["checkpoint"].endswith(os.path.join("checkpoints", "best", f"ckpt-{BEST_STEP}"))
    assert info["labels"] == [str(d) for d in range(10)]
    assert info["box_format"] == "xyxy" and info["score_threshold"] == SCORE_THRESHOLD
    assert info["config"]["task"] == "detection"
    assert info["config"]["dataset"]["image_size"] == IMAGE_SIZE


def test_warmup_requests_are_valid_prediction_logs(det):
    from tensorflow_serving.apis import prediction_log_pb2
    path = os.path.join(det.path, "assets.extra", "tf_serving_warmup_requests")
    seen = set()
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "digits"
        signature = request.model_spec.signature_name
        seen.add(signature)
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = det.loaded.signatures[signature](**inputs)
        batch = next(iter(inputs.values())).shape[0]
        assert batch >= 1 and outputs["num_detections"].shape == (batch,)
    assert seen == {"serving_default", "image_tensor"}


def test_export_is_deterministic_and_takes_the_next_version(det):
    again = export_lib.export(det.workdir, det.base)
    assert again == os.path.join(det.base, "2")
    for rel in ("variables/variables.index", "variables/variables.data-00000-of-00001",
                "assets/labels.txt", "assets.extra/tf_serving_warmup_requests"):
        with open(os.path.join(det.path, rel), "rb") as a, open(os.path.join(again, rel),
                                                                 "rb") as b:
            assert a.read() == b.read(), rel
    info = [json.load(open(os.path.join(p, "assets.extra", "export_info.json")))
            for p in (det.path, again)]
    assert info[0].pop("version") == 1 and info[1].pop("version") == 2
    assert info[0] == info[1]
    # TF's fingerprint of the program and signatures ignores only generated function names.
    prints = [tf.saved_model.experimental.read_fingerprint(p) for p in (det.path, again)]
    for field in ("graph_def_program_hash", "signature_def_hash", "saved_object_graph_hash"):
        assert getattr(prints[0], field) == getattr(prints[1], field), field
    with pytest.raises(FileExistsError, match="versions are immutable"):
        export_lib.export(det.workdir, det.base, version=1)


def test_load_model_restores_every_weight_of_the_checkpoint(det):
    # Some detector weights are reachable only through the optimizer in a training checkpoint;
    # every one must come back, not keep its random initial value.
    config = config_lib.load(det.workdir)
    model = tasks.build_restored_model(config, checkpoints.find_checkpoint(det.workdir), 10)
    assert len(model.weights) == len(det.model.weights)
    for restored, want in zip(model.weights, det.model.weights):
        np.testing.assert_array_equal(restored.numpy(), want.numpy(), err_msg=want.path)


def test_load_model_restores_a_student_checkpoint(tmp_path):
    # A student (self-training) run checkpoints the same model plus its loss-normaliser state;
    # its weights must come back into the plain model that is exported.
    from rethink_tf.training import student
    config = _config("detection", "")
    config.model.num_classes = 10  # no dataset metadata needed
    keras.utils.set_random_seed(1)
    model = student.build_student_model(config, 10)
    rng = np.random.RandomState(0)
    model.set_weights([rng.normal(size=w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in model.get_weights()])
    optimizer = optimizer_lib.build_optimizer(config.train)
    optimizer.build(model.trainable_variables)
    checkpoints.CheckpointManager(str(tmp_path), model=model, optimizer=optimizer).save(7)
    restored = tasks.build_restored_model(config, checkpoints.find_checkpoint(str(tmp_path)), 10)
    weights = {w.path: w for w in model.weights}
    assert len(restored.weights) >= len(weights) - 3
    for w in restored.weights:
        np.testing.assert_array_equal(w.numpy(), weights[w.path].numpy(), err_msg=w.path)


def test_checkpoint_choice_and_bad_arguments(det, tmp_path):
    assert checkpoints.find_checkpoint(det.workdir, "best").endswith(f"best/ckpt-{BEST_STEP}")
    assert checkpoints.find_checkpoint(det.workdir, "latest").endswith(f"ckpt-{LATEST_STEP}")
    with pytest.raises(FileNotFoundError, match="neither 'best', 'latest'"):
        checkpoints.find_checkpoint(det.workdir, "newest")
    with pytest.raises(ValueError, match="score_threshold"):
        export_lib.export(det.workdir, str(tmp_path), score_threshold=1.5)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        export_lib.export(str(tmp_path), str(tmp_path / "out"))


@pytest.fixture(scope="module")
def seg(tmp_path_factory, digit_scenes_data_dir):
    root = tmp_path_factory.mktemp("seg")
    workdir = str(root / "workdir")
    model = _make_workdir(workdir, "segmentation", digit_scenes_data_dir)
    path = export_lib.export(workdir, str(root / "serving"))
    return type("Exported", (), {"path": path, "model": model,
                                 "loaded": tf.saved_model.load(path)})


def test_segmentation_masks_at_original_size(seg, real_images):
    wide = tf.cast(tf.round(tf.image.resize(real_images[0], (96, 160))), tf.uint8).numpy()
    outputs = seg.loaded.signatures["serving_default"](
        encoded_images=tf.constant([tf.io.encode_png(wide).numpy(), _jpeg(real_images[1])]))
    masks = outputs["segmentation_masks"].numpy()
    confidence = outputs["segmentation_confidence"].numpy()
    assert masks.shape == confidence.shape == (2, 128, 160)  # the batch's largest sides
    assert outputs["image_sizes"].numpy().tolist() == [[96, 160], [128, 128]]
    assert np.all(masks[0, 96:] == -1) and np.all(masks[1, :, 128:] == -1)
    assert np.all(confidence[0, 96:] == 0.0)
    # By hand: logits of the 38x64 resized image (inside the padded 64x64 input), resized back.
    resized = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(wide, (38, 64))), 0, 255),
                      tf.uint8)
    padded = tf.cast(tf.image.pad_to_bounding_box(resized, 0, 0, IMAGE_SIZE, IMAGE_SIZE),
                     tf.float32)
    logits = seg.model(padded[None], training=False)[0, :38, :64]
    full = tf.image.resize(logits, (96, 160))
    np.testing.assert_array_equal(masks[0, :96], tf.argmax(full, -1).numpy())
    np.testing.assert_allclose(confidence[0, :96],
                               tf.reduce_max(tf.nn.softmax(full, -1), -1).numpy(), atol=1e-5)
    with open(os.path.join(seg.path, "assets", "labels.txt")) as f:
        labels = f.read().splitlines()
    assert masks.max() < len(labels) and labels[0] == "background"


@pytest.mark.slow
def test_exports_a_workdir_written_by_the_trainer(tmp_path, digit_scenes_data_dir, real_images):
    from rethink_tf.training import trainer
    config = _config("detection", digit_scenes_data_dir)
    config.train.steps = 2
    config.train.batch_size = 4
    config.train.warmup_steps = 1
    config.train.checkpoint_every = 2
    config.train.eval_every = 0
    config.train.verbose = 0
    config.eval.num_images = 8
    config.eval.tb_images = 0
    config.dataset.shuffle_buffer = 16
    trainer.train(config, str(tmp_path / "run"))
    path = export_lib.export(str(tmp_path / "run"), str(tmp_path / "serving"), score_threshold=0.0)
    outputs = tf.saved_model.load(path).signatures["serving_default"](
        encoded_images=tf.constant([_jpeg(real_images[0])]))
    assert int(outputs["num_detections"][0]) > 0
    assert json.load(open(os.path.join(path, "assets.extra", "export_info.json")))["step"] == 2
