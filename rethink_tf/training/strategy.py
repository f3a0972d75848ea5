"""tf.distribute strategies by name."""

import tensorflow as tf


def make_strategy(name, tpu=""):
    """Returns the `tf.distribute.Strategy` named by `config.strategy`.

    Args:
      name: default | mirrored | multi_worker | tpu.
        - default: one device (the current default strategy).
        - mirrored: every local GPU, or every logical CPU device when there is no GPU.
        - multi_worker: `MultiWorkerMirroredStrategy`; the cluster comes from `TF_CONFIG`.
        - tpu: `TPUStrategy` on the TPU at `tpu` ("" = local TPU VM).
      tpu: TPU address for name == "tpu".
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy([d.name for d in gpus])
        return cpu_mirrored_strategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"config.strategy: {name!r} is not one of default, mirrored, "
                     "multi_worker, tpu")


def cpu_mirrored_strategy(num_devices=None):
    """MirroredStrategy over the logical CPU devices.

    Reductions go through one device instead of collective ops: on CPUs, collectives issued
    from the loss (normalisers) and the optimiser could be scheduled in different orders on
    different replicas and fail with a collective shape mismatch.
    """
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if num_devices:
        devices = devices[:num_devices]
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def is_chief():
    """True on the worker that writes checkpoints, summaries and metrics."""
    import json  # pylint: disable=g-import-not-at-top
    import os  # pylint: disable=g-import-not-at-top
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = tf_config.get("task", {})
    if not task:
        return True
    return task.get("type") in ("chief", "master") or (
        task.get("type") == "worker" and task.get("index", 0) == 0
        and "chief" not in tf_config.get("cluster", {}))


def adapt_model(model, strategy):
    """Makes a Keras 3 model's `fit` work under `MultiWorkerMirroredStrategy` (a no-op under
    any other strategy). Two workarounds of keras-team/keras#20585:

    - Keras builds the model from the first batch by `strategy.reduce("MEAN", batch,
      axis=None)`, which MWMS cannot do for per-replica values ("Attempt to convert a value
      (PerReplica...) to a Tensor"); every replica's batch has the same shapes, so the first
      local replica's is built from instead.
    - Keras reduces each step's scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which
      fails on MWMS's scalars ("Invalid reduction dimension 0"), and its `fit` ignores
      `distribute_reduction_method` (the reduction is hard-coded "auto"): Keras's
      `reduce_per_replica` is wrapped so that, under MWMS only, "auto" takes the first local
      replica's logs. The logs (losses, metrics) are then this worker's; the training itself
      (gradients all-reduced over every replica of every worker) is unchanged.

    Returns:
      `model`.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return model
    import types  # pylint: disable=g-import-not-at-top

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = _first_replica(self.distribute_strategy, batch)
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = types.MethodType(  # pylint: disable=protected-access
        _maybe_symbolic_build, model)
    _first_replica_logs_under_multi_worker()
    return model


def _first_replica_logs_under_multi_worker():
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer  # pylint: disable=g-import-not-at-top
    reduce = keras_tf_trainer.reduce_per_replica
    if getattr(reduce, "rethink_tf_wrapped", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if (reduction == "auto"
                and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)):
            return _first_replica(strategy, values)
        return reduce(values, strategy, reduction)

    reduce_per_replica.rethink_tf_wrapped = True
    keras_tf_trainer.reduce_per_replica = reduce_per_replica


def _first_replica(strategy, values):
    """`values` with each per-replica leaf replaced by the first local replica's value."""
    return tf.nest.map_structure(
        lambda v: (strategy.experimental_local_results(v)[0]
                   if isinstance(v, tf.distribute.DistributedValues) else v), values)
