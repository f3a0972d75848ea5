r"""Pre-trains a backbone: supervised classification or SimCLR, as the config says.

  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_classification.py \
      --workdir=/tmp/imagenet                     # "ImageNet" (supervised)
  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_classification.py:plus \
      --workdir=/tmp/imagenet_plus                # "ImageNet++" (longer, stronger augmented)
  python -m rethink_tf.pretrain --config=experiments/configs/pretrain_simclr.py \
      --workdir=/tmp/simclr                       # SimCLR, then a linear probe
  python -m rethink_tf.pretrain --workdir=/tmp/imagenet --probe_only   # linear probe only

A config with a `simclr` section runs SimCLR; any other is supervised. Every workdir ends with
`backbone.weights.h5`, which `python -m rethink_tf.train ... --config.init=pretrained:<workdir>`
loads. Re-running the same command resumes.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pre-training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, tb, metrics, "
                               "backbone.weights.h5).")
_PROBE_ONLY = flags.DEFINE_bool("probe_only", False, "Only run a linear probe of the backbone "
                                "saved in --workdir (on --config's data if given, else the "
                                "workdir's); writes workdir/probe.json.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    from rethink_tf.training import pretraining  # pylint: disable=g-import-not-at-top
    if _PROBE_ONLY.value:
        metrics = pretraining.probe_workdir(_WORKDIR.value, _CONFIG.value)
        print(f"linear probe top1={metrics['top1']:.4f}", flush=True)
        return
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (except with --probe_only)")
    pretraining.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
