"""experiments/paper: every cell's config loads and validates, commands match configs, the plan
and shards are right, and the report's arithmetic and verdicts match NumPy / SciPy, rendered
from small fake workdirs (no training)."""

import json
import math
import os
import sys

import numpy as np
import pytest
from scipy import stats as sp_stats

PAPER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                         "paper")
sys.path.insert(0, os.path.abspath(PAPER_DIR))

import harness  # noqa: E402  pylint: disable=wrong-import-position
import reporting  # noqa: E402  pylint: disable=wrong-import-position
import stats  # noqa: E402  pylint: disable=wrong-import-position
import tables  # noqa: E402  pylint: disable=wrong-import-position

from rethink_tf.training import config as config_lib  # noqa: E402

TINY = {"digit_scenes/detection": "digit_scenes/detection_tiny",
        "digit_scenes/classification": "digit_scenes/classification_tiny",
        "digit_scenes/glyphs": "digit_scenes/glyphs_tiny"}


# ------------------------------------------------------------------------------------------
# Configs.
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data_dir(digit_scenes_data_dir):
    """The session's tiny digit_scenes data, plus the tiny glyph corpus (B1's pre-training)."""
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from rethink_tf.data import digit_scenes  # pylint: disable=g-import-not-at-top
    tfds.builder("digit_scenes", config=f"{digit_scenes.GLYPHS}_tiny",
                 data_dir=digit_scenes_data_dir).download_and_prepare()
    return digit_scenes_data_dir


def _tiny(config, data_dir):
    """Points a study config at the tiny prepared data; everything else as the harness made it."""
    config.dataset.name = TINY.get(config.dataset.name, config.dataset.name)
    config.dataset.data_dir = data_dir
    st = config.self_training
    st.unlabeled = TINY.get(st.unlabeled, st.unlabeled)
    if "joint" in config and config.joint.dataset:
        config.joint.dataset = TINY.get(config.joint.dataset, config.joint.dataset)
    if "simclr" in config and config.simclr.unlabeled:
        config.simclr.unlabeled = TINY.get(config.simclr.unlabeled, config.simclr.unlabeled)
    return config


@pytest.mark.parametrize("name", sorted(tables.CELLS))
def test_every_cell_config_loads_and_validates(name, tiny_data_dir, tmp_path):
    cell = tables.CELLS[name]
    settings = tables.Settings(root=str(tmp_path))
    os.makedirs(tables.workdir(settings, tables.CELLS[cell.init], 0) if cell.init
                else str(tmp_path), exist_ok=True)
    pseudo = str(tmp_path) if cell.teacher or cell.kind == "pipeline" else None
    config = tables.build_config(cell, 1, settings, pseudo_labels=pseudo)
    # Before any work a student's pseudo labels do not exist: validated as the harness does.
    job = harness.make_job(settings, cell.kind, name, 1)
    config_lib.validate(_tiny(harness.config_to_validate(job, settings), tiny_data_dir))
    assert config.seed == (0 if cell.shared else 1)
    if cell.kind != "pretrain":
        assert config.train.steps == tables.STEPS[cell.task] * (2 if "-2x-" in name else 1)
        assert config.augment == cell.labels["augment"]
        assert config.dataset.fraction == cell.labels["fraction"]
        assert config.init == (f"pretrained:{tables.workdir(settings, tables.CELLS[cell.init], 0)}"
                               if cell.init else "random")
    if cell.kind == "train":  # a supervised teacher: the pipeline's teacher settings
        assert not config.self_training.student and config.model.drop_path_rate == 0.0
    if cell.kind == "student" or cell.teacher:
        assert config.self_training.student and config.self_training.pseudo_labels == pseudo
    # digit_scenes never flips: no stream of any cell, no flip TTA, no flipped SimCLR views.
    assert config.dataset.hflip == "auto"
    for source in (config.dataset.name, config.self_training.unlabeled,
                   config.get("joint", {}).get("dataset") or config.dataset.name):
        assert not config_lib.hflip(config, source), (name, source)
    assert not config.self_training.flip_tta
    assert not config.get("simclr", {}).get("flip", False)


def test_a_student_is_validated_with_its_pseudo_labels_once_they_exist(tmp_path):
    settings = tables.Settings(root=str(tmp_path))
    for name in ("det-st-rand-s4-f1", "imagenet_plus"):
        job = harness.make_job(settings, tables.CELLS[name].kind, name, 0)
        before = harness.config_to_validate(job, settings)
        assert not before.self_training.student and not before.self_training.pseudo_labels
        pseudo = harness.pseudo_dir_of(name, 0, settings)
        harness.write_json(os.path.join(pseudo, "manifest.json"), {"complete": True})
        after = harness.config_to_validate(job, settings)
        assert after.self_training.student and after.self_training.pseudo_labels == pseudo


@pytest.mark.parametrize("dataset", ["coco", "voc"])
def test_presets_validate_without_the_data(dataset, tmp_path, monkeypatch):
    """Every COCO / VOC cell validates (the source itself stubbed: no data here)."""
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    fake = type("Info", (), {"splits": (), "tasks": ("detection", "segmentation",
                                                     "classification")})
    monkeypatch.setattr(sources, "info", lambda *a, **k: fake)
    settings = tables.Settings(root=str(tmp_path), dataset=dataset)
    keys = harness.select_tables("all", dataset)
    assert keys and all(dataset in tables.TABLES[k].datasets for k in keys)
    for job in harness.plan(settings, keys):
        if job.stage == "pseudo":
            continue
        config = harness.config_to_validate(job, settings)
        config_lib.validate(config)
        if config.task != "classification":
            assert config.dataset.name == {"coco": "coco/2017", "voc": "voc_sbd"}[dataset]
            assert config.dataset.eval_split != tables.PRESETS[dataset].test_split
        else:  # the pre-training is on ImageNet, "ImageNet++" a noisy student on its images
            assert config.dataset.name == "imagenet2012"
        if job.cell == "imagenet_plus":
            assert job.deps[-1].startswith("pseudo:")
            st = tables.build_config(tables.CELLS[job.cell], 0, settings).self_training
            assert (st.student, st.unlabeled, st.unlabeled_split) == (True, "imagenet2012",
                                                                     "train")
        if job.cell == "simclr":
            assert config.simclr.flip  # natural images may flip; digit_scenes may not


def test_a_named_table_without_the_preset_fails_naming_it():
    with pytest.raises(ValueError, match="T8 has no preset for --dataset=coco"):
        harness.select_tables("T8", "coco")
    with pytest.raises(ValueError, match="unknown table"):
        harness.select_tables("T10", "digit_scenes")
    assert "T8" not in harness.select_tables("all", "coco")


def test_commands_give_the_configs_the_harness_runs(tmp_path, monkeypatch):
    """`--config=... --config.<field>=<value>` through config_flags == build_config."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    monkeypatch.chdir(tables.REPO)
    for dataset in ("digit_scenes", "coco"):
        settings = tables.Settings(root=str(tmp_path), dataset=dataset, scale=0.5)
        for name in ("det-sup-imagenet-s4-f1", "det-st-nonorm-rand-s4-f0.2",
                     "det-jointst-imagenet-s4-f1", "det-sup-2x-rand-s4-f1", "simclr",
                     "imagenet_plus"):
            cell = tables.CELLS[name]
            job = harness.Job(cell.kind, name, 2, tables.workdir(settings, cell, 2))
            pseudo = str(tmp_path) if cell.teacher else None
            argv = ["prog", *harness.config_flags_of(job, settings, pseudo)]
            fv = flags.FlagValues()
            # config_flags finds the `--config.*` overrides in `sys_argv`.
            config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
            fv(argv)
            expected = tables.build_config(cell, 2, settings, pseudo_labels=pseudo)
            assert fv.config.to_dict() == expected.to_dict(), (dataset, name)
            lines = harness.commands(job, settings, pseudo=pseudo)
            assert lines[0].startswith("python -m rethink_tf.")
            assert f"--workdir={job.workdir}" in lines[0]


def test_scale_multiplies_every_schedule():
    cell = tables.CELLS["det-sup-rand-s4-f1"]
    full = tables.build_config(cell, 0, tables.Settings(root="/r"), paths=False)
    small = tables.build_config(cell, 0, tables.Settings(root="/r", scale=0.05), paths=False)
    assert full.train.steps == tables.STEPS["detection"]
    assert full.train.eval_every == full.train.steps // tables.CURVE_POINTS  # T9's curve
    assert small.train.steps == round(full.train.steps * 0.05)
    # The trainer evaluates only at epoch ends (checkpoint intervals): every curve point is one.
    # A smoke run draws 3 points, the study 6.
    assert full.train.checkpoint_every == full.train.eval_every == full.train.steps // 6
    assert small.train.checkpoint_every == small.train.eval_every == small.train.steps // 3
    for field in ("warmup_steps", "checkpoint_every", "eval_every"):
        assert 1 <= small.train[field] <= small.train.steps
    assert small.self_training.unlabeled_split == "unlabeled[:250]"
    assert full.self_training.unlabeled_split == "unlabeled[:5000]"
    imagenet = tables.build_config(tables.CELLS["imagenet"], 0,
                                   tables.Settings(root="/r", scale=0.1), paths=False)
    assert imagenet.train.steps == 300  # pre-training is scaled too (3,000 in the config)
    # "ImageNet++" labels all 20,000 unlabeled glyphs, a scaled share of them below scale 1.
    plus = {scale: tables.build_config(tables.CELLS["imagenet_plus"], 0,
                                       tables.Settings(root="/r", scale=scale), paths=False)
            for scale in (1.0, 0.05)}
    assert plus[1.0].self_training.unlabeled_split == "unlabeled[:20000]"
    assert plus[0.05].self_training.unlabeled_split == "unlabeled[:1000]"
    config_steps = tables.load_config_file(tables.CELLS["imagenet_plus"].config).train.steps
    assert plus[0.05].train.steps == round(config_steps * 0.05)
    with pytest.raises(ValueError, match="--scale"):
        tables.Settings(root="/r", scale=0).check()
    with pytest.raises(ValueError, match="--dataset"):
        tables.Settings(root="/r", dataset="imagenet").check()


def test_a_bad_override_fails_naming_the_cell():
    bad = tables.Cell("det-bad", "train", "detection.py:student", {"augmnt": "s4"})
    with pytest.raises(ValueError, match="cell det-bad .*'augmnt' names no config field"):
        tables.build_config(bad, 0, tables.Settings(root="/r"))


# ------------------------------------------------------------------------------------------
# Plan, shards, finished jobs.
# ------------------------------------------------------------------------------------------

def test_plan_runs_shared_jobs_once_and_dependencies_first():
    settings = tables.Settings(root="/r")
    jobs = harness.plan(settings, ["T1", "T3"], seeds_flag=2)
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids))
    position = {j.id: i for i, j in enumerate(jobs)}
    for job in jobs:
        assert all(position[d] < position[job.id] for d in job.deps), job.id
    pretrain = [j for j in jobs if j.stage == "pretrain"]
    assert sorted(j.cell for j in pretrain) == ["imagenet", "imagenet_plus"]
    # T1's 12 supervised cells are T3's teachers: 12 x 2 seeds, each labelled once; and
    # "ImageNet"'s labels of the glyph corpus, once for every seed ("ImageNet++").
    assert sum(j.stage == "train" for j in jobs) == 24
    assert sum(j.stage == "pseudo" for j in jobs) == 24 + 1
    assert sum(j.stage == "student" for j in jobs) == 24
    # Students of one teacher (loss norm on / off) share its pseudo labels.
    t6 = harness.plan(settings, ["T6"], seeds_flag=1)
    assert sum(j.stage == "pseudo" for j in t6) == 3 and sum(j.stage == "student" for j in t6) == 6


def test_imagenet_plus_is_a_noisy_student_of_imagenet_on_the_glyph_corpus():
    """imagenet pretrain -> its classification pseudo labels of the glyph corpus's unlabeled
    split -> imagenet_plus pretrain: one chain, shared by every seed and table."""
    settings = tables.Settings(root="/r")
    jobs = harness.plan(settings, ["T1"], seeds_flag=3)
    by_id = {j.id: j for j in jobs}
    plus = by_id["imagenet_plus@shared"]
    assert plus.stage == "pretrain" and plus.seed == 0
    teacher_id, pseudo_id = plus.deps
    assert teacher_id == "imagenet@shared"
    pseudo = by_id[pseudo_id]
    assert pseudo.stage == "pseudo" and pseudo.cell == "imagenet_plus" and pseudo.shared
    assert pseudo.deps == ("imagenet@shared",)
    assert pseudo.workdir.startswith("/r/pseudo/imagenet__digit_scenes_glyphs_")
    assert pseudo.workdir.endswith("/shared")
    assert pseudo.family == plus.family == by_id["imagenet@shared"].family
    assert sum(j.stage == "pseudo" for j in jobs) == 1  # not one per seed
    assert harness.make_job(settings, "pseudo", "imagenet_plus", 2) == harness.Job(
        "pseudo", "imagenet_plus", 0, pseudo.workdir)
    # The configs: "ImageNet" on glyphs; its student learns from its labels of the glyphs.
    teacher = tables.build_config(tables.CELLS["imagenet"], 0, settings)
    student = tables.build_config(tables.CELLS["imagenet_plus"], 0, settings,
                                  pseudo_labels=pseudo.workdir)
    assert teacher.dataset.name == student.dataset.name == tables.GLYPH_CORPUS
    assert not teacher.self_training.student
    st = student.self_training
    assert st.student and st.pseudo_labels == pseudo.workdir
    assert (st.unlabeled, st.unlabeled_split, st.score_threshold) == (
        tables.GLYPH_CORPUS, "unlabeled[:20000]", 0.3)
    assert harness.spec_of(pseudo, settings)["threshold"] == (
        harness.THRESHOLD_RULES["classification"].text)
    assert tables.dependencies("det-sup-imagenet_plus-s4-f1") == [
        "imagenet", "imagenet_plus", "det-sup-imagenet_plus-s4-f1"]
    assert harness.tables_of_jobs(jobs, ["T1"])[pseudo.id] == "T1"
    # The noisy student's steps cost what the time model says of a student.
    assert harness.estimate_s(plus, settings) > harness.estimate_s(by_id["imagenet@shared"],
                                                                   settings)
    simclr_taught = tables.Cell("x", "pretrain", "pretrain_classification.py", teacher="simclr")
    with pytest.raises(ValueError, match="not a supervised pre-training cell"):
        tables._check_teacher(simclr_taught)  # pylint: disable=protected-access


def test_main_tables_pretrain_on_glyphs_and_b1_compares_the_two_corpora():
    settings = tables.Settings(root="/r")
    corpus = {i: tables.describe_pretraining(i, settings)["corpus"]
              for i in ("imagenet", "imagenet_plus", "simclr", "aligned")}
    assert corpus == {"imagenet": "digit_scenes/glyphs", "imagenet_plus": "digit_scenes/glyphs",
                      "simclr": "digit_scenes/glyphs", "aligned": "digit_scenes/classification"}
    for name in corpus:  # what they learn from, in the config itself
        config = tables.build_config(tables.CELLS[name], 0, settings, paths=False)
        assert config.dataset.name == corpus[name]
        if "simclr" in config:
            assert config.simclr.unlabeled in ("", corpus[name])
    main = [k for k in tables.TABLES if k.startswith("T")]
    inits = {tables.CELLS[name].init for k in main for e in tables.TABLES[k].entries.values()
             for name in tables.dependencies(e.cell) if tables.CELLS[name].init}
    assert inits == {"imagenet", "imagenet_plus", "simclr"}  # never the aligned corpus
    b1 = tables.TABLES["B1"]
    by_row = {}
    for (row, _), entry in b1.entries.items():
        by_row.setdefault(row, set()).add(tables.CELLS[entry.cell].init)
    assert sorted(map(tuple, by_row.values())) == [("",), ("aligned",), ("imagenet",)]
    finding = next(f for f in tables.FINDINGS if f.key == "label_alignment")
    for check in finding.checks:
        (plus,), (minus,) = check.plus, check.minus
        assert (tables.CELLS[plus.cell].init, tables.CELLS[minus.cell].init) == (
            "aligned", "imagenet")
        assert {k: v for k, v in tables.CELLS[plus.cell].labels.items() if k != "init"} == {
            k: v for k, v in tables.CELLS[minus.cell].labels.items() if k != "init"}
    # Joint training's classification stream and B2's out-of-domain pool: the glyph corpus.
    jointst = tables.build_config(tables.CELLS["det-jointst-imagenet-s4-f1"], 0, settings)
    assert jointst.joint.dataset == tables.GLYPH_CORPUS
    ood = tables.build_config(tables.CELLS["det-st-ood-imagenet_plus-s4-f1"], 0, settings)
    assert (ood.self_training.unlabeled, ood.self_training.unlabeled_split) == (
        tables.GLYPH_CORPUS, "unlabeled[:5000]")


def test_a_smoke_run_defaults_to_one_seed_and_few_evaluation_images():
    smoke = tables.Settings(root="/r", scale=0.05)
    full = tables.Settings(root="/r")
    assert smoke.smoke and not full.smoke
    assert {j.seed for j in harness.plan(smoke, ["T1"])} == {0}
    assert {j.seed for j in harness.plan(full, ["T1"])} == {0, 1, 2}
    assert {j.seed for j in harness.plan(smoke, ["T1"], seeds_flag=2)} == {0, 1}
    assert tables.default_eval_images("digit_scenes", 1.0) == 0
    assert tables.default_eval_images("digit_scenes", 0.05) == 100
    assert tables.default_eval_images("digit_scenes", 0.5) == 500
    # The smoke of T1 fits minutes, the study at scale 1 its hours (quiet 2-core CPU).
    smoke = tables.Settings(root="/r", scale=0.05,
                            eval_images=tables.default_eval_images("digit_scenes", 0.05))
    t1 = harness.plan(smoke, ["T1"])
    assert sum(harness.estimate_s(j, smoke) for j in t1) < 10 * 60
    assert len(t1) == 12 + 3  # 12 detectors; imagenet -> pseudo labels -> imagenet_plus


def test_rows_filter_and_unknown_row():
    settings = tables.Settings(root="/r")
    jobs = harness.plan(settings, ["T3"], seeds_flag=1, rows="st-imagenet_plus-s4")
    assert [j.stage for j in jobs] == ["pretrain", "pseudo", "pretrain", "train", "pseudo",
                                       "student"]
    with pytest.raises(ValueError, match="--rows: 'nope' matches no cell"):
        harness.plan(settings, ["T1"], rows="nope")


def test_shards_split_families_deterministically():
    settings = tables.Settings(root="/r")
    jobs = harness.plan(settings, ["T3", "T6"], seeds_flag=3)
    estimates = {j.id: harness.estimate_s(j, settings) for j in jobs}
    cost = lambda j: estimates[j.id]  # noqa: E731
    parts = [harness.shard(jobs, 3, i, cost) for i in range(3)]
    ids = [j.id for part in parts for j in part]
    assert sorted(ids) == sorted(j.id for j in jobs)  # a partition
    assert parts == [harness.shard(jobs, 3, i, cost) for i in range(3)]  # deterministic
    for part in parts:  # a teacher, its pseudo labels and its students stay together
        families = {j.family for j in part}
        assert not any(j.family in families for other in parts if other is not part
                       for j in other)
    loads = [sum(cost(j) for j in part) for part in parts]
    assert max(loads) < 1.5 * min(loads)
    with pytest.raises(ValueError, match="--shard_index=3"):
        harness.shard(jobs, 3, 3, cost)


def test_finished_means_recorded_and_tested(tmp_path):
    settings = tables.Settings(root=str(tmp_path))
    cell = tables.CELLS["det-sup-rand-s1-f1"]
    job = harness.Job("train", cell.name, 0, tables.workdir(settings, cell, 0))
    assert not harness.is_finished(job, settings)
    harness.write_json(os.path.join(job.workdir, harness.RECORD),
                       {"status": "finished", "spec": harness.spec_of(job, settings)})
    assert not harness.is_finished(job, settings)  # no test metrics yet
    harness.write_json(os.path.join(job.workdir, "metrics_test.json"), {"step": 750, "AP": 0.3})
    assert harness.is_finished(job, settings)
    harness.check_compatible([job], settings)
    other = tables.Settings(root=str(tmp_path), scale=0.5)
    with pytest.raises(ValueError, match="was run with other settings"):
        harness.check_compatible([harness.Job("train", cell.name, 0, job.workdir)], other)


def test_pseudo_label_threshold_is_the_validation_f1_maximum():
    rows = [{"threshold": 0.1, "precision": 0.024, "recall": 0.64},
            {"threshold": 0.2, "precision": 0.059, "recall": 0.23},
            {"threshold": 0.3, "precision": 0.11, "recall": 0.0075},
            {"threshold": 0.4, "precision": 1.0, "recall": 0.0}]  # no box: precision 1 by rule
    f1 = [2 * r["precision"] * r["recall"] / (r["precision"] + r["recall"]) for r in rows]
    chosen, best = harness.choose_threshold(rows, 0.4)
    assert chosen == rows[int(np.argmax(f1))]["threshold"] == 0.2
    assert best == pytest.approx(max(f1))
    tie = [{"threshold": 0.3, "precision": 0.5, "recall": 0.5},
           {"threshold": 0.5, "precision": 0.5, "recall": 0.5}]
    assert harness.choose_threshold(tie, 0.4)[0] == 0.5  # ties: the higher threshold
    nothing = [{"threshold": t, "precision": 1.0, "recall": 0.0} for t in (0.1, 0.5)]
    assert harness.choose_threshold(nothing, 0.4) == (0.4, 0.0)  # the config's


def test_a_classification_teacher_keeps_its_threshold_unless_it_keeps_almost_nothing():
    strong = [{"threshold": 0.1, "kept_fraction": 1.0, "accuracy": 0.86},
              {"threshold": 0.3, "kept_fraction": 0.95, "accuracy": 0.9},
              {"threshold": 0.5, "kept_fraction": 0.9, "accuracy": 0.93}]
    assert harness.choose_kept_threshold(strong, 0.3) == (0.3, 0.95)  # Noisy Student's 0.3
    weak = [{"threshold": 0.1, "kept_fraction": 0.6}, {"threshold": 0.2, "kept_fraction": 0.12},
            {"threshold": 0.3, "kept_fraction": 0.04}, {"threshold": 0.5, "kept_fraction": 0.0}]
    assert harness.choose_kept_threshold(weak, 0.3) == (0.2, 0.12)  # the highest keeping 10 %
    # A smoke run's teacher (62 classes, top-1 0.05): nothing above 0.1; 0.0 keeps every image.
    smoke = [{"threshold": 0.0, "kept_fraction": 1.0, "accuracy": 0.05},
             {"threshold": 0.1, "kept_fraction": 0.0}, {"threshold": 0.3, "kept_fraction": 0.0}]
    assert harness.choose_kept_threshold(smoke, 0.3) == (0.0, 1.0)
    assert 0.0 in harness.THRESHOLD_RULES["classification"].grid
    hopeless = [{"threshold": 0.1, "kept_fraction": 0.05},
                {"threshold": 0.3, "kept_fraction": 0.0}]
    assert harness.choose_kept_threshold(hopeless, 0.3) == (0.1, 0.05)
    assert harness.choose_kept_threshold([], 0.3) == (0.3, 0.0)


def test_progress_corrects_the_estimate_by_what_was_measured():
    p = harness.Progress({"a": 100.0, "b": 100.0, "c": 200.0})
    p.done("a", 200.0)  # twice as slow as estimated
    assert p.remaining_s() == pytest.approx(600.0)
    p.skip("c")
    assert p.remaining_s() == pytest.approx(200.0)


# ------------------------------------------------------------------------------------------
# Arithmetic against NumPy / SciPy.
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 5, 10])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_t_interval_matches_scipy(n, confidence):
    x = np.random.default_rng(n).normal(0.3, 0.05, size=n)
    got = stats.t_interval(x, confidence)
    low, high = sp_stats.t.interval(confidence, n - 1, loc=np.mean(x), scale=sp_stats.sem(x))
    assert got.mean == pytest.approx(np.mean(x), abs=1e-12)
    assert (got.low, got.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    ref = sp_stats.t.ppf(0.5 + confidence / 2, n - 1) * np.std(x, ddof=1) / np.sqrt(n)
    assert got.half_width == pytest.approx(ref, rel=1e-12)


def test_t_interval_edge_cases():
    one = stats.t_interval([0.4])
    assert one.mean == 0.4 and math.isnan(one.half_width) and one.excludes_zero() == 0
    same = stats.t_interval([0.1, 0.1, 0.1])
    assert same.half_width == 0.0 and same.excludes_zero() == 1
    assert stats.t_interval([]).n == 0
    with pytest.raises(ValueError, match="non-finite"):
        stats.t_interval([0.1, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        stats.t_interval([0.1, 0.2], confidence=1.0)
    assert stats.format_interval(stats.t_interval([0.31, 0.30, 0.32])) == "0.310 ± 0.025"


def test_paired_differences_match_numpy():
    a = {0: 0.30, 1: 0.31, 2: 0.32, 3: 0.5}
    b = {0: 0.25, 1: 0.27, 2: 0.26}
    c = {0: 0.20, 1: 0.21, 2: 0.19}
    d = {0: 0.22, 1: 0.20, 2: 0.21}
    diff = stats.paired_differences([a], [b])
    assert list(diff) == [0, 1, 2]  # seed 3 has no partner
    np.testing.assert_allclose(list(diff.values()), np.array([.30, .31, .32]) - [.25, .27, .26])
    did = stats.paired_differences([a, d], [b, c])  # (a - b) - (c - d)
    ref = ((np.array([.30, .31, .32]) - [.25, .27, .26])
           - (np.array([.20, .21, .19]) - [.22, .20, .21]))
    np.testing.assert_allclose(list(did.values()), ref, atol=1e-15)


def test_verdicts():
    up = stats.t_interval([0.05, 0.04, 0.06])
    down = stats.t_interval([-0.05, -0.04, -0.06])
    around = stats.t_interval([0.01, 0.03, -0.02])
    assert stats.verdict(up, +1) == stats.REPRODUCED
    assert stats.verdict(up, -1) == stats.CONTRADICTED
    assert stats.verdict(down, -1) == stats.REPRODUCED
    assert stats.verdict(around, +1) == stats.INCONCLUSIVE
    assert stats.verdict(stats.t_interval([0.5]), +1) == stats.INCONCLUSIVE  # one seed
    with pytest.raises(ValueError, match="direction"):
        stats.verdict(up, 0)
    r, c, i, n = stats.REPRODUCED, stats.CONTRADICTED, stats.INCONCLUSIVE, stats.NOT_RUN
    assert stats.combine([r, r, n]) == r
    assert stats.combine([r, i]) == i
    assert stats.combine([r, c, i]) == c
    assert stats.combine([n, n]) == n
    assert stats.first_step_reaching([(300, 0.2), (100, 0.05), (200, 0.15)], 0.15) == 200
    assert stats.first_step_reaching([(100, 0.1)], 0.5) is None


@pytest.mark.parametrize("n", [2, 3, 7])
def test_p_value_matches_scipy_and_agrees_with_the_interval(n):
    rng = np.random.default_rng(n)
    for shift in (0.0, 0.01, 0.03, -0.05):
        x = rng.normal(shift, 0.02, size=n)
        ref = sp_stats.ttest_1samp(x, 0.0).pvalue
        p = stats.p_value(x)
        assert p == pytest.approx(ref, rel=1e-9, abs=1e-15)
        assert (p < 0.05) == (stats.t_interval(x, 0.95).excludes_zero() != 0)
    assert math.isnan(stats.p_value([0.3]))
    assert stats.p_value([0.02, 0.02, 0.02]) == 0.0
    assert stats.p_value([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        stats.p_value([0.1, float("inf")])


def _holm_reference(ps, alpha):
    """Holm through its adjusted p-values: p~_(i) = max over j <= i of (m - j + 1) p_(j)
    (1-based ranks of the m finite p-values); H_(i) is rejected iff p~_(i) < alpha."""
    ps = np.asarray(ps, float)
    finite = np.flatnonzero(np.isfinite(ps))
    order = finite[np.argsort(ps[finite], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * ps[order])
    out = np.zeros(len(ps), bool)
    out[order] = adjusted < alpha
    return out.tolist()


def test_holm_matches_its_definition():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ps = list(rng.uniform(0, 0.08, size=rng.integers(1, 7)))
        if rng.uniform() < 0.5:
            ps[rng.integers(len(ps))] = float("nan")
        assert stats.holm(ps, 0.05) == _holm_reference(ps, 0.05)
    # 0.01 < 0.05/4 and 0.015 < 0.05/3 are rejected; 0.03 > 0.05/2 stops it, so 0.04 is not.
    assert stats.holm([0.03, 0.01, 0.04, 0.015], 0.05) == [False, True, False, True]
    assert stats.holm([0.03, 0.01, 0.04, 0.02], 0.05) == [False, True, False, False]
    # A nan is not tested and does not count in m: 0.02 < 0.05/2 with it left out.
    assert stats.holm([0.02, float("nan"), 0.04], 0.05) == [True, False, True]
    with pytest.raises(ValueError, match="alpha"):
        stats.holm([0.01], 0.0)


def test_family_verdicts_keep_only_what_survives_the_number_of_checks():
    r, c, i, n = stats.REPRODUCED, stats.CONTRADICTED, stats.INCONCLUSIVE, stats.NOT_RUN
    # One check at p = 0.03 contradicts alone, but not among five (0.03 > 0.05 / 5).
    checks = [(c, 0.03, -0.01, +1)] + [(i, 0.5, 0.0, +1)] * 4
    assert stats.family_verdicts(checks) == [i] * 5
    assert stats.family_verdicts(checks[:1]) == [c]
    # A strong check survives; a check that did not run stays not run and is not counted.
    checks = [(r, 0.001, 0.02, +1), (r, 0.02, -0.03, -1), (n, float("nan"), 0.0, +1)]
    assert stats.family_verdicts(checks) == [r, r, n]
    assert stats.combine(stats.family_verdicts([(c, 0.03, -0.01, +1), (i, 0.4, 0.0, +1)])) == i


@pytest.mark.parametrize("mean,sd,n", [(0.02, 0.02, 3), (0.02, 0.02, 6), (-0.03, 0.02, 4),
                                       (0.01, 0.03, 10)])
def test_power_matches_a_simulation_of_the_paired_t_test(mean, sd, n):
    x = np.random.default_rng(n).normal(mean, sd, size=(40000, n))
    simulated = np.mean(sp_stats.ttest_1samp(x, 0.0, axis=1).pvalue < 0.05)
    assert stats.power(mean, sd, n) == pytest.approx(simulated, abs=0.01)  # 4 MC std errors
    with pytest.raises(ValueError, match="2 seeds"):
        stats.power(mean, sd, 1)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_power_is_two_sided(n):
    # With no effect the two tails together are the test's size (one tail alone: 0.025),
    # and an effect of either sign has the same power.
    assert stats.power(0.0, 0.02, n) == pytest.approx(0.05, abs=1e-12)
    assert stats.power(-0.01, 0.02, n) == pytest.approx(stats.power(0.01, 0.02, n), abs=1e-12)


def test_seeds_for_power_is_the_fewest_that_reach_it():
    values = [0.01, 0.03, 0.02]
    n = stats.seeds_for_power(values)
    sd = np.std(values, ddof=1)
    assert stats.power(0.02, sd, n) >= 0.8 > stats.power(0.02, sd, n - 1)
    assert n == 5  # mean 0.02, sd 0.01: power 0.75 at 4 seeds, 0.9 at 5
    assert stats.seeds_for_power([0.01, 0.03, -0.02], max_seeds=10) is None  # needs more
    assert stats.seeds_for_power([0.02]) is None and stats.seeds_for_power([0.1, -0.1]) is None
    assert stats.seeds_for_power([0.02, 0.02]) == 2


def test_more_seeds_asks_for_the_most_any_check_of_the_same_cells_needs(tmp_path):
    iv = stats.t_interval([0.01, 0.03, 0.02])
    cells = ["det-sup-imagenet-s4-f1", "det-sup-rand-s4-f1"]

    def result(label, need, verdict=stats.INCONCLUSIVE, cells=cells):
        return {"label": label, "interval": iv, "verdict": verdict, "seeds_for_power": need,
                "cells": cells}

    findings = [(None, [result("AP", 4), result("done", 5, stats.REPRODUCED),
                        result("too many", 40), result("other cells", 6, cells=cells[1:])],
                 None),
                (None, [result("steps", 7)], None)]
    got = [(r["label"], need) for r, need in reporting.more_seeds(findings)]
    assert got == [("steps", 7), ("other cells", 6)]
    quiet = tables.Settings(root="/r")
    assert reporting.run_command(quiet, cells, 7) == (
        "python experiments/paper/run.py --table=T1 --rows=det-sup-imagenet-s4-f1,"
        "det-sup-rand-s4-f1 --seeds=7 --root=/r")
    # A study at another preset / scale names them (run.py refuses a root's other settings).
    other = tables.Settings(root="/r", dataset="coco", scale=0.5, eval_images=12)
    assert reporting.run_command(other, cells, 4).endswith(
        "--seeds=4 --root=/r --dataset=coco --scale=0.5 --eval_images=12")


# ------------------------------------------------------------------------------------------
# The report, from fake workdirs.
# ------------------------------------------------------------------------------------------

def _fake(root, cell, values, part="", history=None, eval_every=125):
    """Writes a finished cell's workdir per seed: cell.json, config.json, metrics files."""
    c = tables.CELLS[cell]
    metric = reporting.PRIMARY[c.task]
    for seed, value in values.items():
        wd = os.path.join(root, "cells", cell, f"seed{seed}")
        d = os.path.join(wd, part) if part else wd
        os.makedirs(d, exist_ok=True)
        harness.write_json(os.path.join(wd, "cell.json"), {
            "cell": cell, "seed": seed, "stage": c.kind, "status": "finished",
            "test_split": "test", "wall_s": {"train": 60.0}, "git_commit": "abc123",
            "commands": [f"python -m rethink_tf.train --workdir={wd}"]})
        harness.write_json(os.path.join(d, "config.json"),
                           {"dataset": {"eval_split": "validation"},
                            "train": {"steps": 750, "eval_every": eval_every}})
        harness.write_json(os.path.join(d, "metrics_test.json"),
                           {"step": 750, "split": "test", metric: value})
        if history:
            with open(os.path.join(d, "metrics_history.jsonl"), "w") as f:
                for step, v in history[seed]:
                    f.write(json.dumps({"step": step, "split": "validation", "AP": v}) + "\n")


def test_report_renders_intervals_and_verdicts_from_fake_workdirs(tmp_path):
    root = str(tmp_path / "study")
    harness.write_json(os.path.join(root, "study.json"),
                       {"dataset": "digit_scenes", "scale": 1.0, "eval_images": 0,
                        "command": "python experiments/paper/run.py --table=all"})
    rand = {0: 0.30, 1: 0.31, 2: 0.32}
    imagenet = {0: 0.25, 1: 0.27, 2: 0.26}  # below Rand Init on every seed: reproduced
    curves = {"rand": {s: [(125, 0.05), (250, 0.15), (375, 0.25), (750, 0.30)] for s in rand},
              "imagenet": {s: [(125, 0.15), (250, 0.22), (375, 0.25), (750, 0.26)]
                           for s in rand}}
    _fake(root, "det-sup-rand-s4-f1", rand, history=curves["rand"])
    _fake(root, "det-sup-imagenet-s4-f1", imagenet, history=curves["imagenet"])
    _fake(root, "det-st-rand-s4-f1", {0: 0.20, 1: 0.21, 2: 0.19})  # worse: contradicted
    _fake(root, "det-st-imagenet-s4-f1", {0: 0.26, 1: 0.30, 2: 0.24})  # mixed: inconclusive
    _fake(root, "det-sup-rand-s2-f1", {1: 0.28})  # one seed: no interval
    _fake(root, "det-st-rand-s2-f1", {1: 0.29})
    _fake(root, "seg-pipe-rand-s4-f1", {0: 0.40, 1: 0.42}, part="teacher")
    _fake(root, "seg-pipe-rand-s4-f1", {0: 0.43, 1: 0.44}, part="student")

    pdir = os.path.join(root, "pseudo", "det-sup-rand-s4-f1__x", "seed0")
    harness.write_json(os.path.join(pdir, "cell.json"), {
        "stage": "pseudo", "seed": 0, "status": "finished", "wall_s": {"pseudo": 30.0},
        "spec": {"teacher": "det-sup-rand-s4-f1"},
        "commands": ["python -m rethink_tf.pseudo_label"]})
    harness.write_json(os.path.join(pdir, "manifest.json"), {
        "complete": True, "num_images": 5000, "boxes_per_image": 1.5, "score_threshold": 0.4,
        "unlabeled": {"source": "digit_scenes/detection", "split": "unlabeled[:5000]"}})
    harness.write_json(os.path.join(pdir, "quality.json"), {"thresholds": [
        {"threshold": 0.3, "precision": 0.5, "recall": 0.6},
        {"threshold": 0.4, "precision": 0.68, "recall": 0.45}]})

    gdir = os.path.join(root, "pseudo", "imagenet__digit_scenes_glyphs_x", "shared")
    harness.write_json(os.path.join(gdir, "cell.json"), {
        "cell": "imagenet_plus", "stage": "pseudo", "seed": 0, "status": "finished",
        "spec": {"teacher": "imagenet"}})
    harness.write_json(os.path.join(gdir, "manifest.json"), {
        "complete": True, "task": "classification", "num_images": 950,
        "num_images_seen": 1000, "score_threshold": 0.3,
        "unlabeled": {"source": "digit_scenes/glyphs", "split": "unlabeled[:20000]"}})
    harness.write_json(os.path.join(gdir, "quality.json"), {"thresholds": [
        {"threshold": 0.3, "accuracy": 0.92, "kept_fraction": 0.95}]})

    data = reporting.render(root, str(tmp_path / "out"))

    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert (tmp_path / "out" / "report.json").exists()
    checks = {c["label"]: c for f in data["findings"] for c in f["checks"]}
    hurts = checks["ImageNet - Rand Init at S4, 100 %"]
    diffs = np.array([.25, .27, .26]) - np.array([.30, .31, .32])
    low, high = sp_stats.t.interval(0.95, 2, loc=diffs.mean(), scale=sp_stats.sem(diffs))
    assert hurts["verdict"] == "reproduced"
    assert hurts["mean"] == pytest.approx(diffs.mean())
    assert (hurts["low"], hurts["high"]) == (pytest.approx(low), pytest.approx(high))
    assert checks["Rand Init + self-training - Rand Init at Augment-S4, 100 %"][
        "verdict"] == "contradicted"
    assert checks["ImageNet + self-training - ImageNet at Augment-S4, 100 %"][
        "verdict"] == "inconclusive"
    seg = checks["segmentation: Rand Init + self-training - Rand Init at Augment-S4"]
    assert seg["n"] == 2 and seg["mean"] == pytest.approx(0.025)
    # Close to its spread: a few more seeds would decide it, and the report says how to run them.
    need = stats.seeds_for_power([0.03, 0.02])
    assert seg["verdict"] == "inconclusive" and seg["seeds_for_power"] == need and 2 < need <= 10
    assert (f"`python experiments/paper/run.py --table=T8 --rows=seg-pipe-rand-s4-f1 "
            f"--seeds={need} --root={root}`") in report
    one = checks["Rand Init + self-training - Rand Init at Augment-S2, 100 %"]
    assert one["n"] == 1 and one["verdict"] == "inconclusive"
    assert ("| Rand Init + self-training - Rand Init at Augment-S2, 100 % | > 0 | +0.0100 "
            "(one seed: no interval) | 1 | - | inconclusive | inconclusive | - |") in report
    assert "± nan" not in report and one["p"] is None
    # Family-wise: the paired t-test's p-value, and Holm within each finding.
    st = checks["Rand Init + self-training - Rand Init at Augment-S4, 100 %"]
    ref_p = sp_stats.ttest_1samp(np.array([.20, .21, .19]) - [.30, .31, .32], 0.0).pvalue
    assert st["p"] == pytest.approx(ref_p) and st["verdict_holm"] == "contradicted"
    assert ref_p < 0.05 / 2  # two checks of its finding have an interval: it survives Holm
    assert hurts["verdict_holm"] == "reproduced"  # the only check of its finding that ran
    missing = checks["Rand Init + self-training - Rand Init at Augment-S1, 100 %"]
    assert missing["verdict"] == "not run"
    assert missing["missing"] == ["det-st-rand-s1-f1", "det-sup-rand-s1-f1"]
    # T9: Rand Init reaches 0.8 x min(final means) = 0.208 at step 375, ImageNet at 250.
    steps = checks["steps(Rand Init) - steps(ImageNet)"]
    assert steps["mean"] == pytest.approx(125.0) and steps["verdict"] == "reproduced"
    verdicts = {f["key"]: f["verdict"] for f in data["findings"]}
    assert verdicts["pretraining_hurts"] == "reproduced"  # its other checks did not run
    assert verdicts["self_training_helps"] == "contradicted"
    assert verdicts["loss_norm_helps"] == "not run"
    holm = {f["key"]: f["verdict_holm"] for f in data["findings"]}
    assert holm["self_training_helps"] == "contradicted" and holm["loss_norm_helps"] == "not run"
    assert "Family-wise (Holm over its 2 checks with an interval): **contradicted**." in report
    # The table shows mean ± t-interval; the report names the interval and the missing cells.
    t1 = data["tables"]["T1"]["Rand Init | Augment-S4"]
    assert t1["mean"] == pytest.approx(0.31) and t1["n"] == 3
    assert "0.310 ± 0.025 (n=3)" in report
    assert "95 % Student-t interval" in report
    assert "missing: det-st-rand-s1-f1, det-sup-rand-s1-f1" in report
    assert "**reproduced**" in report and "**contradicted**" in report
    assert "Threshold: validation AP 0.2080." in report
    assert "`abc123`" in report and "python -m rethink_tf.train" in report
    assert "| det-sup-rand-s4-f1 | 0 | digit_scenes/detection unlabeled[:5000] | 0.400 | 5000 | " \
           "1.500 boxes/image | precision 0.680, recall 0.450 |" in report
    assert "| imagenet | shared | digit_scenes/glyphs unlabeled[:20000] | 0.300 | 950 | 950 of " \
           "1000 images | accuracy 0.920, kept_fraction 0.950 |" in report
    # Which corpus each initialisation pre-trained on: in the header and under each table.
    assert "- **ImageNet** (`imagenet`): supervised on `digit_scenes/glyphs`: its labels; " \
           "3,000 steps of 64 (`pretrain_classification.py:glyphs`)." in report
    assert "- **ImageNet++** (`imagenet_plus`): noisy student on `digit_scenes/glyphs`: its " \
           "labels + ImageNet's pseudo labels of digit_scenes/glyphs unlabeled[:20000];" in report
    assert "- **ImageNet (aligned digits)** (`aligned`): supervised on " \
           "`digit_scenes/classification`" in report
    assert "Pre-training: ImageNet = supervised on `digit_scenes/glyphs`; ImageNet++ = noisy " \
           "student on `digit_scenes/glyphs`." in report
    b1 = report[report.index("### B1."):report.index("### B2.")]
    assert "Pre-training: ImageNet (aligned digits) = supervised on " \
           "`digit_scenes/classification`; ImageNet = supervised on `digit_scenes/glyphs`." in b1
    assert "A smoke run" not in report
    # Status: what ran out of what was planned, and the missing cells named.
    status = report[report.index("## Status"):report.index("## Findings")]
    assert "| T1 | 7 / 36 | 2 / 12 | det-sup-imagenet-s1-f1 (0/3)" in status
    assert "| T8 | 4 / 24 | 0 / 8 |" in status and "seg-pipe-rand-s4-f1/student (2/3)" in status
    assert "`STATUS.md` in the study's root says nothing about why" in status
    with open(os.path.join(root, reporting.STATUS_NOTE), "w") as f:
        f.write("T2 and T4 were not run: out of time.")
    reporting.render(root, str(tmp_path / "out"), plots=False)
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "**Why cells are missing**" in report and "T2 and T4 were not run: out of time." in (
        report)
    pytest.importorskip("matplotlib")
    for png in ("ap_vs_augmentation.png", "self_training_gain.png", "convergence.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000, png


# ------------------------------------------------------------------------------------------
# The commands, as the README shows them.
# ------------------------------------------------------------------------------------------

def _python(args, cwd):
    import subprocess  # pylint: disable=g-import-not-at-top
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "",
                               "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_teacher_quality_pairs_each_student_with_its_teachers_labels(tmp_path):
    root = str(tmp_path / "study")
    teachers = {"det-sup-rand-s1-f1": ({0: 0.10, 1: 0.12}, 0.30),
                "det-sup-rand-s4-f1": ({0: 0.05, 1: 0.07}, 0.10),
                "det-sup-imagenet-s4-f1": ({0: 0.08, 1: 0.06}, 0.20)}
    students = {"det-st-rand-s1-f1": {0: 0.14, 1: 0.15},  # best labels, gains +0.035
                "det-st-rand-s4-f1": {0: 0.04, 1: 0.05},  # worst labels, loses 0.015
                "det-st-imagenet-s4-f1": {0: 0.08, 1: 0.07},  # middle, +0.005
                "det-st-nonorm-rand-s4-f1": {0: 0.06, 1: 0.07}}  # a variant: not correlated
    for teacher, (values, precision) in teachers.items():
        _fake(root, teacher, values)
        for seed in values:
            d = os.path.join(root, "pseudo", f"{teacher}__pool", f"seed{seed}")
            harness.write_json(os.path.join(d, "manifest.json"), {"score_threshold": 0.3})
            harness.write_json(os.path.join(d, "quality.json"), {"thresholds": [
                {"threshold": 0.3, "precision": precision + 0.01 * seed, "recall": 0.5},
                {"threshold": 0.5, "precision": 0.9, "recall": 0.1}]})
    for student, values in students.items():
        _fake(root, student, values)
        teacher = tables.CELLS[student].teacher
        for seed in values:
            path = os.path.join(root, "cells", student, f"seed{seed}", "config.json")
            config = json.load(open(path))
            # Written on another machine: the path's last two parts are found under this root.
            config["self_training"] = {"pseudo_labels": f"/elsewhere/pseudo/{teacher}__pool/"
                                                        f"seed{seed}"}
            harness.write_json(path, config)
    _fake(root, "seg-pipe-rand-s1-f1", {0: 0.40}, part="teacher")
    _fake(root, "seg-pipe-rand-s1-f1", {0: 0.43}, part="student")
    harness.write_json(os.path.join(root, "cells", "seg-pipe-rand-s1-f1", "seed0",
                                    "pipeline.json"),
                       {"rounds": [{"pseudo": {"pixel_threshold": 0.5, "quality": {
                           "thresholds": [{"threshold": 0.5, "mIoU": 0.47}]}}}]})

    rows = {r["cell"]: r for r in reporting.teacher_quality(reporting.load_runs(root), root)}
    assert set(rows) == set(students) | {"seg-pipe-rand-s1-f1"}
    st = rows["det-st-rand-s1-f1"]
    assert st["quality"] == {0: pytest.approx(0.30), 1: pytest.approx(0.31)}  # at 0.3, not 0.5
    assert st["gain"] == {0: pytest.approx(0.04), 1: pytest.approx(0.03)}
    assert st["teacher"] == {0: 0.10, 1: 0.12} and st["plain"]
    assert not rows["det-st-nonorm-rand-s4-f1"]["plain"]
    seg = rows["seg-pipe-rand-s1-f1"]
    assert seg["quality"] == {0: 0.47} and seg["gain"] == {0: pytest.approx(0.03)}
    text = "\n".join(reporting.render_teacher_quality(list(rows.values())))
    # The three plain detection students: precision and gain in the same order: rho = 1.
    assert "over the 3 plain self-training cells: **+1.00**" in text
    assert "| det-st-nonorm-rand-s4-f1 * | 2 | 0.105 | 0.500 | 0.060 | +0.0050 ± " in text
    assert "| seg-pipe-rand-s1-f1 | 1 | 0.470 | 0.400 | +0.0300 (n=1) |" in text
    xs, ys = [0.1, 0.4, 0.2, 0.3], [1.0, 2.0, 4.0, 3.0]
    assert reporting.rank_correlation(xs, ys) == pytest.approx(
        sp_stats.spearmanr(xs, ys).statistic)
    assert math.isnan(reporting.rank_correlation([0.1, 0.2], [1.0, 2.0]))


def test_the_report_reads_json_without_importing_tensorflow(tmp_path):
    code = ("import sys; sys.path.insert(0, 'experiments/paper'); import reporting; "
            "bad = [m for m in ('tensorflow', 'keras', 'tensorflow_datasets') "
            "if m in sys.modules]; assert not bad, bad")
    done = _python(["-c", code], os.path.join(PAPER_DIR, "..", ".."))
    assert done.returncode == 0, done.stderr


def test_report_command_writes_the_report_and_names_missing_cells(tmp_path):
    """`python experiments/paper/report.py --root=DIR` on a study with one finished cell."""
    root = str(tmp_path / "study")
    harness.write_json(os.path.join(root, "study.json"), {"dataset": "digit_scenes"})
    _fake(root, "det-sup-rand-s4-f1", {0: 0.3, 1: 0.31, 2: 0.29})
    repo = os.path.join(PAPER_DIR, "..", "..")
    proc = _python(["experiments/paper/report.py", f"--root={root}", "--noplots"], repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REPORT.md" in proc.stdout and "pretraining_hurts: not run" in proc.stdout
    report = open(os.path.join(root, "REPORT.md")).read()
    assert "0.300 ± 0.025 (n=3)" in report and "## Status" in report
    proc = _python(["experiments/paper/report.py", f"--root={tmp_path / 'absent'}"], repo)
    assert proc.returncode != 0 and "is not a directory" in proc.stderr


def test_run_command_dry_run_plans_and_validates_a_table(tmp_path):
    """`python experiments/paper/run.py --table=T1 --root=DIR --dry_run`: the jobs and the
    estimate, every config validated, nothing run."""
    repo = os.path.join(PAPER_DIR, "..", "..")
    root = tmp_path / "study"
    proc = _python(["experiments/paper/run.py", "--table=T1", f"--root={root}", "--dry_run"],
                   repo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "T1" in out and "jobs" in out and "estimated" in out
    assert not (root / "cells").exists()
    proc = _python(["experiments/paper/run.py", "--table=T42", f"--root={root}", "--dry_run"],
                   repo)
    assert proc.returncode != 0 and "T42" in proc.stderr
