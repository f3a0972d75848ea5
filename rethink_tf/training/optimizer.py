"""The paper's optimiser: SGD with momentum, linear warm-up then cosine or step decay."""

import keras
import numpy as np


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


def build_optimizer(train_config):
    """SGD + momentum with the warm-up schedule, L2 weight decay and gradient clipping.

    Known limitation: under tf.distribute with several replicas, Keras 3 clips each
    replica's partial gradient before they are summed, so when clipping is active a
    distributed step differs from a single-device one (the equivalence tests run with the
    default clip norm of 10, which these gradients stay under).

    Weight decay is applied in the update (Keras's `weight_decay`), which for SGD is L2
    regularisation scaled by the learning rate; batch-norm and bias variables are excluded, as
    usual for detection.
    """
    schedule = WarmupDecay(train_config.learning_rate, train_config.steps,
                           train_config.warmup_steps, train_config.schedule,
                           train_config.step_boundaries, train_config.step_factor)
    optimizer = keras.optimizers.SGD(
        learning_rate=schedule, momentum=train_config.momentum,
        weight_decay=train_config.weight_decay or None,
        global_clipnorm=train_config.clipnorm or None)
    if train_config.weight_decay:
        optimizer.exclude_from_weight_decay(
            var_names=["bias", "gamma", "beta", "moving_mean", "moving_variance"])
    return optimizer


def current_learning_rate(optimizer):
    """The learning rate at the optimiser's current step, as a float."""
    lr = optimizer.learning_rate
    if callable(lr):
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))
