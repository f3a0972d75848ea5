"""Fixtures of the fault tests: real workdirs made once per session, copied per test.

`trained_workdir` is a tiny detector really trained (one step, `trainer.train`) and evaluated,
so it has everything a user's workdir has (config.json, checkpoints/ with best/, tb/,
metrics.json); `pretrain_workdir` holds a `resnet_tiny` backbone's weights as pre-training
writes them; `pseudo_workdir` holds pseudo labels of 8 unlabeled scenes made by the trained
detector. Tests that must leave a workdir untouched get private copies (`workdirs`), so one
case that does touch its copy cannot change what the next case sees.
"""

import shutil

import pytest

from faults_helpers import UNLABELED  # tests/faults/  # pylint: disable=g-bad-import-order
from faults_helpers import detection_config


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, digit_scenes_data_dir):
    """A tiny detection workdir trained one step and evaluated (about 15 s on 2 cores)."""
    from rethink_tf.training import trainer  # pylint: disable=g-import-not-at-top
    workdir = str(tmp_path_factory.mktemp("faults") / "trained")
    trainer.train(detection_config(digit_scenes_data_dir), workdir)
    return workdir


@pytest.fixture(scope="session")
def pretrain_workdir(tmp_path_factory):
    """A pre-training workdir: `backbone.weights.h5` (+ its JSON) of a `resnet_tiny`."""
    from rethink_tf.models import backbones  # pylint: disable=g-import-not-at-top
    from rethink_tf.training import tasks  # pylint: disable=g-import-not-at-top
    workdir = tmp_path_factory.mktemp("faults") / "pretrain"
    backbones.save_backbone_weights(backbones.build_backbone("resnet_tiny"),
                                    str(workdir / tasks.BACKBONE_WEIGHTS))
    return str(workdir)


@pytest.fixture(scope="session")
def pseudo_workdir(tmp_path_factory, trained_workdir, digit_scenes_data_dir):
    """Detection pseudo labels of 8 unlabeled scenes, by the trained detector."""
    from rethink_tf.pseudo import labeler  # pylint: disable=g-import-not-at-top
    out = str(tmp_path_factory.mktemp("faults") / "pseudo")
    labeler.pseudo_label(trained_workdir, UNLABELED, out, split="unlabeled[:8]",
                         data_dir=digit_scenes_data_dir, num_output_shards=1,
                         score_threshold=0.0, progress=False, labeled_counts=None)
    return out


@pytest.fixture
def workdirs(tmp_path, trained_workdir, pretrain_workdir, pseudo_workdir):
    """Private copies of the three workdirs, and a `fresh` path that does not exist.

    Returns:
        {"existing", "pretrain", "pseudo", "fresh"} paths.
    """
    paths = {}
    for name, source in (("existing", trained_workdir), ("pretrain", pretrain_workdir),
                         ("pseudo", pseudo_workdir)):
        paths[name] = str(tmp_path / name)
        shutil.copytree(source, paths[name])
    paths["fresh"] = str(tmp_path / "fresh")
    return paths
