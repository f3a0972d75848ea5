"""Exports a trained workdir as a TF Serving SavedModel with pre- and post-processing inside.

    export(workdir, output_base)            # -> output_base/<next free version>/

Layout written (TF Serving's: it polls `output_base` and serves the highest numeric version):

    output_base/<version>/saved_model.pb, variables/
    output_base/<version>/assets/labels.txt                    class names, line i = class id i
    output_base/<version>/assets.extra/tf_serving_warmup_requests   PredictionLog TFRecord
    output_base/<version>/assets.extra/export_info.json        config, checkpoint, step, labels

The version is first written to a hidden `.tmp-<version>` directory and renamed when complete,
so a running server never sees a half-written model.

Signatures (inputs of any size; the model sees `config.dataset.image_size`, resized with the
aspect ratio kept and padded bottom/right exactly like evaluation's `augment.eval_resize`):

    serving_default   encoded_images: tf.string [batch]  JPEG/PNG/GIF/BMP bytes (images of
                      different sizes may share a batch)
    image_tensor      images: tf.uint8 [batch, height, width, 3]

Outputs (every signature; `image_sizes` int32 [batch, 2] = original (height, width)):

    detection     detection_boxes    float32 [batch, max_detections, 4]  xyxy = (xmin, ymin,
                                     xmax, ymax) in pixels of the ORIGINAL image, clipped to it
                  detection_classes  int32 [batch, max_detections]  class ids (see labels.txt)
                  detection_scores   float32 [batch, max_detections]  sigmoid scores, descending
                  num_detections     int32 [batch]
                  Rows past num_detections are padding: boxes 0, classes -1, scores 0. Per-class
                  NMS and the score threshold (set at export) run inside the graph.
    segmentation  segmentation_masks      int32 [batch, max_height, max_width] class ids at the
                                          original size; -1 where a smaller image of the batch
                                          is padded to the batch's largest one
                  segmentation_confidence float32 [batch, max_height, max_width] softmax
                                          probability of that class (0 in padding)
"""

import json
import os
import re
import shutil
import warnings

import keras
import numpy as np
import tensorflow as tf

from rethink_tf.data import augment
from rethink_tf.data import example as ex
from rethink_tf.training import checkpoints as checkpoints_lib
from rethink_tf.training import config as config_lib
from rethink_tf.training import tasks

ENCODED_SIGNATURE = "serving_default"
TENSOR_SIGNATURE = "image_tensor"
ENCODED_INPUT = "encoded_images"
TENSOR_INPUT = "images"
BOX_FORMAT = "xyxy"
LABELS_FILE = "labels.txt"
INFO_FILE = "export_info.json"
WARMUP_FILE = "tf_serving_warmup_requests"

DETECTION_OUTPUTS = ("detection_boxes", "detection_classes", "detection_scores",
                     "num_detections", "image_sizes")
SEGMENTATION_OUTPUTS = ("segmentation_masks", "segmentation_confidence", "image_sizes")
OUTPUTS = {"detection": DETECTION_OUTPUTS, "segmentation": SEGMENTATION_OUTPUTS}

# Magic numbers of the formats `tf.io.decode_image` reads.
_MAGIC = tuple(ex.ENCODED_MAGIC.values())


def next_version(output_base):
    """The next free TF Serving version under `output_base`: 1 + the largest numeric one."""
    versions = [int(n) for n in (os.listdir(output_base) if os.path.isdir(output_base) else ())
                if re.fullmatch(r"\d+", n)]
    return max(versions, default=0) + 1


def _image_size(config):
    size = config.dataset.image_size
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)


def _preprocess_one(image, output_size):
    """uint8 [h, w, 3] -> (float32 model input [H, W, 3], image_info [4, 2]) as in evaluation."""
    state = augment.resize_and_crop({"image": image}, output_size)
    return tf.cast(state["image"], tf.float32), tf.cast(state["image_info"], tf.float32)


def _decode_one(index, encoded):
    known = tf.reduce_any([tf.equal(tf.strings.substr(encoded, 0, len(m)), m) for m in _MAGIC])
    message = tf.strings.format(
        f"{ENCODED_SIGNATURE}: {ENCODED_INPUT}[{{}}] is not a JPEG, PNG, GIF or BMP encoded "
        "image ({} bytes, unknown header)", (index, tf.strings.length(encoded)))
    check = tf.debugging.Assert(known, [message])
    with tf.control_dependencies([check]):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _detection_outputs(model, images, image_info):
    detections = model.decode_predictions(model(images, training=False), images)
    boxes = tf.cast(detections["boxes"], tf.float32)
    scores = tf.cast(detections["confidence"], tf.float32)
    classes = tf.cast(detections["classes"], tf.int32)
    num = tf.cast(detections["num_detections"], tf.int32)
    scale = image_info[:, 2]  # (y_scale, x_scale); offsets are 0 at evaluation
    boxes = boxes / tf.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], -1)[:, None]
    size = image_info[:, 0]  # original (height, width)
    upper = tf.stack([size[:, 1], size[:, 0], size[:, 1], size[:, 0]], -1)[:, None]
    boxes = tf.clip_by_value(boxes, 0.0, upper)
    valid = tf.range(tf.shape(boxes)[1])[None] < num[:, None]
    return {
        "detection_boxes": tf.where(valid[..., None], boxes, 0.0),
        "detection_classes": tf.where(valid, classes, -1),
        "detection_scores": tf.where(valid, scores, 0.0),
        "num_detections": num,
    }


def _segmentation_outputs(model, images, image_info, sizes):
    logits = tf.cast(model(images, training=False), tf.float32)
    max_size = tf.reduce_max(tf.concat([sizes, tf.zeros([1, 2], tf.int32)], 0), axis=0)

    def one(args):
        image_logits, info, size = args
        # The resized image inside the padded input: original size x scale (image_info row 1
        # is the padded output size, not this).
        scaled = tf.cast(tf.round(info[0] * info[2]), tf.int32)
        valid = image_logits[:scaled[0], :scaled[1]]
        full = tf.image.resize(valid, size, method="bilinear")
        probabilities = tf.nn.softmax(full, axis=-1)
        mask = tf.argmax(full, axis=-1, output_type=tf.int32)
        confidence = tf.reduce_max(probabilities, axis=-1)
        pad = [[0, max_size[0] - size[0]], [0, max_size[1] - size[1]]]
        return (tf.pad(mask, pad, constant_values=-1), tf.pad(confidence, pad))

    masks, confidence = tf.map_fn(
        one, (logits, image_info, sizes),
        fn_output_signature=(tf.TensorSpec([None, None], tf.int32),
                             tf.TensorSpec([None, None], tf.float32)))
    return {"segmentation_masks": masks, "segmentation_confidence": confidence}


class _ServingModule(tf.Module):
    """The exported object: the model's variables, the labels asset and the two signatures."""

    def __init__(self, model, task, image_size, labels_path):
        super().__init__(name="rethink_tf_serving")
        # A getter rather than the model itself, so that tf.Module does not track the Keras
        # object graph: like keras.export.ExportArchive, only its variables are saved.
        self._get_model = lambda: model
        self._task = task
        self._image_size = image_size
        self.model_variables = list(model.variables)
        self.labels = tf.saved_model.Asset(labels_path)
        self.serve_encoded = tf.function(
            self._serve_encoded, autograph=False,
            input_signature=[tf.TensorSpec([None], tf.string, name=ENCODED_INPUT)])
        self.serve_tensor = tf.function(
            self._serve_tensor, autograph=False,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=TENSOR_INPUT)])

    def _serve_encoded(self, encoded_images):
        indices = tf.range(tf.shape(encoded_images)[0])

        def one(args):
            image = _decode_one(*args)
            return _preprocess_one(image, self._image_size) + (tf.shape(image)[:2],)

        return self._predict(*tf.map_fn(one, (indices, encoded_images),
                                        fn_output_signature=self._preprocessed_spec()))

    def _serve_tensor(self, images):
        def one(image):
            return _preprocess_one(image, self._image_size) + (tf.shape(image)[:2],)

        return self._predict(*tf.map_fn(one, images,
                                        fn_output_signature=self._preprocessed_spec()))

    def _preprocessed_spec(self):
        return (tf.TensorSpec(self._image_size + (3,), tf.float32),
                tf.TensorSpec([4, 2], tf.float32), tf.TensorSpec([2], tf.int32))

    def _predict(self, images, image_info, sizes):
        # Some kernels (batch norm under oneDNN) reject a batch of 0, so an empty request skips
        # the model and returns empty outputs of the same structure.
        outputs = tf.cond(tf.shape(images)[0] > 0,
                          lambda: self._model_outputs(images, image_info, sizes),
                          self._empty_outputs)
        outputs["image_sizes"] = sizes
        return outputs

    def _model_outputs(self, images, image_info, sizes):
        with warnings.catch_warnings():
            # Keras warns that the functional model's input is a dict; a tensor is fine.
            warnings.filterwarnings("ignore", message=".*structure of `inputs`.*")
            if self._task == "detection":
                return _detection_outputs(self._get_model(), images, image_info)
            return _segmentation_outputs(self._get_model(), images, image_info, sizes)

    def _empty_outputs(self):
        if self._task == "detection":
            k = self._get_model().prediction_decoder.max_detections
            return {"detection_boxes": tf.zeros([0, k, 4]),
                    "detection_classes": tf.zeros([0, k], tf.int32),
                    "detection_scores": tf.zeros([0, k]),
                    "num_detections": tf.zeros([0], tf.int32)}
        return {"segmentation_masks": tf.zeros([0, 0, 0], tf.int32),
                "segmentation_confidence": tf.zeros([0, 0, 0])}


def _warmup_images(image_size):
    # Fixed (seeded) content, so that export is deterministic; one image at the model's size
    # and one of another shape, to warm up the resize for both.
    rng = np.random.RandomState(0)
    height, width = image_size
    return [rng.randint(0, 256, (height, width, 3), np.uint8),
            rng.randint(0, 256, (max(height // 2, 1), width + width // 2, 3), np.uint8)]


def write_warmup_requests(path, model_name, image_size):
    """Writes TF Serving warm-up requests (a TFRecord of `PredictionLog`) for both signatures.

    TF Serving replays these when it loads the version, so the first real request does not pay
    for graph initialisation.

    Args:
        path: output file, `<version>/assets.extra/tf_serving_warmup_requests`.
        model_name: the model name the server serves it under.
        image_size: the model's (height, width).

    Returns:
        The number of requests written.
    """
    # pylint: disable=g-import-not-at-top
    try:
        from tensorflow_serving.apis import model_pb2
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as e:
        raise ImportError("writing TF Serving warm-up requests needs tensorflow-serving-api: "
                          "pip install -e '.[serving]'") from e
    images = _warmup_images(image_size)
    encoded = [tf.io.encode_jpeg(image, quality=90).numpy() for image in images]
    requests = [
        (ENCODED_SIGNATURE, ENCODED_INPUT, tf.make_tensor_proto(encoded[:1], dtype=tf.string)),
        (ENCODED_SIGNATURE, ENCODED_INPUT, tf.make_tensor_proto(encoded, dtype=tf.string)),
        (TENSOR_SIGNATURE, TENSOR_INPUT, tf.make_tensor_proto(images[0][None])),
    ]
    with tf.io.TFRecordWriter(path) as writer:
        for signature, input_name, tensor in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature),
                inputs={input_name: tensor})
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(requests)


def export(workdir, output_base, version=None, checkpoint="best", score_threshold=0.3,
           max_detections=None, iou_threshold=0.5, model_name=None, class_names=None):
    """Exports the workdir's model as `output_base/<version>/` for TF Serving.

    Args:
        workdir: a training workdir (config.json + checkpoints/).
        output_base: the model base path TF Serving watches (`--model_base_path`).
        version: positive integer version; None = the next free one. An existing version is
            never overwritten.
        checkpoint: "best", "latest" or a checkpoint path (`checkpoints.find_checkpoint`).
        score_threshold: detection score threshold applied in the graph.
        max_detections: detections per image; None = `config.model.max_detections`.
        iou_threshold: per-class NMS IoU threshold.
        model_name: the name in the warm-up requests' ModelSpec; None = the basename of
            `output_base` (TF Serving's `MODEL_NAME` in the usual layout).
        class_names: label names; None = the dataset's (read from its metadata).

    Returns:
        The path of the written version directory.
    """
    config = config_lib.load(workdir)
    task = config.task
    if task not in OUTPUTS:
        raise ValueError(f"{workdir!r}: task {task!r} cannot be exported for serving (only "
                         f"{' and '.join(OUTPUTS)} models)")
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    output_base = os.path.abspath(output_base)
    if version is None:
        version = next_version(output_base)
    version = int(version)
    if version <= 0:
        raise ValueError(f"version must be a positive integer, got {version}")
    final = os.path.join(output_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final!r} exists; TF Serving versions are immutable: pick "
                              "another --version or leave it out for the next free one")
    checkpoint_path = checkpoints_lib.find_checkpoint(workdir, checkpoint)
    n_classes = tasks.num_classes(config)
    if class_names is None:
        class_names = tasks.class_names(config)
    class_names = [str(n) for n in class_names] or [str(i) for i in range(n_classes)]
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for {n_classes} classes")
    image_size = _image_size(config)
    max_detections = int(max_detections or config.model.max_detections)

    model = tasks.build_restored_model(config, checkpoint_path, n_classes)
    if task == "detection":
        from rethink_tf.models import detector  # pylint: disable=g-import-not-at-top
        detector.set_decoder_threshold(model, score_threshold, max_detections, iou_threshold)

    os.makedirs(output_base, exist_ok=True)
    tmp = os.path.join(output_base, f".tmp-{version}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        staging = os.path.join(tmp, "staging")
        os.makedirs(staging)
        labels_path = os.path.join(staging, LABELS_FILE)
        with open(labels_path, "w") as f:
            f.write("".join(name + "\n" for name in class_names))
        saved = os.path.join(tmp, "model")
        module = _ServingModule(model, task, image_size, labels_path)
        signatures = {ENCODED_SIGNATURE: module.serve_encoded.get_concrete_function(),
                      TENSOR_SIGNATURE: module.serve_tensor.get_concrete_function()}
        tf.saved_model.save(module, saved, signatures=signatures)

        extra = os.path.join(saved, "assets.extra")
        os.makedirs(extra)
        model_name = model_name or os.path.basename(output_base.rstrip(os.sep))
        n_warmup = write_warmup_requests(os.path.join(extra, WARMUP_FILE), model_name, image_size)
        info = {
            "workdir": os.path.abspath(workdir),
            "checkpoint": checkpoint_path,
            "step": checkpoints_lib.step_of(checkpoint_path),
            "version": version,
            "task": task,
            "image_size": list(image_size),
            "labels": class_names,
            "signatures": {ENCODED_SIGNATURE: {"inputs": {ENCODED_INPUT: "string [batch]"}},
                           TENSOR_SIGNATURE: {"inputs": {TENSOR_INPUT: "uint8 [batch, h, w, 3]"}}},
            "outputs": list(OUTPUTS[task]),
            "box_format": BOX_FORMAT if task == "detection" else None,
            "score_threshold": score_threshold if task == "detection" else None,
            "iou_threshold": iou_threshold if task == "detection" else None,
            "max_detections": max_detections if task == "detection" else None,
            "warmup_requests": n_warmup,
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            "config": config_lib.to_dict(config),
        }
        with open(os.path.join(extra, INFO_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        os.replace(saved, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # also after a failure
    return final
