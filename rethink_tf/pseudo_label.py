r"""Pseudo-labels an unlabeled source with a trained teacher (see `rethink_tf.pseudo`).

  python -m rethink_tf.pseudo_label --teacher=/runs/det --unlabeled=digit_scenes/detection \
      --output=/runs/pseudo [--split=unlabeled] [--score_threshold=0.5] [--pixel_threshold=0.5] \
      [--flip_tta] [--drop_empty] [--num_shards=N --shard_index=i] [--num_output_shards=K] \
      [--runner=DirectRunner] [--data_dir=...] [--quality]

--teacher is a training workdir (best checkpoint, else latest) or a SavedModel from
`python -m rethink_tf.export`. Re-running the same command finishes a killed run; machines
given the same flags and different --shard_index share the work. --runner runs the Apache
Beam pipeline instead of the local loop. --quality also writes `quality.json` (precision,
recall and AP per threshold) when the source keeps hidden ground truth.
"""

from absl import app
from absl import flags

_TEACHER = flags.DEFINE_string("teacher", None, "Teacher workdir or SavedModel directory.")
_UNLABELED = flags.DEFINE_string("unlabeled", None, "Unlabeled source name (TFDS name, "
                                 "images:<glob>, coco_json:...).")
_SPLIT = flags.DEFINE_string("split", None, "Split of the source; default 'unlabeled' "
                             "('all' for images:/coco_json: sources).")
_OUTPUT = flags.DEFINE_string("output", None, "Pseudo-label output directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_SCORE = flags.DEFINE_float("score_threshold", 0.5, "Detection: lowest score kept as a box.")
_PIXEL = flags.DEFINE_float("pixel_threshold", 0.5, "Segmentation: lowest top-class "
                            "probability that labels a pixel (others are 255 = ignore).")
_FLIP = flags.DEFINE_bool("flip_tta", False, "Horizontal-flip test-time augmentation.")
_DROP = flags.DEFINE_bool("drop_empty", False, "Drop images with no pseudo label instead of "
                          "keeping them as negatives.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Machines sharing the work.")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", None, "This machine's index in "
                                    "[0, num_shards); default: all shards.")
_NUM_OUTPUT = flags.DEFINE_integer("num_output_shards", None, "Output files (default "
                                   "max(8, num_shards)); the same on every machine.")
_SHARDS_PER_PASS = flags.DEFINE_integer("shards_per_pass", None, "Output shards finished per "
                                        "pass over the source (default: all in one pass).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
_FORMAT = flags.DEFINE_enum("image_format", "source", ["source", "png", "jpeg"],
                            "Image bytes in records: 'source' copies a TFDS source's stored "
                            "bytes (no re-encoding; PNG for other sources), 'png' re-encodes "
                            "losslessly, 'jpeg' lossily.")
_RUNNER = flags.DEFINE_string("runner", None, "Apache Beam runner (e.g. DirectRunner); "
                              "default: the local loop.")
_QUALITY = flags.DEFINE_bool("quality", False, "Also measure pseudo-label quality against the "
                             "source's hidden ground truth (quality.json, tb/).")
flags.mark_flags_as_required(["teacher", "unlabeled", "output"])


def main(argv):
    del argv
    import json  # pylint: disable=g-import-not-at-top
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    from rethink_tf.pseudo import labeler  # pylint: disable=g-import-not-at-top
    labeler.check_arguments(score_threshold=_SCORE.value, pixel_threshold=_PIXEL.value,
                            num_shards=_NUM_SHARDS.value, shard_index=_SHARD_INDEX.value,
                            num_output_shards=_NUM_OUTPUT.value, batch_size=_BATCH.value,
                            image_format=_FORMAT.value, shards_per_pass=_SHARDS_PER_PASS.value)
    common = {"split": _SPLIT.value, "data_dir": _DATA_DIR.value,
              "score_threshold": _SCORE.value, "pixel_threshold": _PIXEL.value,
              "drop_empty": _DROP.value, "flip_tta": _FLIP.value,
              "num_output_shards": _NUM_OUTPUT.value, "batch_size": _BATCH.value,
              "image_format": _FORMAT.value}
    if _RUNNER.value:
        if _NUM_SHARDS.value != 1 or _SHARD_INDEX.value is not None:
            raise app.UsageError("--runner distributes the shards itself; leave out "
                                 "--num_shards/--shard_index")
        from rethink_tf.pseudo import beam_pipeline  # pylint: disable=g-import-not-at-top
        manifest = beam_pipeline.run(_TEACHER.value, _UNLABELED.value, _OUTPUT.value,
                                     runner=_RUNNER.value, **common)
    else:
        manifest = labeler.pseudo_label(_TEACHER.value, _UNLABELED.value, _OUTPUT.value,
                                        num_shards=_NUM_SHARDS.value,
                                        shard_index=_SHARD_INDEX.value,
                                        shards_per_pass=_SHARDS_PER_PASS.value, **common)
    keys = ("task", "complete", "num_images", "num_boxes", "num_negatives", "kept_fraction",
            "skipped_unreadable")
    print(json.dumps({k: manifest[k] for k in keys if k in manifest}), flush=True)
    if _QUALITY.value and manifest["complete"]:
        from rethink_tf.pseudo import quality  # pylint: disable=g-import-not-at-top
        result = quality.report(_OUTPUT.value, _UNLABELED.value,
                                _SPLIT.value or labeler.default_split(_UNLABELED.value),
                                teacher=_TEACHER.value, data_dir=_DATA_DIR.value,
                                batch_size=_BATCH.value)
        print(json.dumps(result["thresholds"]), flush=True)


if __name__ == "__main__":
    app.run(main)
