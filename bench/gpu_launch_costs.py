"""Where a GPU time step of the cupy backend goes: host time to issue, and time until the
GPU finished, of one recurrent product (cuBLAS through CuPy's binding, ``cupy.matmul``, the
``small_gemm`` kernel) and one fused elementwise launch, per product shape.

    python bench/gpu_launch_costs.py          # needs CuPy and an NVIDIA GPU
"""
import sys
import time

import numpy as np


def per_call(f, n=300):
    """(host us to issue, us until the GPU is done) per call over n back-to-back calls."""
    import cupy as cp
    for _ in range(20):
        f()
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    t1 = time.perf_counter()
    cp.cuda.Device().synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6


def main():
    try:
        from fastlstm.backends.cupy_ops import _import_cupy
        cp = _import_cupy()
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 2
    from fastlstm.backends.cuda_kernels import At, CudaKernels
    ks, f32 = CudaKernels(cp), np.float32
    print("us per call: host time to issue / time until the GPU finished, 300 calls")
    for B, H, G in [(1, 128, 512), (16, 128, 512), (16, 128, 128), (16, 128, 384),
                    (32, 256, 256), (32, 256, 1024), (64, 512, 2048), (128, 1024, 4096)]:
        a = cp.random.rand(B, H, dtype=f32)
        b = cp.random.rand(H, G, dtype=f32)
        c = cp.empty((B, G), f32)
        dh, dhp = cp.zeros((B, H), f32), cp.ones((B, H), f32)
        gemm, A = ks.gemm(f32), ks.address
        pa, pb, pc = A(a), A(b), A(c)
        d, u8 = cp.zeros(1, f32), cp.zeros(1, cp.uint8)
        merge = ks.steps("merge_dh", f32, B * H, H, 0, 0, 0, 0, u8, d, d, dhp, d, dh)
        small = ks.steps("small_gemm", f32, B * G, G, H, H, At(a[None], "t"), b, c)
        fns = {"cuBLAS": lambda: gemm(B, G, H, pa, H, pb, G, pc, G),
               "cupy.matmul": lambda: cp.matmul(a, b, out=c),
               "small_gemm": lambda: small(0, 0),
               "launch": lambda: merge(0, 0)}
        res = {name: per_call(f) for name, f in fns.items()}
        print(f"({B},{H},{G}): " + "  ".join(f"{n} {i:.1f}/{e:.1f}" for n, (i, e) in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
