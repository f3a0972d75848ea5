r"""Runs the paper's tables: one resumable workdir per (cell, seed) under --root.

  python experiments/paper/run.py --table=T1 --root=DIR [--seeds=N] [--scale=1.0] \
      [--dataset=digit_scenes|coco|voc] [--num_shards=N --shard_index=i] [--rows=...] \
      [--max_cells=N] [--record=DIR] [--dry_run]
  python experiments/paper/report.py --root=DIR           # then REPORT.md

--table: T1..T9, B1..B3, a comma list, or 'all' (tables.py). Shared pre-training and teacher
runs are run once and reused; finished jobs are skipped, so re-running the same command
resumes the study. --dry_run lists the jobs and the time estimate. Shards split the jobs by
family (a teacher with its pseudo labels and students) over machines that share --root.
Start long studies with `nice` so tests and other work keep going.
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tables  # noqa: E402  pylint: disable=wrong-import-position  (no TensorFlow)

_TABLE = flags.DEFINE_string("table", None, "T1..T9, B1..B3, comma-separated, or 'all'.")
_ROOT = flags.DEFINE_string("root", None, "The study's directory (workdirs, logs, report).")
_SEEDS = flags.DEFINE_integer(
    "seeds", None, f"Seeds per cell (default: each table's, 3; {tables.SMOKE_SEEDS} in a smoke "
    f"run, --scale <= {tables.SMOKE_SCALE:g}).")
_SCALE = flags.DEFINE_float("scale", 1.0, "Multiplies every schedule (steps, warm-up, "
                            "intervals, pre-training); < 1 also shrinks the unlabeled pool.")
_DATASET = flags.DEFINE_enum("dataset", "digit_scenes", ["digit_scenes", "coco", "voc"],
                             "digit_scenes (built in), coco (COCO 2017 + ImageNet) or voc "
                             "(VOC 2012 + SBD) presets.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Machines sharing the study.")
_SHARD_INDEX = flags.DEFINE_integer("shard_index", 0, "This machine's index.")
_ROWS = flags.DEFINE_string("rows", "", "Only cells whose name contains one of these "
                            "comma-separated substrings (their dependencies come along).")
_MAX_CELLS = flags.DEFINE_integer("max_cells", 0, "Run at most this many jobs (0 = all).")
_EVAL_IMAGES = flags.DEFINE_integer(
    "eval_images", -1, "Validation and test images per evaluation: 0 = all; -1 = all at "
    f"--scale >= 1, else max({tables.SMOKE_EVAL_IMAGES}, scale x the test split's size).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the jobs and the estimate; run nothing.")
_ISOLATE = flags.DEFINE_bool("isolate", True, "Each job in its own process (cell.py).")
_VALIDATE = flags.DEFINE_bool("validate", True, "Validate every config before any work.")
_RECORD = flags.DEFINE_string(
    "record", None, "Also keep the study's record here (record.py: the JSON the report reads, "
    "of every finished job, no checkpoints), updated after each job; commit it.")
_WAIT = flags.DEFINE_float("wait_s", 86400.0, "Longest wait for another shard's job.")
flags.mark_flags_as_required(["table", "root"])


def main(argv):
    del argv
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    import harness  # pylint: disable=g-import-not-at-top
    eval_images = _EVAL_IMAGES.value
    if eval_images < 0:
        eval_images = tables.default_eval_images(_DATASET.value, _SCALE.value)
    if _SEEDS.value is not None and _SEEDS.value < 1:
        raise app.UsageError(f"--seeds={_SEEDS.value}: must be >= 1")
    settings = tables.Settings(root=os.path.abspath(_ROOT.value), dataset=_DATASET.value,
                               scale=_SCALE.value, eval_images=eval_images)
    try:
        settings.check()
        keys = harness.select_tables(_TABLE.value, _DATASET.value)
        code = harness.run_study(
            settings, keys, seeds=_SEEDS.value, rows=_ROWS.value,
            num_shards=_NUM_SHARDS.value, shard_index=_SHARD_INDEX.value,
            max_cells=_MAX_CELLS.value, dry_run=_DRY_RUN.value, isolate=_ISOLATE.value,
            validate=_VALIDATE.value, wait_s=_WAIT.value, argv=["python", *sys.argv],
            out=lambda line: print(line, flush=True),
            record=os.path.abspath(_RECORD.value) if _RECORD.value else None)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    sys.exit(code)


if __name__ == "__main__":
    app.run(main)
