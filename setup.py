"""Build the compiled kernels of fastlstm.

Every ``src_c/_*.pyx`` becomes the extension module ``fastlstm._*``, linked with the
elementwise gate code in ``src_c/gates.c``. BLAS comes from ``scipy.linalg.cython_blas``
(cimported), so no BLAS library is linked here.

Environment switches:
  FASTLSTM_BOUNDSCHECK=1   rebuild with Cython bounds/wraparound/initialization checks on.
  FASTLSTM_ANNOTATE=1      write Cython's HTML annotation next to the generated C.
"""
import glob
import os
import platform
import sys

import numpy
from setuptools import Extension, setup
from Cython.Build import cythonize

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = "src_c"
# Headers shared with the CUDA kernels of the cupy backend ship inside the package.
SHARED_INCLUDE = os.path.join("fastlstm", "include")
checks = os.environ.get("FASTLSTM_BOUNDSCHECK", "0") not in ("", "0")

directives = {
    "language_level": 3,
    "boundscheck": checks,
    "wraparound": checks,
    "initializedcheck": checks,
    "nonecheck": checks,
    "cdivision": True,
    "embedsignature": True,
}

if sys.platform == "win32":
    cflags = ["/O2"]
else:
    # No -march=native: gates.c picks AVX-512/AVX2 code at run time (function multi-versioning).
    cflags = ["-O3", "-fno-math-errno", "-Wno-unused-function", "-Wno-psabi"]
    if platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64"):
        cflags.append("-fno-semantic-interposition")

def openmp_flags():
    """-fopenmp where the compiler takes it (GCC, clang with libomp); else the time loops run
    on one thread. FASTLSTM_OPENMP=0 turns it off."""
    if sys.platform == "win32" or os.environ.get("FASTLSTM_OPENMP", "1") == "0":
        return [], []
    import subprocess
    import sysconfig
    import tempfile
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        try:
            ok = subprocess.run(cc + ["-fopenmp", src, "-o", os.path.join(tmp, "t")],
                                capture_output=True).returncode == 0
        except OSError:
            ok = False
    return (["-fopenmp"], ["-fopenmp"]) if ok else ([], [])


omp_compile, omp_link = openmp_flags()
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if checks:
    macros.append(("FASTLSTM_CHECKS", "1"))

def gates_source(name):
    """A one-line source that includes gates.c, one per extension: with a shared source,
    parallel builds (-j) compiled it into one object file from several compilers at once and
    linked whatever was there (missing symbols at import)."""
    path = os.path.join("build", "gates", name + "_gates.c")
    text = '#include "gates.c"\n'
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return path


extensions = []
for pyx in sorted(glob.glob(os.path.join(SRC, "_*.pyx"))):
    name = os.path.splitext(os.path.basename(pyx))[0]
    extensions.append(Extension(
        "fastlstm." + name,
        sources=[pyx, gates_source(name)],
        include_dirs=[SRC, SHARED_INCLUDE, numpy.get_include()],   # _step cimports numpy
        depends=sorted(glob.glob(os.path.join(SRC, "*.h")) + glob.glob(os.path.join(SRC, "*.pxd"))
                       + glob.glob(os.path.join(SRC, "*.pxi"))
                       + glob.glob(os.path.join(SHARED_INCLUDE, "*.h"))
                       + [os.path.join(SRC, "gates.c")]),
        define_macros=macros,
        extra_compile_args=cflags + omp_compile,
        extra_link_args=omp_link,
    ))

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        build_dir="build/cython",
        annotate=os.environ.get("FASTLSTM_ANNOTATE", "0") not in ("", "0"),
        include_path=[SRC],
    ),
)
