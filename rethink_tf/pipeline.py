r"""The main job: pre-training -> teacher -> pseudo labels -> student -> evaluation -> report.

  python -m rethink_tf.pipeline --workdir=/tmp/rt
  python -m rethink_tf.pipeline --config=experiments/configs/segmentation.py:student \
      --workdir=/tmp/rt_seg --rounds=2
  python -m rethink_tf.pipeline --workdir=/tmp/rt_rand --nopretrain      # "Rand Init"
  python -m rethink_tf.pipeline --workdir=/tmp/rt_joint --joint         # joint student
  python -m rethink_tf.pipeline --workdir=/tmp/rt_pp --nopretrain \
      --config.init=pretrained:/tmp/imagenet_plus                        # a backbone you have

By default the backbone is first pre-trained with --pretrain_config ("ImageNet++" on
digit_scenes/classification, experiments/configs/pretrain_classification.py:plus) in
DIR/pretrain, and teacher and student start from it: self-training on top of pre-training, as
in the paper. (From the weaker "ImageNet" checkpoint, pretrain_classification.py, the 1,500-step
teacher reaches only AP50 0.28, too weak to teach: experiments/bench/SELF_TRAINING.md.)
DIR/pretrain, DIR/teacher, DIR/pseudo, DIR/student (and DIR/round<k>/... for more rounds) are
ordinary workdirs; DIR/report.md summarises. Re-running the command resumes at the stage it
stopped.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/detection.py:student",
    "Student config; its self_training section says how to pseudo-label.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline directory.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Self-training rounds (student -> next teacher).")
_QUALITY_IMAGES = flags.DEFINE_integer(
    "quality_images", 1000, "Unlabeled images scored against hidden ground truth (0 = all).")
_PRETRAIN = flags.DEFINE_bool(
    "pretrain", True, "Pre-train the backbone with --pretrain_config first (DIR/pretrain); "
    "--nopretrain starts from --config.init (random unless set).")
_JOINT = flags.DEFINE_bool(
    "joint", False, "Train the student jointly with a classification set (human + pseudo + "
    "classification; --config.joint.*, by default the pre-training corpus).")
_PRETRAIN_CONFIG = config_flags.DEFINE_config_file(
    "pretrain_config", "experiments/configs/pretrain_classification.py:plus",
    "Pre-training config (supervised or SimCLR); its backbone must be --config's.")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    from rethink_tf import self_training  # pylint: disable=g-import-not-at-top
    self_training.run(_CONFIG.value, _WORKDIR.value, rounds=_ROUNDS.value,
                      quality_images=_QUALITY_IMAGES.value,
                      pretrain_config=_PRETRAIN_CONFIG.value if _PRETRAIN.value else None,
                      joint=_JOINT.value)


if __name__ == "__main__":
    app.run(main)
