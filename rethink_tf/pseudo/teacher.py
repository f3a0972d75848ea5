"""The teacher: a trained model in inference mode, predicting in original image pixels.

    teacher = load_teacher("/runs/det")                 # a workdir: best checkpoint, else latest
    teacher = load_teacher("/runs/det/export/1")        # or a SavedModel from rethink_tf.export
    teacher.set_score_threshold(0.5)
    for fields, prediction in teacher.predict_stream(examples, batch_size=32, flip_tta=True):
        ...   # detection: {"boxes" [n, 4] xyxy pixels, "classes" [n], "scores" [n]}
              # segmentation: {"mask" [h, w] argmax class ids, "confidence" [h, w] top prob}

The teacher is not noised (noisy student): `training=False` (batch norm uses its moving
statistics, no dropout or stochastic depth) and evaluation's resize-and-pad
(`augment.eval_resize`), never an augmentation policy. Its weights are only read.

Horizontal-flip test-time augmentation (`flip_tta=True`): the original image is flipped, resized
like the unflipped one and run in the same forward pass. Detection takes the union of both
passes' boxes (the flipped ones mapped back) and runs class-wise NMS over it; segmentation
averages the two passes' softmax probabilities (the flipped ones flipped back).
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import warnings

import numpy as np
import tensorflow as tf
from absl import logging

from rethink_tf.data import augment
from rethink_tf.data import example as ex

DETECTION = "detection"
SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"
TASKS = (DETECTION, SEGMENTATION)
WORKDIR_TASKS = TASKS + (CLASSIFICATION,)  # a classifier labels a classification corpus


def nms_classwise(boxes, scores, classes, iou_threshold=0.5, max_detections=100):
    """Class-wise greedy NMS (NumPy); returns the kept indices, highest score first.

    Args:
        boxes: float [n, 4] xyxy.
        scores: float [n].
        classes: int [n]; boxes of different classes never suppress each other.
        iou_threshold: a box is suppressed by a higher-scoring box of its class with
            IoU > this.
        max_detections: at most this many indices are returned.

    Returns:
        int64 [k] indices into the inputs.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    # Stable sort: equal scores keep input order, so the result is deterministic.
    order = np.argsort(-scores, kind="stable")
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_detections:
            break
        same = (classes == classes[i]) & ~suppressed
        x1 = np.maximum(boxes[i, 0], boxes[:, 0])
        y1 = np.maximum(boxes[i, 1], boxes[:, 1])
        x2 = np.minimum(boxes[i, 2], boxes[:, 2])
        y2 = np.minimum(boxes[i, 3], boxes[:, 3])
        inter = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
        iou = inter / np.maximum(areas[i] + areas - inter, 1e-9)
        suppressed |= same & (iou > iou_threshold)
        suppressed[i] = True
    return np.asarray(keep, np.int64)


def flip_boxes(boxes, width):
    """Mirrors xyxy boxes of an image `width` pixels wide."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], -1)


def merge_flip_detections(plain, flipped, width, iou_threshold=0.5, max_detections=100):
    """Union of a plain and a flipped pass (flipped boxes mapped back), then class-wise NMS.

    Args:
        plain: {"boxes" [n, 4], "classes" [n], "scores" [n]} in original pixels.
        flipped: the same for the flipped image, in the flipped image's pixels.
        width: the original image width.
        iou_threshold: NMS IoU threshold.
        max_detections: boxes kept.

    Returns:
        The merged detections, highest score first.
    """
    boxes = np.concatenate([plain["boxes"], flip_boxes(flipped["boxes"], width)], 0)
    scores = np.concatenate([plain["scores"], flipped["scores"]], 0)
    classes = np.concatenate([plain["classes"], flipped["classes"]], 0)
    keep = nms_classwise(boxes, scores, classes, iou_threshold, max_detections)
    return {"boxes": boxes[keep].reshape(-1, 4), "classes": classes[keep].astype(np.int32),
            "scores": scores[keep]}


class Teacher:
    """A model that labels images; see the module docstring.

    Attributes:
        task: 'detection' or 'segmentation'.
        num_classes: classes of the task (segmentation: mask ids, background included).
        class_names: tuple of names, index = class id.
        identity: JSON-able description (kind, path, checkpoint, step) for the manifest.
        config: the training config (a workdir teacher) or None.
    """

    task: str
    num_classes: int
    class_names: tuple
    identity: dict
    config = None
    score_threshold = 0.05
    max_detections = 100
    nms_iou_threshold = 0.5

    def set_score_threshold(self, score_threshold: float, max_detections: int | None = None):
        """Sets the lowest detection score returned (and optionally the boxes per image)."""
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.score_threshold = float(score_threshold)
        if max_detections is not None:
            self.max_detections = int(max_detections)

    def check_flip_tta(self, flip_tta: bool) -> None:
        """Raises ValueError if this teacher cannot do flip TTA (checked before any work)."""

    def flip_keeps_labels(self) -> bool:
        """Whether a mirror keeps the labels of the data this teacher learnt (its label space):
        flip TTA for pseudo labels needs it (`labeler.check_flip_tta`). True when unknown."""
        return True

    def input_fn(self, example, flip_tta: bool):
        """Maps a canonical example to the teacher's inputs (inside tf.data; pure TF).

        Returns:
            A dict of fixed-shape tensors (`size` int32 [2] = original (height, width), plus
            whatever `predict` needs).
        """
        raise NotImplementedError

    def predict(self, batch, flip_tta: bool) -> list[dict]:
        """Predicts a batch made of `input_fn` outputs; returns one dict per image."""
        raise NotImplementedError

    def predict_stream(self, examples: tf.data.Dataset, *, batch_size: int = 32,
                       flip_tta: bool = False, passthrough=(), map_fn=None):
        """Streams predictions over a dataset of canonical examples (memory stays flat).

        Args:
            examples: canonical examples (at least `image` and `source_id`).
            batch_size: images per forward pass.
            flip_tta: horizontal-flip test-time augmentation.
            passthrough: keys of the example (or of `map_fn`'s output) to yield with each
                prediction, e.g. `("source_id",)`; variable-length ones are fine.
            map_fn: optional `fn(example) -> dict of extra tensors` run inside tf.data (e.g.
                the encoded image for a record).

        Yields:
            (fields, prediction): fields = {key: NumPy value} for `passthrough` and `size`.
        """
        self.check_flip_tta(flip_tta)
        passthrough = tuple(passthrough)

        def prepare(example):
            out = dict(self.input_fn(example, flip_tta))
            extra = dict(map_fn(example)) if map_fn is not None else {}
            for key in passthrough:
                out[key] = extra[key] if key in extra else example[key]
            return out

        batches = examples.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        fixed = all(spec.shape.is_fully_defined()
                    for spec in tf.nest.flatten(batches.element_spec))
        # Plain batching where every field has a fixed shape (cheaper than ragged batching).
        # A fixed, small prefetch keeps memory bounded by a few batches.
        batches = (batches.batch(batch_size) if fixed
                   else batches.ragged_batch(batch_size)).prefetch(2)

        def predicted(batch):
            predictions = self.predict(batch, flip_tta)
            # One conversion per batch: slicing an eager tensor per image costs ~0.25 ms
            # (measured: a third of the labeler's Python time at 3 keys per image).
            columns = {key: _to_numpy(batch[key]) for key in passthrough}
            return columns, batch["size"].numpy(), predictions

        # The forward pass of batch k + 1 runs (GIL released) while the caller handles the
        # images of batch k.
        for columns, sizes, predictions in _in_background(batches, predicted, depth=2):
            for i, prediction in enumerate(predictions):
                fields = {key: column[i] for key, column in columns.items()}
                fields["size"] = sizes[i]
                yield fields, prediction

    def predict_images(self, images, flip_tta: bool = False):
        """Predicts a list of uint8 [h, w, 3] images (any sizes); returns one dict per image."""
        ds = tf.data.Dataset.from_generator(
            lambda: ({ex.IMAGE: image, ex.SOURCE_ID: str(i)} for i, image in enumerate(images)),
            output_signature={ex.IMAGE: tf.TensorSpec([None, None, 3], tf.uint8),
                              ex.SOURCE_ID: tf.TensorSpec([], tf.string)})
        return [p for _, p in self.predict_stream(ds, batch_size=max(len(images), 1),
                                                  flip_tta=flip_tta)]


def _in_background(dataset, fn, depth: int):
    """Yields `fn(element)` for the elements of `dataset`, computed in a thread `depth` ahead.

    Exceptions in the thread are raised in the consumer. Closing the generator (a `break`
    or an error in the consumer) stops the thread after its current item. At the end of the
    data the consumer goes on at once: destroying a tf.data iterator waits for its threads
    (0.25 s typically, up to 9 s measured, idle), which the thread does on its own.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        iterator = iter(dataset)  # destroyed when this returns, after `done` is delivered
        try:
            for element in iterator:
                if not put((None, fn(element))):
                    return
        except BaseException as err:  # pylint: disable=broad-except
            put((err, None))
            return
        put((None, done))

    thread = threading.Thread(target=produce, name="teacher-predict", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            err, item = items.get()
            if err is not None:
                raise err
            if item is done:
                finished = True
                return
            yield item
    finally:
        if not finished:
            stop.set()
            thread.join()


def _to_numpy(value):
    """A batched (dense or ragged) tensor as NumPy: indexing [i] gives image i's value."""
    return value.numpy() if hasattr(value, "numpy") else value


class WorkdirTeacher(Teacher):
    """A teacher restored from a training workdir's checkpoint (float32)."""

    def __init__(self, workdir: str, checkpoint: str = "best"):
        from rethink_tf.training import checkpoints  # pylint: disable=g-import-not-at-top
        from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
        from rethink_tf.training import tasks  # pylint: disable=g-import-not-at-top
        self.config = config_lib.load(workdir)
        self.task = self.config.task
        if self.task not in WORKDIR_TASKS:
            raise ValueError(f"teacher {workdir!r} is a {self.task} model; pseudo labels need a "
                             f"detection, segmentation or classification teacher")
        path = checkpoints.find_checkpoint(workdir, checkpoint)
        self.num_classes = tasks.num_classes(self.config)
        names = tasks.class_names(self.config)
        self.class_names = tuple(str(n) for n in names) or tuple(
            str(c) for c in range(self.num_classes))
        # Training's one workdir API: float32, strict, the model's weights alone.
        _, self.model, _ = tasks.load_model(workdir, path, config=self.config)
        size = self.config.dataset.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, int) else tuple(
            int(s) for s in size)
        self.max_detections = int(self.config.model.max_detections)
        self.identity = {"kind": "workdir", "path": os.path.abspath(workdir),
                         "checkpoint": os.path.abspath(path),
                         "step": checkpoints.step_of(path)}
        self._decoder_key = None
        self._forward = self._make_forward()
        self._to_original = tf.function(
            _segmentation_to_original, input_signature=[
                tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([4, 2], tf.float32),
                tf.TensorSpec([2], tf.int32)])

    def flip_keeps_labels(self):
        from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
        return config_lib.hflip(self.config)

    def _sync_decoder(self):
        key = (self.score_threshold, self.max_detections, self.nms_iou_threshold)
        if key != self._decoder_key:
            from rethink_tf.models import detector  # pylint: disable=g-import-not-at-top
            detector.set_decoder_threshold(self.model, self.score_threshold, self.max_detections,
                                           self.nms_iou_threshold)
            self._decoder_key = key
            # The decoder is captured at trace time.
            self._forward = self._make_forward()

    def _make_forward(self):
        # Any batch size, one trace: a run's last, partial batch must not trace it again.
        return tf.function(self._forward_impl, input_signature=[
            tf.TensorSpec([None, *self.image_size, 3], tf.uint8)], autograph=False)

    def _forward_impl(self, images):
        images = tf.cast(images, tf.float32)  # uint8 [batch, h, w, 3] from input_fn
        with warnings.catch_warnings():
            # Keras warns that the functional model's input is a dict; a tensor is fine.
            warnings.filterwarnings("ignore", message=".*structure of `inputs`.*")
            outputs = self.model(images, training=False)
        if self.task == DETECTION:
            from rethink_tf.models import detector  # pylint: disable=g-import-not-at-top
            return detector.decode_detections(self.model, outputs, images)
        if self.task == CLASSIFICATION:
            return tf.nn.softmax(tf.cast(outputs, tf.float32), axis=-1)
        return tf.cast(outputs, tf.float32)

    def input_fn(self, example, flip_tta):
        image = example[ex.IMAGE]
        state = augment.eval_resize({ex.IMAGE: image}, self.image_size)
        out = {"size": tf.shape(image)[:2],
               # uint8 through tf.data (a quarter of float32's bytes to batch and hand over;
               # measured 5 % faster labelling); the forward pass casts.
               "teacher/image": state[ex.IMAGE],
               "teacher/image_info": tf.cast(state["image_info"], tf.float32)}
        if flip_tta:
            # Flip the original, then resize: padding stays bottom/right as in training.
            flipped = augment.eval_resize({ex.IMAGE: image[:, ::-1]}, self.image_size)
            out["teacher/flipped"] = flipped[ex.IMAGE]
        return out

    def predict(self, batch, flip_tta):
        images = batch["teacher/image"]
        n = int(images.shape[0])
        if flip_tta:
            images = tf.concat([images, batch["teacher/flipped"]], 0)  # one forward pass
        if self.task == DETECTION:
            self._sync_decoder()
        outputs = self._forward(images)
        info = batch["teacher/image_info"].numpy()
        sizes = batch["size"].numpy()
        if self.task == DETECTION:
            outputs = {k: v.numpy() for k, v in outputs.items()}
            plain = self._detections(outputs, 0, n, info, sizes)
            if not flip_tta:
                return plain
            flipped = self._detections(outputs, n, n, info, sizes)
            return [merge_flip_detections(p, f, int(sizes[i][1]), self.nms_iou_threshold,
                                          self.max_detections)
                    for i, (p, f) in enumerate(zip(plain, flipped))]
        if self.task == CLASSIFICATION:
            probs = outputs.numpy()
            if flip_tta:
                probs = (probs[:n] + probs[n:]) / 2
            return [{"probabilities": p.astype(np.float32), "label": int(np.argmax(p)),
                     "score": float(np.max(p))} for p in probs]
        results = []
        for i in range(n):
            probs = self._to_original(outputs[i], info[i], sizes[i])
            if flip_tta:
                probs = (probs + self._to_original(outputs[n + i], info[i], sizes[i])[:, ::-1]) / 2
            probs = probs.numpy()
            results.append({"mask": np.argmax(probs, -1).astype(np.int32),
                            "confidence": np.max(probs, -1).astype(np.float32)})
        return results

    def _detections(self, outputs, start, n, info, sizes):
        from rethink_tf.evaluation import evaluator  # pylint: disable=g-import-not-at-top
        boxes = evaluator.to_original_pixels(outputs["boxes"][start:start + n], info)
        results = []
        for i in range(n):
            k = int(outputs["num_detections"][start + i])
            height, width = (float(s) for s in sizes[i])
            b = np.clip(boxes[i, :k], 0.0, [width, height, width, height]).astype(np.float32)
            scores = outputs["confidence"][start + i, :k].astype(np.float32)
            classes = outputs["classes"][start + i, :k].astype(np.int32)
            keep = (scores >= self.score_threshold) & (classes >= 0) & (
                b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            order = np.argsort(-scores[keep], kind="stable")
            results.append({"boxes": b[keep][order].reshape(-1, 4),
                            "classes": classes[keep][order], "scores": scores[keep][order]})
        return results


def _segmentation_to_original(logits, image_info, size):
    """Logits at model resolution -> softmax probabilities [h, w, C] at the original size."""
    # As serving does: the resized image is original x scale inside the padded input.
    scaled = tf.cast(tf.round(image_info[0] * image_info[2]), tf.int32)
    valid = logits[:scaled[0], :scaled[1]]
    return tf.nn.softmax(tf.image.resize(valid, size, method="bilinear"), axis=-1)


def _encoded_signature(info):
    """(signature, input name) of a SavedModel's encoded-image signature.

    Read from the export_info.json that `rethink_tf.serving.export` writes beside it: the
    SavedModel's format is the contract, so pseudo/ does not import serving/.
    """
    for name, spec in (info.get("signatures") or {}).items():
        for input_name, kind in (spec.get("inputs") or {}).items():
            if str(kind).startswith("string"):
                return name, input_name
    return "serving_default", "encoded_images"  # what every export so far has written


class SavedModelTeacher(Teacher):
    """A teacher loaded from a SavedModel written by `rethink_tf.serving.export`.

    Uses the `serving_default` signature (encoded images of any size; the model's own
    resize-and-pad and per-class NMS run inside the graph). Its detection score threshold
    was fixed at export: a lower `score_threshold` here cannot bring back boxes it dropped.
    Segmentation flip TTA needs every class's probability, which the SavedModel does not
    return, so it needs a workdir teacher.
    """

    def __init__(self, path: str):
        info_path = os.path.join(path, "assets.extra", "export_info.json")
        if not tf.io.gfile.exists(info_path):
            raise ValueError(f"teacher {path!r} is a SavedModel without assets.extra/"
                             "export_info.json; export it with `python -m rethink_tf.export`")
        with tf.io.gfile.GFile(info_path) as f:
            info = json.load(f)
        self.task = info["task"]
        if self.task not in TASKS:
            raise ValueError(f"teacher {path!r} is a {self.task} model; pseudo labels need a "
                             "detection or segmentation teacher")
        self.class_names = tuple(info["labels"])
        self.num_classes = len(self.class_names)
        self.export_score_threshold = info.get("score_threshold")
        self.max_detections = int(info.get("max_detections") or 100)
        self.nms_iou_threshold = float(info.get("iou_threshold") or 0.5)
        self._loaded = tf.saved_model.load(path)
        signature, self._input = _encoded_signature(info)
        self._serve = self._loaded.signatures[signature]
        self.identity = {"kind": "saved_model", "path": os.path.abspath(path),
                         "workdir": info.get("workdir"), "checkpoint": info.get("checkpoint"),
                         "step": info.get("step"),
                         "export_score_threshold": self.export_score_threshold}

    def set_score_threshold(self, score_threshold, max_detections=None):
        super().set_score_threshold(score_threshold, max_detections)
        floor = self.export_score_threshold
        if self.task == DETECTION and floor is not None and score_threshold < floor:
            logging.warning("score_threshold %.3f is below the SavedModel's export threshold "
                            "%.3f: boxes scored in between are not available", score_threshold,
                            floor)

    def check_flip_tta(self, flip_tta):
        if flip_tta and self.task == SEGMENTATION:
            raise ValueError("flip_tta for segmentation averages class probabilities, which a "
                             "SavedModel teacher does not return; use a workdir teacher")

    def input_fn(self, example, flip_tta):
        image = example[ex.IMAGE]
        out = {"size": tf.shape(image)[:2], "teacher/encoded": tf.io.encode_png(image)}
        if flip_tta:
            out["teacher/flipped"] = tf.io.encode_png(image[:, ::-1])
        return out

    def _call(self, encoded):
        outputs = self._serve(**{self._input: encoded})
        return {k: v.numpy() for k, v in outputs.items()}

    def predict(self, batch, flip_tta):
        sizes = batch["size"].numpy()
        outputs = self._call(batch["teacher/encoded"])
        if self.task == SEGMENTATION:
            results = []
            for i, (h, w) in enumerate(sizes):
                results.append({"mask": outputs["segmentation_masks"][i, :h, :w].astype(np.int32),
                                "confidence": outputs["segmentation_confidence"][i, :h, :w]})
            return results
        plain = self._detections(outputs)
        if not flip_tta:
            return plain
        flipped = self._detections(self._call(batch["teacher/flipped"]))
        return [merge_flip_detections(p, f, int(sizes[i][1]), self.nms_iou_threshold,
                                      self.max_detections)
                for i, (p, f) in enumerate(zip(plain, flipped))]

    def _detections(self, outputs):
        results = []
        for i, k in enumerate(outputs["num_detections"]):
            scores = outputs["detection_scores"][i, :k].astype(np.float32)
            keep = scores >= self.score_threshold
            results.append({"boxes": outputs["detection_boxes"][i, :k][keep].astype(np.float32),
                            "classes": outputs["detection_classes"][i, :k][keep].astype(np.int32),
                            "scores": scores[keep]})
        return results


def _latest_version(path):
    versions = [n for n in tf.io.gfile.listdir(path) if re.fullmatch(r"\d+/?", n)]
    versions = sorted((int(v.rstrip("/")) for v in versions), reverse=True)
    for version in versions:
        candidate = os.path.join(path, str(version))
        if tf.saved_model.contains_saved_model(candidate):
            return candidate
    return None


def load_teacher(path: str, checkpoint: str = "best") -> Teacher:
    """Loads a teacher from a training workdir or a SavedModel.

    Args:
        path: a workdir (config.json + checkpoints/), a SavedModel directory, or a TF Serving
            model base (numbered versions: the highest is used).
        checkpoint: for a workdir: "best" (falls back to the latest when there is no best),
            "latest" or a checkpoint path.

    Returns:
        A `Teacher`.

    Raises:
        FileNotFoundError: `path` is neither.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"--teacher={path!r} does not exist")
    if tf.io.gfile.exists(os.path.join(path, "config.json")):
        return WorkdirTeacher(path, checkpoint)
    if tf.saved_model.contains_saved_model(path):
        return SavedModelTeacher(path)
    if tf.io.gfile.isdir(path):
        version = _latest_version(path)
        if version is not None:
            return SavedModelTeacher(version)
    raise FileNotFoundError(f"--teacher={path!r} is neither a training workdir (no config.json) "
                            "nor a SavedModel (no saved_model.pb)")
