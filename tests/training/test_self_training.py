"""The main job on tiny data: teacher -> pseudo labels -> student -> report, resumable."""

import glob
import json
import os

import keras
import numpy as np
import pytest

from rethink_tf import self_training
from rethink_tf.training import student as student_lib

from helpers import tiny_config  # tests/helpers.py  # pylint: disable=g-bad-import-order


def pipeline_config(task, data_dir):
    c = tiny_config(task, data_dir, steps=2)
    c.augment = "s4"
    c.model.drop_path_rate = 0.1
    c.self_training.unlabeled = "digit_scenes/detection_tiny"
    c.self_training.unlabeled_split = "unlabeled[:8]"
    c.self_training.score_threshold = 0.0  # an untrained teacher: keep whatever it finds
    c.self_training.pixel_threshold = 0.0
    return c


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_pipeline_runs_every_stage_and_resumes(task, tmp_path, digit_scenes_data_dir):
    config = pipeline_config(task, digit_scenes_data_dir)
    workdir = str(tmp_path)
    summary = self_training.run(config, workdir, quality_images=8)
    for sub in ("teacher", "student"):
        assert os.path.exists(os.path.join(workdir, sub, "metrics.json"))
        assert os.path.exists(os.path.join(workdir, sub, "config.json"))
    manifest = json.load(open(os.path.join(workdir, "pseudo", "manifest.json")))
    assert manifest["num_images"] == 8
    student_config = json.load(open(os.path.join(workdir, "student", "config.json")))
    assert student_config["self_training"]["pseudo_labels"] == os.path.join(workdir, "pseudo")
    teacher_config = json.load(open(os.path.join(workdir, "teacher", "config.json")))
    assert teacher_config["augment"] == "s4" and teacher_config["model"]["drop_path_rate"] == 0
    report = open(os.path.join(workdir, "report.md")).read()
    metric = "AP50" if task == "detection" else "mIoU"
    assert "| teacher |" in report and "| student (round 1) |" in report and metric in report
    unit = "boxes" if task == "detection" else "pixels"
    assert f"| class | pseudo {unit} | pseudo share | labelled {unit} |" in report
    assert os.path.exists(os.path.join(workdir, "pseudo", "quality.json"))
    assert summary["rounds"][0]["student"]["step"] == 2
    assert os.path.exists(os.path.join(workdir, "serving", task, "1", "saved_model.pb"))

    # Re-running resumes: nothing is retrained or relabelled.
    shards = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(workdir, "pseudo", "*"))}
    checkpoints = sorted(glob.glob(os.path.join(workdir, "*", "checkpoints", "ckpt-*")))
    resumed = self_training.run(config, workdir, quality_images=8)
    assert sorted(glob.glob(os.path.join(workdir, "*", "checkpoints", "ckpt-*"))) == checkpoints
    # Stage times add up over invocations instead of showing only the (short) resumed one.
    for stage, seconds in summary["timings_s"].items():
        assert resumed["timings_s"][stage] > seconds, stage
    for path, mtime in shards.items():
        if path.endswith(".tfrecord"):
            assert os.path.getmtime(path) == mtime, f"{path} was rewritten"


def _normalizer_state(model):
    """The student's loss-normaliser state by name: the moving averages and their update
    counts, wherever the model keeps them (model weights, or a `loss_normalizer` object)."""
    state = {}
    for name in ("avg_human_loss", "avg_pseudo_loss", "normalizer_updates"):
        if hasattr(model, name):
            state[name] = float(np.asarray(getattr(model, name)))
    holder = getattr(model, "loss_normalizer", None)
    if holder is not None:
        for v in holder.variables:
            state[v.name.split("/")[-1].split(":")[0]] = float(v.numpy())
    assert "avg_human_loss" in state and "avg_pseudo_loss" in state, state
    return state


class _RecordStudent(keras.callbacks.Callback):
    """Records the model's variables (by path) and its loss-normaliser state when training
    begins (before the first step) and ends."""

    def __init__(self):
        super().__init__()
        self.start_weights = self.start_normalizer = self.end_normalizer = None

    def on_train_begin(self, logs=None):
        self.start_weights = {v.path: np.array(v.numpy()) for v in self.model.weights}
        self.start_normalizer = _normalizer_state(self.model)

    def on_train_end(self, logs=None):
        self.end_normalizer = _normalizer_state(self.model)


def _checkpoint_weights(workdir):
    """Every model variable of `workdir`'s best (else latest) checkpoint, restored strictly
    into a freshly built model (training's workdir API: every model variable must be in it)."""
    from rethink_tf.training import tasks  # pylint: disable=g-import-not-at-top
    _, model, _ = tasks.load_model(workdir, "best")
    return {v.path: np.array(v.numpy()) for v in model.weights}


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, digit_scenes_data_dir):
    """A two-round detection pipeline (student_init=teacher), with every student's weights
    recorded at the start of its training."""
    workdir = tmp_path_factory.mktemp("two_rounds")
    config = pipeline_config("detection", digit_scenes_data_dir)
    config.self_training.student_init = "teacher"
    starts = {}
    original = student_lib.train_student

    def train_student(config, workdir, extra_callbacks=()):
        recorder = _RecordStudent()
        starts[os.path.abspath(workdir)] = recorder
        return original(config, workdir, extra_callbacks=(*extra_callbacks, recorder))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(student_lib, "train_student", train_student)
        summary = self_training.run(config, str(workdir), rounds=2, quality_images=4)
    return workdir, summary, starts


def _assert_restored(start, reference, label):
    """Every variable of the reference checkpoint has exactly that value at the start."""
    missing = set(reference) - set(start)
    assert not missing, f"{label}: variables not in the student: {sorted(missing)[:5]}"
    differ = [p for p in reference if not np.array_equal(start[p], reference[p])]
    assert not differ, (f"{label}: {len(differ)} of {len(reference)} variables differ from "
                        f"the checkpoint's, e.g. {differ[:8]}")


def test_two_rounds_use_the_student_as_next_teacher(two_rounds):
    tmp_path, summary, students = two_rounds
    second = summary["rounds"][1]
    assert second["teacher_dir"] == str(tmp_path / "student")
    assert os.path.exists(tmp_path / "round2" / "student" / "metrics.json")
    cfg = json.load(open(tmp_path / "round2" / "student" / "config.json"))
    assert cfg["init"] == f"teacher:{tmp_path / 'student'}"
    round1, round2 = (str(tmp_path / "student"), str(tmp_path / "round2" / "student"))
    assert set(students) == {round1, round2}

    teacher = _checkpoint_weights(str(tmp_path / "teacher"))
    student1 = _checkpoint_weights(round1)
    # Round 1's student trained: its weights moved away from the teacher's it started from.
    changed = [p for p in student1 if not np.array_equal(student1[p], teacher[p])]
    assert len(changed) > len(student1) // 2, (
        f"round 1 student's checkpoint equals the teacher's in {len(student1) - len(changed)} "
        f"of {len(student1)} variables: it did not train")
    for path, recorder in students.items():
        assert recorder.start_weights is not None, f"{path}: training never started"
    # `init=teacher:<workdir>` restores every weight: round 1 starts from the teacher's
    # checkpoint, round 2 from round 1's student checkpoint, before any step.
    _assert_restored(students[round1].start_weights, teacher,
                     "round 1 student vs teacher checkpoint")
    _assert_restored(students[round2].start_weights, student1,
                     "round 2 student vs round 1 checkpoint")


def test_teacher_init_restores_the_model_not_the_optimizer_step(two_rounds, tmp_path):
    """`init=teacher:` gives the student the teacher's weights, not its optimiser state: a
    student starting from a teacher trained for as many steps must still train (step 0)."""
    from rethink_tf.training import config as config_lib  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import tasks  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    workdir, _, _ = two_rounds
    config = config_lib.load(str(workdir / "round2" / "student"))
    assert config.init == f"teacher:{workdir / 'student'}"
    run = trainer.Run(config, str(tmp_path / "fresh"),
                      trainer.Hooks(build_model=student_lib.build_student_model))
    assert run.step == 0
    tasks.initialize(run.model, config)
    assert run.step == 0, (f"init={config.init} restored the teacher's optimizer step "
                           f"({run.step}): the student would skip its training")
    _assert_restored({v.path: np.array(v.numpy()) for v in run.model.weights},
                     _checkpoint_weights(str(workdir / "student")), "initialised model")


def test_teacher_init_resets_the_loss_normalizer(two_rounds):
    """The loss normaliser's moving averages belong to a training run: a student started
    from a previous student's weights (`init=teacher:`) starts them from zero."""
    tmp_path, _, students = two_rounds
    round1 = students[str(tmp_path / "student")]
    round2 = students[str(tmp_path / "round2" / "student")]
    assert round1.end_normalizer is not None and round2.start_normalizer is not None, (
        "a student never trained")
    # Round 1's student trained 2 steps: it ended with non-zero averages.
    assert round1.end_normalizer["avg_human_loss"] > 0, round1.end_normalizer
    assert round1.end_normalizer["avg_pseudo_loss"] > 0, round1.end_normalizer
    start = round2.start_normalizer
    assert start == dict.fromkeys(start, 0.0), start


def test_pipeline_rejects_classification(tmp_path, digit_scenes_data_dir):
    config = tiny_config("classification", digit_scenes_data_dir)
    with pytest.raises(ValueError, match="detection or segmentation"):
        self_training.run(config, str(tmp_path))


def test_pipeline_pretrains_the_backbone_teacher_and_student_start_from(
        tmp_path, digit_scenes_data_dir):
    config = pipeline_config("detection", digit_scenes_data_dir)
    pretrain = tiny_config("classification", digit_scenes_data_dir)
    workdir = str(tmp_path)
    summary = self_training.run(config, workdir, quality_images=4, pretrain_config=pretrain)
    pretrain_dir = os.path.join(workdir, "pretrain")
    assert os.path.exists(os.path.join(pretrain_dir, "backbone.weights.h5"))
    assert "top1" in summary["pretrain"] and "pretrain" in summary["timings_s"]
    for sub in ("teacher", "student"):
        cfg = json.load(open(os.path.join(workdir, sub, "config.json")))
        assert cfg["init"] == f"pretrained:{pretrain_dir}", sub
    assert f"`pretrained:{pretrain_dir}` (pre-trained in this pipeline" in open(
        os.path.join(workdir, "report.md")).read()
    assert config.init == "random"  # the caller's config is not changed


def test_pipeline_pretrain_conflicts_fail_before_any_work(tmp_path, digit_scenes_data_dir):
    config = pipeline_config("detection", digit_scenes_data_dir)
    pretrain = tiny_config("classification", digit_scenes_data_dir)
    pretrain.model.backbone = "resnet_small"
    with pytest.raises(ValueError, match="model.backbone='resnet_small' differs"):
        self_training.run(config, str(tmp_path / "a"), pretrain_config=pretrain)
    pretrain.model.backbone = config.model.backbone
    config.init = f"pretrained:{tmp_path}"
    with pytest.raises(ValueError, match="--nopretrain"):
        self_training.run(config, str(tmp_path / "b"), pretrain_config=pretrain)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
