/* Fused elementwise CUDA kernels of the cupy backend (fastlstm/backends/cupy_ops.py).
 *
 * The orchestration is the CPU kernels': the input projection is one GEMM over all T*B rows,
 * each step runs the recurrent GEMM (cuBLAS through CuPy) and then ONE kernel below for the
 * whole gate math of the step, and the weight gradients are GEMMs after the loop. Every
 * kernel is elementwise over the B*H (row, unit) pairs of one step, in a grid-stride loop.
 *
 * Compiled lazily by CuPy (NVRTC) with -I pointing at fastlstm/include, whose gates_math.h
 * holds the exp/sigmoid/tanh the CPU kernels use too. The same source also compiles as plain
 * C++ for the host (tests/cuda_host_shim.h), which is how the CPU-only test suite runs every
 * kernel against the NumPy oracle.
 *
 * Per dtype the body rnn_kernels_impl.cuh is included with REAL and FN (name suffix _f/_d).
 * fastlstm/backends/cuda_kernels.py reads the parameter lists from this source to convert
 * each launch's arguments. Gate layouts and masks follow the oracle
 * (fastlstm/backends/oracle): LSTM [i|f|c|o] or [f|c|o] (coupled), GRU [z|r|h].
 */
#include "gates_math.h"
#include "fl_activations.h"     /* the activation kinds, shared with the CPU kernels and Python */

#ifndef FL_IDX0   /* the host build defines a one-thread loop instead */
#define FL_IDX0 ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#define FL_STRIDE ((long long)blockDim.x * gridDim.x)
#endif

__device__ __forceinline__ float fl_tanh_r(float x) { return fl_tanh_f(x); }
__device__ __forceinline__ double fl_tanh_r(double x) { return fl_tanh_d(x); }
__device__ __forceinline__ float fl_sigmoid_r(float x) { return fl_sigmoid_f(x); }
__device__ __forceinline__ double fl_sigmoid_r(double x) { return fl_sigmoid_d(x); }

/* act(x); alpha/beta parametrise the hard sigmoid clip(alpha*x + beta, 0, 1). */
template <typename R>
__device__ __forceinline__ R fl_act(int kind, double alpha, double beta, R x) {
    switch (kind) {
    case FL_TANH: return fl_tanh_r(x);
    case FL_SIGMOID: return fl_sigmoid_r(x);
    case FL_HARD_SIGMOID: {
        R v = x * (R)alpha + (R)beta;
        v = v < 0 ? (R)0 : v;
        return v > 1 ? (R)1 : v;
    }
    case FL_RELU: return x <= 0 ? (R)0 : x;   /* NaN stays NaN, as in NumPy */
    case FL_SOFTSIGN: return x / (1 + (x < 0 ? -x : x));
    default: return x;   /* FL_LINEAR */
    }
}

/* act'(z) written through y = act(z), as the oracle's grad_from_output. */
template <typename R>
__device__ __forceinline__ R fl_act_grad(int kind, double alpha, R y) {
    switch (kind) {
    case FL_TANH: return 1 - y * y;
    case FL_SIGMOID: return y * (1 - y);
    case FL_HARD_SIGMOID: return (y > 0 && y < 1) ? (R)alpha : (R)0;
    case FL_RELU: return y > 0 ? (R)1 : (R)0;
    case FL_SOFTSIGN: { R d = 1 - (y < 0 ? -y : y); return d * d; }
    default: return (R)1;   /* FL_LINEAR */
    }
}

/* The end of a forward step at element i: an unmasked row (keep) takes the new h, which is
 * also its output; a masked one keeps its state and repeats its previous output. y, the
 * step's slab of the output sequence (has_y), gets the output either way. */
template <typename R>
__device__ __forceinline__ void fl_store_h(int keep, int has_y, long long i, R hn, R *h,
                                           R *out, R *y) {
    if (keep) {
        h[i] = hn;
        out[i] = hn;
    }
    if (has_y) y[i] = out[i];
}

#define REAL float
#define FN(name) name##_f
#include "rnn_kernels_impl.cuh"
#undef REAL
#undef FN

#define REAL double
#define FN(name) name##_d
#include "rnn_kernels_impl.cuh"
#undef REAL
#undef FN
