"""The paper's loss normalisation for self-training, as small pure functions.

  total = L_h + alpha * (avg(L_h) / avg(L_p)) * L_p        (loss_norm on)
  total = L_h + alpha * L_p                                (loss_norm off)
  total / (1 + alpha)                                      (average_terms on, either form)

and, with several auxiliary streams s (joint training: pseudo and classification),
L_h + sum_s alpha_s * (avg(L_h) / avg(L_s)) * L_s, divided by 1 + sum_s alpha_s with
average_terms. `training/streams.py` applies them to a batch of named streams.

avg(.) are exponential moving averages of the stopped-gradient human (L_h) and pseudo (L_p)
losses of the global batch. An average moves only on steps where its stream had targets in
the global batch (positive anchors, labelled pixels): an empty pseudo batch has a loss of
(nearly) 0 that says nothing about the loss scale, and fed into the average it would blow the
pseudo weight up (100x after one empty first batch). Each average starts from its first
non-empty value (no zero-initialisation bias). Until both have a value, or if the pseudo
average is 0, the ratio is taken as 1, so the weight stays finite.

`average_terms` (off by default) divides the total by 1 + alpha, the form in which, at equal
averages, the total is a weighted mean of the terms: its scale then does not grow with alpha,
so the learning rate need not change with it. Off, the human term's gradient is exactly the
supervised one, so a student and its teacher compare at the same learning rate.
"""

from keras import ops


def update_moving_average(average, value, decay, count, has_targets=True):
    """One EMA step of a stream's loss, skipped when the stream had no targets.

    Args:
      average: the current average (ignored while `count` is 0).
      value: this step's (global, stopped-gradient) loss of the stream.
      decay: EMA decay in [0, 1).
      count: how many steps have updated the average so far.
      has_targets: whether the stream had targets in this global batch.

    Returns:
      (new average, new count): `value` and 1 on the first update, decay * average +
      (1 - decay) * value and count + 1 after, the inputs unchanged without targets.
    """
    updated = ops.where(ops.equal(count, 0), value, decay * average + (1.0 - decay) * value)
    new_average = ops.where(has_targets, updated, average)
    new_count = ops.where(has_targets, count + 1.0, count)
    return new_average, new_count


def auxiliary_weight(avg_human, avg_aux, alpha, loss_norm, human_count=1.0, aux_count=1.0):
    """The weight of an auxiliary loss (pseudo, classification): alpha * avg_h / avg_aux, or
    alpha without loss_norm.

    The ratio is 1 until both averages have a value (counts > 0) and while avg_aux is 0.
    """
    if not loss_norm:
        return ops.convert_to_tensor(alpha, "float32")
    ready = ops.logical_and(ops.logical_and(human_count > 0, aux_count > 0), avg_aux > 0)
    ratio = ops.where(ready, ops.divide_no_nan(avg_human, avg_aux), 1.0)
    return alpha * ratio


def total_loss(human_loss, auxiliary, alpha_sum=None):
    """L_h + sum of weight * L_aux, with each weight a constant for the gradient.

    Args:
      human_loss: the main term.
      auxiliary: (loss, weight) pairs of the auxiliary terms (`auxiliary_weight`).
      alpha_sum: when given (the `average_terms` form), the total is divided by
        1 + alpha_sum (the sum of the auxiliary alphas).
    """
    total = human_loss
    for loss, weight in auxiliary:
        total = total + ops.stop_gradient(weight) * loss
    if alpha_sum is not None:
        total = total / (1.0 + float(alpha_sum))
    return total
