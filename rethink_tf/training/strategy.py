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
