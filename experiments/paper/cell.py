r"""Runs one job of the study (one cell for one seed, or a teacher's pseudo labels) in this
process; `run.py` starts one such process per job. Also usable by hand to rerun a job:

  python experiments/paper/cell.py --root=DIR --cell=det-sup-imagenet-s4-f1 --seed=0 \
      --stage=train [--dataset=digit_scenes] [--scale=1.0] [--eval_images=0]

Writes the job's record, `cell.json`, into its workdir (see harness.py).
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_ROOT = flags.DEFINE_string("root", None, "The study's directory.")
_DATASET = flags.DEFINE_enum("dataset", "digit_scenes", ["digit_scenes", "coco", "voc"],
                             "Dataset preset.")
_SCALE = flags.DEFINE_float("scale", 1.0, "Schedule multiplier.")
_EVAL_IMAGES = flags.DEFINE_integer("eval_images", 0, "Evaluation images (0 = all).")
_CELL = flags.DEFINE_string("cell", None, "The cell's name (tables.CELLS).")
_SEED = flags.DEFINE_integer("seed", 0, "The seed.")
_STAGE = flags.DEFINE_enum("stage", None, ["pretrain", "train", "pseudo", "student", "joint",
                                           "pipeline"], "What to run for the cell.")
flags.mark_flags_as_required(["root", "cell", "stage"])


def main(argv):
    del argv
    from rethink_tf import cli  # pylint: disable=g-import-not-at-top
    cli.quiet_logs()
    import harness  # pylint: disable=g-import-not-at-top
    import tables  # pylint: disable=g-import-not-at-top
    settings = tables.Settings(root=os.path.abspath(_ROOT.value), dataset=_DATASET.value,
                               scale=_SCALE.value, eval_images=_EVAL_IMAGES.value)
    settings.check()
    job = harness.make_job(settings, _STAGE.value, _CELL.value, _SEED.value)
    harness.execute(settings, job, argv=["python", *sys.argv])


if __name__ == "__main__":
    app.run(main)
