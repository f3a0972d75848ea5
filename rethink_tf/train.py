r"""Trains a detector, segmenter or classifier from a config file: supervised, as a noisy
student (`self_training.student`) or jointly with a classification set (`joint.dataset`).

  python -m rethink_tf.train --config=experiments/configs/detection.py --workdir=/tmp/det \
      [--config.train.steps=...] [--config.strategy=mirrored]

Re-running the same command resumes from the latest checkpoint.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, tb, metrics).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    config = _CONFIG.value
    if config_lib.is_joint(config):
        from rethink_tf.training import joint  # pylint: disable=g-import-not-at-top
        joint.train_joint(config, _WORKDIR.value)
    elif config.self_training.get("student", False) or config.self_training.pseudo_labels:
        from rethink_tf.training import student  # pylint: disable=g-import-not-at-top
        student.train_student(config, _WORKDIR.value)
    else:
        trainer.train(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
