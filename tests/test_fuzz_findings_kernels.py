"""Findings in the compiled kernels' shared math (fastlstm/include/gates_math.h), found by the
sanitizer job (.ci/sanitize): UndefinedBehaviorSanitizer stopped
tests/test_lstm_ops.py::test_nan_input_propagates_without_crashing with

    fastlstm/include/gates_math.h:45:32: runtime error: left shift of negative value -1266679681

For a NaN argument the clamps of fl_exp_f / fl_exp_d (``x < -87``, ``x > 88``) are false, the
range reduction's integer k is the bits of NaN minus a constant (negative), and
``(k + 127) << 23`` (float) / ``(k + 1023) << 52`` (double) shifts a negative signed integer:
undefined behaviour in C. GCC on x86 happens to return a NaN in the end, but the compiler
may assume it never happens. The fix: shift as unsigned,
``fl_bits_f32((fl_i32)((uint32_t)(k + 127) << 23))`` and
``fl_bits_f64((fl_i64)((uint64_t)(k + 1023) << 52))``.

This test compiles the header alone with -fsanitize=undefined and calls each function of it
on NaN, infinities and the clamp bounds.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

INCLUDE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "fastlstm", "include")

PROGRAM = r"""
#include <math.h>
#include <stdio.h>
#include "gates_math.h"

int main(void) {
    const float fs[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -87.0f, 88.0f, 1e30f, -1e30f};
    const double ds[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0, -708.0, 709.0, 1e300, -1e300};
    volatile float sf = 0.0f;
    volatile double sd = 0.0;
    for (unsigned i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        sf += fl_exp_f(fs[i]);
        sf += fl_sigmoid_f(fs[i]);
        sd += fl_exp_d(ds[i]);
    }
    printf("done\n");
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None,
                    reason="needs a C compiler")
def test_gates_math_has_no_undefined_behaviour_for_nan_and_inf(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    src = tmp_path / "t.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "t"
    build = subprocess.run([cc, "-O1", "-fsanitize=undefined", "-fno-sanitize-recover=undefined",
                            "-I", INCLUDE, str(src), "-o", str(exe), "-lm"],
                           capture_output=True, text=True)
    if build.returncode != 0 and "ubsan" in build.stderr:
        pytest.skip("the compiler has no UBSan runtime")
    assert build.returncode == 0, build.stderr
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    run = subprocess.run([str(exe)], capture_output=True, text=True, env=env)
    assert "runtime error" not in run.stderr, run.stderr
    assert run.returncode == 0 and run.stdout.strip() == "done", (run.returncode, run.stderr)
