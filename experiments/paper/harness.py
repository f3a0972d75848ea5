"""The study runner's machinery: plan the jobs of some tables, shard them, skip finished ones,
estimate the time, and run one job through the library's public calls.

A **job** is one cell for one seed (pre-training: once), or the pseudo-labelling of a teacher
that its students need. Jobs run in dependency order (pre-training, teacher, pseudo labels,
student), each in its own process by default (`python experiments/paper/cell.py ...`), which
writes the job's record, `cell.json`, into its workdir:

  cell, stage, seed, config (file:variant), overrides (the `--config.*` pairs, without paths),
  dataset, scale, eval_images, test_split, status (running | finished | failed), error,
  wall_s (per stage, summed over resumptions), commands (the equivalent `python -m
  rethink_tf...` lines), harness_command (the exact one), git_commit, host, metrics, and
  attempts (each run of the job as run.py saw it: wall time with process start-up, exit code).

A pseudo-labelling job first chooses its teacher's score threshold on validation
(`choose_threshold_on_validation`: for a detector the highest F1 over `THRESHOLD_GRID`; for a
classifier the config's unless it keeps almost no image, `choose_kept_threshold`), then labels.

A job is finished when its record says so and its outputs exist (`metrics_<test split>.json`
for training cells, `backbone.weights.h5` for pre-training, a complete `manifest.json` for
pseudo labels); a finished job is skipped, anything else is (re)run and resumes from its
checkpoints. A workdir recorded with other settings (another --scale or --dataset, or changed
overrides) stops the run before any work, naming it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import tables  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

RECORD = "cell.json"
STUDY = "study.json"
CELL_MAIN = os.path.join(HERE, "cell.py")

# Time model of a quiet 2-core CPU (README.md, "Time"), from the measured runs in
# experiments/bench (SELF_TRAINING.md: a 1,500-step teacher of batch 8 in 2.0-2.2 min, its
# student in 3.3-3.4 min, 5,000 pseudo labels + quality in 0.6 min; SIMCLR.md: 0.4-0.7 s per
# SimCLR step of 2 x 256 views) and this harness's runs: seconds per process (interpreter,
# TensorFlow, data, model build, tracing), per training step by (stage, task), per evaluation
# (model rebuild) and per evaluated or labelled image. Classification pre-training on the
# glyph corpus, measured here at load 5 (upper bounds): 200 steps of 64 in 10 s ("ImageNet"),
# 200 noisy-student steps of 64 + 64 in 20 s ("ImageNet++"), 2,500 glyphs labelled and 500
# scored in 16 s with the teacher's load. Other jobs on the machine stretch all of it (3-6x
# at load 12).
STARTUP_S = 15.0
STEP_S = {("train", "detection"): 0.07, ("student", "detection"): 0.12,
          ("joint", "detection"): 0.095, ("joint+pseudo", "detection"): 0.14,
          ("train", "segmentation"): 0.10, ("student", "segmentation"): 0.17,
          ("pretrain", "classification"): 0.05, ("pretrain_student", "classification"): 0.10,
          ("pretrain", "simclr"): 0.70}
EVAL_FIXED_S = 10.0  # a test evaluation (evaluate_workdir: model rebuild and restore)
EVAL_RETRACE_S = 2.0  # an evaluation during training (the predict function is retraced)
EVAL_IMAGE_S = {"detection": 0.010, "segmentation": 0.006, "classification": 0.002}
PSEUDO_IMAGE_S = {"detection": 0.002, "segmentation": 0.002, "classification": 0.001}
QUALITY_IMAGE_S = {"detection": 0.01, "segmentation": 0.01, "classification": 0.002}
# Unlabeled images whose pseudo labels are scored against the hidden ground truth.
QUALITY_IMAGES = 500
# A teacher's score threshold is chosen on this many validation images, a detector's over
# this grid (harness.choose_threshold_on_validation); the scoring lives beside the labels.
SELECTION_IMAGES = 500
THRESHOLD_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
THRESHOLD_DIR_SUFFIX = "_threshold"
THRESHOLD_ROW_KEYS = ("threshold", "precision", "recall", "AP50", "boxes_per_image",
                      "accuracy", "kept_fraction")
# A classification teacher keeps the config's threshold unless its labels keep fewer than
# this fraction of the validation images there; then the highest lower one of its grid that
# keeps as many (harness.choose_kept_threshold). 0.0 keeps every image (at its top class).
MIN_KEPT = 0.1
CLASSIFICATION_GRID = (0.0, 0.1, 0.2)
SELECT_S = 15.0
EXPORT_S = 10.0
VALIDATION_IMAGES = 1000  # digit_scenes validation


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes:
      stage: pretrain | train | pseudo | student | joint | pipeline.
      cell: the cell's name (pseudo: the student cell whose pool and thresholds it labels).
      seed: the seed (0 for pre-training).
      workdir: where it writes (pseudo: the pseudo-label directory).
      deps: ids of the jobs it needs.
      family: jobs of one family run on one shard (a teacher, its labels and its students).
    """
    stage: str
    cell: str
    seed: int
    workdir: str
    deps: tuple = ()
    family: str = ""

    @property
    def shared(self):
        """Pre-training, and the pseudo labels a pre-training student learns from: once for
        every seed."""
        return tables.CELLS[self.cell].shared

    @property
    def id(self):
        if self.stage == "pseudo":
            return f"pseudo:{self.workdir}"
        return f"{self.cell}@{'shared' if self.shared else self.seed}"

    @property
    def label(self):
        what = "shared" if self.shared else f"seed {self.seed}"
        if self.stage == "pseudo":
            return f"pseudo labels for {self.cell} ({what})"
        return f"{self.cell} ({what})"


# ------------------------------------------------------------------------------------------
# Planning.
# ------------------------------------------------------------------------------------------

def seeds_for(table_keys, seeds_flag, settings):
    """{cell name: number of seeds}: the flag's, else the most any of its tables asks
    (`tables.default_seeds`: one in a smoke run)."""
    out = {}
    for key in table_keys:
        table = tables.TABLES[key]
        n = seeds_flag or tables.default_seeds(table, settings)
        for entry in table.entries.values():
            out[entry.cell] = max(out.get(entry.cell, 0), n)
    return out


def select_tables(spec, dataset):
    """Table keys for --table that exist for --dataset.

    Raises:
      ValueError: an unknown table, or a named table without a preset for the dataset.
    """
    keys = tables.table_keys(spec)
    usable = [k for k in keys if dataset in tables.TABLES[k].datasets]
    if spec not in ("all", "*"):
        missing = [k for k in keys if k not in usable]
        if missing:
            raise ValueError(f"--table: {', '.join(missing)} has no preset for --dataset="
                             f"{dataset} (it exists for "
                             f"{', '.join(tables.TABLES[missing[0]].datasets)})")
    return usable


def filter_cells(names, rows):
    """The cells whose name contains one of the comma-separated `rows` substrings.

    Raises:
      ValueError: a pattern that matches no cell of the selected tables.
    """
    if not rows:
        return list(names)
    patterns = [p.strip() for p in rows.split(",") if p.strip()]
    for p in patterns:
        if not any(p in n for n in names):
            raise ValueError(f"--rows: {p!r} matches no cell of the selected tables; cells: "
                             f"{', '.join(names)}")
    return [n for n in names if any(p in n for p in patterns)]


def plan(settings, table_keys, seeds_flag=None, rows=""):
    """The jobs for the selected tables, in dependency order, deduplicated.

    Args:
      settings: `tables.Settings`.
      table_keys: from `select_tables`.
      seeds_flag: --seeds (None = `tables.default_seeds`: each table's, one in a smoke run).
      rows: --rows (comma-separated substrings of cell names; "" = all).

    Returns:
      A list of `Job`s; a job comes after every job it depends on.
    """
    n_seeds = seeds_for(table_keys, seeds_flag, settings)
    names = filter_cells(tables.entries_of(table_keys), rows)
    jobs = {}

    def add(job):
        jobs.setdefault(job.id, job)
        return job.id

    def add_cell(name, seed):
        cell = tables.CELLS[name]
        seed = 0 if cell.shared else seed
        deps = []
        if cell.init:
            deps.append(add_cell(cell.init, 0))
        family = _family(cell, seed)
        if cell.teacher:
            deps.append(add_cell(cell.teacher, seed))
            family = _family(tables.CELLS[cell.teacher], seed)
            deps.append(add(Job("pseudo", name, seed, pseudo_dir_of(name, seed, settings),
                                (deps[-1],), family)))
        return add(Job(cell.kind, name, seed, tables.workdir(settings, cell, seed),
                       tuple(deps), family))

    # Seed-major: a study stopped early holds whole tables at fewer seeds.
    for seed in range(max(n_seeds.values(), default=0)):
        for name in names:
            if seed < n_seeds[name]:
                add_cell(name, seed)
    return list(jobs.values())


def _family(cell, seed):
    """A teacher's family (itself, its pseudo labels and its students) or a pre-training
    run's."""
    return f"pretrain:{cell.name}" if cell.shared else f"{cell.name}@{seed}"


def shard(jobs, num_shards, shard_index, cost_fn):
    """This shard's jobs: families (a teacher with its pseudo labels and students; a
    pre-training run) go whole to the least loaded shard, largest first, ties by name, so
    every machine computes the same split from the same flags.

    Raises:
      ValueError: for a shard index outside [0, num_shards).
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index={shard_index} must be in [0, --num_shards="
                         f"{num_shards})")
    if num_shards == 1:
        return list(jobs)
    cost = {}
    for job in jobs:
        cost[job.family] = cost.get(job.family, 0.0) + cost_fn(job)
    load = [0.0] * num_shards
    owner = {}
    for family in sorted(cost, key=lambda f: (-cost[f], f)):
        i = min(range(num_shards), key=lambda k: (load[k], k))
        owner[family] = i
        load[i] += cost[family]
    return [job for job in jobs if owner[job.family] == shard_index]


# ------------------------------------------------------------------------------------------
# Records and finished jobs.
# ------------------------------------------------------------------------------------------

def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, value):
    """Atomically (temp + rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=_json_default)
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, tuple):
        return list(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def test_metrics_path(workdir, settings):
    return os.path.join(workdir, f"metrics_{tables.PRESETS[settings.dataset].test_split}.json")


def is_finished(job, settings):
    """Whether `job` is done (its record says so and its outputs exist)."""
    record = read_json(os.path.join(job.workdir, RECORD), {})
    if record.get("status") != "finished":
        return False
    if job.stage == "pretrain":
        return os.path.exists(os.path.join(job.workdir, "backbone.weights.h5"))
    if job.stage == "pseudo":
        return pseudo_complete(job.workdir)
    if job.stage == "pipeline":
        return all(os.path.exists(test_metrics_path(os.path.join(job.workdir, part), settings))
                   for part in ("teacher", "student"))
    return os.path.exists(test_metrics_path(job.workdir, settings))


def pseudo_complete(directory):
    """Whether a pseudo-label directory is complete (its manifest says so)."""
    return bool(read_json(os.path.join(directory, "manifest.json"), {}).get("complete"))


def spec_of(job, settings):
    """What must not change between runs into one workdir."""
    cell = tables.CELLS[job.cell]
    pairs = tables.overrides_for(cell, job.seed, settings, paths=False)
    if job.stage == "pseudo":
        keep = ("self_training.unlabeled", "self_training.unlabeled_split",
                "self_training.score_threshold", "self_training.pixel_threshold",
                "self_training.flip_tta")
        config = tables.build_config(cell, job.seed, settings, paths=False)
        return {"stage": "pseudo", "teacher": cell.teacher, "seed": job.seed,
                "dataset": settings.dataset,
                "pool": {k: _get(config, k) for k in keep},
                "threshold": (THRESHOLD_RULES[config.task].text
                              if config.task in THRESHOLD_RULES else "config")}
    return {"stage": job.stage, "cell": job.cell, "config": cell.config,
            "overrides": [[k, _plain(v)] for k, v in pairs], "init": cell.init,
            "teacher": cell.teacher, "dataset": settings.dataset, "scale": settings.scale,
            "eval_images": settings.eval_images}


def _get(config, field):
    node = config
    for part in field.split("."):
        node = node[part]
    return _plain(node)


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# study.json's fields that must agree for two studies to share a root or a record.
STUDY_SETTINGS = ("dataset", "scale", "eval_images")


def study_settings(settings):
    """The study-wide settings of SETTINGS (run.py's flags) as study.json records them."""
    return {"dataset": settings.dataset, "scale": settings.scale,
            "eval_images": settings.eval_images}


def settings_conflict(mine, theirs):
    """The first of STUDY_SETTINGS both dicts record with different values, else None."""
    mine, theirs = mine or {}, theirs or {}
    return next((k for k in STUDY_SETTINGS
                 if k in mine and k in theirs and mine[k] != theirs[k]), None)


def check_compatible(jobs, settings):
    """Raises ValueError naming the first workdir recorded with other settings."""
    study = read_json(os.path.join(settings.root, STUDY))
    if settings_conflict(study, study_settings(settings)):
        raise ValueError(
            f"--root={settings.root} holds a study run with --dataset={study.get('dataset')} "
            f"--scale={study.get('scale')} --eval_images={study.get('eval_images')}; these "
            f"flags say --dataset={settings.dataset} --scale={settings.scale} --eval_images="
            f"{settings.eval_images}: use the same flags to resume, or another --root")
    for job in jobs:
        record = read_json(os.path.join(job.workdir, RECORD))
        if record and record.get("spec") != json.loads(json.dumps(spec_of(job, settings),
                                                                  default=_json_default)):
            raise ValueError(f"{job.workdir} was run with other settings (its {RECORD} "
                             f"spec differs from {job.label}'s now): use another --root, or "
                             "remove that workdir to rerun it")


def write_study(settings, argv):
    path = os.path.join(settings.root, STUDY)
    if not os.path.exists(path):
        write_json(path, {**study_settings(settings), "created": _now(),
                          "command": " ".join(shlex.quote(a) for a in argv)})


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def git_commit():
    """`git rev-parse HEAD` of the repository, '+dirty' when the tree has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tables.REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=tables.REPO, check=True, capture_output=True,
                               text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------------------
# Commands.
# ------------------------------------------------------------------------------------------

def flag_value(value):
    """A config value as config_flags parses it from `--config.<field>=<text>`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(flag_value(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return str(value)


def config_flags_of(job, settings, pseudo=None):
    """['--config=experiments/configs/<file>', '--config.<field>=<value>', ...] for `job`."""
    cell = tables.CELLS[job.cell]
    pairs = dict(tables.overrides_for(cell, job.seed, settings))
    if pseudo:
        pairs["self_training.pseudo_labels"] = pseudo
    rel = os.path.relpath(os.path.join(tables.CONFIG_DIR, cell.config), tables.REPO)
    return [f"--config={rel}"] + [f"--config.{k}={flag_value(v)}" for k, v in pairs.items()]


def commands(job, settings, pseudo=None, teacher_dir=None, score_threshold=None):
    """The equivalent `python -m rethink_tf...` command lines of `job` (run from the repo);
    for pseudo labels, with the score threshold chosen on validation when there is one."""
    preset = tables.PRESETS[settings.dataset]
    flags = config_flags_of(job, settings, pseudo)
    q = lambda args: " ".join(shlex.quote(a) for a in args)  # noqa: E731
    evaluate = ["--split=" + preset.test_split]
    if settings.eval_images:
        evaluate.append(f"--num_images={settings.eval_images}")
    if job.stage == "pretrain":
        return [q(["python", "-m", "rethink_tf.pretrain", *flags, f"--workdir={job.workdir}"])]
    if job.stage == "pseudo":
        out = []
        if score_threshold is not None:
            rule = THRESHOLD_RULES[tables.CELLS[job.cell].task].text
            out.append(f"# score threshold {score_threshold} chosen on validation ({rule}; "
                       "harness.choose_threshold_on_validation)")
            flags = flags + [f"--config.self_training.score_threshold={score_threshold}"]
        return out + [q(["python", "-m", "rethink_tf.pseudo_label", *flags,
                         f"--teacher={teacher_dir}", f"--output={job.workdir}", "--quality"])]
    if job.stage == "pipeline":
        out = [q(["python", "-m", "rethink_tf.pipeline", *flags, "--nopretrain",
                  f"--workdir={job.workdir}"])]
        return out + [q(["python", "-m", "rethink_tf.evaluate",
                         f"--workdir={os.path.join(job.workdir, part)}", *evaluate])
                      for part in ("teacher", "student")]
    return [q(["python", "-m", "rethink_tf.train", *flags, f"--workdir={job.workdir}"]),
            q(["python", "-m", "rethink_tf.evaluate", f"--workdir={job.workdir}", *evaluate])]


def harness_args(job, settings):
    """The arguments of `cell.py` that run `job`."""
    return [f"--root={settings.root}", f"--dataset={settings.dataset}",
            f"--scale={settings.scale!r}", f"--eval_images={settings.eval_images}",
            f"--cell={job.cell}", f"--seed={job.seed}", f"--stage={job.stage}"]


# ------------------------------------------------------------------------------------------
# Time.
# ------------------------------------------------------------------------------------------

def estimate_s(job, settings):
    """Estimated seconds of `job` on a quiet 2-core CPU (the time model above)."""
    cell = tables.CELLS[job.cell]
    config = tables.build_config(cell, job.seed, settings, paths=False)
    preset = tables.PRESETS[settings.dataset]
    task = config.task
    if job.stage == "pseudo":
        n = _pool_size(config)
        return (STARTUP_S + n * PSEUDO_IMAGE_S[task]
                + min(QUALITY_IMAGES, n) * QUALITY_IMAGE_S[task]
                + (SELECT_S if task in THRESHOLD_RULES else 0.0))
    steps = int(config.train.steps)
    val_images = settings.eval_images or VALIDATION_IMAGES
    test_images = settings.eval_images or preset.test_images
    evals = 1 + (steps // config.train.eval_every if config.train.eval_every > 0 else 0)
    train_eval_s = evals * (EVAL_RETRACE_S + EVAL_IMAGE_S[task] * val_images)
    test_s = EVAL_FIXED_S + EVAL_IMAGE_S[task] * test_images
    if job.stage == "pretrain":
        return STARTUP_S + steps * STEP_S[_step_key(job, cell, config)] + train_eval_s
    if job.stage == "pipeline":
        n = _pool_size(config)
        return (STARTUP_S + steps * (STEP_S[("train", task)] + STEP_S[("student", task)])
                + 2 * (train_eval_s + test_s) + n * PSEUDO_IMAGE_S[task]
                + min(QUALITY_IMAGES, n) * QUALITY_IMAGE_S[task] + EXPORT_S)
    return STARTUP_S + steps * STEP_S[_step_key(job, cell, config)] + train_eval_s + test_s


def _step_key(job, cell, config):
    """The `STEP_S` key of a training job."""
    if job.stage == "pretrain":
        if "simclr" in config:
            return ("pretrain", "simclr")
        return ("pretrain_student" if cell.teacher else "pretrain", config.task)
    if job.stage == "joint":
        return ("joint+pseudo" if cell.teacher else "joint", config.task)
    return ("student" if job.stage == "student" else "train", config.task)


def _pool_size(config):
    split = config.self_training.unlabeled_split
    if "[:" in split:
        return int(split.split("[:")[1].rstrip("]"))
    return 5000


def format_duration(seconds):
    """'45 s', '12.5 min', '3 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min"


class Progress:
    """Remaining-time estimate: the model's estimate of what is left, corrected by the ratio
    of measured to estimated time of the jobs run so far (clipped to [0.25, 10]: other jobs
    on the machine can make everything several times slower)."""

    def __init__(self, estimates):
        self.estimates = dict(estimates)
        self.measured = 0.0
        self.predicted = 0.0

    def done(self, job_id, seconds):
        self.predicted += self.estimates.pop(job_id, 0.0)
        self.measured += seconds

    def skip(self, job_id):
        self.estimates.pop(job_id, None)

    def ratio(self):
        if self.predicted <= 0:
            return 1.0
        return min(10.0, max(0.25, self.measured / self.predicted))

    def remaining_s(self):
        return sum(self.estimates.values()) * self.ratio()


# ------------------------------------------------------------------------------------------
# Running one job (inside cell.py's process, or in-process with --noisolate).
# ------------------------------------------------------------------------------------------

def pseudo_dir_of(cell_name, seed, settings):
    """The pseudo-label directory a student / joint cell learns from (its teacher's labels of
    its unlabeled pool)."""
    cell = tables.CELLS[cell_name]
    config = tables.build_config(cell, seed, settings, paths=False)
    return tables.pseudo_dir(settings, config, tables.CELLS[cell.teacher], seed)


def make_job(settings, stage, cell_name, seed):
    """The `Job` that `cell.py --stage --cell --seed` names.

    Raises:
      ValueError: an unknown cell or a stage that does not fit it.
    """
    if cell_name not in tables.CELLS:
        raise ValueError(f"--cell={cell_name!r}: no such cell (see tables.CELLS)")
    cell = tables.CELLS[cell_name]
    seed = 0 if cell.shared else seed
    if stage == "pseudo":
        if not cell.teacher:
            raise ValueError(f"--stage=pseudo: cell {cell_name} has no teacher")
        return Job("pseudo", cell_name, seed, pseudo_dir_of(cell_name, seed, settings))
    if stage != cell.kind:
        raise ValueError(f"--stage={stage}: cell {cell_name} is a {cell.kind} cell")
    return Job(stage, cell_name, seed, tables.workdir(settings, cell, seed))


def execute(settings, job, argv=None):
    """Runs `job` through the library's public calls; writes its record (cell.json).

    Returns:
      The record.

    Raises:
      Whatever the library raises (the record then says failed, with the error).
    """
    cell = tables.CELLS[job.cell]
    path = os.path.join(job.workdir, RECORD)
    previous = read_json(path, {})
    record = {**previous, "cell": job.cell, "stage": job.stage, "seed": job.seed,
              "config": cell.config, "labels": dict(cell.labels), "init": cell.init,
              "teacher": cell.teacher, "dataset": settings.dataset, "scale": settings.scale,
              "eval_images": settings.eval_images,
              "test_split": tables.PRESETS[settings.dataset].test_split,
              "spec": json.loads(json.dumps(spec_of(job, settings), default=_json_default)),
              "status": "running", "error": None, "host": socket.gethostname(),
              "git_commit": git_commit(), "updated": _now(),
              "harness_command": " ".join(shlex.quote(a) for a in (
                  argv or ["python", os.path.relpath(CELL_MAIN, tables.REPO),
                           *harness_args(job, settings)]))}
    record.setdefault("started", _now())
    wall = dict(previous.get("wall_s", {}))
    record["wall_s"] = wall
    write_json(path, record)

    def timed(stage, fn, *args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            wall[stage] = wall.get(stage, 0.0) + time.time() - start
            write_json(path, record)

    try:
        record.update(_run(settings, job, cell, record, timed))
        record["status"] = "finished"
        record["finished"] = _now()
    except BaseException as e:  # noqa: BLE001  (recorded, then re-raised)
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()[-4000:]
        raise
    finally:
        record["updated"] = _now()
        write_json(path, record)
    return record


def _run(settings, job, cell, record, timed):
    """The library calls of one job; returns what the record adds."""
    preset = tables.PRESETS[settings.dataset]
    if job.stage == "pseudo":
        return _run_pseudo(settings, job, cell, record, timed)
    pseudo = pseudo_dir_of(job.cell, job.seed, settings) if cell.teacher else None
    config = tables.build_config(cell, job.seed, settings, pseudo_labels=pseudo)
    record["commands"] = commands(job, settings, pseudo=pseudo)
    if job.stage == "pretrain":
        from rethink_tf.training import pretraining  # pylint: disable=g-import-not-at-top
        metrics = timed("pretrain", pretraining.run, config, job.workdir)
        return {"metrics": _numbers(metrics), "pseudo_dir": pseudo}
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top

    def evaluate(workdir):
        return _numbers(trainer.evaluate_workdir(workdir, split=preset.test_split,
                                                 checkpoint="best",
                                                 num_images=settings.eval_images or 0))

    if job.stage == "pipeline":
        from rethink_tf import self_training  # pylint: disable=g-import-not-at-top
        timed("pipeline", self_training.run, config, job.workdir,
              quality_images=min(QUALITY_IMAGES, _pool_size(config)))
        metrics = {}
        for part in ("teacher", "student"):
            metrics[part] = timed(f"test_{part}", evaluate, os.path.join(job.workdir, part))
            write_hparams(os.path.join(job.workdir, part), record, metrics[part], part)
        return {"metrics": metrics}
    if job.stage == "train":
        timed("train", trainer.train, config, job.workdir)
    elif job.stage == "student":
        from rethink_tf.training import student  # pylint: disable=g-import-not-at-top
        timed("train", student.train_student, config, job.workdir)
    elif job.stage == "joint":
        from rethink_tf.training import joint  # pylint: disable=g-import-not-at-top
        timed("train", joint.train_joint, config, job.workdir)
    else:
        raise ValueError(f"unknown stage {job.stage!r}")
    metrics = timed("test", evaluate, job.workdir)
    write_hparams(job.workdir, record, metrics)
    return {"metrics": metrics, "pseudo_dir": pseudo}


def _run_pseudo(settings, job, cell, record, timed):
    """A teacher's pseudo labels of its student's pool, at the threshold chosen on validation
    (`THRESHOLD_RULES`; the config's for segmentation)."""
    from rethink_tf import self_training  # pylint: disable=g-import-not-at-top
    teacher = tables.CELLS[cell.teacher]
    teacher_dir = tables.workdir(settings, teacher, job.seed)
    config = tables.build_config(cell, job.seed, settings)
    out = {"teacher_dir": teacher_dir}
    if config.task in THRESHOLD_RULES:
        out["threshold"] = timed("threshold", choose_threshold_on_validation, config,
                                 teacher_dir, job.workdir + THRESHOLD_DIR_SUFFIX, settings)
        config.self_training.score_threshold = out["threshold"]["chosen"]
    record["commands"] = commands(job, settings, teacher_dir=teacher_dir,
                                  score_threshold=out.get("threshold", {}).get("chosen"))
    result = timed("pseudo", self_training.pseudo_label_stage, config, teacher_dir,
                   job.workdir, quality_images=min(QUALITY_IMAGES, _pool_size(config)),
                   progress=False)
    manifest = result["manifest"]
    out["metrics"] = {k: manifest.get(k) for k in ("num_images", "num_images_seen", "num_boxes",
                                                   "boxes_per_image", "kept_fraction")
                      if k in manifest}
    if not manifest.get("num_images"):
        raise ValueError(f"{teacher.name} kept no pseudo label of {manifest.get('num_images_seen')}"
                         f" images at score threshold {config.self_training.score_threshold}: "
                         f"its student would have nothing to learn (a teacher this weak needs "
                         f"a longer schedule, a larger --scale)")
    return out


def choose_threshold(rows, default):
    """The score threshold with the highest F1 of the teacher's boxes; ties go to the
    higher threshold; `default` when no threshold finds anything (F1 0 everywhere).

    Args:
      rows: quality.json's "thresholds": [{"threshold", "precision", "recall", ...}].
      default: the config's threshold.

    Returns:
      (threshold, F1 at it).
    """
    best, best_f1 = float(default), 0.0
    for row in sorted(rows, key=lambda r: float(r["threshold"])):
        p, r = float(row.get("precision") or 0.0), float(row.get("recall") or 0.0)
        f1 = 2 * p * r / (p + r) if p + r > 0 else 0.0
        if f1 > 0 and f1 >= best_f1:
            best, best_f1 = float(row["threshold"]), f1
    return best, best_f1


def choose_kept_threshold(rows, default):
    """A classification teacher's threshold: the config's (`default`, Noisy Student's 0.3)
    while its labels keep at least `MIN_KEPT` of the images, else the highest lower one that
    does (the lowest when none does; 0.0 always does). A weak teacher (a short schedule, a
    smoke run: 62 classes, top-1 0.05, no image above 0.1) would otherwise leave its student
    no image at all.

    Args:
      rows: quality.json's "thresholds": [{"threshold", "kept_fraction", "accuracy"}].
      default: the config's threshold.

    Returns:
      (threshold, the fraction of images kept at it).
    """
    kept = {float(r["threshold"]): float(r.get("kept_fraction") or 0.0) for r in rows}
    below = sorted((t for t in kept if t <= float(default)), reverse=True)
    for threshold in below:
        if kept[threshold] >= MIN_KEPT:
            return threshold, kept[threshold]
    lowest = min(kept, default=float(default))
    return lowest, kept.get(lowest, 0.0)


@dataclasses.dataclass(frozen=True)
class ThresholdRule:
    """How a pseudo-labelling job chooses its teacher's score threshold on validation."""
    text: str  # for records and commands
    grid: tuple  # the thresholds scored (with the config's)
    measure: str  # what `choose` returns beside the threshold
    choose: Any  # fn(quality rows, the config's threshold) -> (threshold, measure)


THRESHOLD_RULES = {
    "detection": ThresholdRule(f"max F1 on validation over {list(THRESHOLD_GRID)}",
                               THRESHOLD_GRID, "f1", choose_threshold),
    "classification": ThresholdRule(
        f"the config's, or the highest lower one of {list(CLASSIFICATION_GRID)} that keeps "
        f">= {MIN_KEPT:g} of the validation images", CLASSIFICATION_GRID, "kept_fraction",
        choose_kept_threshold),
}


def choose_threshold_on_validation(config, teacher_dir, selection_dir, settings):
    """Chooses a teacher's pseudo-label score threshold on `validation`: its labels of the
    first `SELECTION_IMAGES` validation images are scored against their ground truth at each
    threshold of the rule's grid and the config's (`rethink_tf.pseudo.quality.report`), and
    the task's `THRESHOLD_RULES` choose: detection the highest F1 (a weak teacher, with few
    boxes above the config's 0.4, then still labels, and a strong one is not flooded),
    classification the config's unless it keeps almost nothing. Nothing is chosen on `test`.

    Returns:
      {"chosen", <the rule's measure>, "default", "rule", "split", "thresholds": quality rows}.
    """
    from rethink_tf.pseudo import labeler  # pylint: disable=g-import-not-at-top
    from rethink_tf.pseudo import quality  # pylint: disable=g-import-not-at-top
    rule = THRESHOLD_RULES[config.task]
    default = float(config.self_training.score_threshold)
    grid = tuple(sorted(set(rule.grid) | {default}))
    n = settings.eval_images or SELECTION_IMAGES
    split = f"{config.dataset.eval_split.split('[')[0]}[:{min(n, SELECTION_IMAGES)}]"
    data_dir = config.dataset.data_dir or None
    path = os.path.join(selection_dir, quality.QUALITY_FILE)
    report = read_json(path)
    if report is None:
        # quality.report scores a labelled directory: label the split first (lowest threshold).
        labeler.pseudo_label(teacher_dir, config.dataset.name, selection_dir, task=config.task,
                             split=split, data_dir=data_dir, score_threshold=min(grid),
                             progress=False)
        report = quality.report(selection_dir, config.dataset.name, split, teacher=teacher_dir,
                                data_dir=data_dir, thresholds=grid)
    rows = report.get("thresholds", [])
    chosen, measure = rule.choose(rows, default)
    return {"chosen": chosen, rule.measure: measure, "default": default, "split": split,
            "rule": rule.text, "thresholds": [{k: r[k] for k in THRESHOLD_ROW_KEYS if k in r}
                                              for r in rows]}


def _numbers(metrics):
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_hparams(workdir, record, metrics, part=""):
    """TensorBoard HParams for the grid: the cell's coordinates and its test metrics, in
    `workdir/tb/hparams` (so `tensorboard --logdir=ROOT` compares every cell)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
    labels = record.get("labels", {})
    hparams = {"cell": record["cell"] + (f"/{part}" if part else ""), "seed": record["seed"],
               "method": str(labels.get("method", "")) + (f" ({part})" if part else ""),
               "init": str(labels.get("init", "")), "augment": str(labels.get("augment", "")),
               "fraction": float(labels.get("fraction", 0.0) or 0.0)}
    with tf.summary.create_file_writer(os.path.join(workdir, "tb", "hparams")).as_default():
        hp.hparams(hparams, trial_id=f"{hparams['cell']}@{record['seed']}")
        for name, value in metrics.items():
            if name != "step" and isinstance(value, float):
                tf.summary.scalar(f"test/{name}", value, step=int(metrics.get("step", 0)))


def run_in_subprocess(job, settings, log_path):
    """Runs `job` in its own process (`cell.py`), output appended to `log_path`.

    Returns:
      The process's exit code.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with open(log_path, "a") as log:
        log.write(f"\n===== {_now()} {job.label} ({job.stage}) =====\n")
        log.flush()
        proc = subprocess.run([sys.executable, CELL_MAIN, *harness_args(job, settings)],
                              cwd=tables.REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                              check=False)
    return proc.returncode


def tail(path, lines=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def primary_metric(job, record):
    """'AP 0.312' / 'mIoU 0.41' / 'top1 0.88' / pseudo counts, for the progress line."""
    metrics = record.get("metrics") or {}
    if job.stage == "pipeline":
        parts = []
        for part in ("teacher", "student"):
            m = metrics.get(part, {})
            key = "AP" if "AP" in m else "mIoU"
            if key in m:
                parts.append(f"{part} {key} {m[key]:.3f}")
        return ", ".join(parts)
    for key in ("AP", "mIoU", "top1"):
        if key in metrics:
            return f"{key} {metrics[key]:.3f}"
    if "num_images" in metrics:
        return f"{metrics['num_images']} images labelled"
    return ""



# ------------------------------------------------------------------------------------------
# The study: validate, shard, skip, run, report progress.
# ------------------------------------------------------------------------------------------

def validate_jobs(jobs, settings):
    """Builds and validates every job's config before any work (`config_to_validate`).

    Raises:
      ValueError: naming the job and the bad field.
    """
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    for job in jobs:
        if job.stage == "pseudo":
            continue
        try:
            config_lib.validate(config_to_validate(job, settings))
        except ValueError as e:
            raise ValueError(f"{job.label} [{tables.CELLS[job.cell].config}]: {e}") from None


def config_to_validate(job, settings):
    """`job`'s config as it can be validated before any work.

    What earlier jobs create does not exist yet: `init` is left 'random' (the pre-trained
    backbone), and a student whose pseudo labels are not made yet (by its teacher's pseudo
    job, or by the pipeline itself) is validated as a supervised config, `self_training.student`
    false: every other field is checked; the labels are checked once they exist.
    """
    cell = tables.CELLS[job.cell]
    config = tables.build_config(cell, job.seed, settings, paths=False)
    if config.self_training.get("student", False):
        pseudo = pseudo_dir_of(job.cell, job.seed, settings) if cell.teacher else None
        if pseudo and pseudo_complete(pseudo):
            config.self_training.pseudo_labels = pseudo
        else:
            config.self_training.student = False
    return config


def tables_of_jobs(jobs, table_keys):
    """{job id: the first selected table that needs it (directly or as a dependency)}."""
    by_cell = {}
    for key in table_keys:
        for entry in tables.TABLES[key].entries.values():
            for name in tables.dependencies(entry.cell):
                by_cell.setdefault(name, key)
    return {job.id: by_cell.get(job.cell, "?") for job in jobs}


def estimate_by_table(jobs, settings, table_keys):
    """[(table key, new jobs, seconds)]: each job counted in the first table that needs it."""
    where = tables_of_jobs(jobs, table_keys)
    out = {key: [0, 0.0] for key in table_keys}
    for job in jobs:
        key = where[job.id]
        if key in out:
            out[key][0] += 1
            out[key][1] += estimate_s(job, settings)
    return [(key, n, s) for key, (n, s) in out.items()]


def log_path(settings, job):
    name = job.id.replace(os.sep, "_").replace(":", "_").replace("@", "_")
    if job.stage == "pseudo":
        name = "pseudo_" + os.path.relpath(job.workdir, os.path.join(settings.root, "pseudo")
                                           ).replace(os.sep, "_")
    return os.path.join(settings.root, "logs", name + ".log")


def _status(job, settings):
    if is_finished(job, settings):
        return "finished"
    return read_json(os.path.join(job.workdir, RECORD), {}).get("status", "new")


def run_study(settings, table_keys, *, seeds=None, rows="", num_shards=1, shard_index=0,
              max_cells=0, dry_run=False, isolate=True, validate=True, wait_s=86400.0,
              poll_s=30.0, argv=(), out=print, record=None):
    """Runs (or, with dry_run, lists) this shard's unfinished jobs of the selected tables.

    With `record` (a directory), the record of every finished job (`recording.save`: the JSON
    the report reads, no checkpoints) is copied there at the start and after each job, and a
    job the record already holds finished is not run again unless a job to run needs it
    (`not_in_record`): a study resumes from its record on a machine without its root.

    Returns:
      0 if every job it ran finished (or there was nothing to do), 1 otherwise.
    """
    settings.check()
    jobs = plan(settings, table_keys, seeds, rows)
    estimates = {job.id: estimate_s(job, settings) for job in jobs}
    mine = shard(jobs, num_shards, shard_index, lambda j: estimates[j.id])
    check_compatible(jobs, settings)
    if record:
        check_record(record, settings)
    if validate:
        validate_jobs(mine, settings)
    where = tables_of_jobs(jobs, table_keys)
    todo = [job for job in mine if not is_finished(job, settings)]
    finished = len(mine) - len(todo)
    if record:
        kept = not_in_record(todo, jobs, record, settings)
        finished += len(todo) - len(kept)
        todo = kept
    if max_cells:
        todo = todo[:max_cells]
    total_s = sum(estimates[j.id] for j in todo)
    out(f"study {settings.root}: tables {', '.join(table_keys)}, dataset {settings.dataset}, "
        f"scale {settings.scale:g}, {_seeds_text(seeds, settings)}, evaluation images "
        f"{settings.eval_images or 'all'}; {len(jobs)} jobs, shard {shard_index}/{num_shards}: "
        f"{len(mine)} ({finished} finished{' here or in the record' if record else ''}), "
        f"{len(todo)} to run now, estimated "
        f"{format_duration(total_s)} on a quiet 2-core CPU")
    if dry_run:
        for key, n, s in estimate_by_table(todo, settings, table_keys):
            out(f"  {key}: {n} new jobs, ~{format_duration(s)}")
        for job in todo:
            out(f"  [{where[job.id]}] {job.stage:8s} {job.label}  "
                f"~{format_duration(estimates[job.id])}")
        return 0
    os.makedirs(settings.root, exist_ok=True)
    write_study(settings, list(argv))
    save_record = _record_saver(settings, record, out)
    save_record()
    progress = Progress({j.id: estimates[j.id] for j in todo})
    failed = {}
    by_id = {j.id: j for j in jobs}
    mine_ids = {j.id for j in mine}
    for i, job in enumerate(todo, 1):
        head = f"[{i}/{len(todo)}] {where[job.id]} {job.stage} {job.label}"
        blocked = _wait_for_deps(job, by_id, mine_ids, failed, settings, wait_s, poll_s, out,
                                 head)
        if blocked:
            failed[job.id] = blocked
            progress.skip(job.id)
            out(f"{head}: skipped ({blocked})")
            continue
        out(f"{head}: started (est. {format_duration(estimates[job.id])})")
        start = time.time()
        path = log_path(settings, job)
        if isolate:
            code = run_in_subprocess(job, settings, path)
        else:
            try:
                execute(settings, job)
                code = 0
            except Exception as e:  # noqa: BLE001  (reported; the study goes on)
                code = 1
                out(f"  {type(e).__name__}: {e}")
        seconds = time.time() - start
        progress.done(job.id, seconds)
        record = add_attempt(job, seconds, code)
        left = format_duration(progress.remaining_s())
        if code == 0 and is_finished(job, settings):
            metric = primary_metric(job, record)
            out(f"{head}: finished in {format_duration(seconds)}"
                f"{', ' + metric if metric else ''}; ~{left} left")
        else:
            failed[job.id] = f"{job.label} failed (exit {code}; log {path})"
            out(f"{head}: FAILED in {format_duration(seconds)} (exit {code}): "
                f"{record.get('error') or 'see log'}; log {path}; ~{left} left")
            if isolate:
                out("  " + tail(path).replace("\n", "\n  "))
        save_record()
    if failed:
        out(f"{len(failed)} job(s) failed or were skipped:")
        for reason in failed.values():
            out(f"  {reason}")
        return 1
    out(f"done; report: python experiments/paper/report.py --root={settings.root}")
    return 0


def not_in_record(todo, jobs, record, settings):
    """The jobs of `todo` to run when `record` holds the study's finished results.

    A result (any job but pseudo labels) runs when the record does not hold it finished;
    a job that a job to run depends on runs too, recorded or not (its checkpoints, backbone
    or labels are not in a record; it is then recorded again); pseudo labels run only for a
    job that needs them. E.g. with a record of every teacher and student of a table but one
    student, that student runs with its teacher and the teacher's pseudo labels.
    """
    by_id = {j.id: j for j in jobs}
    in_todo = {j.id for j in todo}

    def recorded(job):
        rel = os.path.relpath(job.workdir, settings.root)
        return read_json(os.path.join(record, rel, RECORD), {}).get("status") == "finished"

    needed = set()
    stack = [j.id for j in todo if j.stage != "pseudo" and not recorded(j)]
    while stack:
        job_id = stack.pop()
        if job_id not in needed:
            needed.add(job_id)
            stack += [d for d in by_id[job_id].deps if d in in_todo]
    return [j for j in todo if j.id in needed]


def check_record(record, settings):
    """Raises ValueError when the record directory holds another study's records."""
    theirs, mine = read_json(os.path.join(record, STUDY)), study_settings(settings)
    key = settings_conflict(mine, theirs)
    if key:
        raise ValueError(f"--record={record} holds a study with {key}={theirs[key]!r}; "
                         f"this one has {key}={mine[key]!r}: one record holds one study")


def _record_saver(settings, record, out):
    """A function that saves the study's record into `record` (a no-op without one)."""
    if not record:
        return lambda: None
    import recording  # pylint: disable=g-import-not-at-top  (JSON only)

    def save():
        result = recording.save(settings.root, record)
        if result["added"] or result["replaced"]:
            out(f"  record {record}: {len(result['added'])} added, "
                f"{len(result['replaced'])} replaced")
    return save


def _seeds_text(seeds_flag, settings):
    if seeds_flag:
        return f"{seeds_flag} seed(s) per cell"
    if settings.smoke:
        return f"{tables.SMOKE_SEEDS} seed(s) per cell (a smoke run; --seeds to change)"
    return "each table's seeds"


def add_attempt(job, seconds, code):
    """Adds this run of the job (wall time as measured here, process start-up included; exit
    code) to its record's `attempts`; returns the record."""
    path = os.path.join(job.workdir, RECORD)
    record = read_json(path)
    if record is None:  # the job died before writing one
        return {}
    record.setdefault("attempts", []).append({"wall_s": seconds, "exit": code, "ended": _now(),
                                              "host": socket.gethostname()})
    write_json(path, record)
    return record


def _wait_for_deps(job, by_id, mine_ids, failed, settings, wait_s, poll_s, out, head):
    """None when every dependency is finished; else why the job cannot run."""
    waited = 0.0
    for dep_id in job.deps:
        dep = by_id[dep_id]
        while not is_finished(dep, settings):
            if dep_id in failed:
                return f"needs {dep.label}, which failed or was skipped"
            if dep_id in mine_ids:
                return f"needs {dep.label}, which is not finished"
            if waited == 0.0:
                out(f"{head}: waiting for {dep.label} (another shard)")
            if _status(dep, settings) == "failed":
                return f"needs {dep.label}, which failed on another shard"
            if waited >= wait_s:
                return f"waited {format_duration(waited)} for {dep.label}"
            time.sleep(poll_s)
            waited += poll_s
    return None
