"""One process of a training job on fixed batches (a helper of test_multi_worker.py).

    python tests/faults/multi_worker_job.py '<spec as JSON>'

spec: {"config": the config as a dict, "workdir", "batches": a `tf.data.Dataset.save`
directory of global batches, "weights": where to write the final weights (.npz),
"tf_config": the worker's TF_CONFIG or null}. The job trains with `trainer.train`, as
`python -m rethink_tf.train` does (a student config: with the student model, as
`student.train_student` does), except that its batches come from `batches`: input pipeline
p of n gets the p-th n-th of every global batch, so any number of workers trains on the same
global batches as one process (the data pipeline proper seeds and shards per pipeline, so its
global batches depend on the number of workers by design).
"""

import json
import os
import sys


def fixed_batches(directory):
    """A `Hooks.train_data` reading saved global batches, split over the input pipelines."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    def train_data(config, info, per_replica_batch, input_context=None, start_step=0):
        del info
        pipelines = input_context.num_input_pipelines if input_context is not None else 1
        pipeline = input_context.input_pipeline_id if input_context is not None else 0
        global_batch = int(config.train.batch_size)
        share = global_batch // pipelines  # examples of each global batch this pipeline feeds

        def mine(*batch):  # (x, y) for supervised batches, one dict of streams for a student
            batch = batch[0] if len(batch) == 1 else batch
            return tf.nest.map_structure(
                lambda t: t[pipeline * share:(pipeline + 1) * share], batch)

        batches = tf.data.Dataset.load(directory).unbatch().batch(global_batch).map(mine)
        steps = share // per_replica_batch  # batches this pipeline gives per step
        return (batches.unbatch().batch(per_replica_batch, drop_remainder=True)
                .skip(int(start_step) * steps).repeat())

    return train_data


def save_weights(path):
    """A `Hooks.after_training` writing the model's weights to `path` (every worker)."""
    import numpy as np  # pylint: disable=g-import-not-at-top

    def after_training(run):
        np.savez(path, *run.model.get_weights())
        return {}

    return after_training


def run(spec):
    """Trains as `spec` says (see the module docstring); returns the metrics."""
    if spec.get("tf_config"):
        os.environ["TF_CONFIG"] = json.dumps(spec["tf_config"])
    import ml_collections  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict(spec["config"])
    build_model = None
    if config.self_training.get("student", False):  # a noisy student, as train_student builds it
        from rethink_tf.training import student  # pylint: disable=g-import-not-at-top
        build_model = student.build_student_model
    hooks = trainer.Hooks(build_model=build_model, train_data=fixed_batches(spec["batches"]),
                          after_training=save_weights(spec["weights"]))
    return trainer.train(config, spec["workdir"], hooks=hooks)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
