/* Reference (portable) int8 and bfloat16 products; layouts: int8 [N/16][K/4][16][4],
 * bf16 [N/16][K/2][16][2]. */
#include "lowp.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int kgroup(int kind) { return kind == FL_Q_INT8 ? 4 : 2; }

long fl_q_packed_bytes(int kind, int K, int N) {
    int g = kgroup(kind);
    long kp = (K + g - 1) / g * g, np_ = (N + 15) / 16 * 16;
    return kp * np_ * (kind == FL_Q_INT8 ? 1 : 2);
}

void fl_q_pack(int kind, int K, int N, const void *W, long ld, void *packed, int32_t *comp) {
    int g = kgroup(kind);
    long kp = (K + g - 1) / g * g;
    memset(packed, 0, fl_q_packed_bytes(kind, K, N));
    for (int n = 0; n < N; n++) {
        long base = (long)(n / 16) * kp * 16 + (n % 16) * g;
        int32_t s = 0;
        for (int k = 0; k < K; k++) {
            long at = base + (long)(k / g) * 16 * g + k % g;
            if (kind == FL_Q_INT8) {
                int8_t v = ((const int8_t *)W)[k * ld + n];
                ((int8_t *)packed)[at] = v;
                s += v;
            } else {
                ((uint16_t *)packed)[at] = ((const uint16_t *)W)[k * ld + n];
            }
        }
        if (comp) comp[n] = 128 * s;
    }
}

static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if (isnan(x)) u |= 0x400000u;
    else u = u + 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

void fl_q_gemm(int M, const float *A, long lda, const fl_qmat *W, int j0, int j1,
               const float *bias, int beta, float *C, long ldc) {
    int K = W->K, g = kgroup(W->kind);
    long kp = (K + g - 1) / g * g;
    int32_t *q = malloc(sizeof(int32_t) * (K + 1));
    float *a = malloc(sizeof(float) * (K + 1));
    for (int m = 0; m < M; m++) {
        const float *ar = A + m * lda;
        float sa = 0.0f;
        if (W->kind == FL_Q_INT8) {
            float amax = 0.0f;
            for (int k = 0; k < K; k++) {
                float v = fabsf(ar[k]);
                if (!(v <= amax)) amax = v;
            }
            float inv = amax > 0 ? 127.0f / amax : 0.0f;
            for (int k = 0; k < K; k++) {
                float v = nearbyintf(ar[k] * inv);
                q[k] = isfinite(v) ? (int32_t)v : 0;
            }
            sa = amax / 127.0f;
        } else {
            for (int k = 0; k < K; k++) a[k] = bf16_round(ar[k]);
        }
        for (int n = j0; n < j1; n++) {
            long base = (long)(n / 16) * kp * 16 + (n % 16) * g;
            float r;
            if (W->kind == FL_Q_INT8) {
                int32_t acc = 0;
                const int8_t *w = W->packed;
                for (int k = 0; k < K; k++) acc += q[k] * w[base + (long)(k / g) * 16 * g + k % g];
                r = (float)acc * (sa * W->scale[n]);
            } else {
                const uint16_t *w = W->packed;
                float acc = 0.0f;
                for (int k = 0; k < K; k++) {
                    uint32_t u = (uint32_t)w[base + (long)(k / g) * 16 * g + k % g] << 16;
                    float wf;
                    memcpy(&wf, &u, 4);
                    acc += a[k] * wf;
                }
                r = acc;
            }
            float *c = C + m * ldc + n;
            *c = (beta ? *c : 0.0f) + r + (bias ? bias[n] : 0.0f);
        }
    }
    free(q);
    free(a);
}

int fl_q_level(int kind) { (void)kind; return 0; }
const char *fl_q_level_name(int kind) { (void)kind; return "portable"; }
void fl_q_force_level(int level) { (void)level; }
