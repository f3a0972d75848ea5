"""The study's record (experiments/paper/recording.py, record.py): the JSON the report reads,
saved apart from the checkpoints, restored from a report.json, and the committed one."""

import json
import math
import os

import pytest

from test_paper_harness import PAPER_DIR, _fake, _python  # pylint: disable=g-bad-import-order

import harness  # noqa: E402  (experiments/paper, on sys.path via test_paper_harness)
import tables  # noqa: E402
import recording  # noqa: E402
import reporting  # noqa: E402

REPO = os.path.abspath(os.path.join(PAPER_DIR, "..", ".."))
STUDY = {"dataset": "digit_scenes", "scale": 1.0, "eval_images": 0,
         "command": "python experiments/paper/run.py --table=all"}


def _close(x, y):
    """Equal, floats to 1e-9 (a sum's order may differ between two renders)."""
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_close(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_close(a, b) for a, b in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-9,
                                                                 abs_tol=1e-12)
    return x == y


def _study(root):
    """A small finished study: T9-like curves, a student with its pseudo labels, a pipeline
    cell, checkpoints and label shards beside the JSON, and one job still running."""
    harness.write_json(os.path.join(root, "study.json"), STUDY)
    seeds = (0, 1, 2)
    curve = {s: [(125, 0.05), (250, 0.15), (375, 0.25), (750, 0.30 + 0.01 * s)] for s in seeds}
    _fake(root, "det-sup-rand-s4-f1", {s: 0.30 + 0.01 * s for s in seeds}, history=curve)
    _fake(root, "det-sup-imagenet-s4-f1", {s: 0.26 - 0.01 * s for s in seeds}, history=curve)
    _fake(root, "det-st-rand-s4-f1", {s: 0.33 + 0.005 * s for s in seeds})
    _fake(root, "seg-pipe-rand-s1-f1", {0: 0.40, 1: 0.41}, part="teacher")
    _fake(root, "seg-pipe-rand-s1-f1", {0: 0.43, 1: 0.45}, part="student")
    for s in seeds:
        d = os.path.join(root, "pseudo", "det-sup-rand-s4-f1__pool", f"seed{s}")
        harness.write_json(os.path.join(d, "cell.json"), {
            "cell": "det-st-rand-s4-f1", "stage": "pseudo", "seed": s, "status": "finished",
            "spec": {"teacher": "det-sup-rand-s4-f1"}})
        harness.write_json(os.path.join(d, "manifest.json"), {"complete": True,
                                                              "score_threshold": 0.3})
        harness.write_json(os.path.join(d, "quality.json"), {"thresholds": [
            {"threshold": 0.3, "precision": 0.2 + 0.1 * s, "recall": 0.5}]})
        with open(os.path.join(d, "labels-00000-of-00001.tfrecord"), "wb") as f:
            f.write(b"\0" * 1000)
        config = os.path.join(root, "cells", "det-st-rand-s4-f1", f"seed{s}", "config.json")
        c = json.load(open(config))
        c["self_training"] = {"pseudo_labels": d}
        harness.write_json(config, c)
        ckpt = os.path.join(root, "cells", "det-sup-rand-s4-f1", f"seed{s}", "checkpoints")
        os.makedirs(ckpt)
        with open(os.path.join(ckpt, "ckpt-750.data-00000-of-00001"), "wb") as f:
            f.write(b"\0" * 1000)
    _fake(root, "det-st-imagenet-s4-f1", {0: 0.5})
    running = os.path.join(root, "cells", "det-st-imagenet-s4-f1", "seed0", "cell.json")
    harness.write_json(running, {**json.load(open(running)), "status": "running"})
    os.remove(os.path.join(os.path.dirname(running), "metrics_test.json"))  # not tested yet


def _files(d):
    return sorted(os.path.relpath(os.path.join(p, f), d) for p, _, fs in os.walk(d)
                  for f in fs)


def test_save_keeps_the_finished_jobs_json_and_the_record_renders_the_same_report(tmp_path):
    root, out = str(tmp_path / "study"), str(tmp_path / "record")
    _study(root)
    result = recording.save(root, out)
    files = _files(out)
    assert not any("ckpt" in f or f.endswith(".tfrecord") for f in files)
    assert "cells/det-st-imagenet-s4-f1/seed0/cell.json" not in files  # still running
    assert "cells/det-sup-rand-s4-f1/seed1/metrics_history.jsonl" in files
    assert "cells/seg-pipe-rand-s1-f1/seed0/student/metrics_test.json" in files
    assert "pseudo/det-sup-rand-s4-f1__pool/seed2/quality.json" in files
    assert "study.json" in files
    assert len(result["added"]) == 3 + 3 + 3 + 2 + 3 and not result["replaced"]
    from_root = reporting.render(root, str(tmp_path / "a"), plots=False)
    from_record = reporting.render(out, str(tmp_path / "b"), plots=False)
    for key in ("tables", "findings", "teacher_quality"):
        assert _close(from_root[key], from_record[key]), key
    assert from_record["tables"]["T9"]["Rand Init | steps to AP"]["n"] == 3  # curves kept
    assert len(from_record["teacher_quality"]) == 1  # the pseudo labels found in the record
    assert recording.save(root, out) == {"added": [], "replaced": [], "unchanged": 14}


def test_a_job_run_again_replaces_its_record_and_an_unfinished_one_does_not(tmp_path):
    root, out = str(tmp_path / "study"), str(tmp_path / "record")
    _study(root)
    recording.save(root, out)
    metrics = os.path.join(root, "cells", "det-sup-rand-s4-f1", "seed0", "metrics_test.json")
    harness.write_json(metrics, {**json.load(open(metrics)), "AP": 0.5})
    result = recording.save(root, out)
    assert result["replaced"] == [("cells/det-sup-rand-s4-f1/seed0", "AP", 0.30, 0.5)]
    record = os.path.join(out, "cells", "det-sup-rand-s4-f1", "seed0")
    assert json.load(open(os.path.join(record, "metrics_test.json")))["AP"] == 0.5
    assert not [f for f in os.listdir(os.path.dirname(record)) if f.startswith(".")]
    # The same job started again and not finished: the record keeps the finished one.
    cell = os.path.join(root, "cells", "det-sup-rand-s4-f1", "seed0", "cell.json")
    harness.write_json(cell, {**json.load(open(cell)), "status": "running"})
    harness.write_json(metrics, {**json.load(open(metrics)), "AP": 0.1})
    assert not recording.save(root, out)["replaced"]
    assert json.load(open(os.path.join(record, "metrics_test.json")))["AP"] == 0.5


def test_a_record_of_another_study_is_refused_naming_the_setting(tmp_path):
    root, out = str(tmp_path / "study"), str(tmp_path / "record")
    _study(root)
    harness.write_json(os.path.join(out, "study.json"), {**STUDY, "scale": 0.05})
    with pytest.raises(ValueError, match=r"scale=1\.0.*scale=0\.05"):
        recording.save(root, out)
    assert _files(out) == ["study.json"]  # nothing written
    with pytest.raises(ValueError, match="holds no study.json"):
        recording.save(str(tmp_path), out)


def test_settings_conflict_names_the_first_setting_both_record_differently():
    study = {"dataset": "digit_scenes", "scale": 1.0, "eval_images": 0}
    assert harness.settings_conflict(study, dict(study)) is None
    assert harness.settings_conflict(study, {**study, "scale": 0.05}) == "scale"
    assert harness.settings_conflict(study, {**study, "dataset": "coco", "scale": 2}) == "dataset"
    # A setting only one side records, or no study at all, is no conflict.
    assert harness.settings_conflict({"dataset": "coco"}, {"scale": 1.0}) is None
    assert harness.settings_conflict(None, study) is None
    # run.py's three checks (root, record, report.json) all use it.
    settings = tables.Settings(root="r", dataset="digit_scenes", scale=1.0, eval_images=0)
    assert harness.study_settings(settings) == study


def test_time_counts_runs_beyond_a_tables_default_seeds_apart():
    # T9's --seeds=6 runs T1's S4 cells at seeds 3-5: not T1's jobs (T1 has 3 seeds).
    cell = tables.TABLES["T9"].entries[next(iter(tables.TABLES["T9"].entries))].cell
    runs = {(cell, seed): reporting.Run(cell, seed, "train", "w", {"wall_s": {"train": 60.0}},
                                        {}, {}, {}) for seed in range(6)}
    pseudo = [({"cell": cell, "seed": 4, "wall_s": {"label": 30.0}}, None, None)]
    measured = reporting.measured_time_by_table(runs, pseudo, ["T1", "T9"])
    assert measured["T1"] == [3, 180.0]
    assert measured["T9"] == [0, 0.0]
    assert measured[reporting.MORE_SEEDS] == [4, 210.0]


def test_restore_from_a_report_gives_its_tables_and_findings_without_the_curves(tmp_path):
    root, out = str(tmp_path / "study"), str(tmp_path / "record")
    _study(root)
    first = reporting.render(root, str(tmp_path / "first"), plots=False)
    result = recording.restore_from_report(str(tmp_path / "first" / "report.json"), out)
    assert len(result["restored"]) == 3 + 3 + 3 + 2 + 1  # the running job's record too
    assert json.load(open(os.path.join(out, "study.json"))) == STUDY
    again = reporting.render(out, str(tmp_path / "again"), plots=False)
    for key, value in first["tables"].items():
        if key != "T9":
            assert _close(value, again["tables"][key]), key
    assert again["tables"]["T9"]["Rand Init | steps to AP"]["n"] == 0  # curves not kept
    assert again["teacher_quality"] == []  # nor pseudo-label records
    checks = {c["label"]: c for f in again["findings"] for c in f["checks"]}
    for f in first["findings"]:
        for c in f["checks"]:
            if c["label"].startswith("steps"):
                assert checks[c["label"]]["verdict"] == "not run"
            else:
                assert _close(c, checks[c["label"]]), c["label"]
    record = json.load(open(os.path.join(out, "cells", "det-sup-rand-s4-f1", "seed1",
                                         "cell.json")))
    assert record["restored_from"].startswith("report.json generated ")
    assert record["test_split"] == "test" and record["status"] == "finished"
    text = open(tmp_path / "again" / "REPORT.md").read()
    assert "**12 of the 12 job records were restored**" in text
    assert "| det-sup-rand-s4-f1 | 1 | finished (restored) |" in text
    # Restoring again keeps everything; a job run again replaces its restored record.
    assert recording.restore_from_report(
        str(tmp_path / "first" / "report.json"), out) == {"restored": [], "kept": 12}
    result = recording.save(root, out)
    ap = 0.30 + 0.01 * 1
    assert ("cells/det-sup-rand-s4-f1/seed1", "AP", ap, ap) in result["replaced"]
    assert "restored_from" not in json.load(open(os.path.join(
        out, "cells", "det-sup-rand-s4-f1", "seed1", "cell.json")))
    # A report of restored records restores them with their first source.
    twice = str(tmp_path / "twice")
    recording.restore_from_report(str(tmp_path / "again" / "report.json"), twice)
    assert json.load(open(os.path.join(twice, "cells", "det-sup-rand-s4-f1", "seed2",
                                       "cell.json")))["restored_from"] == record["restored_from"]
    with pytest.raises(ValueError, match="not a report.json"):
        recording.restore_from_report(os.path.join(out, "study.json"), out)


def test_the_committed_record_renders_the_committed_report(tmp_path):
    """experiments/paper/REPORT.md and report.json are what report.py makes of the committed
    record (experiments/paper/record): the study's numbers can be regenerated from the
    repository alone."""
    committed = json.load(open(os.path.join(PAPER_DIR, "report.json")))
    again = reporting.render(os.path.join(PAPER_DIR, "record"), str(tmp_path), plots=False)
    assert len(again["cells"]) == len(committed["cells"])
    for key in ("tables", "findings", "teacher_quality"):
        assert _close(committed[key], again[key]), key


def test_record_command_saves_restores_and_rejects_bad_flags(tmp_path):
    """`python experiments/paper/record.py --root=DIR --out=REC` and `--from_report`."""
    root, out = str(tmp_path / "study"), str(tmp_path / "record")
    _study(root)
    proc = _python(["experiments/paper/record.py", f"--root={root}", f"--out={out}"], REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "14 jobs added, 0 replaced, 0 unchanged" in proc.stdout
    reporting.render(root, str(tmp_path / "r"), plots=False)
    restored = str(tmp_path / "restored")
    proc = _python(["experiments/paper/record.py",
                    f"--from_report={tmp_path / 'r' / 'report.json'}", f"--out={restored}"],
                   REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 job records restored" in proc.stdout
    proc = _python(["experiments/paper/record.py", f"--root={tmp_path / 'absent'}",
                    f"--out={out}"], REPO)
    assert proc.returncode != 0 and "is not a directory" in proc.stderr
    proc = _python(["experiments/paper/record.py", f"--out={out}"], REPO)
    assert proc.returncode != 0 and "give one of --root" in proc.stderr


def test_run_keeps_the_record_as_it_goes_and_refuses_another_studys(tmp_path):
    """run.py --record=DIR: at the start and after each job the finished jobs' records are
    saved there (here: a study whose one job already finished); a record of a study at
    another --scale stops the run before any work, naming it."""
    settings = tables.Settings(root=str(tmp_path / "study"))
    jobs = harness.plan(settings, ["T1"], 1, "det-sup-rand-s1-f1")
    assert [j.cell for j in jobs] == ["det-sup-rand-s1-f1"]
    job = jobs[0]
    harness.write_json(os.path.join(job.workdir, harness.RECORD), {
        "cell": job.cell, "seed": 0, "stage": "train", "status": "finished",
        "spec": harness.spec_of(job, settings)})
    harness.write_json(os.path.join(job.workdir, "metrics_test.json"), {"AP": 0.3})
    lines = []
    record = str(tmp_path / "record")
    assert harness.run_study(settings, ["T1"], seeds=1, rows="det-sup-rand-s1-f1",
                             validate=False, out=lines.append, record=record) == 0
    assert "0 to run now" in lines[0]
    assert json.load(open(os.path.join(record, "cells", "det-sup-rand-s1-f1", "seed0",
                                       "metrics_test.json"))) == {"AP": 0.3}
    assert json.load(open(os.path.join(record, "study.json")))["scale"] == 1.0
    proc = _python(["experiments/paper/run.py", "--table=T1", f"--root={tmp_path / 'other'}",
                    "--scale=0.5", f"--record={record}", "--dry_run"], REPO)
    assert proc.returncode != 0 and "holds a study with scale=1.0" in proc.stderr, proc.stderr
    assert not (tmp_path / "other").exists()


def test_a_save_killed_mid_swap_is_recovered_by_the_next(tmp_path):
    """A kill between the two renames of a job's swap leaves the old copy aside and nothing
    in its place (or a half-written new one): the next save puts the old copy back first,
    removes the debris, then copies as usual."""
    root, out = str(tmp_path / "study"), str(tmp_path / "record")
    _study(root)
    recording.save(root, out)
    cells = os.path.join(out, "cells", "det-sup-rand-s4-f1")
    os.rename(os.path.join(cells, "seed0"), os.path.join(cells, ".seed0.old-1234abcd"))
    os.makedirs(os.path.join(cells, ".seed1.new-5678abcd"))
    assert recording.recover(out) == ["cells/det-sup-rand-s4-f1/seed0"]
    assert sorted(os.listdir(cells)) == ["seed0", "seed1", "seed2"]
    os.rename(os.path.join(cells, "seed2"), os.path.join(cells, ".seed2.old-00000000"))
    assert recording.save(root, out)["unchanged"] == 14  # put back, then found up to date
    assert sorted(os.listdir(cells)) == ["seed0", "seed1", "seed2"]


def _recorded(record, settings, job):
    rel = os.path.relpath(job.workdir, settings.root)
    harness.write_json(os.path.join(record, rel, "cell.json"),
                       {"cell": job.cell, "seed": job.seed, "status": "finished"})


def _planned(settings, record, tables_, rows, seeds):
    lines = []
    assert harness.run_study(settings, tables_, seeds=seeds, rows=rows, dry_run=True,
                             validate=False, out=lines.append, record=record) == 0
    return lines[0], [line.split("] ", 1)[1].split("  ~")[0].split(None, 1)[1].strip()
                      for line in lines if line.startswith("  [")]


def test_a_study_resumes_from_its_record_running_only_what_it_lacks(tmp_path):
    """On a machine without the study's root, run.py --record runs what the record lacks and
    what that needs (a teacher whose student is missing, its pseudo labels), nothing else."""
    settings = tables.Settings(root=str(tmp_path / "new_root"))
    record = str(tmp_path / "record")
    rows = "det-st-rand-s2-f1"
    jobs = harness.plan(settings, ["T3"], 2, rows)
    assert [(j.stage, j.seed) for j in jobs] == [("train", 0), ("pseudo", 0), ("student", 0),
                                                 ("train", 1), ("pseudo", 1), ("student", 1)]
    head, todo = _planned(settings, record, ["T3"], rows, 2)
    assert len(todo) == 6 and "(0 finished here or in the record), 6 to run now" in head
    # Both teachers and seed 0's student recorded (their pseudo labels not: a report.json
    # does not keep them): seed 1's student runs, with its teacher and labels.
    for job in jobs:
        if job.stage == "train" or (job.stage == "student" and job.seed == 0):
            _recorded(record, settings, job)
    head, todo = _planned(settings, record, ["T3"], rows, 2)
    assert todo == ["det-sup-rand-s2-f1 (seed 1)", "pseudo labels for det-st-rand-s2-f1 "
                    "(seed 1)", "det-st-rand-s2-f1 (seed 1)"], todo
    assert "(3 finished here or in the record), 3 to run now" in head
    _recorded(record, settings, jobs[-1])
    assert _planned(settings, record, ["T3"], rows, 2)[1] == []
    # More seeds than the record holds: only the new ones (and what they need) run.
    assert _planned(settings, record, ["T3"], rows, 3)[1] == [
        "det-sup-rand-s2-f1 (seed 2)", "pseudo labels for det-st-rand-s2-f1 (seed 2)",
        "det-st-rand-s2-f1 (seed 2)"]
    # Without --record, the new root runs everything.
    lines = []
    harness.run_study(settings, ["T3"], seeds=2, rows=rows, dry_run=True, validate=False,
                      out=lines.append)
    assert "6 to run now" in lines[0]


def test_a_records_more_seeds_command_runs_into_a_root_resuming_from_it(tmp_path):
    """report.py on a record prints `run.py ... --root=DIR --record=RECORD` (a record holds no
    checkpoints: running into it would put them in the repository)."""
    root, out = str(tmp_path / "study"), str(tmp_path / "record")
    _study(root)
    assert not recording.is_record(root)
    recording.save(root, out)
    assert recording.is_record(out)
    assert json.load(open(os.path.join(out, "record.json")))["sources"] == [root]
    cells = ["det-sup-rand-s4-f1"]
    assert reporting.run_command(tables.Settings(root=out), cells, 5).endswith(
        f"--seeds=5 --root=DIR --record={out}")
    assert reporting.run_command(tables.Settings(root=root), cells, 5).endswith(
        f"--seeds=5 --root={root}")
