/* The activation kinds of the recurrent kernels, one code each: the one list. The CPU
 * kernels (src_c/gates.h) and the CUDA kernels (fastlstm/backends/cuda/rnn_kernels.cu)
 * include it; fastlstm/activations.py reads the codes from it (tests/test_gates_math.py
 * checks that all three agree). Plain #defines: C, C++, nvcc and NVRTC all take them. */
#ifndef FASTLSTM_FL_ACTIVATIONS_H
#define FASTLSTM_FL_ACTIVATIONS_H

#define FL_TANH 0
#define FL_SIGMOID 1
#define FL_HARD_SIGMOID 2         /* clip(alpha*x + beta, 0, 1) */
#define FL_RELU 3
#define FL_LINEAR 4
#define FL_SOFTSIGN 5

#endif
