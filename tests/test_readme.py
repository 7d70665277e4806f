"""The Python examples of the README and of every page in docs/ run as written: each file's
examples in order, in one namespace of their own, in a scratch directory (they write files).
An example that needs an optional library missing here (PyTorch, Keras, ONNX Runtime, or
CuPy with a GPU) is skipped; the examples are written so that none needs names that only a
skipped one defines."""
import glob
import os
import re

import pytest

from conftest import CUPY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT).replace(os.sep, "/")
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))

#: pages and the least number of Python examples each must keep
EXPECTED = {"README.md": 6, "docs/layers.md": 6, "docs/training.md": 3,
            "docs/saving.md": 3, "docs/converters.md": 6, "docs/gpu.md": 3,
            "docs/threads.md": 1, "docs/architecture.md": 1, "docs/performance.md": 0,
            "docs/security.md": 0, "docs/kernels.md": 0, "docs/scaling.md": 2,
            "docs/quantization.md": 4, "docs/attention.md": 5, "docs/functional.md": 6,
            "docs/mixed_precision.md": 2}


def examples(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


EXAMPLES = [(page, k) for page in DOCS for k in range(len(examples(page)))]


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory):
    """One namespace and one scratch directory per page, kept across its examples."""
    here = os.getcwd()
    spaces = {}

    def enter(page):
        if page not in spaces:
            spaces[page] = ({"__name__": "readme"},
                            tmp_path_factory.mktemp(re.sub(r"\W", "_", page)))
        namespace, directory = spaces[page]
        os.chdir(directory)
        return namespace

    try:
        yield enter
    finally:
        os.chdir(here)


def test_every_page_is_listed_and_has_its_examples():
    assert set(DOCS) == set(EXPECTED), "add a new docs page to EXPECTED with its examples"
    for page, least in EXPECTED.items():
        assert len(examples(page)) >= least, page


def test_the_readme_links_every_docs_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 260
    for page in DOCS[1:]:
        assert f"({page})" in readme, f"README.md does not link {page}"


def test_relative_links_point_at_files_that_exist():
    for page in DOCS:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            text = f.read()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target))
            assert os.path.exists(path), f"{page} links {target}, which does not exist"


@pytest.mark.parametrize("page,k", EXAMPLES, ids=[f"{p}-example{k + 1}" for p, k in EXAMPLES])
def test_example_runs(namespaces, page, k):
    code = examples(page)[k]
    if ("cp." in code or '"cuda"' in code) and CUPY is None:
        pytest.skip("needs CuPy and an NVIDIA GPU")
    for lib in ("torch", "keras", "onnxruntime", "dask"):
        if re.search(rf"^\s*import .*\b{lib}\b", code, re.M):
            pytest.importorskip(lib)
    exec(compile(code, f"{page}, example {k + 1}", "exec"), namespaces(page))
