"""Joint training: the target task, a classification set and (optionally) pseudo labels, at once.

The paper's third way to use extra data: instead of pre-training on the classification set and
fine-tuning, train detection (or segmentation) and classification together on one backbone,
and in the strongest setting add the teacher's pseudo labels too. A joint batch is a dict of
named streams (`tasks.joint_dataset`):

  human           target-task images and labels                      -> L_h (task head)
  pseudo          unlabeled images, the teacher's labels (optional)  -> L_p (task head)
  classification  classification images and labels, own resolution  -> L_c (classification
                                                                        head on the backbone)

and the step minimises

  L_h + w_c * L_c + w_p * L_p,   w_* = alpha_* x avg(L_h) / avg(L_*)   (loss_norm on)
                                 w_* = alpha_*                          (loss_norm off)

with one moving-average normaliser per auxiliary stream (`streams.LossNormalizer`). Human and
pseudo images go through the task model together (batch norm sees both, as for the student);
classification images go through the same backbone in their own pass. Every term, average
and effective weight is a metric: on the console and in TensorBoard.

The classification head (global pool + dense, `models.classifier.ClassificationHead`) is not
part of the Keras model: a joint checkpoint's `model` is the plain detector or segmenter, so it
exports, teaches the next round (`init=teacher:`) and evaluates like any other; the training
checkpoint saves the head and the normaliser beside it (`checkpoint_extras`), so a resumed
joint run continues with both.
"""

import tensorflow as tf
from keras import ops

from rethink_tf.models import classifier
from rethink_tf.models import detector as detector_lib
from rethink_tf.models import losses as losses_lib
from rethink_tf.training import config as config_lib
from rethink_tf.training import streams
from rethink_tf.training import student as student_lib
from rethink_tf.training import tasks
from rethink_tf.training import trainer
from rethink_tf.training.streams import CLASSIFICATION, HUMAN, PSEUDO


class JointMixin(student_lib.StudentMixin):
    """Adds the joint train_step to a task model class (detector or segmenter).

    Use `joint_class(ModelClass)`; call `configure_joint` once after construction.
    """

    def configure_joint(self, task, head, alphas, loss_norm_on, decay=0.99,
                        average_terms=False, label_smoothing=0.0):
        """Sets the task, the classification head and the loss normalisation.

        Args:
          task: "detection" or "segmentation".
          head: a built `ClassificationHead` for this model's backbone.
          alphas: {auxiliary stream: alpha}, `classification` and optionally `pseudo`.
          loss_norm_on: {auxiliary stream: bool}, or one bool for all.
          decay: the moving averages' decay.
          average_terms: divide the total by 1 + sum(alphas).
          label_smoothing: of the classification loss.
        """
        self.student_task = task
        self.label_smoothing = float(label_smoothing)
        object.__setattr__(self, "joint_head", head)
        object.__setattr__(self, "normalizer", streams.LossNormalizer(
            alphas, loss_norm_on, decay, average_terms))
        aux = self.normalizer.auxiliary
        names = (["loss", "human_loss"] + [f"{name}_loss" for name in aux]
                 + streams.normalizer_metric_names(self.normalizer) + ["classification_top1"])
        if task == "detection":
            names += ["human_box_loss", "human_classification_loss"]
            if PSEUDO in aux:
                names += ["pseudo_box_loss", "pseudo_classification_loss", "pseudo_positives"]
        object.__setattr__(self, "stream_metrics", streams.StreamMetrics(
            names, global_names=streams.normalizer_metric_names(self.normalizer)
            + ["pseudo_positives", "classification_top1"]))

    def checkpoint_extras(self):
        """Objects a training checkpoint saves beside the model: normaliser and head."""
        return {"loss_normalizer": self.loss_normalizer, "classification_head": self.joint_head}

    def human_losses(self, images, targets, y_pred):
        """(L_h, logged terms, this replica's target count) of the human stream alone."""
        if self.student_task == "detection":
            terms = detector_lib.detector_loss_terms(self, images, targets, y_pred)
            return (terms["loss"], {"human_box_loss": terms["box_loss"],
                                    "human_classification_loss": terms["classification_loss"]},
                    terms["num_positives"])
        loss_sum, count = losses_lib.masked_sparse_categorical_crossentropy_per_example(
            targets, y_pred)
        return losses_lib.normalised_pixel_loss(loss_sum, count), {}, ops.sum(count)

    def joint_losses(self, data, training=True):
        """Every stream's loss from one batch of named streams.

        Returns:
          (losses {stream: loss}, counts {stream: this replica's target count}, logged
          {name: value} of the per-term losses and the classification accuracy's inputs).
        """
        h_images, h_targets = data[HUMAN]
        if PSEUDO in data:
            p_images, p_targets = data[PSEUDO]
            human_size = ops.shape(h_images)[0]
            y_pred = self(ops.concatenate([h_images, p_images], axis=0), training=training)
            human_loss, pseudo_loss, logged = self.student_losses(
                (h_images, p_images), (h_targets, p_targets), y_pred, human_size)
            counts = {HUMAN: logged.pop("human_targets"), PSEUDO: logged.pop("pseudo_targets")}
            losses = {HUMAN: human_loss, PSEUDO: pseudo_loss}
        else:
            y_pred = self(h_images, training=training)
            human_loss, logged, count = self.human_losses(h_images, h_targets, y_pred)
            losses, counts = {HUMAN: human_loss}, {HUMAN: count}
        c_images, c_labels = data[CLASSIFICATION]
        logits = self.joint_head(self.backbone(c_images, training=training), training=training)
        losses[CLASSIFICATION] = losses_lib.classification_loss(c_labels, logits,
                                                                self.label_smoothing)
        counts[CLASSIFICATION] = ops.cast(ops.shape(c_labels)[0], "float32")
        correct = ops.sum(ops.cast(ops.equal(ops.argmax(logits, -1),
                                             ops.cast(ops.reshape(c_labels, [-1]), "int64")),
                                   "float32"))
        logged["classification_correct"] = correct
        return losses, counts, logged

    def joint_total(self, data, training=True):
        """(total loss, per-stream losses, weights, logged values, global counts)."""
        losses, counts, logged = self.joint_losses(data, training)
        counts = {name: streams.cross_replica_sum(c) for name, c in counts.items()}
        weights = self.normalizer.update(
            losses, {name: counts[name] > 0 for name in losses})
        return self.normalizer.total(losses, weights), losses, weights, logged, counts

    @property
    def trainable_variables(self):
        # The head trains with the model (the optimiser is built on these) but is not one of
        # its weights (`self.weights`, the checkpoint's `model`, export).
        head = getattr(self, "joint_head", None)
        own = list(super().trainable_variables)
        return own + (list(head.trainable_variables) if head is not None else [])

    def train_step(self, data):
        if not isinstance(data, dict) or CLASSIFICATION not in data:
            return super().train_step(data)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            total, losses, weights, logged, counts = self.joint_total(data)
            scaled = self.optimizer.scale_loss(total)
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        correct = streams.cross_replica_sum(logged.pop("classification_correct"))
        values = {"loss": total, **{f"{name}_loss": loss for name, loss in losses.items()},
                  **logged, **streams.normalizer_metrics(self.normalizer, weights),
                  "classification_top1": ops.divide_no_nan(correct, counts[CLASSIFICATION])}
        if self.student_task == "detection" and PSEUDO in losses:
            values["pseudo_positives"] = counts[PSEUDO]
        self.stream_metrics.update(values)
        return self.stream_metrics.result()


_JOINT_CLASSES = {}


def joint_class(base):
    """The class `base` + `JointMixin` (cached, so one class per base)."""
    if base not in _JOINT_CLASSES:
        _JOINT_CLASSES[base] = type(f"Joint{base.__name__}", (JointMixin, base), {})
    return _JOINT_CLASSES[base]


def classification_classes(config):
    """Classes of `joint.dataset`'s classification labels."""
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    info = sources.info(config.joint.dataset, data_dir=config.dataset.data_dir or None)
    return int(info.num_classes["classification"])


def build_joint_model(config, num_classes=None):
    """The task model of `config` with the joint train_step and its classification head."""
    if not config_lib.is_joint(config):
        raise ValueError("config.joint.dataset: joint training needs a classification source")
    if num_classes is None:
        num_classes = tasks.num_classes(config)
    model = tasks.build_model(config, num_classes, model_class_fn=joint_class)
    j, st = config.joint, config.self_training
    head = classifier.build_classification_head(model.backbone, classification_classes(config),
                                                dropout=j.dropout)
    alphas, loss_norm_on = {CLASSIFICATION: j.alpha}, {CLASSIFICATION: bool(j.loss_norm)}
    if st.pseudo_labels:
        alphas[PSEUDO], loss_norm_on[PSEUDO] = st.alpha, bool(st.loss_norm)
    model.configure_joint(config.task, head, alphas, loss_norm_on, st.decay,
                          st.get("average_terms", False), j.label_smoothing)
    return model


def joint_hooks():
    """Joint training's hooks for `trainer.train`."""
    return trainer.Hooks(build_model=build_joint_model, train_data=tasks.joint_dataset)


def train_joint(config, workdir, extra_callbacks=()):
    """Trains the target task jointly with `config.joint`'s classification set (and the
    pseudo labels of `self_training.pseudo_labels` when set).

    Same workdir layout, resume, evaluation and TensorBoard as supervised training; the
    workdir's checkpoints hold the plain task model (see the module docstring).
    """
    if not config_lib.is_joint(config):
        raise ValueError("config.joint.dataset: joint training needs a classification source "
                         "(e.g. --config.joint.dataset=digit_scenes/classification)")
    return trainer.train(config, workdir, extra_callbacks=extra_callbacks, hooks=joint_hooks())
