r"""Writes the study's report from its workdirs: REPORT.md, report.json and plots.

  python experiments/paper/report.py --root=DIR [--out=DIR] [--noplots]

Reads only the workdirs' JSON files (reporting.py says which); runs nothing, imports no
TensorFlow, so it can run at any time during a study: unfinished cells show as "not run".
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_ROOT = flags.DEFINE_string("root", None, "The study's directory (run.py --root).")
_OUT = flags.DEFINE_string("out", None, "Where REPORT.md, report.json and the PNGs go "
                           "(default: --root).")
_PLOTS = flags.DEFINE_bool("plots", True, "Draw the PNG plots (matplotlib, Agg).")
flags.mark_flag_as_required("root")


def main(argv):
    del argv
    import reporting  # pylint: disable=g-import-not-at-top
    root = os.path.abspath(_ROOT.value)
    if not os.path.isdir(root):
        raise app.UsageError(f"--root={_ROOT.value!r} is not a directory")
    out = os.path.abspath(_OUT.value) if _OUT.value else root
    data = reporting.render(root, out, plots=_PLOTS.value)
    verdicts = ", ".join(
        f"{f['key']}: {f['verdict']}" + (f" (family-wise {f['verdict_holm']})"
                                         if f["verdict_holm"] != f["verdict"] else "")
        for f in data["findings"])
    print(f"{os.path.join(out, 'REPORT.md')} ({len(data['cells'])} workdirs; {verdicts})")


if __name__ == "__main__":
    app.run(main)
