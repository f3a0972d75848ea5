"""Moved to `experiments/configs/detection.py:student` (a variant, not a copy).

This alias keeps old commands working; delete it once README.md, rethink_tf/pipeline.py, tests/
and experiments/bench/ name `detection.py:student`.
"""

import importlib.util
import os

VARIANTS = {"": "= detection.py:student"}


def _load(name):
    # Config files are loaded by path (config_flags), not as a package: siblings likewise.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    spec = importlib.util.spec_from_file_location(f"rethink_configs.{name[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    _load("_common.py").variant(arg, VARIANTS, __file__)
    return _load("detection.py").get_config("student")
