"""The noisy student: one forward pass over human and pseudo-labelled images, two losses,
loss normalisation, and its training entry point `train_student(config, workdir)`.

A student batch is a dict of named streams `{"human": (images, targets), "pseudo": (images,
targets)}` of fixed sizes (`tasks.student_dataset`). The two image sets go through the model
together (batch norm sees both, as in the paper); the human loss L_h and the pseudo loss L_p
are computed on their slices of the predictions, and

  total = L_h + alpha * (avg(L_h) / avg(L_p)) * L_p

with moving averages of the stopped-gradient losses (`streams.LossNormalizer`). Every term,
both averages and the effective pseudo weight are metrics, hence on the console and in
TensorBoard. The student is noised by the strong augmentation on both streams (config.augment,
s4 by default in the student configs) and stochastic depth (`model.drop_path_rate`).

A classification student (noisy student on a classification corpus: "ImageNet++") takes hard
pseudo labels; both losses are the smoothed cross-entropy (`train.label_smoothing`), each the
mean over its stream's images of the global batch; `pretraining.pretrain` runs it when a
classification config sets `self_training.pseudo_labels`.
"""

import tensorflow as tf
from keras import ops

from rethink_tf.models import detector as detector_lib
from rethink_tf.models import losses as losses_lib
from rethink_tf.training import streams
from rethink_tf.training import tasks
from rethink_tf.training import trainer
from rethink_tf.training.streams import HUMAN, PSEUDO


class StudentMixin:
    """Adds the student train_step to a task model class (detector, segmenter, classifier).

    Use `student_class(ModelClass)` to build the combined class; call `configure_student`
    once after construction.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.student_task = "detection"
        self.configure_student("detection")

    def configure_student(self, task, alpha=1.0, loss_norm_on=True, decay=0.99,
                          average_terms=False, label_smoothing=0.0):
        """Sets the task and the loss-normalisation hyper-parameters (see `streams`);
        `label_smoothing` is the classification losses'."""
        self.student_task = task
        self.label_smoothing = float(label_smoothing)
        # object.__setattr__: neither Keras nor TF's auto-tracking may make the normaliser's
        # state part of the model (see `streams.LossNormalizerState`); the training checkpoint
        # adds it explicitly (`checkpoint_extras`).
        object.__setattr__(self, "normalizer", streams.LossNormalizer(
            {PSEUDO: alpha}, loss_norm_on, decay, average_terms))
        names = (["loss", "human_loss", "pseudo_loss"]
                 + streams.normalizer_metric_names(self.normalizer))
        if task == "detection":
            names += ["human_box_loss", "human_classification_loss", "pseudo_box_loss",
                      "pseudo_classification_loss", "pseudo_positives"]
        object.__setattr__(self, "stream_metrics", streams.StreamMetrics(
            names, global_names=streams.normalizer_metric_names(self.normalizer)
            + ["pseudo_positives"]))

    @property
    def loss_normalizer(self):
        return self.normalizer.state

    def checkpoint_extras(self):
        """Objects a training checkpoint saves beside the model."""
        return {"loss_normalizer": self.loss_normalizer}

    @property
    def metrics(self):
        if getattr(self, "stream_metrics", None) is not None:
            return self.stream_metrics.metrics
        return super().metrics

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds losses/metrics from the first batch; a student batch is a dict of
        # streams, and the human stream has the supervised (x, y) structure Keras expects.
        if data_batch is None and iterator is not None:
            for _, _, data_or_iterator in iterator:
                data_batch = (data_or_iterator[0] if isinstance(data_or_iterator, (list, tuple))
                              else next(data_or_iterator))
                break
        if isinstance(data_batch, dict):
            data_batch = data_batch[HUMAN]
        return super()._symbolic_build(data_batch=data_batch)

    def student_losses(self, images, targets, y_pred, human_size):
        """(L_h, L_p, extra terms) from one forward pass over [human; pseudo] images.

        `extra` holds, besides the per-term losses logged, `human_targets` and
        `pseudo_targets`: this replica's count of what each loss is normalised by (positive
        anchors, labelled pixels); the normaliser sums them over replicas.
        """
        (h_images, _), (h_targets, p_targets) = images, targets
        # Per-image loss sums over the whole batch, split afterwards: slicing the predictions
        # first costs full-size gradient buffers per slice (for segmentation the student step
        # was 1.18x the supervised one per image; experiments/bench/student_step.py).
        if self.student_task == "detection":
            # The label encoder reads only the images' height and width.
            terms = detector_lib.detector_loss_terms(
                self, h_images, concat_box_targets(h_targets, p_targets), y_pred)
            human = detector_lib.sub_batch_loss_terms(terms, 0, human_size)
            pseudo = detector_lib.sub_batch_loss_terms(terms, human_size, None)
            extra = {"human_box_loss": human["box_loss"],
                     "human_classification_loss": human["classification_loss"],
                     "pseudo_box_loss": pseudo["box_loss"],
                     "pseudo_classification_loss": pseudo["classification_loss"],
                     "human_targets": human["num_positives"],
                     "pseudo_targets": pseudo["num_positives"]}
            return human["loss"], pseudo["loss"], extra
        if self.student_task == "classification":
            per_example = losses_lib.smoothed_cross_entropy_per_example(
                ops.concatenate([h_targets, p_targets], axis=0), ops.cast(y_pred, "float32"),
                self.label_smoothing)
            parts = (per_example[:human_size], per_example[human_size:])
            counts = [ops.cast(ops.shape(part)[0], "float32") for part in parts]
            human, pseudo = (ops.divide_no_nan(ops.sum(part),
                                               losses_lib.cross_replica_normalizer(count))
                             for part, count in zip(parts, counts))
            return human, pseudo, {"human_targets": counts[0], "pseudo_targets": counts[1]}
        loss_sum, count = losses_lib.masked_sparse_categorical_crossentropy_per_example(
            ops.concatenate([h_targets, p_targets], axis=0), y_pred)
        return (losses_lib.normalised_pixel_loss(loss_sum[:human_size], count[:human_size]),
                losses_lib.normalised_pixel_loss(loss_sum[human_size:], count[human_size:]),
                {"human_targets": ops.sum(count[:human_size]),
                 "pseudo_targets": ops.sum(count[human_size:])})

    def train_step(self, data):
        if not isinstance(data, dict):  # a supervised (images, targets) batch
            return super().train_step(data)
        (h_images, h_targets), (p_images, p_targets) = data[HUMAN], data[PSEUDO]
        human_size = ops.shape(h_images)[0]
        images = ops.concatenate([h_images, p_images], axis=0)
        with tf.GradientTape() as tape:
            y_pred = self(images, training=True)
            human_loss, pseudo_loss, extra = self.student_losses(
                (h_images, p_images), (h_targets, p_targets), y_pred, human_size)
            human_targets = streams.cross_replica_sum(extra.pop("human_targets"))
            pseudo_targets = streams.cross_replica_sum(extra.pop("pseudo_targets"))
            losses = {HUMAN: human_loss, PSEUDO: pseudo_loss}
            weights = self.normalizer.update(
                losses, {HUMAN: human_targets > 0, PSEUDO: pseudo_targets > 0})
            total = self.normalizer.total(losses, weights)
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        if self.student_task == "detection":
            extra["pseudo_positives"] = pseudo_targets
        self.stream_metrics.update({"loss": total, "human_loss": human_loss,
                                    "pseudo_loss": pseudo_loss, **extra,
                                    **streams.normalizer_metrics(self.normalizer, weights)})
        return self.stream_metrics.result()


def concat_box_targets(first, second):
    """Box targets of two sub-batches as one batch; the one with fewer box slots is padded
    (class -1) to the other's count; anchor targets encoded in the pipeline are kept."""
    slots = tf.maximum(tf.shape(first["boxes"])[1], tf.shape(second["boxes"])[1])

    def pad(targets):
        extra = slots - tf.shape(targets["boxes"])[1]
        boxes = tf.cast(targets["boxes"], tf.float32)
        classes = tf.cast(targets["classes"], tf.float32)
        return {"boxes": tf.pad(boxes, [[0, 0], [0, extra], [0, 0]], constant_values=-1.0),
                "classes": tf.pad(classes, [[0, 0], [0, extra]], constant_values=-1.0)}

    padded = pad(first), pad(second)
    both = {key: tf.concat([padded[0][key], padded[1][key]], axis=0)
            for key in ("boxes", "classes")}
    # Anchor targets encoded in the input pipeline (`train.encode_targets="pipeline"`): every
    # image has one row per anchor, so they concatenate as they are.
    encoded = (detector_lib.BOX_TARGETS, detector_lib.CLASS_TARGETS)
    if all(key in first and key in second for key in encoded):
        both.update({key: tf.concat([first[key], second[key]], axis=0) for key in encoded})
    return both


_STUDENT_CLASSES = {}


def student_class(base):
    """The class `base` + `StudentMixin` (cached, so one class per base)."""
    if base not in _STUDENT_CLASSES:
        _STUDENT_CLASSES[base] = type(f"Student{base.__name__}", (StudentMixin, base), {})
    return _STUDENT_CLASSES[base]


def build_student_model(config, num_classes=None):
    """The task model of `config`, as a student (same architecture, student train_step)."""
    if config.task not in ("detection", "segmentation", "classification"):
        raise ValueError(f"config.task: self-training supports detection, segmentation and "
                         f"classification, not {config.task!r}")
    if num_classes is None:
        num_classes = tasks.num_classes(config)
    model = tasks.build_model(config, num_classes, model_class_fn=student_class)
    st = config.self_training
    model.configure_student(config.task, st.alpha, st.loss_norm, st.decay,
                            st.get("average_terms", False),
                            config.train.get("label_smoothing", 0.0))
    return model


def student_dataset(config, info, human_batch_size, input_context=None, start_step=0):
    """Batches of the human and pseudo streams from `start_step` on (`tasks.student_dataset`)."""
    return tasks.student_dataset(config, info, human_batch_size, input_context, start_step)


def train_student(config, workdir, extra_callbacks=()):
    """Trains a student from human labels plus `config.self_training.pseudo_labels`.

    Same workdir layout, resume, evaluation and TensorBoard as supervised training.
    """
    if not config.self_training.pseudo_labels:
        raise ValueError("config.self_training.pseudo_labels: a student needs a pseudo-label "
                         "directory (from `python -m rethink_tf.pseudo_label`)")
    return trainer.train(config, workdir, extra_callbacks=extra_callbacks,
                         hooks=trainer.Hooks(build_model=build_student_model,
                                             train_data=student_dataset))
