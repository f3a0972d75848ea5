r"""Exports a trained workdir for TF Serving: SavedModel with pre- and post-processing inside.

  python -m rethink_tf.export --workdir=/tmp/det --output=/tmp/serving/detector \
      [--version=N] [--checkpoint=best|latest|PATH] [--score_threshold=0.3]

Writes /tmp/serving/detector/<N>/ (next free version by default); serve it with
  docker run -p 8501:8501 -p 8500:8500 \
      --mount type=bind,source=/tmp/serving/detector,target=/models/detector \
      -e MODEL_NAME=detector -t tensorflow/serving
See `rethink_tf/serving/export.py` for the signatures and outputs.
"""

from absl import app
from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_OUTPUT = flags.DEFINE_string("output", None, "Model base path; the version goes below it.")
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: next free one).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best",
                                  "'best', 'latest' or a checkpoint path (.../ckpt-<step>).")
_SCORE_THRESHOLD = flags.DEFINE_float("score_threshold", 0.3,
                                      "Detection score threshold applied in the graph.")
_MAX_DETECTIONS = flags.DEFINE_integer("max_detections", None,
                                       "Detections per image (default: the config's).")
_IOU_THRESHOLD = flags.DEFINE_float("iou_threshold", 0.5, "NMS IoU threshold.")
_MODEL_NAME = flags.DEFINE_string("model_name", None,
                                  "Served model name for the warm-up requests (default: the "
                                  "basename of --output).")
flags.mark_flags_as_required(["workdir", "output"])
flags.register_validator("version", lambda v: v is None or v > 0, "--version must be > 0")
flags.register_validator("score_threshold", lambda v: 0.0 <= v <= 1.0,
                         "--score_threshold must be in [0, 1]")
flags.register_validator("iou_threshold", lambda v: 0.0 < v <= 1.0,
                         "--iou_threshold must be in (0, 1]")
flags.register_validator("max_detections", lambda v: v is None or v > 0,
                         "--max_detections must be > 0")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    from rethink_tf.serving import export  # pylint: disable=g-import-not-at-top
    path = export.export(_WORKDIR.value, _OUTPUT.value, version=_VERSION.value,
                         checkpoint=_CHECKPOINT.value, score_threshold=_SCORE_THRESHOLD.value,
                         max_detections=_MAX_DETECTIONS.value,
                         iou_threshold=_IOU_THRESHOLD.value, model_name=_MODEL_NAME.value)
    print(f"Exported {path}")


if __name__ == "__main__":
    app.run(main)
