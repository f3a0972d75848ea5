r"""The paper's tables as plain data: cells (what to run) and tables (how to lay them out).

A **cell** is one kind of run with one config: its entry point (`kind`), its config file and
variant, its `--config.*` overrides, and what it depends on, by name:

  pretrain  `rethink_tf.training.pretraining.run`: "ImageNet", "ImageNet++", SimCLR, and
            "ImageNet" on the aligned corpus (B1). Run once (seed 0) and shared by every seed
            and every cell that starts from it. A pretrain cell that names a `teacher` (a
            pretrain cell too) is a noisy student: "ImageNet++" learns from "ImageNet"'s
            classification pseudo labels of the corpus's unlabeled split, made once (shared).
  train     `rethink_tf.training.trainer.train`: a supervised detector or segmenter, from
            `init` (a pretrain cell's name, or "" = random). It is also the teacher of the
            student cells that name it.
  student   `rethink_tf.training.student.train_student` on the pseudo labels of `teacher`
            (a train cell of the same seed), labelled once per (teacher, unlabeled pool)
            by `rethink_tf.self_training.pseudo_label_stage` and shared by its students.
  joint     `rethink_tf.training.joint.train_joint`: task + classification stream, and the
            pseudo labels of `teacher` when it names one (all three streams).
  pipeline  `rethink_tf.self_training.run`: teacher -> pseudo labels -> student in one call;
            reports both (`part` "teacher" / "student").

Every cell runs once per seed in its own workdir, `ROOT/cells/<name>/seed<k>/`
(`ROOT/cells/<name>/shared/` for pre-training). Cells are shared between tables by name: the
supervised "ImageNet, S4, 100 %" cell of T1 is T3's teacher, T2's 100 % column and T9's
convergence curve, and runs once.

A **table** places cells (or a pipeline cell's part) at (row, column) in the paper's layout.
`FINDINGS` states each paper finding as paired comparisons between those entries
(`Check`): a difference of cells (or a difference of differences), its expected sign, and the
paper's own statement. Every number reported is measured on the `test` split; the best
checkpoint, and each detection or classification teacher's pseudo-label threshold
(`harness.choose_threshold_on_validation`), are chosen on `validation`.

Schedules: at `--scale=1` the digit_scenes study trains each detector or segmenter for
`STEPS["detection"]` / `STEPS["segmentation"]` steps of batch 8 (the student recipe of
`experiments/configs/*.py:student`, shortened so that every table at 3 seeds fits about 8
hours of a 2-core CPU; see README.md, "Time"), and pre-trains as the configs say. `--scale`
multiplies every schedule (steps, warm-up, checkpoint and evaluation intervals, pre-training
included). At `--scale <= SMOKE_SCALE` a study is a smoke run (one seed, few evaluation
images, short curves: `default_seeds`, `default_eval_images`). `--dataset=coco|voc` swaps in
the presets of `PRESETS` (COCO 2017 + ImageNet, VOC 2012 + SBD), whose schedules are their
own.

Nothing here imports TensorFlow: building a config imports only `ml_collections` and the
config files, so the report and the tests stay fast.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import math
import os
import types
from typing import Any, Mapping

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "experiments", "configs")
KINDS = ("pretrain", "train", "student", "joint", "pipeline")
DATASETS = ("digit_scenes", "coco", "voc")
# Fields that `--scale` multiplies (when > 0); a scaled interval never exceeds the steps.
SCALED_FIELDS = ("train.steps", "train.warmup_steps", "train.checkpoint_every",
                 "train.eval_every")
# Convergence curves (T9): this many periodic evaluations on validation per run.
CURVE_POINTS = 6

# A smoke run: --scale at most this. Its models train a few dozen steps and its numbers mean
# nothing; it checks the plumbing of every stage in minutes, so by default each cell runs
# one seed (`default_seeds`), evaluates on a few images (`default_eval_images`) and T9's
# curves have 3 points. Most of a smoke job's time is fixed (process start, data, model
# build, tracing, two evaluations): fewer jobs is what makes it fast.
SMOKE_SCALE = 0.1
SMOKE_SEEDS = 1
SMOKE_EVAL_IMAGES = 100  # at least this many, below --scale=1
SMOKE_CURVE_POINTS = 3  # T9's periodic evaluations per run (CURVE_POINTS otherwise)


# ------------------------------------------------------------------------------------------
# Data types.
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Cell:
    """One kind of run with one config; run once per seed (once in all for pre-training).

    Attributes:
      name: unique; the workdir's name under ROOT/cells.
      kind: one of `KINDS`.
      config: config file under experiments/configs with variant, e.g. "detection.py:student".
      overrides: `--config.<field>` values, e.g. {"augment": "s4", "dataset.fraction": 0.2}.
      init: name of the pretrain cell whose backbone the run starts from ("" = the config's
        `init`, random).
      teacher: name of the train cell whose pseudo labels a student / joint cell learns from;
        for a pretrain cell, the supervised pretrain cell whose classification pseudo labels
        of the corpus's unlabeled split it learns from (a noisy student: "ImageNet++").
      labels: coordinates for plots and report.json (init, augment, fraction, method).
    """
    name: str
    kind: str
    config: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init: str = ""
    teacher: str = ""
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def shared(self):
        """Pre-training runs once, with seed 0, for every seed of every table."""
        return self.kind == "pretrain"

    @property
    def task(self):
        return {"detection.py": "detection", "segmentation.py": "segmentation"}.get(
            self.config.split(":")[0], "classification")


@dataclasses.dataclass(frozen=True)
class Entry:
    """A table entry: a cell, or one part ("teacher" / "student") of a pipeline cell."""
    cell: str
    part: str = ""

    @property
    def key(self):
        return f"{self.cell}/{self.part}" if self.part else self.cell


@dataclasses.dataclass(frozen=True)
class Table:
    """A table in the paper's layout: `entries[(row, column)]` is an `Entry`.

    Attributes:
      key: "T1".."T9", "B1".."B3".
      title: what the table shows.
      task: detection or segmentation (the metric: AP or mIoU).
      rows, columns: labels in display order.
      entries: {(row, column): Entry}; a missing pair is an empty cell by design.
      seeds: default number of seeds (`--seeds` overrides).
      datasets: the `--dataset` presets the table exists for.
      paper: what the paper says about this table, quoted from its text (the paper's table
        values could not be checked against the arXiv text here, so none are restated).
      note: how to read it.
      curves: True for a convergence table (T9): its cells evaluate periodically.
    """
    key: str
    title: str
    task: str
    rows: tuple
    columns: tuple
    entries: Mapping[tuple, Entry]
    seeds: int = 3
    datasets: tuple = ("digit_scenes", "coco")
    paper: str = ""
    note: str = ""
    curves: bool = False


@dataclasses.dataclass(frozen=True)
class Check:
    """One paired comparison: sum(plus) - sum(minus) per seed, expected sign `direction`.

    A difference of two entries is plus=(a,), minus=(b,); a difference of differences
    (a - b) - (c - d) is plus=(a, d), minus=(b, c).
    """
    label: str
    plus: tuple
    minus: tuple
    direction: int  # +1: the paper expects > 0; -1: < 0
    metric: str = "test"  # "test": the table's metric on test; "steps_to": T9's steps


@dataclasses.dataclass(frozen=True)
class Finding:
    """A finding of the paper (or a hypothesis beyond it) and the checks that test it."""
    key: str
    claim: str
    checks: tuple
    paper: str = ""
    beyond: bool = False  # not a claim of the paper


# ------------------------------------------------------------------------------------------
# Names and settings.
# ------------------------------------------------------------------------------------------

INITS = {"rand": "Rand Init", "imagenet": "ImageNet", "imagenet_plus": "ImageNet++",
         "simclr": "SimCLR", "aligned": "ImageNet (aligned digits)"}
AUGMENTS = ("s1", "s2", "s3", "s4")
AUG_LABEL = {a: f"Augment-S{a[1]}" for a in AUGMENTS}
FRACTIONS = (0.2, 0.5, 1.0)
FRAC_LABEL = {0.2: "20 %", 0.5: "50 %", 1.0: "100 %"}
SEG_INITS = ("rand", "imagenet_plus")  # T8: the two ends of the pre-training axis
ALIGNMENT_COLUMNS = ((1.0, "s1"), (1.0, "s4"), (0.2, "s4"))  # B1's (fraction, augmentation)

# The study's schedule at --scale=1 on digit_scenes (batch 8, the student recipe's):
# chosen so that every table at 3 seeds fits ~8 hours of this 2-core CPU (README.md, "Time").
STEPS = {"detection": 750, "segmentation": 750}
WARMUP = 100  # of the 750 steps (the student configs' 200 are for 1,500)

GLYPH_CORPUS = "digit_scenes/glyphs"
# The pre-training of the main tables is on the glyph corpus (digit_scenes/glyphs: 62 typeset
# alphanumerics, a label space of its own, as ImageNet's is to COCO's); "ImageNet++" is a noisy
# student of "ImageNet" on that corpus's unlabeled split. B1 compares "ImageNet" with the same
# recipe on the aligned corpus (digit_scenes/classification: the scenes' own 10 digits).
PRETRAIN_CELLS = (
    Cell("imagenet", "pretrain", "pretrain_classification.py:glyphs",
         labels={"init": "imagenet"}),
    Cell("imagenet_plus", "pretrain", "pretrain_classification.py:glyphs_student",
         teacher="imagenet", labels={"init": "imagenet_plus"}),
    Cell("simclr", "pretrain", "pretrain_simclr.py:glyphs", labels={"init": "simclr"}),
    Cell("aligned", "pretrain", "pretrain_classification.py", labels={"init": "aligned"}),
)

# The pipeline teacher's settings (rethink_tf.self_training.teacher_config): the student
# recipe without pseudo labels and without stochastic depth.
TEACHER = {"self_training.student": False, "model.drop_path_rate": 0.0}
# Out-of-domain unlabeled images (B2): the glyph corpus's unlabeled split (what ImageNet's
# images are to COCO); in-domain is the config's own pool (unlabeled scenes).
OUT_OF_DOMAIN = {"digit_scenes": (GLYPH_CORPUS, "unlabeled")}


def _frac(f):
    return f"f{f:g}"


def _labels(init, augment, fraction, method, **extra):
    return {"init": init, "augment": augment, "fraction": fraction, "method": method, **extra}


def sup(init, augment, fraction, task="detection", suffix="", **overrides):
    """The supervised cell (also the teacher of its students).

    The plain detection cells at Augment-S4 with all labels also evaluate periodically on
    validation: T9's convergence curves (the best checkpoint is still chosen there).
    """
    name = f"{task[:3]}-sup{suffix}-{init}-{augment}-{_frac(fraction)}"
    config = f"{task}.py:student"
    if task == "detection" and augment == "s4" and fraction == 1.0 and not suffix:
        overrides = {"train.eval_every": -CURVE_POINTS, **overrides}
    return Cell(name, "train", config,
                {**TEACHER, "augment": augment, "dataset.fraction": fraction, **overrides},
                init="" if init == "rand" else init,
                labels=_labels(init, augment, fraction, "supervised" + suffix))


def st(init, augment, fraction, task="detection", suffix="", teacher=None, **overrides):
    """The noisy student of `sup(init, augment, fraction)` (same recipe and budget)."""
    name = f"{task[:3]}-st{suffix}-{init}-{augment}-{_frac(fraction)}"
    return Cell(name, "student", f"{task}.py:student",
                {"augment": augment, "dataset.fraction": fraction, **overrides},
                init="" if init == "rand" else init,
                teacher=teacher or sup(init, augment, fraction, task).name,
                labels=_labels(init, augment, fraction, "self-training" + suffix))


def joint(init, augment, fraction, with_pseudo):
    """Joint training (task + classification), with the teacher's pseudo labels if asked."""
    method = "joint+pseudo" if with_pseudo else "joint"
    name = f"det-{'jointst' if with_pseudo else 'joint'}-{init}-{augment}-{_frac(fraction)}"
    return Cell(name, "joint", "detection.py:" + ("joint_student" if with_pseudo else "joint"),
                {"augment": augment, "dataset.fraction": fraction},
                init="" if init == "rand" else init,
                teacher=sup(init, augment, fraction).name if with_pseudo else "",
                labels=_labels(init, augment, fraction, method))


def pipe(init, augment, fraction, task="segmentation"):
    """A pipeline cell: teacher -> pseudo labels -> student (both reported)."""
    name = f"{task[:3]}-pipe-{init}-{augment}-{_frac(fraction)}"
    return Cell(name, "pipeline", f"{task}.py:student",
                {"augment": augment, "dataset.fraction": fraction},
                init="" if init == "rand" else init,
                labels=_labels(init, augment, fraction, "pipeline"))


def _grid(cell_fn, rows, columns, row_key, column_key, **fixed):
    """{(row label, column label): Entry} for cell_fn(**{row_key: r, column_key: c})."""
    return {(INITS.get(r, r), _col_label(c)): Entry(cell_fn(**{row_key: r, column_key: c},
                                                            **fixed).name)
            for r in rows for c in columns}


def _col_label(c):
    return AUG_LABEL.get(c) or FRAC_LABEL.get(c) or str(c)


# ------------------------------------------------------------------------------------------
# The tables.
# ------------------------------------------------------------------------------------------

def _cells_of_tables():
    """Every cell the tables use (pretrain cells first), deduplicated by name."""
    cells = list(PRETRAIN_CELLS)
    three = ("rand", "imagenet", "imagenet_plus")
    for init in three:
        for a in AUGMENTS:
            cells += [sup(init, a, 1.0), st(init, a, 1.0)]
        for f in (0.2, 0.5):
            cells += [sup(init, "s1", f), sup(init, "s4", f), st(init, "s4", f)]
    for f in (0.2, 1.0):
        cells += [sup("simclr", "s4", f), st("simclr", "s4", f)]
    cells += [st("rand", a, f, suffix="-nonorm", **{"self_training.loss_norm": False})
              for a, f in (("s1", 1.0), ("s4", 1.0), ("s4", 0.2))]
    cells += [joint("rand", "s4", 1.0, False), joint("imagenet", "s4", 1.0, True)]
    cells += [pipe(init, a, 1.0) for init in SEG_INITS for a in ("s1", "s4")]
    cells += [sup("aligned", a, f) for f, a in ALIGNMENT_COLUMNS]
    cells += [_out_of_domain(f) for f in (1.0, 0.2)]
    cells += [_twice_the_steps("rand"), _twice_the_steps("imagenet_plus")]
    unique = {}
    for cell in cells:
        if cell.name in unique and unique[cell.name] != cell:
            raise ValueError(f"two different cells are named {cell.name!r}")
        unique[cell.name] = cell
    return unique


def _alignment_column(augment, fraction):
    return f"{AUG_LABEL[augment]}, {FRAC_LABEL[fraction]}"


def _out_of_domain(fraction):
    return st("imagenet_plus", "s4", fraction, suffix="-ood",
              **{"self_training.unlabeled": "@out_of_domain"})


def _twice_the_steps(init):
    # Compute-matched control: the student sees 2 x 8 images per step; this supervised run
    # sees as many images in all, at the teacher's batch and learning rate.
    return sup(init, "s4", 1.0, suffix="-2x", **{"train.steps": "@2x"})


def _tables():
    three = ("rand", "imagenet", "imagenet_plus")
    t = []
    t.append(Table(
        "T1", "Pre-training x augmentation strength (100 % of the labels)", "detection",
        tuple(INITS[i] for i in three), tuple(AUG_LABEL[a] for a in AUGMENTS),
        _grid(sup, three, AUGMENTS, "init", "augment", fraction=1.0),
        paper="\"with our strongest data augmentation, pre-training significantly hurts "
              "accuracy by -1.0AP\" (section 1; COCO, EfficientNet-B7 RetinaNet); stronger "
              "augmentation diminishes the value of pre-training.",
        note="Supervised RetinaNet; the S4 column's runs also give T9's curves."))
    t2 = {}
    for a in ("s1", "s4"):
        for init in three:
            for f in FRACTIONS:
                t2[(f"{INITS[init]}, {AUG_LABEL[a]}", FRAC_LABEL[f])] = Entry(
                    sup(init, a, f).name)
    t.append(Table(
        "T2", "Pre-training x labelled fraction (weakest and strongest augmentation)",
        "detection", tuple(f"{INITS[i]}, {AUG_LABEL[a]}" for a in ("s1", "s4") for i in three),
        tuple(FRAC_LABEL[f] for f in FRACTIONS), t2,
        paper="\"pre-training benefits when we use one fifth of the labeled data, and hurts "
              "accuracy when we use all labeled data\" (abstract; COCO).",
        note="The 100 % column is T1's."))
    t3 = {}
    for init in three:
        for a in AUGMENTS:
            t3[(INITS[init], AUG_LABEL[a])] = Entry(sup(init, a, 1.0).name)
            t3[(f"{INITS[init]} + self-training", AUG_LABEL[a])] = Entry(st(init, a, 1.0).name)
    t.append(Table(
        "T3", "Self-training on top of each initialisation, at each augmentation (100 %)",
        "detection",
        tuple(x for i in three for x in (INITS[i], f"{INITS[i]} + self-training")),
        tuple(AUG_LABEL[a] for a in AUGMENTS), t3,
        paper="\"unlike pre-training, self-training is always helpful when using stronger "
              "data augmentation\"; \"in the case that pre-training is helpful, "
              "self-training improves upon pre-training\" (abstract).",
        note="Each student has its row's teacher (the supervised cell above it), the same "
             "recipe and step budget; pseudo labels from 5,000 unlabeled scenes."))
    t4 = {}
    for init in three:
        for f in FRACTIONS:
            t4[(INITS[init], FRAC_LABEL[f])] = Entry(
                sup(init, "s4", f).name)
            t4[(f"{INITS[init]} + self-training", FRAC_LABEL[f])] = Entry(
                st(init, "s4", f).name)
    t.append(Table(
        "T4", "Self-training x labelled fraction (Augment-S4)", "detection",
        tuple(x for i in three for x in (INITS[i], f"{INITS[i]} + self-training")),
        tuple(FRAC_LABEL[f] for f in FRACTIONS), t4,
        paper="\"Self-training ... shows positive improvements from +1.3 to +3.4AP across all "
              "dataset sizes\" (abstract; COCO)."))
    t5 = {}
    for init in ("rand", "imagenet", "simclr"):
        for f in (0.2, 1.0):
            t5[(INITS[init], FRAC_LABEL[f])] = Entry(
                sup(init, "s4", f).name)
            t5[(f"{INITS[init]} + self-training", FRAC_LABEL[f])] = Entry(st(init, "s4", f).name)
    t.append(Table(
        "T5", "Self-supervised pre-training (SimCLR) vs Rand Init and ImageNet (Augment-S4)",
        "detection",
        tuple(x for i in ("rand", "imagenet", "simclr")
              for x in (INITS[i], f"{INITS[i]} + self-training")),
        (FRAC_LABEL[0.2], FRAC_LABEL[1.0]), t5,
        paper="Self-supervised pre-training also hurts where self-training helps (high-data, "
              "strong augmentation) (section 4; qualitative here)."))
    t6 = {}
    for a, f in (("s1", 1.0), ("s4", 1.0), ("s4", 0.2)):
        col = f"{AUG_LABEL[a]}, {FRAC_LABEL[f]}"
        t6[("Supervised (teacher)", col)] = Entry(
            sup("rand", a, f).name)
        t6[("Self-training, loss normalisation", col)] = Entry(st("rand", a, f).name)
        t6[("Self-training, no loss normalisation", col)] = Entry(
            st("rand", a, f, suffix="-nonorm", **{"self_training.loss_norm": False}).name)
    t.append(Table(
        "T6", "Loss normalisation on / off (Rand Init)", "detection",
        ("Supervised (teacher)", "Self-training, loss normalisation",
         "Self-training, no loss normalisation"),
        tuple(f"{AUG_LABEL[a]}, {FRAC_LABEL[f]}" for a, f in
              (("s1", 1.0), ("s4", 1.0), ("s4", 0.2))), t6,
        paper="Loss normalisation of the pseudo-label loss against the human one helps "
              "(paper, self-training method; qualitative here)."))
    col = f"{AUG_LABEL['s4']}, {FRAC_LABEL[1.0]}"
    t7 = {("Supervised (Rand Init)", col): Entry(sup("rand", "s4", 1.0).name),
          ("+ pre-training (ImageNet)", col): Entry(
              sup("imagenet", "s4", 1.0).name),
          ("+ joint training", col): Entry(joint("rand", "s4", 1.0, False).name),
          ("+ self-training", col): Entry(st("rand", "s4", 1.0).name),
          ("all three: pre-training + joint + self-training", col): Entry(
              joint("imagenet", "s4", 1.0, True).name)}
    t.append(Table(
        "T7", "Joint training (the \"ImageNet\" corpus as the classification stream)",
        "detection", tuple(r for r, _ in t7), (col,), t7,
        paper="Joint training helps, and pre-training, joint training and self-training "
              "combined give the best result (section 5; qualitative here).",
        note="Joint training's classification stream is the pre-training corpus of "
             "\"ImageNet\" (the preset's `joint.dataset`)."))
    t8 = {}
    for init in SEG_INITS:
        for a in ("s1", "s4"):
            cell = pipe(init, a, 1.0).name
            t8[(INITS[init], AUG_LABEL[a])] = Entry(cell, "teacher")
            t8[(f"{INITS[init]} + self-training", AUG_LABEL[a])] = Entry(cell, "student")
    t.append(Table(
        "T8", "Segmentation (DeepLabV3+, mIoU): pre-training and self-training", "segmentation",
        tuple(x for i in SEG_INITS for x in (INITS[i], f"{INITS[i]} + self-training")),
        (AUG_LABEL["s1"], AUG_LABEL["s4"]), t8, datasets=("digit_scenes", "voc"),
        paper="\"On the PASCAL segmentation dataset ... though pre-training does help "
              "significantly, self-training improves upon the pre-trained model\" (abstract).",
        note="Each entry pair is one `pipeline` cell (teacher -> pseudo labels -> student). "
             "The intermediate \"ImageNet\" row is left out to fit the 8-hour budget."))
    t9 = {(INITS[i], "steps to AP"): Entry(sup(i, "s4", 1.0).name)
          for i in three}
    t.append(Table(
        "T9", "Convergence: steps to reach a fixed validation AP (Augment-S4, 100 %)",
        "detection", tuple(INITS[i] for i in three), ("steps to AP",), t9, curves=True,
        paper="Pre-training speeds up convergence (He et al.; the paper discusses it, section "
              "6). The issue quotes 1.3-8x; that number could not be checked against the "
              "paper's text here and is not restated.",
        note=f"The threshold is 80 % of the lowest mean final validation AP among the rows; "
             f"{CURVE_POINTS} evaluations per run ({SMOKE_CURVE_POINTS} in a smoke run), so "
             "a step count is a multiple of the run's steps over that number."))
    b1 = {}
    rows = {"rand": INITS["rand"], "aligned": INITS["aligned"],
            "imagenet": "ImageNet (glyphs, own label space; the main tables')"}
    for f, a in ALIGNMENT_COLUMNS:
        for init, row in rows.items():
            b1[(row, _alignment_column(a, f))] = Entry(sup(init, a, f).name)
    t.append(Table(
        "B1", "Beyond the paper: label alignment of the pre-training corpus", "detection",
        tuple(rows.values()), tuple(_alignment_column(a, f) for f, a in ALIGNMENT_COLUMNS), b1,
        datasets=("digit_scenes",),
        note="The same supervised recipe (pretrain_classification.py) on two corpora: the "
             "glyph corpus (digit_scenes/glyphs, 62 typeset alphanumerics: its own label "
             "space, as ImageNet's is to COCO's; the main tables' \"ImageNet\") and the "
             "aligned corpus (digit_scenes/classification: the scenes' own 10 digits)."))
    b2 = {}
    for f in (1.0, 0.2):
        c = FRAC_LABEL[f]
        b2[("Supervised (ImageNet++)", c)] = Entry(
            sup("imagenet_plus", "s4", f).name)
        b2[("+ self-training, in-domain unlabeled", c)] = Entry(st("imagenet_plus", "s4", f).name)
        b2[("+ self-training, out-of-domain unlabeled", c)] = Entry(_out_of_domain(f).name)
    t.append(Table(
        "B2", "Beyond the paper: in-domain vs out-of-domain unlabeled images (Augment-S4)",
        "detection", ("Supervised (ImageNet++)", "+ self-training, in-domain unlabeled",
                      "+ self-training, out-of-domain unlabeled"),
        (FRAC_LABEL[1.0], FRAC_LABEL[0.2]), b2,
        datasets=("digit_scenes",),
        note="In-domain: unlabeled scenes; out-of-domain: the glyph corpus's unlabeled "
             "images (the paper's setting: ImageNet images for COCO)."))
    b3 = {}
    for init in ("rand", "imagenet_plus"):
        b3[(INITS[init], "supervised")] = Entry(sup(init, "s4", 1.0).name)
        b3[(INITS[init], "supervised, 2x steps")] = Entry(_twice_the_steps(init).name)
        b3[(INITS[init], "self-training")] = Entry(st(init, "s4", 1.0).name)
    t.append(Table(
        "B3", "Beyond the paper: compute-matched control (Augment-S4, 100 %)", "detection",
        (INITS["rand"], INITS["imagenet_plus"]),
        ("supervised", "supervised, 2x steps", "self-training"), b3,
        note="The student sees 8 human + 8 pseudo images per step; the 2x-steps run sees as "
             "many images (16 per step-pair) with its teacher's batch and learning rate, so a "
             "self-training gain over it is not just more images."))
    return {table.key: table for table in t}


def _e(cell, part=""):
    return Entry(cell.name if isinstance(cell, Cell) else cell, part)


def _findings():
    three = ("rand", "imagenet", "imagenet_plus")
    s4 = lambda init, f=1.0: _e(sup(init, "s4", f))  # noqa: E731
    s1 = lambda init, f=1.0: _e(sup(init, "s1", f))  # noqa: E731
    out = []
    hurts = []
    for init in ("imagenet", "imagenet_plus"):
        name = INITS[init]
        hurts += [
            Check(f"{name} - Rand Init at S4, 100 %", (s4(init),), (s4("rand"),), -1),
            Check(f"({name} - Rand Init) at S4 minus at S1 (100 %)",
                  (s4(init), s1("rand")), (s4("rand"), s1(init)), -1),
            Check(f"({name} - Rand Init) at 100 % minus at 20 % (S4)",
                  (s4(init), s4("rand", 0.2)), (s4("rand"), s4(init, 0.2)), -1)]
    out.append(Finding(
        "pretraining_hurts", "Pre-training hurts with strong augmentation and more labels "
        "(its value shrinks as augmentation and labelled data grow)", tuple(hurts),
        paper="-1.0 AP at Augment-S4 on all of COCO (section 1); helps at 20 %, hurts at "
              "100 % (abstract)."))
    helps = [Check(f"{INITS[i]} + self-training - {INITS[i]} at {AUG_LABEL[a]}, 100 %",
                   (_e(st(i, a, 1.0)),), (_e(sup(i, a, 1.0)),), +1)
             for i in three for a in AUGMENTS]
    helps += [Check(f"{INITS[i]} + self-training - {INITS[i]} at S4, {FRAC_LABEL[f]}",
                    (_e(st(i, "s4", f)),), (_e(sup(i, "s4", f)),), +1)
              for i in three for f in (0.2, 0.5)]
    out.append(Finding(
        "self_training_helps", "Self-training helps in every regime (each initialisation, "
        "augmentation and labelled fraction)", tuple(helps),
        paper="+1.3 to +3.4 AP across all dataset sizes (abstract; COCO)."))
    adds = [Check(f"{INITS[i]} + self-training - {INITS[i]} at S4, {FRAC_LABEL[f]}",
                  (_e(st(i, "s4", f)),), (s4(i, f),), +1)
            for i in ("imagenet", "imagenet_plus") for f in (0.2, 1.0)]
    adds += [Check(f"{INITS[i]} + self-training - Rand Init + self-training at S4, 20 %",
                   (_e(st(i, "s4", 0.2)),), (_e(st("rand", "s4", 0.2)),), +1)
             for i in ("imagenet", "imagenet_plus")]
    out.append(Finding(
        "self_training_adds_to_pretraining", "Self-training adds to pre-training (and where "
        "pre-training helps, the pre-trained student is the best)", tuple(adds),
        paper="\"in the case that pre-training is helpful, self-training improves upon "
              "pre-training\" (abstract)."))
    out.append(Finding(
        "simclr_like_imagenet", "SimCLR behaves like ImageNet pre-training: it hurts at S4 "
        "with all labels, and self-training helps on top of it",
        (Check("SimCLR - Rand Init at S4, 100 %", (s4("simclr"),), (s4("rand"),), -1),
         Check("SimCLR + self-training - SimCLR at S4, 100 %",
               (_e(st("simclr", "s4", 1.0)),), (s4("simclr"),), +1),
         Check("SimCLR + self-training - SimCLR at S4, 20 %",
               (_e(st("simclr", "s4", 0.2)),), (s4("simclr", 0.2),), +1)),
        paper="Self-supervised pre-training hurts in the same regime as supervised "
              "pre-training (section 4)."))
    out.append(Finding(
        "loss_norm_helps", "Loss normalisation helps the student",
        tuple(Check(f"loss norm on - off at {AUG_LABEL[a]}, {FRAC_LABEL[f]}",
                    (_e(st("rand", a, f)),),
                    (_e(st("rand", a, f, suffix="-nonorm",
                           **{"self_training.loss_norm": False})),), +1)
              for a, f in (("s1", 1.0), ("s4", 1.0), ("s4", 0.2)))))
    all3 = _e(joint("imagenet", "s4", 1.0, True))
    out.append(Finding(
        "joint_training", "Joint training helps, and pre-training + joint training + "
        "self-training combined is best",
        (Check("joint - supervised (Rand Init, S4, 100 %)",
               (_e(joint("rand", "s4", 1.0, False)),), (s4("rand"),), +1),
         Check("all three - supervised", (all3,), (s4("rand"),), +1),
         Check("all three - pre-training alone", (all3,), (s4("imagenet"),), +1),
         Check("all three - joint alone", (all3,), (_e(joint("rand", "s4", 1.0, False)),), +1),
         Check("all three - self-training alone", (all3,), (_e(st("rand", "s4", 1.0)),), +1)),
        paper="Section 5 (joint training); qualitative here."))
    seg = []
    for i in SEG_INITS:
        for a in ("s1", "s4"):
            cell = pipe(i, a, 1.0).name
            seg.append(Check(f"segmentation: {INITS[i]} + self-training - {INITS[i]} at "
                             f"{AUG_LABEL[a]}", (_e(cell, "student"),), (_e(cell, "teacher"),),
                             +1))
    seg.append(Check("segmentation: ImageNet++ - Rand Init at S1",
                     (_e(pipe("imagenet_plus", "s1", 1.0).name, "teacher"),),
                     (_e(pipe("rand", "s1", 1.0).name, "teacher"),), +1))
    out.append(Finding(
        "segmentation", "Segmentation: pre-training helps and self-training improves upon it",
        tuple(seg), paper="PASCAL VOC (abstract): pre-training helps significantly there; "
                          "self-training improves upon the pre-trained model."))
    out.append(Finding(
        "convergence", "Pre-training speeds up convergence (fewer steps to a fixed AP)",
        tuple(Check(f"steps(Rand Init) - steps({INITS[i]})", (s4("rand"),), (s4(i),), +1,
                    metric="steps_to") for i in ("imagenet", "imagenet_plus")),
        paper="Discussed in section 6 (after He et al.)."))
    out.append(Finding(
        "label_alignment", "Beyond the paper: an aligned corpus (the scenes' own classes) "
        "pre-trains better than one with its own label space",
        tuple(Check(f"aligned digits - glyphs at {_alignment_column(a, f)}",
                    (_e(sup("aligned", a, f)),), (_e(sup("imagenet", a, f)),), +1)
              for f, a in ALIGNMENT_COLUMNS), beyond=True))
    out.append(Finding(
        "unlabeled_domain", "Beyond the paper: in-domain unlabeled images teach more than "
        "out-of-domain ones",
        tuple(Check(f"in-domain - out-of-domain student at {FRAC_LABEL[f]}",
                    (_e(st("imagenet_plus", "s4", f)),), (_e(_out_of_domain(f)),), +1)
              for f in (1.0, 0.2)), beyond=True))
    out.append(Finding(
        "compute_control", "Beyond the paper: the self-training gain is not just more images "
        "(the student beats a supervised run with 2x the steps)",
        tuple(Check(f"{INITS[i]}: self-training - supervised with 2x steps",
                    (_e(st(i, "s4", 1.0)),), (_e(_twice_the_steps(i)),), +1)
              for i in ("rand", "imagenet_plus")), beyond=True))
    return tuple(out)


CELLS = _cells_of_tables()
TABLES = _tables()
FINDINGS = _findings()


# ------------------------------------------------------------------------------------------
# Dataset presets.
# ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Preset:
    """What `--dataset` changes.

    Attributes:
      test_split: the split every reported number is measured on.
      test_images: images in it (for the estimate and the smoke scale).
      unlabeled_images: {task: unlabeled images a teacher labels for a student of that task}
        at --scale=1 (a task not named: the whole pool).
      by_task: {task, "simclr" or "classification_student": {field: value}} applied before
        a cell's own overrides.
      steps: {task: steps at --scale=1} for detection / segmentation cells.
      warmup: warm-up steps at --scale=1 for them (None = the config's or by_task's).
      joint: {field: value} for joint configs only (the classification stream).
    """
    test_split: str
    test_images: int
    unlabeled_images: Mapping[str, int]
    by_task: Mapping[str, Mapping[str, Any]]
    steps: Mapping[str, int]
    warmup: int | None = None
    joint: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_COCO_DET = {
    # COCO 2017: train2017 minus a 5,000-image held-out slice (where the best checkpoint is
    # chosen) for training; val2017 is the reported "test" split (test-dev has no labels).
    "dataset.name": "coco/2017", "dataset.train_split": "train[5000:]",
    "dataset.eval_split": "train[:5000]", "dataset.image_size": 640, "dataset.cache": False,
    "model.backbone": "resnet50", "model.max_level": 7,
    "model.anchor_sizes": (32.0, 64.0, 128.0, 256.0, 512.0), "model.fpn_filters": 256,
    "model.head_filters": 256, "model.head_depth": 4, "model.head_norm": "group",
    "train.batch_size": 64, "train.learning_rate": 0.08, "train.warmup_steps": 1000,
    "train.checkpoint_every": 2000, "train.mixed_precision": True, "strategy": "mirrored",
    "eval.batch_size": 16, "eval.num_images": 0,
    "self_training.unlabeled": "imagenet2012", "self_training.unlabeled_split": "train",
    "self_training.score_threshold": 0.5,
}
_IMAGENET = {
    "dataset.name": "imagenet2012", "dataset.train_split": "train",
    "dataset.eval_split": "validation", "dataset.image_size": 224, "dataset.cache": False,
    "train.batch_size": 1024, "train.learning_rate": 0.4, "train.warmup_steps": 6250,
    "train.steps": 112590, "train.checkpoint_every": 5000, "train.mixed_precision": True,
    "strategy": "mirrored", "eval.batch_size": 250,
}
# "ImageNet++" on ImageNet: a noisy student of "ImageNet" on ImageNet's own train images (the
# paper's Noisy Student learned from 300M JFT images, which are not public).
_IMAGENET_STUDENT = {
    **_IMAGENET, "self_training.unlabeled": "imagenet2012",
    "self_training.unlabeled_split": "train",
}
_SIMCLR_IMAGENET = {
    **_IMAGENET, "train.learning_rate": 0.4, "train.steps": 125000,
    "simclr.crop_min_area": 0.08, "simclr.flip": True, "simclr.blur_prob": 0.5,
}
_VOC_SEG = {
    # VOC 2012 + SBD: train_aug minus a 500-image held-out slice for choosing; VOC val is the
    # reported "test" split (the paper's).
    "dataset.name": "voc_sbd", "dataset.train_split": "train_aug[500:]",
    "dataset.eval_split": "train_aug[:500]", "dataset.image_size": 512,
    "dataset.cache": False, "model.backbone": "resnet101", "model.aspp_filters": 256,
    "model.projection_filters": 48, "train.batch_size": 16, "train.learning_rate": 0.08,
    "train.warmup_steps": 1000, "train.checkpoint_every": 2000,
    "train.mixed_precision": True, "strategy": "mirrored", "eval.batch_size": 16,
    "self_training.unlabeled": "imagenet2012", "self_training.unlabeled_split": "train",
}

PRESETS = {
    "digit_scenes": Preset(
        test_split="test", test_images=1000,
        # 5,000 of the 20,000 unlabeled scenes; all 20,000 unlabeled glyphs ("ImageNet++").
        unlabeled_images={"detection": 5000, "segmentation": 5000, "classification": 20000},
        by_task={},
        steps=STEPS, warmup=WARMUP,
        joint={"joint.dataset": GLYPH_CORPUS}),
    "coco": Preset(
        test_split="validation", test_images=5000, unlabeled_images={},
        by_task={"detection": _COCO_DET,
                 "classification": {**_IMAGENET, "model.backbone": "resnet50"},
                 "classification_student": {**_IMAGENET_STUDENT, "model.backbone": "resnet50"},
                 "simclr": {**_SIMCLR_IMAGENET, "model.backbone": "resnet50"}},
        steps={"detection": 90000},
        joint={"joint.dataset": "imagenet2012", "joint.image_size": 224,
               "joint.batch_size": 64}),
    "voc": Preset(
        test_split="validation", test_images=1449, unlabeled_images={},
        by_task={"segmentation": _VOC_SEG,
                 "classification": {**_IMAGENET, "model.backbone": "resnet101"},
                 "classification_student": {**_IMAGENET_STUDENT,
                                            "model.backbone": "resnet101"},
                 "simclr": {**_SIMCLR_IMAGENET, "model.backbone": "resnet101"}},
        steps={"segmentation": 30000},
        joint={"joint.dataset": "imagenet2012", "joint.image_size": 224,
               "joint.batch_size": 16}),
}


# ------------------------------------------------------------------------------------------
# From a cell to a config.
# ------------------------------------------------------------------------------------------

def default_seeds(table, settings):
    """A table's seeds when --seeds is not given: its own, `SMOKE_SEEDS` in a smoke run."""
    return SMOKE_SEEDS if settings.smoke else table.seeds


def default_eval_images(dataset, scale):
    """--eval_images when not given: 0 (all) at --scale >= 1, else max(100, scale x the test
    split's size)."""
    test_images = PRESETS[dataset].test_images
    if scale >= 1:
        return 0
    return min(test_images, max(SMOKE_EVAL_IMAGES, int(round(test_images * scale))))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The harness's flags that shape every config (and must not change within a ROOT)."""
    root: str
    dataset: str = "digit_scenes"
    scale: float = 1.0
    eval_images: int = 0  # 0 = the whole split

    @property
    def smoke(self):
        """A smoke run (`SMOKE_SCALE`): it checks the plumbing; its numbers mean nothing."""
        return self.scale <= SMOKE_SCALE

    def check(self):
        """Raises ValueError naming the bad flag."""
        if self.dataset not in PRESETS:
            raise ValueError(f"--dataset={self.dataset!r}: one of {', '.join(PRESETS)}")
        if not (isinstance(self.scale, (int, float)) and self.scale > 0
                and math.isfinite(self.scale)):
            raise ValueError(f"--scale={self.scale!r}: must be a positive number")
        if self.eval_images < 0:
            raise ValueError(f"--eval_images={self.eval_images}: must be >= 0 (0 = all)")


def workdir(settings, cell, seed):
    """ROOT/cells/<name>/seed<k> (pre-training: ROOT/cells/<name>/shared)."""
    return os.path.join(os.path.abspath(settings.root), "cells", cell.name,
                        "shared" if cell.shared else f"seed{seed}")


def pseudo_dir(settings, student_config, teacher_cell, seed):
    """Where `teacher_cell`'s labels of the student config's unlabeled pool go (shared by
    every student of that teacher that labels the same pool the same way; a pre-trained
    teacher's once, in `.../shared`)."""
    st_ = student_config.self_training
    what = (st_.unlabeled, st_.unlabeled_split, float(st_.score_threshold),
            float(st_.pixel_threshold), bool(st_.flip_tta))
    tag = hashlib.sha1(repr(what).encode()).hexdigest()[:8]
    pool = st_.unlabeled.replace("/", "_").replace(":", "_")
    return os.path.join(os.path.abspath(settings.root), "pseudo",
                        f"{teacher_cell.name}__{pool}_{tag}",
                        "shared" if teacher_cell.shared else f"seed{seed}")


def load_config_file(spec):
    """A fresh `get_config(variant)` of experiments/configs/<file>[:variant], as config_flags
    gives it."""
    file_name, _, variant = spec.partition(":")
    module = _config_module(file_name)
    return module.get_config(variant) if ":" in spec else module.get_config()


@functools.lru_cache(maxsize=None)
def _config_module(file_name):
    path = os.path.join(CONFIG_DIR, file_name)
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(
        f"paper_config_{file_name[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _set(config, field, value, where):
    node = config
    *sections, key = field.split(".")
    for section in sections:
        if section not in node:
            raise ValueError(f"{where}: override {field!r}: the config has no section "
                             f"{section!r}")
        node = node[section]
    if key not in node:
        raise ValueError(f"{where}: override {field!r} names no config field")
    try:
        node[key] = value
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: override {field}={value!r}: {e}") from None


def scaled(value, scale):
    """max(1, round(value * scale)) for a positive schedule value; 0 stays 0."""
    return 0 if value <= 0 else max(1, int(round(value * scale)))


def overrides_for(cell, seed, settings, *, paths=True):
    """The ordered `--config.*` overrides that make `cell`'s config for `seed`.

    Order: the dataset preset, the study's schedule, the cell's own overrides (with `@`
    placeholders resolved), the unlabeled pool's size, then the harness's (seed, scale, init
    path, evaluation images, log lines). The result applied to the config file gives the
    config the cell runs; the same pairs as flags give the equivalent command.

    Args:
      cell: a `Cell`.
      seed: the seed (ignored for pre-training, which uses 0).
      settings: `Settings`.
      paths: resolve the `init` path (False: leave it out, for display).

    Returns:
      A list of (field, value), one per field.
    """
    settings.check()
    preset = PRESETS[settings.dataset]
    base = load_config_file(cell.config)
    pairs = _preset_pairs(cell, base, preset)
    steps = dict(pairs).get("train.steps", base.train.steps)
    own, curve_points, pool_split = _cell_pairs(cell, settings, steps)
    pairs += own
    if _labels_a_pool(cell):
        pairs.append(_pool_pair(cell, base, dict(pairs), preset, settings.scale, pool_split))
    pairs.append(("seed", 0 if cell.shared else int(seed)))
    pairs += _schedule_pairs(base, pairs, settings.scale, curve_points)
    pairs.append(("train.verbose", 2))  # a log file gets lines, not a live bar
    if settings.eval_images:
        pairs.append(("eval.num_images", int(settings.eval_images)))
    if paths and cell.init:
        init_cell = CELLS[cell.init]
        pairs.append(("init", f"pretrained:{workdir(settings, init_cell, 0)}"))
    merged = {}
    for field, value in pairs:  # one pair per field, its last value
        merged[field] = value
    return list(merged.items())


def _preset_key(cell, base):
    """The key of `Preset.by_task` for a cell's config."""
    if "simclr" in base:
        return "simclr"
    if cell.task == "classification" and base.self_training.student:
        return "classification_student"
    return cell.task


def _preset_pairs(cell, base, preset):
    """The dataset preset's fields and the study's schedule for a cell."""
    pairs = list(preset.by_task.get(_preset_key(cell, base), {}).items())
    if "joint" in base and base.joint.dataset:
        pairs += list(preset.joint.items())
    if cell.task in preset.steps and cell.kind != "pretrain":
        pairs.append(("train.steps", preset.steps[cell.task]))
        if preset.warmup is not None:
            pairs.append(("train.warmup_steps", preset.warmup))
    return pairs


def _cell_pairs(cell, settings, steps):
    """The cell's own overrides with the `@` placeholders resolved.

    Returns:
      (pairs, curve points (0: no curve), the unlabeled split an `@out_of_domain` pool names
      or None).
    """
    pairs, curve_points, pool_split = [], 0, None
    for field, value in cell.overrides.items():
        if value == "@2x":
            value = 2 * steps
        elif field == "train.eval_every" and isinstance(value, int) and value < 0:
            curve_points = -value  # -n: n evaluations over the run, set once scaled
            if settings.smoke:
                curve_points = min(curve_points, SMOKE_CURVE_POINTS)
            continue
        elif value == "@out_of_domain":
            if settings.dataset not in OUT_OF_DOMAIN:
                raise ValueError(f"cell {cell.name}: no out-of-domain pool for "
                                 f"--dataset={settings.dataset}")
            value, pool_split = OUT_OF_DOMAIN[settings.dataset]
        pairs.append((field, value))
        if field == "train.steps":
            steps = value
    return pairs, curve_points, pool_split


def _labels_a_pool(cell):
    """Whether the cell's config names the unlabeled pool a teacher labels: every detection
    and segmentation cell (a supervised one is a teacher), and a pre-training student."""
    return cell.kind != "pretrain" or bool(cell.teacher)


def _pool_pair(cell, base, fields, preset, scale, pool_split=None):
    """("self_training.unlabeled_split", "<split>[:n]"): the preset's pool size for the cell's
    task, shrunk with a --scale below 1 (the whole split where the preset names no size)."""
    split = pool_split or fields.get("self_training.unlabeled_split",
                                     base.self_training.unlabeled_split)
    split = split.split("[")[0]
    n = preset.unlabeled_images.get(cell.task)
    if n is not None:
        split = f"{split}[:{scaled(n, min(1.0, scale))}]"
    return ("self_training.unlabeled_split", split)


def _schedule_pairs(base, pairs, scale, curve_points):
    """The scaled schedule: steps, warm-up and intervals times `scale`, every interval within
    the steps, and every evaluation at a checkpoint (the end of a Keras epoch)."""
    out = []
    merged = dict(pairs)
    for field in SCALED_FIELDS:
        value = merged.get(field, _get(base, field))
        if value > 0 and scale != 1.0:
            out.append((field, scaled(value, scale)))
    final = {**merged, **dict(out)}
    total = final.get("train.steps", base.train.steps)
    for field in ("train.checkpoint_every", "train.eval_every", "train.log_every"):
        value = final.get(field, _get(base, field))
        if value > total:
            out.append((field, total))
            final[field] = total
    every = final.get("train.eval_every", base.train.eval_every)
    ckpt = final.get("train.checkpoint_every", base.train.checkpoint_every)
    if curve_points:
        # A curve: n evaluations, each at the end of a Keras epoch (the trainer evaluates
        # only there), so the checkpoint interval is the evaluation interval.
        every = ckpt = max(1, total // curve_points)
        out += [("train.eval_every", every), ("train.checkpoint_every", ckpt)]
    elif every > 0 and every % ckpt:
        # The trainer evaluates only at the end of a Keras epoch (checkpoint_every steps) whose
        # step is a multiple of eval_every; make every evaluation step an epoch end.
        out.append(("train.checkpoint_every", math.gcd(every, ckpt)))
    return out


def _get(config, field):
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def build_config(cell, seed, settings, pseudo_labels=None, *, paths=True):
    """The config `cell` runs for `seed`: its file + `overrides_for` (+ pseudo labels).

    Raises:
      ValueError: naming the cell and the override that does not fit the config.
    """
    config = load_config_file(cell.config)
    for field, value in overrides_for(cell, seed, settings, paths=paths):
        _set(config, field, value, f"cell {cell.name} ({cell.config})")
    if pseudo_labels:
        _set(config, "self_training.pseudo_labels", pseudo_labels, f"cell {cell.name}")
    return config


# ------------------------------------------------------------------------------------------
# Selecting what to run.
# ------------------------------------------------------------------------------------------

def table_keys(spec):
    """'T1', 'T1,T3' or 'all' -> ordered table keys; ValueError naming an unknown one."""
    if spec in ("all", "*"):
        return list(TABLES)
    keys = [k.strip().upper() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TABLES]
    if unknown or not keys:
        raise ValueError(f"--table={spec!r}: unknown table(s) {unknown or [spec]}; known: "
                         f"{', '.join(TABLES)} or 'all'")
    return keys


def entries_of(keys):
    """Cell names the tables place (in order, unique)."""
    names = []
    for key in keys:
        for entry in TABLES[key].entries.values():
            if entry.cell not in names:
                names.append(entry.cell)
    return names


def dependencies(name):
    """The cells `name` needs first (pre-training, teacher), in order, itself last."""
    cell = CELLS[name]
    out = []
    for first in (cell.init, cell.teacher):
        if first:
            out += [d for d in dependencies(first) if d not in out]
    out.append(name)
    return out


def pretrain_cells_of(keys):
    """The pre-training cells the tables `keys` start from (directly or through a teacher), in
    order."""
    names = []
    for name in entries_of(keys):
        for dep in dependencies(name):
            if CELLS[dep].kind == "pretrain" and dep not in names:
                names.append(dep)
    return names


def describe_pretraining(name, settings):
    """A pre-training cell in words, under the settings' preset: {"label", "recipe", "corpus",
    "detail"} (detail: what it learns from, its steps and its config)."""
    cell = CELLS[name]
    config = build_config(cell, 0, settings, paths=False)
    steps = f"{config.train.steps:,} steps of {config.train.batch_size}"
    if "simclr" in config:
        corpus = config.simclr.unlabeled or config.dataset.name
        recipe, detail = "SimCLR", f"its images, labels unused; {steps} x 2 views"
    elif cell.teacher:
        st_ = config.self_training
        teacher = INITS[CELLS[cell.teacher].labels["init"]]
        corpus, recipe = config.dataset.name, "noisy student"
        detail = (f"its labels + {teacher}'s pseudo labels of {st_.unlabeled} "
                  f"{st_.unlabeled_split}; {steps} + as many pseudo-labelled, noised")
    else:
        corpus, recipe, detail = config.dataset.name, "supervised", f"its labels; {steps}"
    return {"label": INITS[cell.labels["init"]], "recipe": recipe, "corpus": corpus,
            "detail": f"{detail} (`{cell.config}`)"}


def check_tables():
    """Every entry names a cell, every dependency exists and has the right kind."""
    for table in TABLES.values():
        for where, entry in table.entries.items():
            if entry.cell not in CELLS:
                raise ValueError(f"table {table.key} {where}: unknown cell {entry.cell!r}")
            kind = CELLS[entry.cell].kind
            if (kind == "pipeline") != bool(entry.part):
                raise ValueError(f"table {table.key} {where}: a part is for pipeline cells")
    for cell in CELLS.values():
        if cell.kind not in KINDS:
            raise ValueError(f"cell {cell.name}: kind {cell.kind!r} not in {KINDS}")
        if cell.init and CELLS.get(cell.init, types.SimpleNamespace(kind="")).kind != "pretrain":
            raise ValueError(f"cell {cell.name}: init {cell.init!r} is not a pretrain cell")
        if cell.teacher:
            _check_teacher(cell)
    for finding in FINDINGS:
        for check in finding.checks:
            for entry in check.plus + check.minus:
                if entry.cell not in CELLS:
                    raise ValueError(f"finding {finding.key} ({check.label}): unknown cell "
                                     f"{entry.cell!r}")


def _check_teacher(cell):
    """A student's teacher: a supervised pre-training cell for a pre-training student
    ("ImageNet++"), else the train cell of the same init, augmentation and fraction."""
    teacher = CELLS.get(cell.teacher)
    if cell.kind == "pretrain":
        if (teacher is None or teacher.kind != "pretrain"
                or teacher.config.startswith("pretrain_simclr.py")):
            raise ValueError(f"cell {cell.name}: teacher {cell.teacher!r} is not a supervised "
                             "pre-training cell (a classifier that labels the corpus)")
        return
    if teacher is None or teacher.kind != "train":
        raise ValueError(f"cell {cell.name}: teacher {cell.teacher!r} is not a train cell")
    if (teacher.init, teacher.labels.get("augment"), teacher.labels.get("fraction")) != (
            cell.init, cell.labels.get("augment"), cell.labels.get("fraction")):
        raise ValueError(f"cell {cell.name}: its teacher {teacher.name} differs in init, "
                         "augmentation or fraction")


check_tables()
