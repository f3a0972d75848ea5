"""The main job on tiny data: teacher -> pseudo labels -> student -> report, resumable."""

import glob
import json
import os

import pytest

from rethink_tf.training import self_training

from test_trainer import tiny_config  # pylint: disable=g-bad-import-order


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


def test_two_rounds_use_the_student_as_next_teacher(tmp_path, digit_scenes_data_dir):
    config = pipeline_config("detection", digit_scenes_data_dir)
    config.self_training.student_init = "teacher"
    summary = self_training.run(config, str(tmp_path), rounds=2, quality_images=4)
    second = summary["rounds"][1]
    assert second["teacher_dir"] == str(tmp_path / "student")
    assert os.path.exists(tmp_path / "round2" / "student" / "metrics.json")
    cfg = json.load(open(tmp_path / "round2" / "student" / "config.json"))
    assert cfg["init"] == f"teacher:{tmp_path / 'student'}"


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
