# The reduced-precision products (src_c/lowp.h) for Python callers and tests.
import numpy as np
from libc.stdint cimport int32_t
from lowp cimport (fl_qmat, fl_q_packed_bytes, fl_q_pack, fl_q_gemm, fl_q_level,
                   fl_q_level_name, fl_q_force_level, FL_Q_INT8, FL_Q_BF16)
from fastlstm.backends.aligned import aligned_empty


def pack(values):
    v = np.ascontiguousarray(values)
    kind = FL_Q_INT8 if v.dtype == np.int8 else FL_Q_BF16
    K, N = v.shape
    packed = aligned_empty(fl_q_packed_bytes(kind, K, N), np.uint8)
    comp = np.empty(N, np.int32) if kind == FL_Q_INT8 else None
    fl_q_pack(kind, K, N, <const void *><size_t>v.ctypes.data, N,
              <void *><size_t>packed.ctypes.data,
              NULL if comp is None else <int32_t *><size_t>comp.ctypes.data)
    return packed, comp


def gemm(a, packed, scale, comp, int kind, int K, int N, bias=None, out=None, int beta=0,
         int j0=0, j1=None):
    cdef fl_qmat m
    a = np.ascontiguousarray(a, dtype=np.float32)
    if out is None:
        out = np.zeros((a.shape[0], N), np.float32)
    m.kind, m.K, m.N = kind, K, N
    m.packed = <const void *><size_t>packed.ctypes.data
    m.scale = NULL if scale is None else <const float *><size_t>scale.ctypes.data
    m.comp = NULL if comp is None else <const int32_t *><size_t>comp.ctypes.data
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    fl_q_gemm(a.shape[0], <const float *><size_t>a.ctypes.data, K, &m, j0,
              N if j1 is None else j1,
              NULL if b is None else <const float *><size_t>b.ctypes.data, beta,
              <float *><size_t>out.ctypes.data, N)
    return out


def level(int kind):
    return fl_q_level(kind)


def level_name(int kind):
    return fl_q_level_name(kind).decode()


def force_level(int lvl):
    fl_q_force_level(lvl)
