"""Reading a workdir's metrics history (`metrics_history.jsonl`), without TensorFlow.

Kept free of TensorFlow so that readers of finished workdirs (the study's report) share it.
The writer is `callbacks.write_metrics`.
"""

import json
import os

HISTORY_FILE = "metrics_history.jsonl"


def read_jsonl(path):
    """The records of a JSON-lines file, in order ([] when it is missing or unreadable).

    A line that does not parse (cut by a kill under an older, appending writer) is skipped.
    """
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
    except OSError:
        pass
    return out


def read_metrics_history(workdir):
    """The records of `workdir/metrics_history.jsonl`, oldest first ([] when there is none)."""
    return read_jsonl(os.path.join(workdir, HISTORY_FILE))
