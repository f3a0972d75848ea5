"""The paper's loss normalisation for self-training, as small pure functions.

  total = L_h + alpha * (avg(L_h) / avg(L_p)) * L_p        (loss_norm on)
  total = L_h + alpha * L_p                                (loss_norm off)

avg(.) are exponential moving averages of the stopped-gradient human (L_h) and pseudo (L_p)
losses. The first update sets the averages to the current values (no zero-initialisation
bias). If the pseudo average is 0 (e.g. no pseudo box in any batch yet) the ratio is taken as 1,
so the weight stays finite.
"""

from keras import ops


def update_moving_average(average, value, decay, count):
    """One EMA step: `value` when `count == 0`, else decay * average + (1 - decay) * value."""
    updated = decay * average + (1.0 - decay) * value
    return ops.where(ops.equal(count, 0), value, updated)


def pseudo_weight(avg_human, avg_pseudo, alpha, loss_norm):
    """The weight of the pseudo loss: alpha * avg_h / avg_p (or alpha without loss_norm)."""
    if not loss_norm:
        return ops.convert_to_tensor(alpha, "float32")
    ratio = ops.where(avg_pseudo > 0, ops.divide_no_nan(avg_human, avg_pseudo), 1.0)
    return alpha * ratio


def total_loss(human_loss, pseudo_loss, weight):
    """L_h + weight * L_p, with the weight a constant for the gradient."""
    return human_loss + ops.stop_gradient(weight) * pseudo_loss
