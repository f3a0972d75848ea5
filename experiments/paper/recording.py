"""The study's record: the JSON files its report reads, kept apart from the checkpoints.

A study's root holds gigabytes of checkpoints and, beside them, the small JSON files that
`reporting.py` reads: each job's `cell.json`, its test and validation metrics, its config, and
each teacher's pseudo-label records. Those files are the study's results. `save` copies them,
for every finished job, into a record directory with the same layout, so the record is itself
a root that `report.py --root=RECORD` reads, and it can be committed beside REPORT.md as the
runs finish: a machine lost mid-study loses its checkpoints, not its results.

`restore_from_report` rebuilds the part of a record that a `report.json` kept (each job's
record and test metrics: enough for every table and finding that compares test numbers, not
for the validation curves of T9, nor the pseudo-label records) when the root itself is lost.
Restored records say so (`restored_from`), and a job run again replaces its restored record.

No TensorFlow; nothing already in the record is lost: a job is copied only once finished, a
finished record is replaced only by a finished one, and every file is written atomically.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid

from rethink_tf.training import history as history_lib  # JSON only, no TensorFlow

import harness  # read_json / write_json (atomic); JSON and planning only, no TensorFlow
import tables

RECORD = harness.RECORD  # cell.json
STUDY = harness.STUDY  # study.json
STATUS_NOTE = "STATUS.md"
# A job's files the report reads, per part directory ("" or a pipeline's teacher/student).
PART_FILES = ("config.json", "metrics.json", history_lib.HISTORY_FILE)
PART_GLOBS = ("metrics_*.json",)
JOB_FILES = (RECORD, "pipeline.json")
PIPELINE_PARTS = ("teacher", "student")
PSEUDO_FILES = (RECORD, "quality.json", "manifest.json")
MARKER = "record.json"  # says a directory is a record (not a root with checkpoints)
FINISHED = "finished"


def _write_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def job_files(job_dir):
    """The record files of one job directory (relative paths), those that exist."""
    out = [f for f in JOB_FILES if os.path.isfile(os.path.join(job_dir, f))]
    record = harness.read_json(os.path.join(job_dir, RECORD), {})
    parts = ("",) + (PIPELINE_PARTS if record.get("stage") == "pipeline" else ())
    for part in parts:
        d = os.path.join(job_dir, part) if part else job_dir
        names = [f for f in PART_FILES if os.path.isfile(os.path.join(d, f))]
        for pattern in PART_GLOBS:
            names += sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, pattern)))
        out += [os.path.join(part, f) if part else f for f in names]
    return out


def finished_jobs(root):
    """Relative directories of the finished jobs under ROOT: cells/<cell>/<seed dir> and
    pseudo/<labels>/<seed dir>."""
    out = []
    for kind in ("cells", "pseudo"):
        for path in sorted(glob.glob(os.path.join(root, kind, "*", "*", RECORD))):
            if harness.read_json(path, {}).get("status") == FINISHED:
                out.append(os.path.relpath(os.path.dirname(path), root))
    return out


def _primary(job_dir):
    """(metric, value) of a job's test metrics: AP or mIoU, of the student where there are
    parts; (None, None) when it has none."""
    record = harness.read_json(os.path.join(job_dir, RECORD), {})
    split = record.get("test_split", "test")
    for part in ("", "student"):
        m = harness.read_json(os.path.join(job_dir, part, f"metrics_{split}.json"), {})
        for metric in ("AP", "mIoU"):
            if isinstance(m.get(metric), (int, float)):
                return metric, float(m[metric])
    return None, None


def is_record(directory):
    return os.path.isfile(os.path.join(directory, MARKER))


def _mark(out, source):
    """Writes or extends OUT's marker: what it is and where its records came from."""
    marker = harness.read_json(os.path.join(out, MARKER), {}) or {}
    sources = marker.get("sources", [])
    if source not in sources:
        sources.append(source)
    harness.write_json(os.path.join(out, MARKER), {
        "what": "a study's record: the JSON files report.py reads, of every finished job "
                "(experiments/paper/recording.py); run.py --root=DIR --record=<this> resumes "
                "from it", "sources": sources})


def check_same_study(root, out):
    """Raises ValueError when OUT already records a study with other settings than ROOT's."""
    mine = harness.read_json(os.path.join(out, STUDY))
    theirs = harness.read_json(os.path.join(root, STUDY))
    key = harness.settings_conflict(mine, theirs)
    if key:
        raise ValueError(
            f"{os.path.join(root, STUDY)}: {key}={theirs.get(key)!r}, but the record "
            f"{out} holds a study with {key}={mine.get(key)!r}; one record holds one "
            "study's settings: use another --out")


def _swap_in(src_files, root_dir, dest):
    """Replaces directory DEST by the files SRC_FILES (relative to ROOT_DIR): written to a
    temporary sibling first, then renamed over (the old copy is removed only after)."""
    parent = os.path.dirname(dest)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.new-{uuid.uuid4().hex[:8]}")
    for rel in src_files:
        with open(os.path.join(root_dir, rel), "rb") as f:
            _write_atomic(os.path.join(tmp, rel), f.read())
    old = None
    if os.path.exists(dest):
        old = os.path.join(parent, f".{os.path.basename(dest)}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    os.rename(tmp, dest)
    if old:
        shutil.rmtree(old)


def recover(out):
    """Finishes or undoes a swap that a killed `save` left half done: a job directory renamed
    aside (`.<name>.old-*`) with nothing in its place is put back; the rest of those and any
    half-written `.<name>.new-*` are removed. Returns the directories put back."""
    back = []
    for path in sorted(glob.glob(os.path.join(out, "*", "*", ".*.old-*"))):
        name = os.path.basename(path)[1:].rsplit(".old-", 1)[0]
        dest = os.path.join(os.path.dirname(path), name)
        if not os.path.exists(dest):
            os.rename(path, dest)
            back.append(os.path.relpath(dest, out))
        else:
            shutil.rmtree(path)
    for path in glob.glob(os.path.join(out, "*", "*", ".*.new-*")):
        shutil.rmtree(path)
    return back


def _same_files(files, a, b):
    """Whether directory B holds exactly FILES, each byte-equal to A's."""
    have = {os.path.relpath(os.path.join(d, f), b)
            for d, _, names in os.walk(b) for f in names}
    if have != set(files):
        return False
    for rel in files:
        with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
            if fa.read() != fb.read():
                return False
    return True


def save(root, out):
    """Copies the record of every finished job of ROOT into OUT.

    A job already in OUT is replaced when ROOT's differs (a job run again: its test metric
    before and after is returned); study.json and STATUS.md are copied only where OUT has
    none. Checkpoints, logs and unfinished jobs are never copied.

    Returns:
      {"added": [dirs], "replaced": [(dir, metric, before, after)], "unchanged": int}

    Raises:
      ValueError: OUT records a study with other settings (nothing is written then).
    """
    root, out = os.path.abspath(root), os.path.abspath(out)
    if not os.path.isfile(os.path.join(root, STUDY)):
        raise ValueError(f"{root} holds no {STUDY}: not a study's root (run.py --root)")
    check_same_study(root, out)
    recover(out)
    _mark(out, root)
    result = {"added": [], "replaced": [], "unchanged": 0}
    for name in (STUDY, STATUS_NOTE):
        src, dest = os.path.join(root, name), os.path.join(out, name)
        if os.path.isfile(src) and not os.path.exists(dest):
            with open(src, "rb") as f:
                _write_atomic(dest, f.read())
    for rel in finished_jobs(root):
        src, dest = os.path.join(root, rel), os.path.join(out, rel)
        files = job_files(src) if rel.startswith("cells") else [
            f for f in PSEUDO_FILES if os.path.isfile(os.path.join(src, f))]
        if os.path.isdir(dest) and _same_files(files, src, dest):
            result["unchanged"] += 1
            continue
        before = _primary(dest) if os.path.isdir(dest) else None
        _swap_in(files, src, dest)
        if before is None:
            result["added"].append(rel)
        else:
            result["replaced"].append((rel, before[0], before[1], _primary(dest)[1]))
    return result


def _seed_dir(cell):
    """The seed directory a cell's job writes: from its commands' --workdir, else the
    harness's naming (shared for pre-training, seed<k> otherwise)."""
    marker = f"/cells/{cell['cell']}/"
    for command in cell.get("commands") or []:
        for arg in command.split():
            if arg.startswith("--workdir=") and marker in arg:
                return arg.split(marker, 1)[1].strip("/'\"").split("/")[0]
    known = tables.CELLS.get(cell["cell"])
    return "shared" if known is not None and known.shared else f"seed{int(cell['seed'])}"


def restore_from_report(report_json, out):
    """Rebuilds, in OUT, the records a report.json kept: per job its cell.json (stage,
    status, wall times, commands, commit) and test metrics; and study.json.

    A job OUT already holds is left as it is. Restored records carry `restored_from`.

    Returns:
      {"restored": [dirs], "kept": int}

    Raises:
      ValueError: REPORT_JSON is not a report.json (no cells), or OUT records a study with
        other settings.
    """
    data = harness.read_json(report_json)
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise ValueError(f"{report_json}: not a report.json written by report.py (no 'cells' "
                         "list)")
    study = data.get("study") or {}
    mine = harness.read_json(os.path.join(out, STUDY))
    key = harness.settings_conflict(mine, study)
    if key:
        raise ValueError(f"{report_json}: its study has {key}={study.get(key)!r}, but "
                         f"the record {out} holds one with {key}={mine.get(key)!r}")
    source = (f"{os.path.basename(report_json)} generated {data.get('generated', '?')} at "
              f"git {data.get('git_head', '?')}")
    if study and not mine:
        harness.write_json(os.path.join(out, STUDY), study)
    _mark(out, os.path.abspath(report_json))
    result = {"restored": [], "kept": 0}
    for cell in data["cells"]:
        rel = os.path.join("cells", cell["cell"], _seed_dir(cell))
        dest = os.path.join(out, rel)
        if os.path.exists(os.path.join(dest, RECORD)):
            result["kept"] += 1
            continue
        test = cell.get("test") or {}
        split = next((m.get("split") for m in test.values() if isinstance(m, dict)
                      and m.get("split")), "test")
        record = {k: cell.get(k) for k in ("cell", "seed", "stage", "status", "wall_s",
                                             "commands", "git_commit")}
        # A record restored before keeps the report.json it was first restored from.
        record.update(test_split=split, restored_from=cell.get("restored_from") or source)
        for part, metrics in test.items():
            harness.write_json(os.path.join(dest, part, f"metrics_{split}.json"), metrics)
        harness.write_json(os.path.join(dest, RECORD), record)
        result["restored"].append(rel)
    return result
