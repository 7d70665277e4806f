"""The README's Python examples run as written: in order, in one namespace, in a scratch
directory (they write files). An example that needs an optional library missing here
(PyTorch, Keras, ONNX Runtime, or CuPy with a GPU) is skipped; the examples are written so
that none needs names that only a skipped one defines."""
import os
import re

import pytest

from conftest import CUPY

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
with open(README, encoding="utf-8") as f:
    EXAMPLES = re.findall(r"```python\n(.*?)```", f.read(), re.S)


@pytest.fixture(scope="module")
def namespace(tmp_path_factory):
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))
    try:
        yield {"__name__": "readme"}
    finally:
        os.chdir(here)


def test_the_readme_has_examples():
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("k", range(len(EXAMPLES)), ids=lambda k: f"example{k + 1}")
def test_readme_example_runs(namespace, k):
    code = EXAMPLES[k]
    if ("cp." in code or '"cuda"' in code) and CUPY is None:
        pytest.skip("needs CuPy and an NVIDIA GPU")
    for lib in ("torch", "keras", "onnxruntime"):
        if re.search(rf"^\s*import .*\b{lib}\b", code, re.M):
            pytest.importorskip(lib)
    exec(compile(code, f"README.md, example {k + 1}", "exec"), namespace)
