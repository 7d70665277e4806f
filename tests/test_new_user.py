"""What a new user meets first: the licence, messages for the common mistakes (a file that
is not a model, a layer frozen after compile, a Keras file name), the attributes of
``import fastlstm as fl``, and the demos' verdicts and ``--plot``."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import fastlstm as fl
from fastlstm import __main__ as cli
from fastlstm import demos

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------- licence


def test_license_is_the_bsd_3_clause_text_pyproject_names():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("BSD 3-Clause License")
    assert "fastlstm developers" in text.splitlines()[2]
    for clause in ("Redistributions of source code must retain the above copyright notice",
                   "Redistributions in binary form must reproduce the above copyright notice",
                   "Neither the name of the copyright holder nor the names of its",
                   'THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"'):
        assert clause in " ".join(text.split()), clause
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        assert 'license = "BSD-3-Clause"' in f.read()
    with open(os.path.join(ROOT, "MANIFEST.in"), encoding="utf-8") as f:
        assert "include LICENSE" in f.read().splitlines()
