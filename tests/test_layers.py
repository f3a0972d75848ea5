"""The package's layers (shared/design.md), checked on every import statement of rethink_tf/.

    data  <  models  <  evaluation  <  training  <  pseudo | serving  <  the job and the mains

A module may import its own layer and the layers left of it: `data`, `models` and
`evaluation` import nothing above them, `training` only those three, `pseudo` and `serving`
consume workdirs through `training` and never import each other, and only the top-level
modules (`self_training`, the absl mains, `cli`) compose pseudo/ and serving/. Nothing in the
package imports `experiments/`, and only models/ imports keras_cv (a move to keras-hub is a
one-folder change). Function-level imports count: they are how a layer break hides.
"""

import ast
import pathlib

import pytest

PACKAGE = "rethink_tf"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
TOP = "<top level>"  # rethink_tf/*.py: the main job, the absl mains, cli

ALLOWED = {
    "data": {"data"},
    "models": {"data", "models"},
    "evaluation": {"data", "models", "evaluation"},
    "training": {"data", "models", "evaluation", "training"},
    "pseudo": {"data", "models", "evaluation", "training", "pseudo"},
    "serving": {"data", "models", "evaluation", "training", "serving"},
    TOP: {"data", "models", "evaluation", "training", "pseudo", "serving", TOP},
}
# Third-party packages a single layer owns.
OWNED = {"keras_cv": "models"}


def _layer_of_module(dotted):
    """The layer of a module `rethink_tf.<...>` (its first sub-package, or the top level)."""
    parts = dotted.split(".")
    if len(parts) >= 2 and (ROOT / parts[1]).is_dir():
        return parts[1]
    return TOP


def _layer_of_file(path):
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else TOP


def _module_name(path):
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(tree, module_name, is_package):
    """(line, imported module, the statement as written) for every import in `tree`.

    `from a import b` yields `a.b` (b may be a module or a name in a; both resolve to the
    same layer except under the package root, where `from rethink_tf import data` names
    the sub-package). Relative imports are resolved against `module_name`.
    """
    package = module_name if is_package else module_name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            written = f"from {'.' * node.level}{node.module or ''} import " + ", ".join(
                a.name for a in node.names)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if alias.name != "*" else base, written


def violations(path, source=None):
    """Layer breaks of one file: ["file:line: `statement`: why", ...]."""
    source = path.read_text() if source is None else source
    tree = ast.parse(source, filename=str(path))
    layer = _layer_of_file(path)
    name = _module_name(path)
    found = []
    imports = sorted(imported_modules(tree, name, path.name == "__init__.py"))
    for line, module, written in imports:
        where = f"{path.relative_to(ROOT.parent)}:{line}: `{written}`"
        root = module.split(".")[0]
        if root == "experiments":
            found.append(f"{where}: nothing in {PACKAGE} imports experiments/ (it is outside "
                         "the package)")
        elif root in OWNED and layer != OWNED[root]:
            found.append(f"{where}: only {PACKAGE}/{OWNED[root]}/ imports {root}")
        elif root == PACKAGE and module != PACKAGE:
            target = _layer_of_module(module)
            if target not in ALLOWED[layer]:
                found.append(f"{where}: {layer} may import only {sorted(ALLOWED[layer])}, "
                             f"not {target}")
    return found


def _files():
    return sorted(ROOT.rglob("*.py"))


def test_the_walk_sees_the_package():
    layers = {_layer_of_file(p) for p in _files()}
    assert layers == set(ALLOWED), layers


def test_every_import_respects_the_layers():
    found = [v for path in _files() for v in violations(path)]
    assert not found, "imports that break the layers (shared/design.md):\n" + "\n".join(found)


@pytest.mark.parametrize("layer, statement, broken", [
    ("data", "def f():\n    from rethink_tf.pseudo import records\n", True),
    ("data", "from rethink_tf.models import detector\n", True),
    ("data", "from . import example\n", False),
    ("models", "from rethink_tf.data import example\n", False),
    ("models", "import rethink_tf.training.tasks\n", True),
    ("evaluation", "from rethink_tf.training import trainer\n", True),
    ("training", "import keras_cv\n", True),
    ("training", "from rethink_tf import self_training\n", True),
    ("training", "from rethink_tf.serving import export\n", True),
    ("training", "from ..pseudo import teacher\n", True),
    ("pseudo", "from rethink_tf.serving import export\n", True),
    ("pseudo", "from rethink_tf.training import tasks\n", False),
    ("serving", "def f():\n    from rethink_tf.pseudo import teacher\n", True),
    ("serving", "from experiments.bench import train_step\n", True),
    (TOP, "from rethink_tf.pseudo import labeler\nfrom rethink_tf.serving import export\n",
     False),
    (TOP, "import experiments\n", True),
])
def test_the_check_catches_a_break(layer, statement, broken):
    # The walk itself is tested, so that a green run above means something.
    path = ROOT / ("probe.py" if layer == TOP else f"{layer}/probe.py")
    found = violations(path, statement)
    assert bool(found) == broken, found
    if broken:
        assert "probe.py:" in found[0] and "`" in found[0], found[0]
