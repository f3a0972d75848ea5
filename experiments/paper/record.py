r"""Keeps the study's results apart from its checkpoints: the record the report reads.

  python experiments/paper/record.py --root=DIR --out=experiments/paper/record
  python experiments/paper/report.py --root=experiments/paper/record --out=experiments/paper

The first copies the JSON files of every finished job under --root (records, test and
validation metrics, configs, pseudo-label records; no checkpoints) into --out, the same layout,
so --out is a root the report reads; run it as cells finish and commit it. A job run again
replaces its earlier record (its test metric before and after is printed).

  python experiments/paper/record.py --from_report=experiments/paper/report.json --out=DIR

rebuilds what a report.json kept (each job's record and test metrics) when the root is lost.
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_ROOT = flags.DEFINE_string("root", None, "A study's directory (run.py --root).")
_FROM_REPORT = flags.DEFINE_string("from_report", None,
                                   "A report.json to rebuild records from (instead of --root).")
_OUT = flags.DEFINE_string("out", None, "The record's directory.")
flags.mark_flag_as_required("out")


def main(argv):
    del argv
    import recording  # pylint: disable=g-import-not-at-top
    if bool(_ROOT.value) == bool(_FROM_REPORT.value):
        raise app.UsageError("give one of --root (a study) or --from_report (a report.json)")
    out = os.path.abspath(_OUT.value)
    try:
        if _FROM_REPORT.value:
            if not os.path.isfile(_FROM_REPORT.value):
                raise ValueError(f"--from_report={_FROM_REPORT.value!r} is not a file")
            result = recording.restore_from_report(_FROM_REPORT.value, out)
            print(f"{out}: {len(result['restored'])} job records restored from "
                  f"{_FROM_REPORT.value}, {result['kept']} already there and kept")
            return
        if not os.path.isdir(_ROOT.value):
            raise ValueError(f"--root={_ROOT.value!r} is not a directory")
        result = recording.save(_ROOT.value, out)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    for rel, metric, before, after in result["replaced"]:
        change = (f"{metric} {before:.4f} -> {after:.4f}"
                  if before is not None and after is not None else "no test metric")
        print(f"  replaced {rel}: {change}")
    print(f"{out}: {len(result['added'])} jobs added, {len(result['replaced'])} replaced, "
          f"{result['unchanged']} unchanged")


if __name__ == "__main__":
    app.run(main)
