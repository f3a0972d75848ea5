"""One training step under several tf.distribute strategies, from the same initial weights.

The distributed-equivalence tests (supervised, student, SimCLR) compare one step on 2 logical
CPU replicas with one step on one device: same global batch, same initial weights.
"""

import keras
import numpy as np


def one_step_per_strategy(strategies, build, step, prepare=None, return_initial=False):
    """For each strategy: `build()` in its scope, `prepare(model)` (e.g. a call that builds
    lazy weights) after it, the first model's initial weights copied into the later ones, then
    `step(model)` (-> a dict of logged values).

    Returns:
      [(logs, weights after the step)] in the order of `strategies`; with `return_initial`,
      (initial weights, that list).
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
    return (initial, results) if return_initial else results


def assert_steps_match(results, names, loss_rtol=1e-4, weight_atol=1e-4):
    """The logged `names` agree within `loss_rtol` (relative), every weight within
    `weight_atol` (absolute; None skips the weights)."""
    (logs_a, weights_a), (logs_b, weights_b) = results
    for name in names:
        np.testing.assert_allclose(logs_a[name], logs_b[name], rtol=loss_rtol, err_msg=name)
    if weight_atol is None:
        return
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_allclose(a, b, atol=weight_atol)


def assert_updates_match(initial, results, rtol):
    """Each weight's update (after - initial) agrees between the runs within `rtol` of its
    norm, and the updates are not all zero (a step that changed nothing proves nothing)."""
    (_, weights_a), (_, weights_b) = results
    largest = 0.0
    for w0, a, b in zip(initial, weights_a, weights_b):
        update_a, update_b = a - w0, b - w0
        scale = np.linalg.norm(update_a)
        largest = max(largest, scale)
        assert np.linalg.norm(update_b - update_a) <= rtol * scale + 1e-7, (
            f"updates differ: |b - a| = {np.linalg.norm(update_b - update_a):.3g} for |a| = "
            f"{scale:.3g}")
    assert largest > 1e-4, "the step did not change the weights"
