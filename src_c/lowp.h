/* The int8 and bfloat16 products of quantized inference (fastlstm.quantization). */
#ifndef FASTLSTM_LOWP_H
#define FASTLSTM_LOWP_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
enum { FL_Q_INT8 = 1, FL_Q_BF16 = 2 };
typedef struct {
    int kind;
    int K, N;
    const void *packed;
    const float *scale;
    const int32_t *comp;
} fl_qmat;
long fl_q_packed_bytes(int kind, int K, int N);
void fl_q_pack(int kind, int K, int N, const void *W, long ld, void *packed, int32_t *comp);
void fl_q_gemm(int M, const float *A, long lda, const fl_qmat *W, int j0, int j1,
               const float *bias, int beta, float *C, long ldc);
int fl_q_level(int kind);
const char *fl_q_level_name(int kind);
void fl_q_force_level(int level);
#ifdef __cplusplus
}
#endif
#endif
