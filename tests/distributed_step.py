"""One training step under several tf.distribute strategies, from the same initial weights.

The distributed-equivalence tests (supervised, student, SimCLR) compare one step on 2 logical
CPU replicas with one step on one device: same global batch, same initial weights.
"""

import keras
import numpy as np


def one_step_per_strategy(strategies, build, step, prepare=None):
    """For each strategy: `build()` in its scope, `prepare(model)` (e.g. a call that builds
    lazy weights) after it, the first model's initial weights copied into the later ones, then
    `step(model)` (-> a dict of logged values).

    Returns:
      [(logs, weights after the step)] in the order of `strategies`.
    """
    results, initial = [], None
    for strategy in strategies:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = build()
        if prepare is not None:
            prepare(model)
        if initial is None:
            initial = model.get_weights()
        else:
            model.set_weights(initial)
        results.append((step(model), model.get_weights()))
    return results


def assert_steps_match(results, names, loss_rtol=1e-4, weight_atol=1e-4):
    """The logged `names` agree within `loss_rtol` (relative), every weight within
    `weight_atol` (absolute)."""
    (logs_a, weights_a), (logs_b, weights_b) = results
    for name in names:
        np.testing.assert_allclose(logs_a[name], logs_b[name], rtol=loss_rtol, err_msg=name)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_allclose(a, b, atol=weight_atol)
