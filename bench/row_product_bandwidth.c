/* How fast one core reads the weights of a batch-1 step, c[N] += a[K] W[K,N], while they sit
 * in its L2 cache: the bound of a streaming step. Four ways over the same row-major W:
 *   read    W summed as one stream, no product (the ceiling)
 *   rows8   8 rows per pass over c, c held in L1 (the kernel of src_c/matmul_impl.h)
 *   rows1   one row per pass over c: W read as a single sequential stream
 *   packed  8 rows interleaved in 16-float pieces (a packed copy: one stream, c once per 8)
 *   rows8s  8 rows per pass, each element of c summed over them in order (the bits of rows1:
 *           src_c/matmul_impl.h, gemv_rows8_ordered)
 * Best of 25 rounds, the ways alternating within each round.
 * Two products a call, as an LSTM step's x W and h U. Arrays on 64-byte boundaries; OFF
 * moves W and U off them.
 *
 *     gcc -O3 -march=native bench/row_product_bandwidth.c -o /tmp/rpb && /tmp/rpb 128 512
 *     gcc -O3 -march=native -DOFF=16 bench/row_product_bandwidth.c -o /tmp/rpb && /tmp/rpb 128 512
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef OFF
#define OFF 0
#endif
#define VL 16
typedef float vec __attribute__((vector_size(64)));
static inline vec ld(const float *p) { vec v; memcpy(&v, p, 64); return v; }
static inline void st(float *p, vec v) { memcpy(p, &v, 64); }

__attribute__((noinline)) static void read_all(int N, int K, const float *a, const float *W,
                                               float *c) {
    vec s0 = {0}, s1 = {0};
    (void)a;
    for (long i = 0; i < (long)K * N; i += 2 * VL) { s0 += ld(W + i); s1 += ld(W + i + VL); }
    st(c, ld(c) + s0 + s1);
}

__attribute__((noinline)) static void rows8(int N, int K, const float *a, const float *W,
                                            float *c) {
    for (int k = 0; k < K; k += 8) {
        const float *w = W + (long)k * N;
        for (int j = 0; j < N; j += VL) {
            vec acc0 = ld(c + j), acc1 = ld(w + j) * a[k];
            for (int r = 1; r < 7; r += 2) {
                acc0 += ld(w + (long)r * N + j) * a[k + r];
                acc1 += ld(w + (long)(r + 1) * N + j) * a[k + r + 1];
            }
            acc0 += ld(w + 7L * N + j) * a[k + 7];
            st(c + j, acc0 + acc1);
        }
    }
}

__attribute__((noinline)) static void rows1(int N, int K, const float *a, const float *W,
                                            float *c) {
    for (int k = 0; k < K; k++) {
        const float *w = W + (long)k * N;
        const float s = a[k];
        for (int j = 0; j < N; j += 2 * VL) {
            const vec c0 = ld(c + j), c1 = ld(c + j + VL);
            st(c + j, c0 + ld(w + j) * s);
            st(c + j + VL, c1 + ld(w + j + VL) * s);
        }
    }
}

__attribute__((noinline)) static void rows8s(int N, int K, const float *a, const float *W,
                                             float *c) {
    for (int k = 0; k < K; k += 8) {
        const float *w = W + (long)k * N;
        for (int j = 0; j < N; j += VL) {
            vec acc = ld(c + j);
            for (int r = 0; r < 8; r++) acc += ld(w + (long)r * N + j) * a[k + r];
            st(c + j, acc);
        }
    }
}

__attribute__((noinline)) static void packed(int N, int K, const float *a, const float *P,
                                             float *c) {
    for (int k = 0; k < K; k += 8)
        for (int j = 0; j < N; j += VL, P += 8 * VL) {
            vec acc0 = ld(c + j) + ld(P) * a[k], acc1 = ld(P + VL) * a[k + 1];
            for (int r = 2; r < 8; r += 2) {
                acc0 += ld(P + r * VL) * a[k + r];
                acc1 += ld(P + (r + 1) * VL) * a[k + r + 1];
            }
            st(c + j, acc0 + acc1);
        }
}

static float *alloc(long n) {
    char *p = aligned_alloc(64, n * sizeof(float) + 64);
    return (float *)(p + OFF);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s K N (K a multiple of 8, N of 32)\n", argv[0]); return 2; }
    const int K = atoi(argv[1]), N = atoi(argv[2]);
    if (K <= 0 || N <= 0 || K % 8 || N % (2 * VL)) { fprintf(stderr, "K %% 8, N %% 32\n"); return 2; }
    const long n = (long)K * N;
    float *W = alloc(n), *U = alloc(n), *a = aligned_alloc(64, K * sizeof(float));
    float *c = aligned_alloc(64, N * sizeof(float));
    for (long i = 0; i < n; i++) W[i] = U[i] = (float)(i % 7) * 0.01f;
    for (int i = 0; i < K; i++) a[i] = 0.5f;
    memset(c, 0, N * sizeof(float));
    void (*fn[5])(int, int, const float *, const float *, float *) = {read_all, rows8, rows1, packed, rows8s};
    const char *name[5] = {"read", "rows8", "rows1", "packed", "rows8s"};
    double bests[5] = {1e9, 1e9, 1e9, 1e9, 1e9};
    for (int rep = 0; rep < 25; rep++)
    for (int m = 0; m < 5; m++) {
        double best = bests[m];
        {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (int i = 0; i < 2000; i++) { fn[m](N, K, a, W, c); fn[m](N, K, a, U, c); }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            const double t = ((double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec)) / 2000;
            if (t < best) best = t;
        }
        bests[m] = best;
    }
    for (int m = 0; m < 5; m++) { double best = bests[m];
        printf("K=%d N=%d %-6s %6.2f us  %4.0f GB/s  (checksum %g)\n", K, N, name[m], best * 1e6,
               2.0 * n * sizeof(float) / best / 1e9, c[1]);
    }
    return 0;
}
