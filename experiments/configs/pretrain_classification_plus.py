"""Moved to `experiments/configs/pretrain_classification.py:plus` (a variant, not a copy).

This alias keeps old commands working; delete it once README.md, rethink_tf/pipeline.py, tests/
and experiments/bench/ name `pretrain_classification.py:plus`.
"""

import importlib.util
import os

VARIANTS = {"": "= pretrain_classification.py:plus"}


def _load(name):
    # Config files are loaded by path (config_flags), not as a package: siblings likewise.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    spec = importlib.util.spec_from_file_location(f"rethink_configs.{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    _load("_common.py").variant(arg, VARIANTS, __file__)
    return _load("pretrain_classification.py").get_config("plus")
