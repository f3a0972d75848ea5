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

--config=<student config> (e.g. experiments/configs/detection.py:student) makes the config the
one source of the settings: --unlabeled, --split, --score_threshold, --pixel_threshold and
--flip_tta default to its `self_training.{unlabeled, unlabeled_split, score_threshold,
pixel_threshold, flip_tta}` and --data_dir to its `dataset.data_dir`, so the labels are those
the pipeline would make for that student; a flag given on the command line still wins
(`--config.self_training.score_threshold=0.3` works too):

  python -m rethink_tf.pseudo_label --config=experiments/configs/detection.py:student \
      --teacher=/runs/teacher --output=/runs/pseudo
"""

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional student config (e.g. experiments/configs/detection.py:student): "
    "its self_training section gives the defaults of --unlabeled, --split, --score_threshold, "
    "--pixel_threshold, --flip_tta (and dataset.data_dir of --data_dir).")

_TEACHER = flags.DEFINE_string("teacher", None, "Teacher workdir or SavedModel directory.")
_UNLABELED = flags.DEFINE_string("unlabeled", None, "Unlabeled source name (TFDS name, "
                                 "images:<glob>, coco_json:...); required without --config.")
_SPLIT = flags.DEFINE_string("split", None, "Split of the source; default --config's "
                             "unlabeled_split for its source, else 'unlabeled' ('all' for "
                             "images:/coco_json: sources).")
_OUTPUT = flags.DEFINE_string("output", None, "Pseudo-label output directory.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_SCORE = flags.DEFINE_float("score_threshold", 0.5, "Detection: lowest score kept as a box "
                            "(default: --config's, else 0.5).")
_PIXEL = flags.DEFINE_float("pixel_threshold", 0.5, "Segmentation: lowest top-class "
                            "probability that labels a pixel (others are 255 = ignore; "
                            "default: --config's, else 0.5).")
_FLIP = flags.DEFINE_bool("flip_tta", False, "Horizontal-flip test-time augmentation "
                          "(default: --config's, else off).")
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
flags.mark_flags_as_required(["teacher", "output"])
flags.register_multi_flags_validator(
    ["config", "unlabeled"], lambda f: f["config"] is not None or f["unlabeled"] is not None,
    "--unlabeled: name the unlabeled source (e.g. --unlabeled=digit_scenes/detection), or pass "
    "--config=<student config> to use its self_training.unlabeled")

# The flags that --config supplies when they are not given, and the config field of each.
CONFIG_FIELDS = {"unlabeled": "self_training.unlabeled",
                 "split": "self_training.unlabeled_split",
                 "data_dir": "dataset.data_dir",
                 "score_threshold": "self_training.score_threshold",
                 "pixel_threshold": "self_training.pixel_threshold",
                 "flip_tta": "self_training.flip_tta"}


def _config_value(config, field):
    section, key = field.split(".")
    if section not in config or key not in config[section]:
        raise ValueError(f"--config: config.{field} is missing (pass a detection or "
                         "segmentation config, e.g. experiments/configs/detection.py:student)")
    value = config[section][key]
    if key in ("score_threshold", "pixel_threshold") and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0.0 <= value <= 1.0):
        raise ValueError(f"config.{field}: must be a number in [0, 1], got {value!r}")
    if key == "flip_tta" and not isinstance(value, bool):
        raise ValueError(f"config.{field}: must be true or false, got {value!r}")
    if key in ("unlabeled", "unlabeled_split") and (not isinstance(value, str) or not value):
        what = "source" if key == "unlabeled" else "split"
        raise ValueError(f"config.{field}: must name a {what}, got {value!r}")
    return value


def resolve_settings(config, values, present):
    """The pseudo-labelling settings: a flag given on the command line, else --config's, else
    the flag's default.

    Args:
        config: the --config ConfigDict, or None (the flags alone, as without --config).
        values: {flag name: value} for every name in `CONFIG_FIELDS` (defaults included).
        present: the names of the flags given on the command line.

    Returns:
        {"task": config.task or None, "from_config": [names taken from the config], and
        `CONFIG_FIELDS`' names: the values to use}.

    Raises:
        ValueError: naming the bad config field, or --unlabeled when nothing gives it.
    """
    settings = {name: values[name] for name in CONFIG_FIELDS}
    settings["task"], settings["from_config"] = None, []
    if config is not None:
        task = config.get("task")
        if task not in ("detection", "segmentation", "classification"):
            raise ValueError(f"--config: config.task is {task!r}: pseudo labels need a "
                             "detection, segmentation or classification config (e.g. "
                             "experiments/configs/detection.py:student)")
        settings["task"] = task
        from_config = {name: _config_value(config, field)
                       for name, field in CONFIG_FIELDS.items()}
        from_config["data_dir"] = from_config["data_dir"] or None
        if "unlabeled" in present and values["unlabeled"] != from_config["unlabeled"]:
            del from_config["split"]  # the config's split is its own source's
        for name, value in from_config.items():
            if name not in present:
                settings[name] = value
                settings["from_config"].append(name)
    if not settings["unlabeled"]:
        raise ValueError("--unlabeled: name the unlabeled source (e.g. "
                         "--unlabeled=digit_scenes/detection), or pass --config=<student "
                         "config> to use its self_training.unlabeled")
    return settings


def _settings_from_flags():
    """`resolve_settings` of the parsed flags (a flag counts as given when `.present`)."""
    holders = {"unlabeled": _UNLABELED, "split": _SPLIT, "data_dir": _DATA_DIR,
               "score_threshold": _SCORE, "pixel_threshold": _PIXEL, "flip_tta": _FLIP}
    return resolve_settings(_CONFIG.value, {k: h.value for k, h in holders.items()},
                            {k for k, h in holders.items() if h.present})


def main(argv):
    # Everything after `--` is Apache Beam's (--runner only): e.g. `-- --project=P --region=R`.
    pipeline_args = list(argv[1:])
    import json  # pylint: disable=g-import-not-at-top
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    from rethink_tf.pseudo import labeler  # pylint: disable=g-import-not-at-top
    settings = _settings_from_flags()
    labeler.check_arguments(score_threshold=settings["score_threshold"],
                            pixel_threshold=settings["pixel_threshold"],
                            num_shards=_NUM_SHARDS.value, shard_index=_SHARD_INDEX.value,
                            num_output_shards=_NUM_OUTPUT.value, batch_size=_BATCH.value,
                            image_format=_FORMAT.value, shards_per_pass=_SHARDS_PER_PASS.value)
    unlabeled, split = settings["unlabeled"], settings["split"]
    if settings["from_config"]:
        print("from --config: " + ", ".join(f"{name}={settings[name]!r}"
                                            for name in settings["from_config"]), flush=True)
    common = {"split": split, "data_dir": settings["data_dir"],
              "score_threshold": settings["score_threshold"],
              "pixel_threshold": settings["pixel_threshold"],
              "drop_empty": _DROP.value, "flip_tta": settings["flip_tta"],
              "num_output_shards": _NUM_OUTPUT.value, "batch_size": _BATCH.value,
              "image_format": _FORMAT.value}
    if _RUNNER.value:
        if _NUM_SHARDS.value != 1 or _SHARD_INDEX.value is not None:
            raise app.UsageError("--runner distributes the shards itself; leave out "
                                 "--num_shards/--shard_index")
        from rethink_tf.pseudo import beam_pipeline  # pylint: disable=g-import-not-at-top
        manifest = beam_pipeline.run(_TEACHER.value, unlabeled, _OUTPUT.value,
                                     runner=_RUNNER.value, pipeline_args=pipeline_args,
                                     **common)
    else:
        if pipeline_args:
            raise app.UsageError(f"arguments {pipeline_args} are Beam pipeline options: they "
                                 "need --runner")
        manifest = labeler.pseudo_label(_TEACHER.value, unlabeled, _OUTPUT.value,
                                        task=settings["task"], num_shards=_NUM_SHARDS.value,
                                        shard_index=_SHARD_INDEX.value,
                                        shards_per_pass=_SHARDS_PER_PASS.value, **common)
    keys = ("task", "complete", "num_images", "num_boxes", "num_negatives", "kept_fraction",
            "num_dropped_empty", "mean_confidence", "skipped_unreadable")
    print(json.dumps({k: manifest[k] for k in keys if k in manifest}), flush=True)
    if _QUALITY.value and manifest["complete"]:
        from rethink_tf.pseudo import quality  # pylint: disable=g-import-not-at-top
        result = quality.report(_OUTPUT.value, unlabeled,
                                split or labeler.default_split(unlabeled),
                                teacher=_TEACHER.value, data_dir=settings["data_dir"],
                                batch_size=_BATCH.value)
        print(json.dumps(result["thresholds"]), flush=True)


if __name__ == "__main__":
    app.run(main)
