/* Compiles fastlstm/backends/cuda/rnn_kernels.cu as plain C++ for the host (tests only):
 * the CUDA qualifiers vanish and every kernel's grid-stride loop runs on one thread from 0
 * to n, so the tests can run the exact kernel source against the NumPy oracle on any CPU. */
#define __global__
#define __device__
#define __forceinline__ inline
#define FL_IDX0 0LL
#define FL_STRIDE 1LL
