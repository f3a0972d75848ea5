"""Bad inputs are rejected before any work, in seconds, naming the field and the value.

One table, `CASES`: malformed configs (unknown fields, out-of-range values, wrong types,
missing paths, bad source names), a workdir resumed with another architecture, a teacher or
pseudo labels of the wrong task, and bad flags of the absl mains. Each case runs against
private copies of real workdirs (a trained detector, a pre-trained backbone, pseudo labels:
`conftest.py`) and must

- raise (in-process) or exit non-zero (`python -m ...`, for flag cases),
- with a message holding every string of `expect` (the field and the value),
- within `LIMIT_CPU_S` CPU seconds (this process's and its children's: a measure of the work
  done that a loaded machine does not inflate; a subprocess's include importing TensorFlow),
- leaving every existing workdir byte-for-byte as it was and creating no new one.

Library entry points are called in-process where the mains only forward to them (fast, and
the same code path); the flag cases run the mains as users do. A case the code does not yet
reject cleanly carries `needs_fix`: it is an expected failure (strict, so that it fails as
soon as the fix lands and the mark is removed) whose reason says the change that is needed.
"""

import dataclasses
import os
import resource
import subprocess
import sys
import time
from typing import Callable

import ml_collections
import pytest

from faults_helpers import UNLABELED  # tests/faults/  # pylint: disable=g-bad-import-order
from faults_helpers import detection_config
from faults_helpers import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMIT_CPU_S = 30.0  # measured here: <= 2.3 CPU s in-process, <= 8 for `python -m` (TF import)
PROTECTED = ("existing", "pretrain", "pseudo")


@dataclasses.dataclass(frozen=True)
class Env:
    """What a case may refer to: `{existing}`, `{pretrain}`, `{pseudo}`, `{fresh}`,
    `{missing}` (a path that never exists) and `{data_dir}` (TFDS) in its strings."""

    existing: str
    pretrain: str
    pseudo: str
    fresh: str
    missing: str
    data_dir: str

    def fill(self, value):
        """`value` with the placeholders filled in (strings, and tuples/lists of them)."""
        if isinstance(value, str):
            return value.format(**dataclasses.asdict(self))
        if isinstance(value, (list, tuple)):
            return type(value)(self.fill(v) for v in value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        return value


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: `run(env)` returns the rejection's message or fails the test."""

    id: str
    run: Callable[[Env], str]
    expect: tuple
    needs_fix: str = ""


# ------------------------------------------------------------------------------------------
# How cases run.
# ------------------------------------------------------------------------------------------

class NotRejected(AssertionError):
    """The bad input was accepted (work started, or finished)."""


def _rejection(fn):
    """Calls `fn()`; returns 'Type: message' of the exception it raises."""
    try:
        fn()
    except Exception as e:  # pylint: disable=broad-except
        return f"{type(e).__name__}: {e}"
    raise NotRejected("accepted without an error")


def set_field(config, field, value):
    """Sets `config.<field>` (new fields and new types too, as a config file could).

    Args:
        config: a ConfigDict, changed in place.
        field: 'key' or 'section.key'.
        value: the value; its type may differ from the field's.
    """
    section, _, key = field.rpartition(".")
    node = config[section] if section else config
    try:
        with node.unlocked():
            node[key] = value
    except TypeError:
        # ConfigDict keeps a field's type; a section built from a plain dict has none yet.
        if not section:
            raise
        data = node.to_dict()
        data[key] = value
        config[section] = ml_collections.ConfigDict(data)


def make_config(env, task="detection", fields=None):
    """The trained workdir's config (or its `task` twin) with `fields` set."""
    from helpers import tiny_config  # pylint: disable=g-import-not-at-top
    if task == "detection":
        config = detection_config(env.data_dir)
    else:
        config = tiny_config(task, env.data_dir, steps=1)
    for field, value in (fields or {}).items():
        set_field(config, field, env.fill(value))
    return config


def train_main(config, workdir):
    """What `python -m rethink_tf.train` does with a parsed config."""
    from rethink_tf.training import student  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    if config.self_training.get("student", False) or config.self_training.pseudo_labels:
        return student.train_student(config, workdir)
    return trainer.train(config, workdir)


def train(fields, workdir="existing", task="detection"):
    """A case runner: `train_main` on `fields` set over the trained workdir's config."""
    def run(env):
        config = make_config(env, task, fields)
        return _rejection(lambda: train_main(config, getattr(env, workdir)))
    return run


def call(fn):
    """A case runner: `fn(env)` in-process."""
    return lambda env: _rejection(lambda: fn(env))


def cli(module, *args):
    """A case runner: `python -m rethink_tf.<module> <args>` as a user runs it."""
    def run(env):
        command = [sys.executable, "-m", f"rethink_tf.{module}", *env.fill(args)]
        subprocess_env = {**os.environ, "TFDS_DATA_DIR": env.data_dir, "TF_CPP_MIN_LOG_LEVEL": "2",
                          "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        result = subprocess.run(command, cwd=REPO, env=subprocess_env, capture_output=True,
                                text=True, timeout=300, check=False)
        if result.returncode == 0:
            raise NotRejected(f"`{' '.join(command)}` exited 0:\n{result.stdout[-2000:]}")
        return result.stdout + result.stderr
    return run


# ------------------------------------------------------------------------------------------
# In-process entry points other than training.
# ------------------------------------------------------------------------------------------

def pretrain_detection_config(env):
    from rethink_tf.training import pretraining  # pylint: disable=g-import-not-at-top
    pretraining.run(make_config(env), env.existing)


def pipeline(rounds=1, pretrain=None):
    def fn(env):
        from rethink_tf import self_training  # pylint: disable=g-import-not-at-top
        pretrain_config = None
        if pretrain is not None:
            pretrain_config = make_config(env, pretrain[0], pretrain[1])
        self_training.run(make_config(env), env.fresh, rounds=rounds,
                          pretrain_config=pretrain_config)
    return fn


def pseudo_label(teacher="{existing}", unlabeled=UNLABELED, output="{fresh}", **kwargs):
    split = "unlabeled[:8]" if unlabeled == UNLABELED else None  # as `pseudo_workdir`'s

    def fn(env):
        from rethink_tf.pseudo import labeler  # pylint: disable=g-import-not-at-top
        labeler.pseudo_label(env.fill(teacher), env.fill(unlabeled), env.fill(output),
                             split=split, data_dir=env.data_dir, progress=False,
                             num_output_shards=1, labeled_counts=None, **kwargs)
    return fn


def beam(runner="DirectRunner", pipeline_args=()):
    def fn(env):
        from rethink_tf.pseudo import beam_pipeline  # pylint: disable=g-import-not-at-top
        beam_pipeline.run(env.existing, UNLABELED, env.fresh, runner=runner,
                          pipeline_args=pipeline_args, split="unlabeled[:8]",
                          data_dir=env.data_dir, num_output_shards=1)
    return fn


def evaluate(workdir="{existing}", **kwargs):
    def fn(env):
        from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
        trainer.evaluate_workdir(env.fill(workdir), **kwargs)
    return fn


def export(**kwargs):
    def fn(env):
        from rethink_tf.serving import export as export_lib  # pylint: disable=g-import-not-at-top
        export_lib.export(env.existing, env.fresh, **env.fill(kwargs))
    return fn


# ------------------------------------------------------------------------------------------
# The table.
# ------------------------------------------------------------------------------------------

CASES = [
    # Unknown fields.
    Case("unknown-field-in-config-file", train({"train.stepz": 5}),
         ("train.stepz", "'train.steps'")),
    Case("unknown-top-level-field", train({"learning_rate": 0.1}), ("learning_rate",)),
    Case("unknown-field-flag", cli("train", "--config=experiments/configs/detection.py",
                                   "--workdir={existing}", "--config.train.stepz=3"),
         ("stepz", "steps")),
    Case("unknown-config-variant",
         cli("train", "--config=experiments/configs/detection.py:studnet",
             "--workdir={existing}"), ("'studnet'", "'student'")),
    # Out-of-range values.
    Case("steps-zero", train({"train.steps": 0}), ("config.train.steps", "0")),
    Case("fraction-above-one", train({"dataset.fraction": 1.5}),
         ("config.dataset.fraction", "1.5")),
    Case("negative-learning-rate", train({"train.learning_rate": -0.1}),
         ("config.train.learning_rate", "-0.1")),
    Case("nan-learning-rate", train({"train.learning_rate": float("nan")}),
         ("config.train.learning_rate", "nan")),
    Case("infinite-clipnorm", train({"train.clipnorm": float("inf")}),
         ("config.train.clipnorm", "inf")),
    Case("drop-path-rate-one", train({"model.drop_path_rate": 1.0}),
         ("config.model.drop_path_rate", "1.0")),
    Case("score-threshold-above-one", train({"self_training.score_threshold": 2.0}),
         ("config.self_training.score_threshold", "2.0")),
    Case("image-size-not-divisible", train({"dataset.image_size": 100}),
         ("config.dataset.image_size", "100")),
    Case("anchor-sizes-not-one-per-level", train({"model.anchor_sizes": (16.0, 32.0)}),
         ("config.model.anchor_sizes", "(16.0, 32.0)")),
    Case("pseudo-ratio-not-whole-images", train({"self_training.ratio": 0.3}),
         ("config.self_training.ratio", "0.3")),
    Case("strategy-unknown", train({"strategy": "gpu"}), ("config.strategy", "'gpu'")),
    Case("augment-unknown", train({"augment": "s5"}), ("config.augment", "'s5'")),
    # Wrong types.
    Case("batch-size-string", train({"train.batch_size": "8"}),
         ("config.train.batch_size", "'8'")),
    Case("steps-float", train({"train.steps": 2.5}), ("config.train.steps", "2.5")),
    Case("bool-as-string", train({"train.mixed_precision": "yes"}),
         ("config.train.mixed_precision", "'yes'")),
    Case("steps-flag-not-a-number", cli("train", "--config=experiments/configs/detection.py",
                                        "--workdir={existing}", "--config.train.steps=abc"),
         ("--config.train.steps=abc",)),
    # Missing paths.
    Case("init-path-missing", train({"init": "pretrained:{missing}"}, workdir="fresh"),
         ("config.init", "{missing}")),
    Case("init-kind-unknown", train({"init": "imagenet"}, workdir="fresh"),
         ("config.init", "'imagenet'")),
    Case("annotation-file-missing", train({"eval.annotation_file": "{missing}/val.json"}),
         ("config.eval.annotation_file", "{missing}/val.json")),
    Case("pseudo-labels-missing", train({"self_training.student": True,
                                         "self_training.pseudo_labels": "{missing}"}),
         ("config.self_training.pseudo_labels", "{missing}")),
    Case("coco-json-file-missing",
         train({"dataset.name": "coco_json:{missing}/train.json:{missing}/images",
                "dataset.train_split": "all", "dataset.eval_split": "all"}),
         ("config.dataset.name", "{missing}/train.json")),
    Case("pseudo-label-glob-matches-nothing",
         call(pseudo_label(unlabeled="images:{missing}/*.png")), ("images:{missing}/*.png",)),
    Case("evaluate-workdir-missing", call(evaluate("{missing}")), ("{missing}", "config.json")),
    Case("export-checkpoint-missing", call(export(checkpoint="{missing}/ckpt-3")),
         ("checkpoint", "{missing}/ckpt-3")),
    # Bad source names and splits.
    Case("tfds-name-typo", train({"dataset.name": "digit_scenez/detection"}),
         ("config.dataset.name", "'digit_scenez/detection'", "digit_scenes")),
    Case("coco-json-name-malformed", train({"dataset.name": "coco_json:train.json"}),
         ("config.dataset.name", "coco_json:train.json")),
    Case("train-split-typo", train({"dataset.train_split": "trian"}),
         ("config.dataset.train_split", "'trian'")),
    Case("unlabeled-images-as-detection-data",
         train({"dataset.name": "images:{existing}/*.json", "dataset.train_split": "all",
                "dataset.eval_split": "all"}), ("config.task", "images:{existing}/*.json")),
    Case("unlabeled-source-typo", train({"self_training.unlabeled": "digit_scenez/detection"}),
         ("config.self_training.unlabeled", "digit_scenez/detection")),
    Case("unlabeled-split-typo", train({"self_training.unlabeled_split": "unlabelled"}),
         ("config.self_training.unlabeled_split", "unlabelled")),
    Case("evaluate-split-typo", call(evaluate(split="valdiation")), ("split", "'valdiation'")),
    Case("evaluate-num-images-negative", call(evaluate(num_images=-1)), ("num_images", "-1")),
    # Another architecture or task than the workdir's.
    Case("resume-with-other-backbone", train({"model.backbone": "resnet_small"}),
         ("model.backbone", "'resnet_small'", "'resnet_tiny'")),
    Case("resume-with-other-task", train({"task": "segmentation"}),
         ("task", "'segmentation'", "'detection'")),
    Case("resume-with-other-head-width", train({"model.fpn_filters": 16}),
         ("model.fpn_filters", "16", "8")),
    Case("init-pretrained-other-backbone",
         train({"model.backbone": "resnet_small", "init": "pretrained:{pretrain}"},
               workdir="fresh"), ("backbone", "'resnet_tiny'", "'resnet_small'")),
    Case("init-pretrained-not-a-pretrain-workdir",
         train({"init": "pretrained:{existing}"}, workdir="fresh"),
         ("config.init", "{existing}", "backbone.weights.h5")),
    Case("init-teacher-of-other-task", train({"init": "teacher:{existing}"}, workdir="fresh",
                                             task="segmentation"),
         ("config.init", "{existing}", "detection")),
    Case("student-on-pseudo-labels-of-other-task",
         train({"self_training.student": True, "self_training.pseudo_labels": "{pseudo}"},
               workdir="fresh", task="segmentation"),
         ("config.self_training.pseudo_labels", "{pseudo}", "detection")),
    Case("student-on-a-folder-without-pseudo-labels",
         train({"self_training.student": True, "self_training.pseudo_labels": "{pretrain}"},
               workdir="fresh"), ("config.self_training.pseudo_labels", "{pretrain}"),),
    Case("pretrain-with-detection-config", call(pretrain_detection_config),
         ("config.task", "'detection'")),
    Case("pipeline-pretrain-other-backbone",
         call(pipeline(pretrain=("classification", {"model.backbone": "resnet_small"}))),
         ("model.backbone", "'resnet_small'", "'resnet_tiny'")),
    Case("pipeline-pretrain-config-not-classification",
         call(pipeline(pretrain=("detection", {}))), ("task", "'detection'")),
    Case("pipeline-zero-rounds", call(pipeline(rounds=0)), ("rounds", "0")),
    Case("pseudo-label-teacher-of-other-task",
         cli("pseudo_label", "--config=experiments/configs/segmentation.py:student",
             "--teacher={existing}", "--output={fresh}"),
         ("task='segmentation'", "detection")),
    Case("pseudo-label-teacher-missing", call(pseudo_label(teacher="{missing}")),
         ("--teacher", "{missing}")),
    Case("pseudo-label-output-of-other-settings",
         call(pseudo_label(output="{pseudo}", score_threshold=0.7)),
         ("{pseudo}", "score_threshold", "0.0", "0.7")),
    Case("beam-runner-typo", call(beam(runner="DataflowRuner")),
         ("runner='DataflowRuner'", "DataflowRunner")),
    Case("beam-option-bad-value", call(beam(pipeline_args=["--direct_num_workers=two"])),
         ("--direct_num_workers=two",)),
    Case("beam-option-after-double-dash",
         cli("pseudo_label", "--teacher={existing}", f"--unlabeled={UNLABELED}",
             "--split=unlabeled[:2]", "--output={fresh}", "--runner=DirectRunner", "--",
             "--direct_num_workers=two"), ("--direct_num_workers=two",)),
    # Bad flags of the mains.
    Case("pseudo-label-shard-index-out-of-range",
         cli("pseudo_label", "--teacher={existing}", f"--unlabeled={UNLABELED}",
             "--output={fresh}", "--num_shards=2", "--shard_index=2"),
         ("shard_index", "2")),
    Case("evaluate-checkpoint-flag-unknown",
         cli("evaluate", "--workdir={existing}", "--checkpoint=worst"),
         ("--checkpoint", "worst")),
    Case("export-score-threshold-above-one",
         cli("export", "--workdir={existing}", "--output={fresh}", "--score_threshold=1.5"),
         ("--score_threshold", "1.5")),
]


def _params():
    for case in CASES:
        marks = ([pytest.mark.xfail(strict=True, raises=(AssertionError,), reason=case.needs_fix)]
                 if case.needs_fix else [])
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.fixture
def env(workdirs, tmp_path, digit_scenes_data_dir):
    return Env(existing=workdirs["existing"], pretrain=workdirs["pretrain"],
               pseudo=workdirs["pseudo"], fresh=workdirs["fresh"],
               missing=str(tmp_path / "missing"), data_dir=digit_scenes_data_dir)


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 20
    assert len({c.id for c in CASES}) == len(CASES)


def cpu_seconds():
    """CPU time of this process (all its threads) and of its finished children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_rejected_before_any_work(case, env):
    before = {name: snapshot(getattr(env, name)) for name in PROTECTED}
    start = cpu_seconds()
    message = case.run(env)
    elapsed = cpu_seconds() - start
    missing = [text for text in env.fill(case.expect) if text not in message]
    assert not missing, f"the message does not name {missing}:\n{message[-3000:]}"
    for name in PROTECTED:
        assert snapshot(getattr(env, name)) == before[name], f"the {name} workdir changed"
    assert not os.path.exists(env.fresh), f"{env.fresh} was created: {os.listdir(env.fresh)}"
    assert not os.path.exists(env.missing)
    assert elapsed < LIMIT_CPU_S, f"rejected only after {elapsed:.0f} CPU s"
