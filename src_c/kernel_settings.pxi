# The settings of one sequence-kernel extension (_lstm, _gru, _simple_rnn), included into
# each: every extension compiles its own copy of products.pxd's and gates.c's globals, so
# fastlstm.threads and fastlstm._gates.force_isa_level set each module in turn. The module
# cimports what this uses: from products fl_matmul_policy, fl_max_threads,
# fl_parallel_min_macs, set_direct_rows_param, set_kernel_threads, set_pipeline_params,
# set_policy; from gates fl_force_isa_level, fl_isa_level, merge_rows; from blas floating;
# and it has numpy as np, row_strides and workspace at module level.


def set_threads(int n, double parallel_min_macs=-1):
    """Threads for this module's parallel loops (fastlstm.set_num_threads sets it), and
    optionally the smallest product worth splitting (tests set 0).

    The callers run these kernels with BLAS limited to one thread (fastlstm.threads): the
    parallelism is ours, over independent slices, so one thread pool owns the cores —
    BLAS's spinning workers and OpenMP's would otherwise fight over them."""
    set_kernel_threads(n, parallel_min_macs)


def get_threads():
    return fl_max_threads


def get_parallel_min_macs():
    """The smallest product (multiply-adds) the kernels split over threads."""
    return fl_parallel_min_macs


def set_recurrent_matmul(str which):
    """'auto' (default), 'blas' or 'own': the per-step products, for tests and benchmarks."""
    set_policy(which)


def set_direct_rows(long rows):
    """Input projections of fewer rows read W in place instead of packing it (tests set 0
    and a large number to run either path)."""
    set_direct_rows_param(rows)


def set_pipeline(long steps, double min_macs=1 << 20):
    """Steps a block of the projection beside a few-row forward loop, and the least
    projection work (multiply-adds) for it; tests set them small, min_macs < 0 turns it off."""
    set_pipeline_params(steps, min_macs)


cdef bint projections_on_blas = False  # set when the BLAS has AVX-512 kernels (fastlstm.threads)


def set_projection_blas(bint on):
    """Run the gradients' many-row products (input and weight gradients) on BLAS: a little
    faster when the BLAS has AVX-512 kernels. The input projection stays on our packed GEMM,
    faster there than BLAS (it writes the bias with the product and reads the weights
    packed once per call; bench/RESULTS.md, "Products")."""
    global projections_on_blas
    projections_on_blas = on


cdef inline bint own_products() noexcept nogil:
    """The gradients' many-row products (input and weight gradients) on our packed GEMM,
    unless BLAS has AVX-512 kernels (a little faster there) or policy 'blas' is forced."""
    return fl_matmul_policy != 1 and not projections_on_blas


def force_isa_level_here(int level):
    """This extension's own copy of the ISA dispatch (each extension compiles gates.c):
    fastlstm._gates.force_isa_level sets every copy."""
    fl_force_isa_level(level)


def isa_level_here():
    """The ISA variant this extension's kernels run (0 baseline, 1 AVX2, 2 AVX-512)."""
    return fl_isa_level()


# Inference projects the input INFER_Z_BYTES of Z at a time (each thread's share then stays
# in its L2 for the time loop: 2 MiB measured 1-4% faster than 8 MiB, LSTM), but at least
# INFER_MIN_ROWS rows, so that each packed block of W still serves a few hundred rows: its
# memory does not grow with the sequence.
cdef long INFER_Z_BYTES = 2 << 20
cdef long INFER_MIN_ROWS = 512


def set_inference_chunk_bytes(long nbytes, long min_rows=512):
    """How much of the input projection inference computes at a time, and its least number
    of rows (tests set both small)."""
    global INFER_Z_BYTES, INFER_MIN_ROWS
    INFER_Z_BYTES = max(1, nbytes)
    INFER_MIN_ROWS = max(1, min_rows)


cdef inline long inference_chunk(long T, int B, long row_bytes) noexcept:
    """Steps of the input projection an inference call computes at a time (row_bytes: the
    bytes of Z of one batch row and step)."""
    return min(T, max(INFER_Z_BYTES // max(1, <long>B * row_bytes),
                      (INFER_MIN_ROWS + B - 1) // max(1, B), 1))


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


cdef tuple projection_inputs(const floating[:, :, :] x,
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

    Returns (x times the dropout mask or None, the chunk's steps, Z)."""
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
    cdef long chunk = T if training else inference_chunk(T, B, width * sizeof(floating))
    if training:
        z_arr = np.empty((T, B, width), dtype)
    else:
        z_arr = workspace(slot, chunk * B * width, dtype).reshape(chunk, B, width)
    pstage[0] = NULL
    if staged:                   # the workspace holds it (as it holds the chunk's Z)
        stage = workspace("x_stage", chunk * B * I, dtype)
        pstage[0] = &stage[0]
    return xd_arr, chunk, z_arr
