"""The noisy student: one forward pass over human and pseudo-labelled images, two losses,
loss normalisation, and its training entry point `train_student(config, workdir)`.

A student batch is a pair `((human_images, human_targets), (pseudo_images, pseudo_targets))`
of fixed sizes (`tasks.student_dataset`). The two image sets go through the model together
(batch norm sees both, as in the paper); the human loss L_h and the pseudo loss L_p are
computed on their slices of the predictions, and

  total = L_h + alpha * (avg(L_h) / avg(L_p)) * L_p

with moving averages of the stopped-gradient losses (`loss_norm.py`). Every term, both
averages and the effective pseudo weight are metrics, hence in the progress bar and TensorBoard.
The student is noised by the strong augmentation on both streams (config.augment, s4 by
default in the student configs) and stochastic depth (`model.drop_path_rate`).
"""

import keras
import tensorflow as tf
from keras import ops

from rethink_tf.models import detector as detector_lib
from rethink_tf.models import losses as losses_lib
from rethink_tf.training import loss_norm
from rethink_tf.training import tasks
from rethink_tf.training import trainer


def _cross_replica_sum(value):
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


class LossNormalizerState(tf.Module):
    """The student's loss-normaliser state: two moving averages and their update counts.

    Kept outside the Keras model's weights on purpose: a checkpoint's `model` then holds the
    task model alone, so a teacher (supervised or student) restores strictly into the next
    student (`init=teacher:`) and the next student's normaliser starts afresh; the training
    checkpoint saves it beside the model (`checkpoint_extras`), so a resumed student continues
    with its averages. Replicas hold identical values (they are assigned from all-reduced
    losses).
    """

    def __init__(self):
        super().__init__(name="loss_normalizer")

        def variable(name):
            return tf.Variable(0.0, trainable=False, name=name,
                               synchronization=tf.VariableSynchronization.ON_WRITE,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        self.avg_human_loss = variable("avg_human_loss")
        self.avg_pseudo_loss = variable("avg_pseudo_loss")
        self.human_updates = variable("human_updates")
        self.pseudo_updates = variable("pseudo_updates")

    def reset(self):
        """Forgets the averages (a new student)."""
        for v in (self.avg_human_loss, self.avg_pseudo_loss, self.human_updates,
                  self.pseudo_updates):
            v.assign(0.0)


class StudentMixin:
    """Adds the student train_step to a task model class (detector or segmenter).

    Use `student_class(ModelClass)` to build the combined class; call `configure_student`
    once after construction.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # object.__setattr__: neither Keras nor TF's auto-tracking may make it part of the
        # model (see LossNormalizerState); the training checkpoint adds it explicitly.
        object.__setattr__(self, "loss_normalizer", LossNormalizerState())
        self.student_task = "detection"
        self.alpha, self.loss_norm, self.decay, self.average_terms = 1.0, True, 0.99, False
        self._trackers = {}

    def checkpoint_extras(self):
        """Objects a training checkpoint saves beside the model."""
        return {"loss_normalizer": self.loss_normalizer}

    def configure_student(self, task, alpha=1.0, loss_norm_on=True, decay=0.99,
                          average_terms=False):
        """Sets the task and the loss-normalisation hyper-parameters (see `loss_norm`)."""
        self.student_task = task
        self.alpha, self.loss_norm, self.decay = float(alpha), bool(loss_norm_on), float(decay)
        self.average_terms = bool(average_terms)
        names = ["loss", "human_loss", "pseudo_loss", "avg_human_loss", "avg_pseudo_loss",
                 "pseudo_weight"]
        if task == "detection":
            names += ["human_box_loss", "human_classification_loss", "pseudo_box_loss",
                      "pseudo_classification_loss", "pseudo_positives"]
        self._trackers = {n: keras.metrics.Mean(name=n) for n in names}

    @property
    def avg_human_loss(self):
        return self.loss_normalizer.avg_human_loss

    @property
    def avg_pseudo_loss(self):
        return self.loss_normalizer.avg_pseudo_loss

    @property
    def metrics(self):
        if getattr(self, "_trackers", None):
            return list(self._trackers.values())
        return super().metrics

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds losses/metrics from the first batch; a student batch is a pair, and
        # the human half has the supervised (x, y) structure Keras expects.
        if data_batch is None and iterator is not None:
            for _, _, data_or_iterator in iterator:
                data_batch = (data_or_iterator[0] if isinstance(data_or_iterator, (list, tuple))
                              else next(data_or_iterator))
                break
        if is_student_batch(data_batch):
            data_batch = data_batch[0]
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
        loss_sum, count = losses_lib.masked_sparse_categorical_crossentropy_per_example(
            ops.concatenate([h_targets, p_targets], axis=0), y_pred)
        return (losses_lib.normalised_pixel_loss(loss_sum[:human_size], count[:human_size]),
                losses_lib.normalised_pixel_loss(loss_sum[human_size:], count[human_size:]),
                {"human_targets": ops.sum(count[:human_size]),
                 "pseudo_targets": ops.sum(count[human_size:])})

    def train_step(self, data):
        if not is_student_batch(data):
            return super().train_step(data)
        (h_images, h_targets), (p_images, p_targets) = data
        human_size = ops.shape(h_images)[0]
        images = ops.concatenate([h_images, p_images], axis=0)
        with tf.GradientTape() as tape:
            y_pred = self(images, training=True)
            human_loss, pseudo_loss, extra = self.student_losses(
                (h_images, p_images), (h_targets, p_targets), y_pred, human_size)
            human_targets = _cross_replica_sum(extra.pop("human_targets"))
            pseudo_targets = _cross_replica_sum(extra.pop("pseudo_targets"))
            weight = self._update_normalizer(human_loss, pseudo_loss, human_targets > 0,
                                             pseudo_targets > 0)
            total = loss_norm.total_loss(human_loss, pseudo_loss, weight,
                                         self.alpha if self.average_terms else None)
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        if self.student_task == "detection":
            extra["pseudo_positives"] = pseudo_targets
        values = {"loss": total, "human_loss": human_loss, "pseudo_loss": pseudo_loss, **extra}
        for name, value in values.items():
            # Per-replica losses are partial sums of the global loss: report the global value.
            if name == "pseudo_positives":
                self._trackers[name].update_state(value)
            else:
                self._trackers[name].update_state(_cross_replica_sum(value))
        # Already global (assigned from all-reduced values).
        for name, value in (("avg_human_loss", self.avg_human_loss),
                            ("avg_pseudo_loss", self.avg_pseudo_loss), ("pseudo_weight", weight)):
            self._trackers[name].update_state(ops.convert_to_tensor(value))
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def _update_normalizer(self, human_loss, pseudo_loss, human_has_targets=True,
                           pseudo_has_targets=True):
        """Updates the moving averages with the global losses; returns the pseudo weight.

        An average moves only when its stream had targets in the global batch.
        """
        state = self.loss_normalizer
        human = _cross_replica_sum(ops.stop_gradient(human_loss))
        pseudo = _cross_replica_sum(ops.stop_gradient(pseudo_loss))
        for average, count, value, has_targets in (
                (state.avg_human_loss, state.human_updates, human, human_has_targets),
                (state.avg_pseudo_loss, state.pseudo_updates, pseudo, pseudo_has_targets)):
            new_average, new_count = loss_norm.update_moving_average(
                average, value, self.decay, count, has_targets)
            average.assign(new_average)
            count.assign(new_count)
        return loss_norm.pseudo_weight(state.avg_human_loss, state.avg_pseudo_loss, self.alpha,
                                       self.loss_norm, state.human_updates, state.pseudo_updates)


def concat_box_targets(first, second):
    """Box targets of two sub-batches as one batch; the one with fewer box slots is padded
    (class -1) to the other's count."""
    slots = tf.maximum(tf.shape(first["boxes"])[1], tf.shape(second["boxes"])[1])

    def pad(targets):
        extra = slots - tf.shape(targets["boxes"])[1]
        boxes = tf.cast(targets["boxes"], tf.float32)
        classes = tf.cast(targets["classes"], tf.float32)
        return {"boxes": tf.pad(boxes, [[0, 0], [0, extra], [0, 0]], constant_values=-1.0),
                "classes": tf.pad(classes, [[0, 0], [0, extra]], constant_values=-1.0)}

    first, second = pad(first), pad(second)
    return {key: tf.concat([first[key], second[key]], axis=0) for key in ("boxes", "classes")}


def is_student_batch(data):
    """True for ((x_h, y_h), (x_p, y_p)) pairs."""
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(d, (tuple, list)) and len(d) == 2 for d in data))


_STUDENT_CLASSES = {}


def student_class(base):
    """The class `base` + `StudentMixin` (cached, so one class per base)."""
    if base not in _STUDENT_CLASSES:
        _STUDENT_CLASSES[base] = type(f"Student{base.__name__}", (StudentMixin, base), {})
    return _STUDENT_CLASSES[base]


def build_student_model(config, num_classes):
    """The task model of `config`, as a student (same architecture, student train_step)."""
    if config.task not in ("detection", "segmentation"):
        raise ValueError(f"config.task: self-training supports detection and segmentation, "
                         f"not {config.task!r}")
    model = tasks.build_model(config, num_classes, model_class_fn=student_class)
    st = config.self_training
    model.configure_student(config.task, st.alpha, st.loss_norm, st.decay,
                            st.get("average_terms", False))
    return model


def student_dataset(config, info, human_batch_size, input_context=None, start_step=0):
    """Pairs of (human, pseudo) batches from `start_step` on (see `tasks.student_dataset`)."""
    return tasks.student_dataset(config, info, human_batch_size, input_context, start_step)


def train_student(config, workdir, extra_callbacks=()):
    """Trains a student from human labels plus `config.self_training.pseudo_labels`.

    Same workdir layout, resume, evaluation and TensorBoard as supervised training.
    """
    if not config.self_training.pseudo_labels:
        raise ValueError("config.self_training.pseudo_labels: a student needs a pseudo-label "
                         "directory (from `python -m rethink_tf.pseudo_label`)")
    return trainer.train(config, workdir, extra_callbacks=extra_callbacks,
                         build_model_fn=build_student_model, train_data_fn=student_dataset)
