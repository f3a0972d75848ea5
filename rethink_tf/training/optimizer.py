"""The paper's optimiser: SGD with momentum, L2 regularisation, global gradient clipping, and a
linear warm-up then cosine or step decay."""

import keras
import numpy as np
import tensorflow as tf


@keras.saving.register_keras_serializable(package="rethink_tf")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then cosine/step/constant decay."""

    def __init__(self, peak, total_steps, warmup_steps=0, schedule="cosine",
                 boundaries=(0.67, 0.89), factor=0.1):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(warmup_steps, max(total_steps - 1, 0)))
        self.schedule = schedule
        self.boundaries = tuple(float(b) for b in boundaries)
        self.factor = float(factor)

    def __call__(self, step):
        ops = keras.ops
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup_lr = self.peak * ops.minimum(step + 1.0, warm) / warm
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        if self.schedule == "cosine":
            decayed = 0.5 * self.peak * (1.0 + ops.cos(np.pi * progress))
        elif self.schedule == "step":
            decayed = ops.convert_to_tensor(self.peak)
            for b in self.boundaries:
                decayed = ops.where(step >= b * self.total_steps, decayed * self.factor, decayed)
        else:
            decayed = ops.convert_to_tensor(self.peak)
        if self.warmup_steps <= 0:
            return decayed
        return ops.where(step < self.warmup_steps, warmup_lr, decayed)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "schedule": self.schedule,
                "boundaries": self.boundaries, "factor": self.factor}


# Variables the L2 term leaves out: batch/group-norm parameters and statistics, and biases.
NO_DECAY_NAMES = ("bias", "gamma", "beta", "moving_mean", "moving_variance")


def decays(variable):
    """True if the L2 term applies to `variable` (not a bias or a normalisation parameter)."""
    name = getattr(variable, "path", None) or variable.name
    leaf = name.rsplit("/", 1)[-1].split(":")[0]
    return leaf not in NO_DECAY_NAMES


def l2_gradient_and_clip(gradients, variables, l2, decay_mask, clipnorm):
    """The paper's L2 term and global-norm clipping on already summed (global) gradients.

    The L2 regulariser is `l2 / 2 * sum(w ** 2)` over the variables whose `decay_mask` entry is
    True (what tf-models-official's detection code adds to the loss, `l2 * tf.nn.l2_loss(w)`);
    its gradient `l2 * w` is added to each gradient, then all gradients are scaled together so
    that their global norm is at most `clipnorm` (0 or None: no clipping).

    Args:
      gradients: list of float tensors (None entries are passed through).
      variables: the matching variables (or tensors).
      l2: the L2 coefficient (0 = none).
      decay_mask: list of bools, True where the variable is regularised.
      clipnorm: the global-norm bound.

    Returns:
      The list of final gradients.
    """
    out = []
    for grad, var, decay in zip(gradients, variables, decay_mask):
        if grad is not None and l2 and decay:
            grad = grad + tf.cast(l2, grad.dtype) * tf.cast(var, grad.dtype)
        out.append(grad)
    if clipnorm:
        present = [g for g in out if g is not None]
        clipped, _ = tf.clip_by_global_norm(present, clipnorm)
        clipped = iter(clipped)
        out = [None if g is None else next(clipped) for g in out]
    return out


@keras.saving.register_keras_serializable(package="rethink_tf")
class SGDL2(keras.optimizers.SGD):
    """SGD with momentum, a coupled L2 term and clipping of the GLOBAL gradient.

    Keras's `weight_decay` is decoupled (w -= lr * wd * w outside the momentum), about 10x
    weaker than the paper's L2 at the same coefficient with momentum 0.9; and Keras clips each
    replica's partial gradient before the cross-replica sum, so `global_clipnorm` breaks the
    single-device / multi-device equivalence once it engages. Here both happen after the
    gradients are summed over replicas: g = sum_r g_r + l2 * w, then clip_by_global_norm(g).

    With `skip_nonfinite`, a step whose global gradient holds a NaN or an infinity changes
    nothing (no weight, no momentum) but still counts as a step (`iterations`, hence the
    learning-rate schedule and the data position, move on as usual); `skipped_steps` counts
    such steps in this process (it is not checkpointed, so a model's checkpoints are the same
    with and without the option). The test is on the gradient summed over replicas, so every
    replica skips together.

    Args:
      l2: L2 coefficient (the paper's 4e-5); not applied to biases and normalisation variables.
      clipnorm_global: bound on the global gradient norm (0 = none).
      skip_nonfinite: skip the update of a step with a non-finite gradient.
      **kwargs: `keras.optimizers.SGD` arguments (learning_rate, momentum, ...); its own
        `weight_decay`, `clipnorm` and `global_clipnorm` must stay unset.
    """

    def __init__(self, l2=0.0, clipnorm_global=0.0, skip_nonfinite=False, **kwargs):
        for key in ("weight_decay", "clipnorm", "global_clipnorm", "clipvalue"):
            if kwargs.get(key):
                raise ValueError(f"SGDL2 does its own L2 and clipping; {key} must be unset")
        super().__init__(**kwargs)
        self.l2 = float(l2 or 0.0)
        self.clipnorm_global = float(clipnorm_global or 0.0)
        self.skip_nonfinite = bool(skip_nonfinite)
        # Set past Keras's and TF's attribute tracking: not an optimizer variable, not in
        # checkpoints (toggling the option keeps checkpoints compatible).
        object.__setattr__(self, "_skipped", None)

    def build(self, variables):
        super().build(variables)
        if self.skip_nonfinite and self._skipped is None:
            object.__setattr__(self, "_skipped", tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_steps",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA))

    @property
    def skipped_steps(self):
        """Steps skipped for a non-finite gradient since this process built the optimizer."""
        return 0 if self._skipped is None else int(self._skipped.numpy())

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras's TF backend all-reduces inside this method; doing it here first (the parent's
        # helper) lets the L2 term and the clipping see the global gradient. The parent's
        # merge-call update then applies it per variable, as Keras does.
        # pylint: disable=protected-access
        variables = [v.value if isinstance(v, keras.Variable) else v
                     for v in trainable_variables]
        reduced = self._all_reduce_sum_gradients(list(zip(grads, variables)))
        final = l2_gradient_and_clip([g for g, _ in reduced], variables, self.l2,
                                     [decays(v) for v in trainable_variables],
                                     self.clipnorm_global)
        if not self.skip_nonfinite:
            tf.__internal__.distribute.interim.maybe_merge_call(
                self._distributed_tf_update_step, self._distribution_strategy,
                list(zip(final, variables)), learning_rate)
            return
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                                for g in final if g is not None])
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._update_if_finite, self._distribution_strategy,
            list(zip(final, variables)), learning_rate, finite)

    def update_step(self, gradient, variable, learning_rate):
        """Keras's SGD update, in TF's fused momentum kernel where it applies.

        m = momentum * m - lr * g; w += m: Keras computes it in four element-wise ops, each a
        pass over the variable's memory; `ResourceApplyKerasMomentum` (the kernel of tf_keras's
        SGD) makes one pass (ResNet-18's update 11 -> 6 ms on a CPU;
        experiments/bench/TRAIN_STEP.md). Nesterov, no momentum, or a dtype the kernel does not
        take go through Keras's own update.
        """
        momentum_slot = (self.momentums[self._get_variable_index(variable)]
                         if self.momentum and not self.nesterov else None)
        handle = getattr(variable, "handle", None)
        slot = getattr(momentum_slot, "value", momentum_slot)
        if (momentum_slot is None or handle is None or not hasattr(slot, "handle")
                or variable.dtype != tf.float32 or slot.dtype != tf.float32):
            return super().update_step(gradient, variable, learning_rate)
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=handle, accum=slot.handle, lr=tf.cast(learning_rate, tf.float32),
            grad=tf.cast(gradient, tf.float32), momentum=tf.constant(self.momentum, tf.float32),
            use_locking=False, use_nesterov=False)
        return None

    def _update_if_finite(self, distribution, grads_and_vars, learning_rate, finite):
        # In the cross-replica context (as Keras's LossScaleOptimizer does it): a `cond` whose
        # branch updates variables is allowed here, not in a replica context. Every replica
        # computed `finite` from the same all-reduced gradient: the first one's is everyone's.
        finite = distribution.experimental_local_results(finite)[0]

        def update():
            self._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)
            return tf.constant(True)

        def skip():
            self._skipped.assign_add(1)
            return tf.constant(False)
        return tf.cond(finite, update, skip)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2, "clipnorm_global": self.clipnorm_global,
                "skip_nonfinite": self.skip_nonfinite}


def build_optimizer(train_config):
    """SGD + momentum with the warm-up schedule, the paper's L2 term and global clipping.

    `train.weight_decay` is the L2 coefficient (loss += wd / 2 * sum(w ** 2), biases and
    normalisation variables excluded, as tf-models-official's detection code does), and
    `train.clipnorm` bounds the norm of the global gradient (summed over replicas, L2 term
    included). See `SGDL2`.
    """
    schedule = WarmupDecay(train_config.learning_rate, train_config.steps,
                           train_config.warmup_steps, train_config.schedule,
                           train_config.step_boundaries, train_config.step_factor)
    return SGDL2(learning_rate=schedule, momentum=train_config.momentum,
                 l2=train_config.weight_decay or 0.0,
                 clipnorm_global=train_config.clipnorm or 0.0,
                 skip_nonfinite=train_config.get("nonfinite", "stop") == "skip")


def current_learning_rate(optimizer):
    """The learning rate at the optimiser's current step, as a float."""
    lr = optimizer.learning_rate
    if callable(lr):
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))
