"""What the test suite imports is what the README's test set-up installs: a module-level
import of a package outside the core dependencies and the `test` extra would fail collection
on a machine without it, and an optional package must come from a declared extra."""
import ast
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
# import name -> distribution name, where they differ or the package is optional
DIST = {"cupy": "cupy", "sklearn": "scikit-learn"}


def _requirements():
    """Distribution names by group: 'core' and each optional extra, from pyproject.toml."""
    try:
        import tomllib
    except ImportError:                          # Python < 3.11
        tomli = pytest.importorskip("tomli")
        tomllib = tomli
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]

    def names(reqs):
        return {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in reqs}
    groups = {"core": names(project["dependencies"])}
    groups.update({k: names(v) for k, v in project["optional-dependencies"].items()})
    return groups


def _imports(path):
    """(module, at module level?) for every absolute import in a file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name.split(".")[0], id(node) in top
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], id(node) in top


def _third_party(module):
    local = {os.path.splitext(f)[0] for f in os.listdir(TESTS) if f.endswith(".py")}
    return not (module in sys.stdlib_module_names or module in local
                or module in ("fastlstm", "__future__"))


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is 3.10+")
def test_every_test_import_is_declared():
    groups = _requirements()
    always = groups["core"] | groups["test"]
    declared = set().union(*groups.values())
    problems = []
    for name in sorted(os.listdir(TESTS)):
        if not name.endswith(".py"):
            continue
        for module, top_level in _imports(os.path.join(TESTS, name)):
            if not _third_party(module):
                continue
            dist = DIST.get(module, module).lower()
            if dist not in declared:
                problems.append(f"{name}: imports {module}, which no extra in pyproject.toml "
                                f"installs")
            elif top_level and dist not in always:
                problems.append(f"{name}: imports {module} at module level; it is optional "
                                f"(not in the core dependencies or the test extra): use "
                                f"pytest.importorskip")
    assert not problems, "\n".join(problems)


def test_the_peers_extra_has_what_the_exporter_tests_need():
    # torch.onnx.export(dynamo=True) imports onnxscript
    assert "onnxscript" in _requirements()["peers"]
