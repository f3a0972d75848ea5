"""SimCLR: NT-Xent against NumPy, the two views, the train_step, distribution, the probe."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf


from rethink_tf.data import simclr_augment
from rethink_tf.data import sources
from rethink_tf.training import config as config_lib
from rethink_tf.training import optimizer as optimizer_lib
from rethink_tf.training import pretraining
from rethink_tf.training import simclr
from rethink_tf.training import tasks
from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order
import distributed_step  # tests/distributed_step.py  # pylint: disable=g-bad-import-order

CONFIG_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "configs",
                           "pretrain_simclr.py")


def _reference_per_anchor(z1, z2, temperature):
    """NT-Xent per anchor, written from the paper (float64), independent of `simclr`.

    The 2N views are u_0..u_{N-1} = z1 and u_N..u_{2N-1} = z2. Anchor a's positive is the
    same image's other view, (a + N) mod 2N; its candidates are all 2N views but itself
    (the positive and the 2N - 2 negatives):
        l_a = -s(a, a+) / t + log sum_{k != a} exp(s(a, k) / t),  s = cosine similarity.

    Returns:
      float64 [2N]: l_a for a = 0..2N-1 (view-1 anchors, then view-2 anchors).
    """
    u = np.concatenate([z1, z2]).astype(np.float64)
    u = u / np.sqrt(np.sum(u * u, axis=1, keepdims=True))
    n2 = len(u)
    losses = np.empty(n2)
    for a in range(n2):
        sims = np.array([np.dot(u[a], u[k]) for k in range(n2)]) / temperature
        others = np.array([sims[k] for k in range(n2) if k != a])
        top = others.max()
        log_denominator = top + np.log(np.sum(np.exp(others - top)))
        losses[a] = log_denominator - sims[(a + n2 // 2) % n2]
    return losses


def _reference_loss(z1, z2, temperature):
    """The mean over the 2N anchors."""
    return float(np.mean(_reference_per_anchor(z1, z2, temperature)))


def _finite_difference_gradient(fn, z1, z2, eps=1e-6):
    """Central differences of scalar `fn(z1, z2)` (float64) w.r.t. every entry of z1, z2."""
    grads = []
    for which in range(2):
        z = [np.array(z1, np.float64), np.array(z2, np.float64)]
        grad = np.zeros_like(z[which])
        for index in np.ndindex(grad.shape):
            plus = [a.copy() for a in z]
            minus = [a.copy() for a in z]
            plus[which][index] += eps
            minus[which][index] -= eps
            grad[index] = (fn(*plus) - fn(*minus)) / (2 * eps)
        grads.append(grad)
    return grads


def test_reference_itself_on_a_hand_computed_case():
    # Two images, orthogonal unit views: every cosine is 0 except the view with itself, so
    # each anchor's 3 candidates have logit 0 and l_a = log 3 (whatever the temperature).
    z1 = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    z2 = np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(_reference_per_anchor(z1, z2, 0.3), np.log(3.0), rtol=1e-12)
    # Identical views (cosine 1 with the positive, 0 with the 2 negatives):
    # l_a = -1/t + log(e^{1/t} + 2).
    z2 = z1 * 3.0  # norms do not matter
    t = 0.5
    np.testing.assert_allclose(_reference_per_anchor(z1, z2, t),
                               -1 / t + np.log(np.exp(1 / t) + 2), rtol=1e-12)


@pytest.mark.parametrize("batch", [1, 2, 5, 16])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.5, 1.0])
def test_nt_xent_matches_numpy_reference(temperature, batch):
    rng = np.random.default_rng(batch)
    z1, z2 = rng.normal(size=(batch, 7)), rng.normal(size=(batch, 7))
    got = float(simclr.nt_xent_loss(z1.astype(np.float32), z2.astype(np.float32), temperature))
    np.testing.assert_allclose(got, _reference_loss(z1, z2, temperature), rtol=2e-5,
                               atol=1e-6)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_gradient_matches_finite_differences(temperature):
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    t1, t2 = tf.constant(z1, tf.float32), tf.constant(z2, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([t1, t2])
        loss = simclr.nt_xent_loss(t1, t2, temperature)
    got = tape.gradient(loss, [t1, t2])
    want = _finite_difference_gradient(lambda a, b: _reference_loss(a, b, temperature), z1, z2)
    for g, w in zip(got, want):
        assert np.abs(w).max() > 1e-2  # not a vacuous comparison of zeros
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-3, atol=2e-5)


@pytest.mark.parametrize("temperature", [0.1, 0.7])
def test_replica_shard_loss_is_the_mean_over_its_anchors_with_global_negatives(temperature):
    rng = np.random.default_rng(1)
    n, shard = 6, 2
    z1, z2 = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    per_anchor = _reference_per_anchor(z1, z2, temperature)
    f1, f2 = z1.astype(np.float32), z2.astype(np.float32)
    for offset in range(0, n, shard):
        rows = np.arange(offset, offset + shard)
        want = np.mean(np.concatenate([per_anchor[rows], per_anchor[rows + n]]))
        got = float(simclr.nt_xent_loss(f1[rows], f2[rows], temperature, z1_all=f1, z2_all=f2,
                                        offset=offset))
        np.testing.assert_allclose(got, want, rtol=2e-5)
    # Per-replica negatives only would be a different (easier) loss.
    local = float(simclr.nt_xent_loss(f1[:shard], f2[:shard], temperature))
    want = np.mean(np.concatenate([per_anchor[:shard], per_anchor[n:n + shard]]))
    assert abs(local - want) > 1e-3


def test_distributed_compute_loss_and_gradients_equal_the_full_batch_reference():
    """Under 2 replicas, `SimCLR.compute_loss` gathers the other replica's projections:
    the replicas' (1 / replicas-scaled) losses add up to the full-batch NT-Xent, and each
    replica's gradient w.r.t. its own projections (the all-gather's gradient summed back to
    the owner) is the full-batch loss's gradient for those rows."""
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest configures 2 logical CPU devices"
    # No collective ops here: a second collective MirroredStrategy in this process would
    # reuse its collective instance keys (TF starts every strategy's at the same value) for
    # other ops and abort the collective test below; the gather's semantics are the same.
    strategy = tf.distribute.MirroredStrategy(
        [d.name for d in cpus[:2]], cross_device_ops=tf.distribute.ReductionToOneDevice())
    temperature, n, dim = 0.2, 6, 5
    with strategy.scope():
        model = simclr.build_simclr("resnet_tiny", 32, projection_dim=dim, hidden_dim=8,
                                    temperature=temperature, sync_batchnorm=False)
    assert not model.losses  # nothing but NT-Xent enters the loss below
    rng = np.random.default_rng(4)
    z1, z2 = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    half = n // 2

    def local(ctx):
        rows = slice(ctx.replica_id_in_sync_group * half, (ctx.replica_id_in_sync_group + 1) * half)
        return tf.constant(np.concatenate([z1[rows], z2[rows]]), tf.float32)

    z_local = strategy.experimental_distribute_values_from_function(local)

    @tf.function
    def replica_fn(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = model.compute_loss(y_pred=z, training=True)
        return loss, tape.gradient(loss, z)

    losses, grads = strategy.run(replica_fn, args=(z_local,))
    losses = [float(v) for v in strategy.experimental_local_results(losses)]
    grads = [g.numpy() for g in strategy.experimental_local_results(grads)]
    np.testing.assert_allclose(sum(losses), _reference_loss(z1, z2, temperature), rtol=2e-5)
    want1, want2 = _finite_difference_gradient(
        lambda a, b: _reference_loss(a, b, temperature), z1, z2)
    for replica, grad in enumerate(grads):
        rows = slice(replica * half, (replica + 1) * half)
        np.testing.assert_allclose(grad[:half], want1[rows], rtol=1e-3, atol=2e-5)
        np.testing.assert_allclose(grad[half:], want2[rows], rtol=1e-3, atol=2e-5)


def test_nt_xent_prefers_aligned_views():
    rng = np.random.default_rng(2)
    z1 = rng.normal(size=(8, 16)).astype(np.float32)
    aligned = float(simclr.nt_xent_loss(z1, z1 + 0.01, 0.1))
    shuffled = float(simclr.nt_xent_loss(z1, np.roll(z1, 1, axis=0), 0.1))
    assert aligned < 0.1 < shuffled


@pytest.fixture(scope="module")
def tiny_images(digit_scenes_data_dir):
    examples = sources.load("digit_scenes/classification_tiny", "train",
                            data_dir=digit_scenes_data_dir)
    return np.stack([e["image"].numpy() for e in examples.take(4)])


def test_two_views_of_one_image_differ_eagerly_and_in_tf_data(tiny_images):
    tf.random.set_seed(0)
    image = tiny_images[0]
    v1, v2 = simclr_augment.two_views(image, (32, 32))
    for v in (v1, v2):
        assert v.shape == (32, 32, 3) and v.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(v)) and float(tf.reduce_max(v)) <= 255.0
    assert float(tf.reduce_mean(tf.abs(v1 - v2))) > 1.0
    ds = tf.data.Dataset.from_tensor_slices({"image": tiny_images}).map(
        simclr_augment.make_views_fn((32, 32)))
    for a, b in ds:
        assert a.shape == b.shape == (32, 32, 3)
        assert float(tf.reduce_mean(tf.abs(a - b))) > 1.0


def test_gaussian_blur_keeps_constants_and_smooths_edges():
    flat = tf.fill([9, 9, 3], 0.7)
    np.testing.assert_allclose(simclr_augment.gaussian_blur(flat, 1.5, 5).numpy(), 0.7,
                               atol=1e-6)
    step = tf.concat([tf.zeros([9, 4, 3]), tf.ones([9, 5, 3])], axis=1)
    blurred = simclr_augment.gaussian_blur(step, 1.0, 5).numpy()
    assert 0.0 < blurred[4, 3, 0] < 0.5 < blurred[4, 4, 0] < 1.0


def _simclr_config(data_dir, steps=2):
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    base = config_flags.config_flags._LoadConfigModule(  # pylint: disable=protected-access
        "cfg", CONFIG_FILE).get_config()
    config = tiny_config("classification", data_dir, steps=steps)
    config.simclr = base.simclr
    config.simclr.hidden_dim = 16
    config.simclr.projection_dim = 8
    config.simclr.probe_epochs = 5
    config.train.weight_decay = 1e-5
    config.train.batch_size = 8
    return config


def test_flipped_views_of_digits_are_rejected_unless_forced(digit_scenes_data_dir):
    config = _simclr_config(digit_scenes_data_dir)
    assert config.simclr.flip is False  # the recipe's default: a mirrored digit is another
    pretraining.validate_simclr(config)
    config.simclr.flip = True
    with pytest.raises(ValueError, match=r"simclr\.flip.*digit_scenes/classification_tiny"):
        pretraining.validate_simclr(config)
    config.dataset.hflip = "on"
    pretraining.validate_simclr(config)


def test_loss_falls_on_a_tiny_set(digit_scenes_data_dir):
    config = _simclr_config(digit_scenes_data_dir)
    config.train.steps = 25
    config.train.learning_rate = 0.1
    config.train.warmup_steps = 0
    config.train.schedule = "constant"
    keras.utils.set_random_seed(0)
    # One fixed batch of 16 images x 2 views: the loss must fall when fitting it.
    batch = next(iter(pretraining.simclr_dataset(config, 16)))
    model = pretraining.build_simclr_model(config)
    model.compile(optimizer=optimizer_lib.build_optimizer(config.train))
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(), steps_per_epoch=1,
                        epochs=25, verbose=0)
    losses = history.history["contrastive_loss"]
    assert set(history.history) == {"loss", "contrastive_loss", "contrastive_accuracy"}
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert history.history["contrastive_accuracy"][-1] > history.history[
        "contrastive_accuracy"][0]


def test_distributed_step_gathers_negatives_and_matches_single_device(digit_scenes_data_dir):
    """One step on 2 replicas (negatives gathered, sync BN) equals one step on one device.

    Gradient clipping is off: Keras 3 clips each replica's partial gradient before the
    all-reduce (`BaseOptimizer.apply` clips, then the TF backend sums), so with clipping active
    the two differ whatever the loss does.
    """
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest configures 2 logical CPU devices"
    config = _simclr_config(digit_scenes_data_dir)
    config.train.weight_decay = 0.0
    config.train.warmup_steps = 0
    config.train.learning_rate = 0.05
    config.train.clipnorm = 0.0
    batch = next(iter(pretraining.simclr_dataset(config, 8)))

    def build():
        model = pretraining.build_simclr_model(config)
        model.compile(optimizer=optimizer_lib.build_optimizer(config.train))
        return model

    def step(model):
        history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
        return {"contrastive_loss": history.history["contrastive_loss"][0]}

    initial, results = distributed_step.one_step_per_strategy(
        (tf.distribute.get_strategy(),
         # Collective all-reduce/all-gather: with ReductionToOneDevice this step differs by up
         # to 6e-3 in a few weights (open question, see notes).
         tf.distribute.MirroredStrategy([d.name for d in cpus[:2]])), build, step,
        return_initial=True)
    distributed_step.assert_steps_match(results, ["contrastive_loss"], weight_atol=None)
    # Weights: each update within 2 % of its norm. Measured differences are 2e-5 to 2e-4 of
    # the norm on a quiet machine and reached ~1.5e-4 absolute (about 1e-3 of the norm) under
    # heavy load (collective all-gather + sync batch norm: summation order varies between
    # runs); a loss or gradient scaled wrongly across replicas differs by 50 % or more.
    distributed_step.assert_updates_match(initial, results, rtol=0.02)


def test_simclr_pretrain_writes_backbone_probe_and_summaries(tmp_path, digit_scenes_data_dir):
    config = _simclr_config(digit_scenes_data_dir, steps=2)
    workdir = str(tmp_path / "simclr")
    metrics = pretraining.run(config, workdir)
    assert metrics["step"] == 2 and metrics["protocol"] == "linear_probe"
    assert 0.0 <= metrics["top1"] <= 1.0 and metrics["num_train"] == 32
    assert os.path.exists(metrics["backbone_weights"])
    tags = set()
    for path in glob.glob(os.path.join(workdir, "tb", "*", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    assert {"loss/contrastive_loss", "loss/total", "learning_rate", "eval/top1"} <= tags
    # Its backbone loads into a detector exactly like a supervised one.
    det = tiny_config("detection", digit_scenes_data_dir)
    det.init = f"pretrained:{workdir}"
    config_lib.validate(det)
    model = tasks.build_model(det, 10)
    tasks.initialize(model, det)
    from rethink_tf.models import backbones  # pylint: disable=g-import-not-at-top
    ref = backbones.build_backbone("resnet_tiny", input_shape=(32, 32, 3))
    backbones.load_backbone_weights(ref, metrics["backbone_weights"])
    for got, want in zip(model.backbone.weights, ref.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    # A finished run re-run does no work and returns the recorded metrics.
    again = pretraining.run(config, workdir)
    assert again["top1"] == metrics["top1"] and again["step"] == 2


@pytest.mark.parametrize("field,value,message", [
    ("temperature", 0.0, "config.simclr.temperature: must be > 0"),
    ("crop_min_area", 0.0, r"config.simclr.crop_min_area: 0.0 is not in \(0, 1\]"),
    ("blur_prob", 1.5, r"config.simclr.blur_prob: 1.5 is not in \[0, 1\]"),
    ("unlabeled", "no_such_dataset", "config.simclr.unlabeled: cannot open 'no_such_dataset'"),
])
def test_bad_simclr_config_fails_before_any_work(field, value, message, tmp_path,
                                                 digit_scenes_data_dir):
    config = _simclr_config(digit_scenes_data_dir)
    config.simclr[field] = value
    with pytest.raises(ValueError, match=message):
        pretraining.simclr_pretrain(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
