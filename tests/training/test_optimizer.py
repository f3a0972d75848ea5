"""The optimiser: the paper's coupled L2 term, global-norm clipping, and the schedule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import strategy as strategy_lib


def numpy_l2_and_clip(grads, weights, l2, mask, clipnorm):
    """Reference: g + l2 * w where masked, then scale all by min(1, clipnorm / global norm)."""
    out = [g + l2 * w if m else g for g, w, m in zip(grads, weights, mask)]
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in out))
    scale = min(1.0, clipnorm / norm) if clipnorm else 1.0
    return [g * scale for g in out], norm


@pytest.mark.parametrize("l2,clipnorm", [(0.0, 0.0), (0.1, 0.0), (0.1, 0.5), (0.0, 100.0)])
def test_l2_gradient_and_clip_matches_numpy(l2, clipnorm):
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    grads = [rng.normal(size=w.shape).astype(np.float32) for w in weights]
    mask = [True, False]
    expected, norm = numpy_l2_and_clip(grads, weights, l2, mask, clipnorm)
    if clipnorm == 0.5:
        assert norm > clipnorm, "the case must engage clipping"
    got = optimizer_lib.l2_gradient_and_clip(
        [tf.constant(g) for g in grads], [tf.constant(w) for w in weights], l2, mask, clipnorm)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-7)


def test_none_gradients_pass_through():
    got = optimizer_lib.l2_gradient_and_clip([None, tf.ones([2])], [tf.ones([2]), tf.ones([2])],
                                             0.5, [True, True], 1.0)
    assert got[0] is None
    np.testing.assert_allclose(got[1].numpy(), np.full(2, 1.5) / np.sqrt(2 * 1.5 ** 2), rtol=1e-6)


def test_bias_and_normalisation_variables_are_not_decayed():
    layer = keras.layers.Dense(3, name="dense")
    norm = keras.layers.BatchNormalization(name="bn")
    layer.build((None, 2))
    norm.build((None, 3))
    decayed = {v.path.rsplit("/", 1)[-1]: optimizer_lib.decays(v)
               for v in layer.weights + norm.weights}
    assert decayed == {"kernel": True, "bias": False, "gamma": False, "beta": False,
                       "moving_mean": False, "moving_variance": False}


def _sgd(l2, clipnorm, momentum=0.9, lr=0.1):
    return optimizer_lib.SGDL2(learning_rate=lr, momentum=momentum, l2=l2,
                               clipnorm_global=clipnorm)


def test_two_sgd_steps_follow_coupled_l2_with_momentum():
    """w_{t+1} = w_t + v_{t+1}, v_{t+1} = m v_t - lr (g + l2 w_t): L2 inside the momentum."""
    kernel = keras.Variable(np.array([[1.0, -2.0]], np.float32), name="kernel")
    bias = keras.Variable(np.array([0.5], np.float32), name="bias")
    opt = _sgd(l2=0.1, clipnorm=0.0)
    grads = [np.array([[0.3, 0.1]], np.float32), np.array([0.2], np.float32)]
    w, b = kernel.numpy().copy(), bias.numpy().copy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(2):
        opt.apply([tf.constant(g) for g in grads], [kernel, bias])
        vw = 0.9 * vw - 0.1 * (grads[0] + 0.1 * w)
        vb = 0.9 * vb - 0.1 * grads[1]  # biases are not regularised
        w, b = w + vw, b + vb
    np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), b, rtol=1e-6)


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_momentum_update_equals_keras_sgd(nesterov, monkeypatch):
    """The fused kernel (nesterov falls back to Keras's ops) gives Keras SGD's weights and
    momenta over steps, as eager calls and inside a tf.function."""
    fused_calls = []
    kernel = tf.raw_ops.ResourceApplyKerasMomentum
    monkeypatch.setattr(tf.raw_ops, "ResourceApplyKerasMomentum",
                        lambda **kw: fused_calls.append(1) or kernel(**kw))
    rng = np.random.RandomState(0)
    init = [rng.randn(3, 4).astype(np.float32), rng.randn(4).astype(np.float32)]
    grads = [[rng.randn(*w.shape).astype(np.float32) for w in init] for _ in range(3)]
    ours = [keras.Variable(w) for w in init]
    reference = [keras.Variable(w) for w in init]
    opt = optimizer_lib.SGDL2(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
    ref = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=nesterov)
    step = tf.function(lambda g: opt.apply(g, ours))
    for i, g in enumerate(grads):
        g = [tf.constant(x) for x in g]
        (opt.apply(g, ours) if i == 0 else step(g))
        ref.apply(g, reference)
    for a, b in zip(ours + list(opt.momentums), reference + list(ref.momentums)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    assert bool(fused_calls) != nesterov


def test_clipping_uses_the_global_gradient_under_mirrored_strategy():
    """Each replica's partial gradient is under the bound, their sum is over it: the update
    must be the single-device clipped one (Keras's own clipnorm clips per replica)."""
    strategy = strategy_lib.cpu_mirrored_strategy(2)
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        kernel = keras.Variable(np.zeros((2,), np.float32), name="kernel")
        opt = _sgd(l2=0.0, clipnorm=1.0, momentum=0.0, lr=1.0)
        opt.build([kernel])

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            # Replica 0: [0.6, 0.0], replica 1: [0.6, 0.2]; norms 0.6 and 0.63, under the bound.
            partial = tf.stack([0.6, 0.2 * tf.cast(replica, tf.float32)])
            opt.apply([partial], [kernel])
        strategy.run(replica_fn)

    step()
    # The summed gradient [1.2, 0.2] (norm 1.217) clipped to norm 1; per-replica clipping
    # would leave it unclipped.
    summed = np.array([1.2, 0.2])
    np.testing.assert_allclose(kernel.numpy(), -summed / np.linalg.norm(summed), rtol=1e-5)


def test_build_optimizer_reads_the_config():
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    train = config_lib.base_config("detection").train
    opt = optimizer_lib.build_optimizer(train)
    assert isinstance(opt, optimizer_lib.SGDL2)
    assert opt.l2 == train.weight_decay and opt.clipnorm_global == train.clipnorm
    assert opt.weight_decay is None and opt.global_clipnorm is None and opt.clipnorm is None


def test_skip_nonfinite_under_mirrored_strategy_skips_on_every_replica():
    """Only replica 1's partial gradient is NaN: the summed one is, so no replica updates;
    the next, finite step updates all of them, and `skipped_steps` counts the one skip."""
    strategy = strategy_lib.cpu_mirrored_strategy(2)
    with strategy.scope():
        kernel = keras.Variable(np.zeros((2,), np.float32), name="kernel")
        opt = optimizer_lib.SGDL2(learning_rate=1.0, momentum=0.0, skip_nonfinite=True)
        opt.build([kernel])

    @tf.function
    def step(bad):
        def replica_fn():
            replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group,
                              tf.float32)
            poison = tf.where(tf.logical_and(bad, replica > 0), float("nan"), 0.0)
            opt.apply([tf.stack([0.5, 0.25]) + poison], [kernel])
        strategy.run(replica_fn)

    step(tf.constant(True))
    np.testing.assert_array_equal(kernel.numpy(), [0.0, 0.0])
    for value in strategy.experimental_local_results(kernel.value):
        np.testing.assert_array_equal(value.numpy(), [0.0, 0.0])
    assert opt.skipped_steps == 1 and int(opt.iterations.numpy()) == 1
    step(tf.constant(False))
    np.testing.assert_allclose(kernel.numpy(), [-1.0, -0.5])  # the sum over 2 replicas
    assert opt.skipped_steps == 1 and int(opt.iterations.numpy()) == 2


def test_build_optimizer_reads_nonfinite():
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    train = config_lib.base_config("detection").train
    assert not optimizer_lib.build_optimizer(train).skip_nonfinite
    train.nonfinite = "skip"
    assert optimizer_lib.build_optimizer(train).skip_nonfinite
