"""experiments/configs: every file and variant loads and validates; variants differ where they
should; `python -m rethink_tf.pseudo_label --config=...` takes its settings from the config."""

import importlib
import importlib.util
import os
import sys

import pytest
from absl import flags
from absl.testing import flagsaver
from ml_collections import config_flags

from rethink_tf.training import config as config_lib
from rethink_tf.training import tasks

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                          "configs")
CONFIG_FILES = sorted(f for f in os.listdir(CONFIG_DIR)
                      if f.endswith(".py") and not f.startswith("_"))


def _module(config_file):
    path = os.path.join(CONFIG_DIR, config_file)
    spec = importlib.util.spec_from_file_location(f"test_configs_{config_file[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(config_file, variant=None):
    """What `--config=experiments/configs/<config_file>[:<variant>]` gives."""
    module = _module(config_file)
    return module.get_config() if variant is None else module.get_config(variant)


def _file_variants():
    return [(f, v) for f in CONFIG_FILES for v in _module(f).VARIANTS]


def empty_pseudo_labels(directory, config):
    """A pseudo-label directory (settings + manifest, no shard yet) of `config`'s task and
    classes: what validation reads of a student's `self_training.pseudo_labels`."""
    from rethink_tf.data import sources  # pylint: disable=g-import-not-at-top
    from rethink_tf.pseudo import records  # pylint: disable=g-import-not-at-top
    info = sources.info(config.dataset.name, data_dir=config.dataset.data_dir or None)
    names = list(info.class_names[config.task])
    os.makedirs(directory, exist_ok=True)
    records.write_json(os.path.join(directory, records.SETTINGS), {
        "format": records.FORMAT, "task": config.task, "num_classes": len(names),
        "class_names": names, "num_output_shards": 1})
    records.write_manifest(directory)
    return directory


@pytest.mark.parametrize("config_file,variant", _file_variants())
def test_every_config_and_variant_loads_and_validates(config_file, variant,
                                                      digit_scenes_data_dir, tmp_path):
    config = _config(config_file, variant)
    # Point at the tiny prepared data; everything else as written.
    config.dataset.name = config.dataset.name.replace("digit_scenes/detection",
                                                      "digit_scenes/detection_tiny").replace(
        "digit_scenes/classification", "digit_scenes/classification_tiny")
    config.dataset.data_dir = digit_scenes_data_dir
    if config.self_training.get("student"):
        config.self_training.pseudo_labels = empty_pseudo_labels(str(tmp_path / "pseudo"),
                                                                 config)
    config_lib.validate(config)
    # The config resolves to a dataset with the labels its task needs.
    assert tasks.num_classes(config) > 0
    assert config.train.steps > 0 and config.augment in config_lib.POLICIES


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_no_variant_is_the_empty_variant(config_file):
    """`file.py` and `file.py:` give the same config (config_flags passes '' for the latter)."""
    assert _config(config_file).to_dict() == _config(config_file, "").to_dict()


def test_pretrain_plus_is_longer_and_stronger_on_the_same_backbone():
    imagenet = _config("pretrain_classification.py")
    plus = _config("pretrain_classification.py", "plus")
    assert (imagenet.augment, plus.augment) == ("s1", "s2")
    assert (imagenet.train.steps, plus.train.steps) == (1500, 4000)
    assert plus.model.dropout == 0.1 and "dropout" not in imagenet.model
    # The same backbone and data, so either checkpoint initialises detection.py.
    for field in ("model.backbone", "dataset.name", "dataset.image_size", "train.batch_size"):
        section, key = field.split(".")
        assert imagenet[section][key] == plus[section][key], field
    assert plus.model.backbone == _config("detection.py").model.backbone


@pytest.mark.parametrize("config_file,task", [("detection.py", "detection"),
                                              ("segmentation.py", "segmentation")])
def test_student_variant_is_a_noised_student_of_the_same_task(config_file, task):
    supervised, student = _config(config_file), _config(config_file, "student")
    assert supervised.task == student.task == task
    assert not supervised.self_training.student and student.self_training.student
    assert (supervised.augment, student.augment) == ("s1", "s2")
    assert supervised.model.drop_path_rate == 0.0 and student.model.drop_path_rate == 0.1
    assert student.train.steps == 1500 < supervised.train.steps
    assert student.self_training.unlabeled_split == "unlabeled[:5000]"


def test_student_thresholds_are_the_measured_ones():
    # experiments/bench/SELF_TRAINING.md: at 0.5 the detection student loses, at 0.4 it wins.
    assert _config("detection.py", "student").self_training.score_threshold == 0.4
    assert _config("segmentation.py", "student").self_training.pixel_threshold == 0.5


@pytest.mark.parametrize("config_file", CONFIG_FILES)
def test_unknown_variant_fails_naming_it_and_the_known_ones(config_file):
    with pytest.raises(ValueError, match="unknown variant 'nosuch'") as error:
        _config(config_file, "nosuch")
    message = str(error.value)
    assert config_file in message
    for name in _module(config_file).VARIANTS:
        assert (f"'{name}'" if name else "none") in message


def test_config_flags_pass_the_variant_after_the_colon():
    """As the mains parse them: a variant in the default, one on the command line, overrides."""
    detection = os.path.join(CONFIG_DIR, "detection.py")
    pretrain = os.path.join(CONFIG_DIR, "pretrain_classification.py")
    values, argv = flags.FlagValues(), ["prog", "--config.train.steps=7"]
    # config_flags finds the `--config.*` overrides in sys.argv, or in `sys_argv`.
    config_flags.DEFINE_config_file("config", f"{detection}:student", flag_values=values,
                                    sys_argv=argv)
    config_flags.DEFINE_config_file("pretrain_config", f"{pretrain}:plus", flag_values=values,
                                    sys_argv=argv)
    values(argv)
    assert values.config.self_training.student and values.config.train.steps == 7
    assert values.pretrain_config.augment == "s2"
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values)
    values(["prog", f"--config={pretrain}:plus"])
    assert values.config.train.steps == 4000
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values)
    with pytest.raises(flags.IllegalFlagValueError, match="unknown variant 'pluss'"):
        values(["prog", f"--config={pretrain}:pluss"])


# ------------------------------------------------------------------------------------------
# `python -m rethink_tf.pseudo_label --config=<student config>`: one source of truth
# ------------------------------------------------------------------------------------------

@pytest.fixture
def pseudo_label_main():
    """The main module; its absl flags are removed again afterwards (mains share names)."""
    before = set(flags.FLAGS)
    sys.modules.pop("rethink_tf.pseudo_label", None)
    try:
        yield importlib.import_module("rethink_tf.pseudo_label")
    finally:
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
        sys.modules.pop("rethink_tf.pseudo_label", None)


_DEFAULTS = {"unlabeled": None, "split": None, "data_dir": None, "score_threshold": 0.5,
             "pixel_threshold": 0.5, "flip_tta": False}


def test_pseudo_label_settings_come_from_the_config_unless_a_flag_is_given(pseudo_label_main):
    resolve = pseudo_label_main.resolve_settings
    config = _config("detection.py", "student")
    config.dataset.data_dir = "/data/tfds"
    settings = resolve(config, _DEFAULTS, set())
    assert settings["score_threshold"] == 0.4  # the config's, not the flag's default 0.5
    assert settings["unlabeled"] == "digit_scenes/detection"
    assert settings["split"] == "unlabeled[:5000]"
    assert settings["data_dir"] == "/data/tfds"
    assert settings["flip_tta"] is False and settings["task"] == "detection"
    # A flag given explicitly wins, even when it equals the flag's default.
    given = {**_DEFAULTS, "score_threshold": 0.5, "flip_tta": True}
    settings = resolve(config, given, {"score_threshold", "flip_tta"})
    assert settings["score_threshold"] == 0.5 and settings["flip_tta"] is True
    assert "score_threshold" not in settings["from_config"]
    # Another source: the config's split belongs to its own source, so it is not carried over.
    given = {**_DEFAULTS, "unlabeled": "images:/photos/*"}
    settings = resolve(config, given, {"unlabeled"})
    assert settings["unlabeled"] == "images:/photos/*" and settings["split"] is None
    assert settings["score_threshold"] == 0.4
    seg = resolve(_config("segmentation.py", "student"), _DEFAULTS, set())
    assert seg["task"] == "segmentation" and seg["pixel_threshold"] == 0.5


def test_pseudo_label_without_config_is_the_flags_alone(pseudo_label_main):
    given = {**_DEFAULTS, "unlabeled": "digit_scenes/detection"}
    settings = pseudo_label_main.resolve_settings(None, given, {"unlabeled"})
    assert {k: settings[k] for k in _DEFAULTS} == given
    assert settings["task"] is None and settings["from_config"] == []
    with pytest.raises(ValueError, match="--unlabeled: name the unlabeled source"):
        pseudo_label_main.resolve_settings(None, _DEFAULTS, set())


def test_pseudo_label_rejects_a_config_it_cannot_use(pseudo_label_main):
    resolve = pseudo_label_main.resolve_settings
    config = _config("pretrain_classification.py", "plus")
    config.task = "keypoints"
    with pytest.raises(ValueError, match="config.task is 'keypoints'"):
        resolve(config, _DEFAULTS, set())
    config = _config("detection.py", "student")
    config.self_training.score_threshold = 1.5
    with pytest.raises(ValueError, match=r"config.self_training.score_threshold: must be a "
                                         r"number in \[0, 1\], got 1.5"):
        resolve(config, _DEFAULTS, set())


def test_pseudo_label_flags_parse_into_the_settings(pseudo_label_main):
    """The real flags: `.present` marks a flag as given, even at the flag's default value."""
    fv = flags.FLAGS
    if fv.is_parsed():
        pytest.skip("absl flags already parsed in this process")
    student = os.path.join(CONFIG_DIR, "detection.py") + ":student"
    common = ["prog", f"--config={student}", "--teacher=/t", "--output=/o"]
    try:
        with flagsaver.flagsaver():
            fv(common + ["--flip_tta"])
            settings = pseudo_label_main._settings_from_flags()  # pylint: disable=protected-access
            assert settings["score_threshold"] == 0.4 and settings["flip_tta"] is True
            assert settings["from_config"] == ["unlabeled", "split", "data_dir",
                                               "score_threshold", "pixel_threshold"]
            fv.unparse_flags()
            fv(common + ["--score_threshold=0.5"])
            settings = pseudo_label_main._settings_from_flags()  # pylint: disable=protected-access
            assert settings["score_threshold"] == 0.5
            assert settings["split"] == "unlabeled[:5000]"
    finally:
        fv.unparse_flags()
