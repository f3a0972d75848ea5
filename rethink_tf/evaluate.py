r"""Evaluates a trained workdir: COCO AP (detection), mIoU (segmentation), top-1.

  python -m rethink_tf.evaluate --workdir=/tmp/det [--split=test] [--checkpoint=latest]

Writes DIR/metrics.json (eval split) or DIR/metrics_<split>.json, and TensorBoard summaries.
"""

import json

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: the config's).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", None, "Evaluate on the first N images only.")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    metrics = trainer.evaluate_workdir(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value,
                                       _NUM_IMAGES.value)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))},
                     indent=2, default=float))


if __name__ == "__main__":
    app.run(main)
