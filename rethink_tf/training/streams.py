"""Named streams of a student or joint batch: the loss bookkeeping their train_steps share.

A student or joint batch is a dict `{stream: (images, targets)}` (`pipelines.STREAMS`): the
main stream `human` (target-task labels) and auxiliary streams, `pseudo` (the teacher's labels
on unlabeled images) and `classification` (joint training's classification set), each of a
fixed global size. Each auxiliary stream s has a weight

  w_s = alpha_s * avg(L_human) / avg(L_s)     (loss_norm on)
  w_s = alpha_s                               (loss_norm off)

and the step minimises `L_human + sum_s w_s * L_s` (`loss_norm.total_loss`), the averages being
moving averages of the global, stopped-gradient losses, each moving only on steps where its
stream had targets in the global batch (`loss_norm.update_moving_average`).

This module holds what is per stream and the same for every such step: the cross-replica sum,
the normaliser's state (`LossNormalizerState`, saved beside the model, never in it), the
normaliser (`LossNormalizer`) and one metric tracker per logged value (`StreamMetrics`).
"""

import keras
import tensorflow as tf
from keras import ops

from rethink_tf.data.pipelines import CLASSIFICATION, HUMAN, PSEUDO, STREAMS  # noqa: F401
from rethink_tf.training import loss_norm


def cross_replica_sum(value):
    """Sums `value` over the replicas in sync (identity with one, or outside a replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


class LossNormalizerState(tf.Module):
    """The moving averages of each stream's loss, and their update counts.

    Variables `avg_<stream>_loss` and `<stream>_updates` for each stream. Kept outside the
    Keras model's weights on purpose: a checkpoint's `model` then holds the task model alone,
    so a teacher (supervised, student or joint) restores strictly into the next student
    (`init=teacher:`) and the next student's normaliser starts afresh; the training checkpoint
    saves it beside the model (`checkpoint_extras`), so a resumed run continues with its
    averages. Replicas hold identical values (they are assigned from all-reduced losses).
    """

    def __init__(self, streams=(HUMAN, PSEUDO)):
        super().__init__(name="loss_normalizer")
        self.streams = tuple(streams)

        def variable(name):
            return tf.Variable(0.0, trainable=False, name=name,
                               synchronization=tf.VariableSynchronization.ON_WRITE,
                               aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        for name in self.streams:
            setattr(self, f"avg_{name}_loss", variable(f"avg_{name}_loss"))
            setattr(self, f"{name}_updates", variable(f"{name}_updates"))

    def average(self, stream):
        return getattr(self, f"avg_{stream}_loss")

    def count(self, stream):
        return getattr(self, f"{stream}_updates")

    def reset(self):
        """Forgets the averages (a new run)."""
        for name in self.streams:
            self.average(name).assign(0.0)
            self.count(name).assign(0.0)


class LossNormalizer:
    """Weights of the auxiliary streams against `human`, from moving averages of the losses.

    Args:
      alphas: {auxiliary stream: alpha}.
      loss_norm_on: use avg(L_human) / avg(L_s) (True) or the bare alphas (False); one bool
        for every auxiliary stream, or {auxiliary stream: bool}.
      decay: the moving averages' decay in [0, 1).
      average_terms: divide the total by 1 + sum(alphas) (`loss_norm.total_loss`).
    """

    def __init__(self, alphas, loss_norm_on=True, decay=0.99, average_terms=False):
        unknown = sorted(set(alphas) - set(STREAMS) | ({HUMAN} & set(alphas)))
        if unknown:
            raise ValueError(f"alphas: auxiliary streams must be among "
                             f"{[s for s in STREAMS if s != HUMAN]}, got {unknown}")
        self.alphas = {name: float(a) for name, a in alphas.items()}
        if not isinstance(loss_norm_on, dict):
            loss_norm_on = {name: loss_norm_on for name in self.alphas}
        self.loss_norm_on = {name: bool(loss_norm_on[name]) for name in self.alphas}
        self.decay = float(decay)
        self.average_terms = bool(average_terms)
        self.state = LossNormalizerState((HUMAN, *self.alphas))

    @property
    def auxiliary(self):
        return tuple(self.alphas)

    def update(self, losses, has_targets):
        """Moves the averages with this step's global losses; returns the auxiliary weights.

        Args:
          losses: {stream: this replica's loss} for `human` and every auxiliary stream (the
            replica's partial sum of the global loss; summed over replicas here).
          has_targets: {stream: bool tensor}, whether the stream had targets (positive
            anchors, labelled pixels, labels) in the global batch.

        Returns:
          {auxiliary stream: weight} (float32 scalars).
        """
        state = self.state
        for name in (HUMAN, *self.auxiliary):
            value = cross_replica_sum(ops.stop_gradient(losses[name]))
            new_average, new_count = loss_norm.update_moving_average(
                state.average(name), value, self.decay, state.count(name), has_targets[name])
            state.average(name).assign(new_average)
            state.count(name).assign(new_count)
        return {name: loss_norm.auxiliary_weight(
                    state.average(HUMAN), state.average(name), alpha, self.loss_norm_on[name],
                    state.count(HUMAN), state.count(name))
                for name, alpha in self.alphas.items()}

    def total(self, losses, weights):
        """L_human + sum_s w_s * L_s (divided by 1 + sum(alphas) with `average_terms`)."""
        return loss_norm.total_loss(
            losses[HUMAN], [(losses[name], weights[name]) for name in self.auxiliary],
            sum(self.alphas.values()) if self.average_terms else None)


class StreamMetrics:
    """One `keras.metrics.Mean` per logged value of a multi-stream step.

    `update(values)` takes this replica's values: those in `global_names` are already global
    (counts summed over replicas, the normaliser's averages and weights) and are tracked as
    they are; every other value is a replica's partial sum of a global loss (Keras scales
    losses by 1 / replicas) and is summed over replicas first, so the logs show global values.
    """

    def __init__(self, names, global_names=()):
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.global_names = frozenset(global_names)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def update(self, values):
        for name, value in values.items():
            if name not in self.global_names:
                value = cross_replica_sum(value)
            self.trackers[name].update_state(ops.convert_to_tensor(value))

    def result(self):
        return {name: tracker.result() for name, tracker in self.trackers.items()}


def normalizer_metric_names(normalizer):
    """Names of what a `LossNormalizer` logs: every stream's average, each auxiliary weight."""
    return ([f"avg_{HUMAN}_loss"] + [f"avg_{name}_loss" for name in normalizer.auxiliary]
            + [f"{name}_weight" for name in normalizer.auxiliary])


def normalizer_metrics(normalizer, weights):
    """The values `normalizer_metric_names` names (all global)."""
    state = normalizer.state
    values = {f"avg_{HUMAN}_loss": state.average(HUMAN)}
    values.update({f"avg_{name}_loss": state.average(name) for name in normalizer.auxiliary})
    values.update({f"{name}_weight": weights[name] for name in normalizer.auxiliary})
    return values
