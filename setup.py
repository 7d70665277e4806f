"""Build the compiled kernels of fastlstm.

Every ``src_c/_*.pyx`` becomes the extension module ``fastlstm._*``. The elementwise gate and
packed-GEMM code in ``src_c/gates.c`` (every ISA variant, both dtypes: the longest compile)
and the reduced-precision products of ``src_c/lowp.c`` are compiled once into a static library that every extension links. BLAS comes from
``scipy.linalg.cython_blas`` (cimported), so no BLAS library is linked here.

The extensions compile in parallel, one job per core, while the library compiles beside them.
Built modules are cached in ``build/cache`` under a hash of everything that goes into them
(sources, headers, flags, compiler, Python, NumPy and Cython versions), so a second
``pip install`` of the same tree (the README's test set-up after its first command) copies
them instead of compiling again.

Environment switches:
  FASTLSTM_BOUNDSCHECK=1   rebuild with Cython bounds/wraparound/initialization checks on.
  FASTLSTM_SANITIZE=1      compile and link with AddressSanitizer and UndefinedBehaviorSanitizer
                           (-fsanitize=address,undefined, frame pointers, debug info); never read
                           from or written to build/cache. .ci/sanitize runs the tests on it.
  FASTLSTM_ANNOTATE=1      write Cython's HTML annotation next to the generated C.
  FASTLSTM_OPENMP=0        build without OpenMP (the time loops then run on one thread).
  FASTLSTM_BUILD_CACHE=0   compile everything, neither reading nor writing build/cache.
  FASTLSTM_BUILD_JOBS=N    parallel compile jobs (default: the number of cores).
"""
import concurrent.futures
import glob
import hashlib
import json
import os
import platform
import shutil
import sys
import sysconfig

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from Cython.Build import cythonize
import Cython

SRC = "src_c"
# Headers shared with the CUDA kernels of the cupy backend ship inside the package.
SHARED_INCLUDE = os.path.join("fastlstm", "include")
CACHE_DIR = os.path.join("build", "cache")
# The static library's sources: the gate kernels and packed GEMM, and the reduced-precision
# (int8, bfloat16) products.
LIBRARY_SOURCES = [os.path.join(SRC, "gates.c"), os.path.join(SRC, "lowp.c")]


def _flag(name, default="0"):
    return os.environ.get(name, default) not in ("", "0")


checks = _flag("FASTLSTM_BOUNDSCHECK")
sanitize = _flag("FASTLSTM_SANITIZE")
# A sanitized build must never be installed from, or left in, the cache of ordinary builds
# (its flags are also part of every cache key below).
use_cache = _flag("FASTLSTM_BUILD_CACHE", "1") and not sanitize
jobs = max(1, int(os.environ.get("FASTLSTM_BUILD_JOBS") or os.cpu_count() or 1))

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

# Undefined behaviour stops the process (no recovery) so that a test run cannot pass over it.
# -O1 (after -O3, so it wins): the usual level for sanitizer builds, and a faster compile.
sanitize_compile = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-fno-omit-frame-pointer", "-g", "-O1"] if sanitize else []
sanitize_link = ["-fsanitize=address,undefined"] if sanitize else []
if sanitize and sys.platform == "win32":
    raise SystemExit("FASTLSTM_SANITIZE=1: GCC or clang only")
cflags += sanitize_compile


def openmp_flags():
    """-fopenmp where the compiler takes it (GCC, clang with libomp); else the time loops run
    on one thread. FASTLSTM_OPENMP=0 turns it off."""
    if sys.platform == "win32" or not _flag("FASTLSTM_OPENMP", "1"):
        return [], []
    import subprocess
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
omp_link = omp_link + sanitize_link
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
if checks:
    macros.append(("FASTLSTM_CHECKS", "1"))
include_dirs = [SRC, SHARED_INCLUDE, numpy.get_include()]    # _step cimports numpy
headers = sorted(glob.glob(os.path.join(SRC, "*.h")) + glob.glob(os.path.join(SRC, "*.pxd"))
                 + glob.glob(os.path.join(SRC, "*.pxi"))
                 + glob.glob(os.path.join(SHARED_INCLUDE, "*.h")))


def _digest(parts):
    """A hash of the files and settings that go into one build product."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str) and os.path.isfile(part):
            with open(part, "rb") as f:
                h.update(f.read())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _from_cache(key, name, dest):
    """Copy the cached product `name` with `key` to dest; False when it is not cached."""
    path = os.path.join(CACHE_DIR, key, name)
    if not (use_cache and os.path.isfile(path)):
        return False
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    shutil.copyfile(path, dest + ".tmp")
    os.replace(dest + ".tmp", dest)
    return True


def _to_cache(key, name, src):
    if not use_cache:
        return
    path = os.path.join(CACHE_DIR, key, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.copyfile(src, path + ".tmp")
    os.replace(path + ".tmp", path)


class BuildExt(build_ext):
    """build_ext with the gate library compiled once, parallel jobs and the build cache."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = jobs

    def _settings(self):
        """What, besides the sources, decides what the compiler makes here (no temporary
        paths: pip builds each time in a new isolated environment)."""
        return {"compiler": list(getattr(self.compiler, "compiler_so", None) or []),
                "linker": list(getattr(self.compiler, "linker_so", None) or []),
                "cflags": cflags + omp_compile, "ldflags": omp_link, "macros": macros,
                "python": sys.version, "suffix": sysconfig.get_config_var("EXT_SUFFIX"),
                "numpy": numpy.__version__, "cython": Cython.__version__,
                "directives": directives, "platform": sysconfig.get_platform(),
                **({"sanitize": True} if sanitize else {})}

    def _gate_library(self):
        """gates.c and lowp.c compiled once into libfastlstm_gates.a (cached); returns its
        path."""
        key = _digest(LIBRARY_SOURCES + headers + [self._settings()])
        lib = self.compiler.library_filename("fastlstm_gates", output_dir=self.build_temp)
        if _from_cache(key, os.path.basename(lib), lib):
            return key, lib
        objects = self.compiler.compile(
            LIBRARY_SOURCES, output_dir=os.path.join(self.build_temp, "gates"), macros=macros,
            include_dirs=include_dirs, extra_postargs=cflags + omp_compile)
        self.compiler.create_static_lib(objects, "fastlstm_gates", output_dir=self.build_temp)
        _to_cache(key, os.path.basename(lib), lib)
        return key, lib

    def _key(self, ext):
        """The cache key of one extension: its .pyx and every header it may read, the gate
        library's, the BLAS declarations Cython reads from SciPy, and the settings."""
        import scipy.linalg
        blas_pxd = os.path.join(os.path.dirname(scipy.linalg.__file__), "cython_blas.pxd")
        lib_key = _digest(LIBRARY_SOURCES + headers + [self._settings()])
        return _digest(list(ext.sources) + headers + [blas_pxd, lib_key, ext.name,
                                                      self._settings()])

    def build_extensions(self):
        self.check_extensions_list(self.extensions)
        todo = []
        for ext in self.extensions:
            dest = self.get_ext_fullpath(ext.name)
            if _from_cache(self._key(ext), os.path.basename(dest), dest):
                print(f"fastlstm: {ext.name} from {CACHE_DIR} (same sources and settings)")
            else:
                todo.append(ext)
        if not todo:
            return
        # The library compiles beside the extensions' own objects; each link waits for it.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        library = pool.submit(self._gate_library)
        link = self.compiler.link

        def link_with_library(target, objects, *args, **kwargs):
            return link(target, list(objects) + [library.result()[1]], *args, **kwargs)

        self.compiler.link = link_with_library
        try:
            keys = [self._key(ext) for ext in todo]
            generated = cythonize(todo, compiler_directives=directives, build_dir="build/cython",
                                  annotate=_flag("FASTLSTM_ANNOTATE"), include_path=[SRC],
                                  nthreads=self.parallel if self.parallel > 1 else 0)
            c_sources = {e.name: e.sources for e in generated}
            for ext in todo:                # setuptools' Extension, with the generated C
                ext.sources = c_sources[ext.name]
            with concurrent.futures.ThreadPoolExecutor(max_workers=self.parallel) as ex:
                for fut in [ex.submit(self.build_extension, e) for e in todo]:
                    fut.result()
            library.result()
        finally:
            self.compiler.link = link
            pool.shutdown()
        for ext, key in zip(todo, keys):
            dest = self.get_ext_fullpath(ext.name)
            _to_cache(key, os.path.basename(dest), dest)


extensions = []
for pyx in sorted(glob.glob(os.path.join(SRC, "_*.pyx"))):
    name = os.path.splitext(os.path.basename(pyx))[0]
    extensions.append(Extension(
        "fastlstm." + name,
        sources=[pyx],
        include_dirs=include_dirs,
        depends=headers + LIBRARY_SOURCES,
        define_macros=macros,
        extra_compile_args=cflags + omp_compile,
        extra_link_args=omp_link,
    ))

# Cythonized in BuildExt, and only what the cache does not hold.
setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})
