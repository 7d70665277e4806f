# What one sequence-kernel extension (_lstm, _gru, _simple_rnn) shares with the others,
# included into each. Threads and the product policy are not kept here: every call takes
# them (a `settings` argument, fastlstm.threads.KernelSettings, copied into the problem's
# Settings); the setters below are fastlstm.threads's own, re-exported for the tests and
# benchmarks that set them through a kernel module. The ISA dispatch is still each
# extension's own copy (each compiles gates.c): fastlstm._gates.force_isa_level sets all.
# The module cimports what this uses: from products Settings, load_settings; from gates
# fl_force_isa_level, fl_isa_level, merge_rows; from blas floating; and it has numpy as np,
# row_strides and workspace at module level.
from lowp cimport fl_q_force_level
from fastlstm.threads import (get_parallel_min_macs, kernel_settings, set_direct_rows,
                              set_inference_chunk_bytes, set_pipeline, set_projection_blas,
                              set_recurrent_matmul)
from fastlstm.threads import _set_kernel_threads as set_threads, get_num_threads as get_threads


cdef inline int read_settings(Settings *s, object settings) except -1:
    """s := the call's settings (fastlstm.threads's when None)."""
    return load_settings(s, kernel_settings() if settings is None else settings)


cdef inline bint own_products(const Settings *s) noexcept nogil:
    """The gradients' many-row products (input and weight gradients) on our packed GEMM,
    unless BLAS has AVX-512 kernels (a little faster there) or policy 'blas' is forced."""
    return s.policy != 1 and not s.projections_on_blas


def force_isa_level_here(int level):
    """This extension's own copy of the ISA dispatch (each extension compiles gates.c):
    fastlstm._gates.force_isa_level sets every copy."""
    fl_force_isa_level(level)


def force_lowp_level_here(int level):
    """This extension's own copy of the reduced-precision dispatch (lowp.c):
    fastlstm._lowp.force_level sets every copy."""
    fl_q_force_level(level)


def isa_level_here():
    """The ISA variant this extension's kernels run (0 baseline, 1 AVX2, 2 AVX-512)."""
    return fl_isa_level()


# Inference projects the input s.infer_z_bytes of Z at a time (each thread's share then
# stays in its L2 for the time loop), but at least s.infer_min_rows rows, so that each
# packed block of W still serves a few hundred rows: its memory does not grow with the
# sequence (bench/RESULTS.md, "Kernel thresholds").
cdef inline long inference_chunk(const Settings *s, long T, int B, long row_bytes) noexcept:
    """Steps of the input projection an inference call computes at a time (row_bytes: the
    bytes of Z of one batch row and step)."""
    return min(T, max(s.infer_z_bytes // max(1, <long>B * row_bytes),
                      (s.infer_min_rows + B - 1) // max(1, B), 1))


cdef inline bint x_staged(long T, int B, int I, long sxt, long sxb, bint training,
                          bint dropout) except -1:
    """Whether a forward pass copies each chunk's rows of x [T,B,I] time-major before it
    projects them (chunk_rows): x's rows lie apart (strides sxt, sxb in elements: a layer's
    batch-major input), which only inference takes; training saves x for the weight gradient
    and the backend hands it a C-contiguous copy (cpu_ops._time_major)."""
    if (T == 1 or sxt == <long>B * I) and (B == 1 or sxb == I):
        return False
    if training or dropout:
        raise ValueError("x: expected a C-contiguous [T,B,I] array for training or input "
                         "dropout")
    return True


cdef tuple projection_inputs(const Settings *s, const floating[:, :, :] x,
                             const floating[:, ::1] input_dropout_mask, bint training,
                             str slot, long width, const floating **px, long *sxt, long *sxb,
                             floating **pstage):
    """What a forward pass's input projection reads and writes.

    Reads: the rows of x [T,B,I], row (t, b) at *px + t*sxt + b*sxb (elements); with an input
    dropout mask, x times the mask in a new C-contiguous array (forward saves it for the
    weight gradient), which *px then points into. Where the rows lie apart (see x_staged),
    each chunk's rows are copied time-major into *pstage (else NULL) before projecting.
    Writes: Z, all T steps in a new [T,B,width] array when training (backward reads the
    gates there), else a chunk of steps at a time (inference_chunk) in the workspace `slot`,
    so that inference memory does not grow with T.

    Returns (x times the dropout mask or None, the chunk's steps, Z, the staged rows' array
    or None). The caller holds every array returned for as long as it uses *px and
    *pstage: a workspace buffer that only a pointer refers to is freed once another thread
    drops it from the kept buffers (fastlstm/backends/workspace.py)."""
    cdef long T = x.shape[0], r
    cdef int B = <int>x.shape[1], I = <int>x.shape[2]
    cdef long step, row
    cdef floating[:, :, ::1] xd
    cdef floating[::1] stage
    dtype = np.float32 if floating is float else np.float64
    step, row = row_strides("x", T, B, I, x.strides[0], x.strides[1], x.strides[2],
                            sizeof(floating))
    sxt[0], sxb[0] = step, row
    cdef bint staged = x_staged(T, B, I, step, row, training, input_dropout_mask is not None)
    px[0] = &x[0, 0, 0]
    xd_arr = None
    if input_dropout_mask is not None:
        xd_arr = np.empty((T, B, I), dtype)
        xd = xd_arr
        with nogil:
            for r in range(T):
                merge_rows(B, I, NULL, &input_dropout_mask[0, 0], &x[r, 0, 0], &xd[r, 0, 0])
        px[0] = &xd[0, 0, 0]
    cdef long chunk = T if training else inference_chunk(s, T, B, width * sizeof(floating))
    if training:
        z_arr = np.empty((T, B, width), dtype)
    else:
        z_arr = workspace(slot, chunk * B * width, dtype).reshape(chunk, B, width)
    pstage[0] = NULL
    stage_arr = None
    if staged:                   # a workspace buffer (as the chunk's Z is)
        stage_arr = workspace("x_stage", chunk * B * I, dtype)
        stage = stage_arr
        pstage[0] = &stage[0]
    return xd_arr, chunk, z_arr, stage_arr
