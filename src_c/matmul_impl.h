/* Template: a small register-blocked product for the per-step recurrent matmul,
 * C[M,N] += A[M,K] W[K,N], all row-major. Included by gates.c once per (REAL, ISA) with
 * FL_VBYTES, the vector width of that ISA.
 *
 * Why not BLAS here: per step the product is small (M = batch rows), and BLAS repacks
 * the whole W (the recurrent kernel, reused at every step) on every call. This kernel reads
 * W straight from cache, RB rows at a time, keeping RB x NV vector accumulators in
 * registers; GCC/clang vector extensions compile it to zmm, ymm or xmm code per ISA. */

#define FN(name) FL_XCAT3(name, S, V)
#define FL_VL (FL_VBYTES / (int)sizeof(REAL))
#define FL_RB 4
#if FL_VBYTES >= 64
#define FL_NV 4
#else
#define FL_NV 2
#endif

typedef REAL FN(vec) __attribute__((vector_size(FL_VBYTES)));

FL_INLINE FN(vec) FN(vload)(const REAL *p) { FN(vec) v; memcpy(&v, p, sizeof v); return v; }
FL_INLINE void FN(vstore)(REAL *p, FN(vec) v) { memcpy(p, &v, sizeof v); }

/* Columns [j, j + NV*VL) for rows [i, i + R), R <= FL_RB (a compile-time count when inlined). */
FL_INLINE void FN(mm_block)(int R, int K, const REAL *A, int lda, const REAL *W, int ldw,
                            REAL *C, int ldc) {
    FN(vec) acc[FL_RB][FL_NV];
    int r, v, k;
    for (r = 0; r < R; r++)
        for (v = 0; v < FL_NV; v++) acc[r][v] = FN(vload)(C + (long)r * ldc + v * FL_VL);
    for (k = 0; k < K; k++) {
        const REAL *w = W + (long)k * ldw;
        FN(vec) wv[FL_NV];
        for (v = 0; v < FL_NV; v++) wv[v] = FN(vload)(w + v * FL_VL);
        for (r = 0; r < R; r++) {
            const REAL a = A[(long)r * lda + k];
            for (v = 0; v < FL_NV; v++) acc[r][v] += wv[v] * a;
        }
    }
    for (r = 0; r < R; r++)
        for (v = 0; v < FL_NV; v++) FN(vstore)(C + (long)r * ldc + v * FL_VL, acc[r][v]);
}

/* One row: c[N] += a[K] W[K,N]. Streams W row by row, 8 rows per pass over c (c stays in
 * L1): sequential reads that the prefetchers follow, and 8 FMAs per load and store of c.
 * The block kernel below instead walks down columns with a row stride, and its 4-8
 * accumulator chains leave the FMA units waiting on latency at a single row. */
FL_INLINE void FN(gemv_rows)(int R, int N, const REAL *a, const REAL *W, int ldw, REAL *c) {
    int j = 0;
    const REAL *w[8];
    REAL s[8];
    for (int r = 0; r < 8; r++) {
        w[r] = W + (long)(r < R ? r : 0) * ldw;
        s[r] = r < R ? a[r] : 0;
    }
    for (; j + FL_VL <= N; j += FL_VL) {
        FN(vec) acc0 = FN(vload)(c + j), acc1 = FN(vload)(w[0] + j) * s[0];
        for (int r = 1; r < R; r += 2) {
            acc0 += FN(vload)(w[r] + j) * s[r];
            if (r + 1 < R) acc1 += FN(vload)(w[r + 1] + j) * s[r + 1];
        }
        FN(vstore)(c + j, acc0 + acc1);
    }
    for (; j < N; j++) {
        REAL t = c[j];
        for (int r = 0; r < R; r++) t += s[r] * w[r][j];
        c[j] = t;
    }
}

FL_TARGET static void FN(fl_gemv_acc)(int N, int K, const REAL *a, const REAL *W, int ldw,
                                      REAL *c) {
    int k = 0;
    for (; k + 8 <= K; k += 8) FN(gemv_rows)(8, N, a + k, W + (long)k * ldw, ldw, c);
    if (k < K) FN(gemv_rows)(K - k, N, a + k, W + (long)k * ldw, ldw, c);
}

FL_TARGET static void FN(fl_matmul_acc)(int M, int N, int K, const REAL *A, int lda,
                                        const REAL *W, int ldw, REAL *C, int ldc) {
    const int step = FL_NV * FL_VL;
    int i, j = 0;
    if (M == 1) {
        FN(fl_gemv_acc)(N, K, A, W, ldw, C);
        return;
    }
    if (M >= 32) {   /* many row blocks: share L1 copies of W's blocks (as fl_matmul_tn_acc) */
        enum { KC = 128 };
        REAL panel[KC * FL_NV * FL_VL];
        for (int k0 = 0; k0 < K; k0 += KC) {
            const int kc = K - k0 < KC ? K - k0 : KC;
            const REAL *A0 = A + k0, *W0 = W + (long)k0 * ldw;
            for (j = 0; j + step <= N; j += step) {
                for (int k = 0; k < kc; k++)
                    memcpy(panel + (long)k * step, W0 + (long)k * ldw + j, step * sizeof(REAL));
                for (i = 0; i + FL_RB <= M; i += FL_RB)
                    FN(mm_block)(FL_RB, kc, A0 + (long)i * lda, lda, panel, step,
                                 C + (long)i * ldc + j, ldc);
                for (; i < M; i++)
                    FN(mm_block)(1, kc, A0 + (long)i * lda, lda, panel, step,
                                 C + (long)i * ldc + j, ldc);
            }
        }
        if (j < N) {
            for (i = 0; i < M; i++) {
                const REAL *a = A + (long)i * lda;
                REAL *c = C + (long)i * ldc;
                for (int k = 0; k < K; k++) {
                    const REAL ak = a[k];
                    const REAL *w = W + (long)k * ldw;
                    for (int jj = j; jj < N; jj++) c[jj] += ak * w[jj];
                }
            }
        }
        return;
    }
    for (; j + step <= N; j += step) {
        for (i = 0; i + FL_RB <= M; i += FL_RB)
            FN(mm_block)(FL_RB, K, A + (long)i * lda, lda, W + j, ldw, C + (long)i * ldc + j, ldc);
        for (; i < M; i++)
            FN(mm_block)(1, K, A + (long)i * lda, lda, W + j, ldw, C + (long)i * ldc + j, ldc);
    }
    if (j < N) {   /* leftover columns: plain loops, vectorized over j by the compiler */
        for (i = 0; i < M; i++) {
            const REAL *a = A + (long)i * lda;
            REAL *c = C + (long)i * ldc;
            for (int k = 0; k < K; k++) {
                const REAL ak = a[k];
                const REAL *w = W + (long)k * ldw;
                for (int jj = j; jj < N; jj++) c[jj] += ak * w[jj];
            }
        }
    }
}

/* The same product over W packed by fl_pack_panels (gates.c): column panels of FL_PANEL_BYTES,
 * each K x w contiguous. Row-major W with a power-of-two row stride (G = 4H floats) maps a
 * column block's rows onto a few L1 sets, so it was re-read from L2 for every 4-row block;
 * a packed panel (32 KiB at K = 128) stays in L1 across all row blocks. */
FL_TARGET static void FN(fl_matmul_packed_acc)(int M, int N, int K, const REAL *A, int lda,
                                               const REAL *Wp, REAL *C, int ldc) {
    const int step = FL_NV * FL_VL, PW = FL_PANEL_BYTES / (int)sizeof(REAL);
    for (int j = 0; j < N; j += PW) {
        const int w = N - j < PW ? N - j : PW, wv = w - w % step;
        const REAL *P = Wp + (long)j * K;
        int i, s;
        for (i = 0; i + FL_RB <= M; i += FL_RB)
            for (s = 0; s < wv; s += step)
                FN(mm_block)(FL_RB, K, A + (long)i * lda, lda, P + s, w, C + (long)i * ldc + j + s, ldc);
        for (; i < M; i++)
            for (s = 0; s < wv; s += step)
                FN(mm_block)(1, K, A + (long)i * lda, lda, P + s, w, C + (long)i * ldc + j + s, ldc);
        if (wv < w) {
            for (i = 0; i < M; i++) {
                const REAL *a = A + (long)i * lda;
                REAL *c = C + (long)i * ldc + j;
                for (int k = 0; k < K; k++) {
                    const REAL ak = a[k];
                    const REAL *p = P + (long)k * w;
                    for (int jj = wv; jj < w; jj++) c[jj] += ak * p[jj];
                }
            }
        }
    }
}

/* C[M,N] += A^T W with A given as AT[K,M] (row stride ldat): the weight gradients
 * X^T dZ over all T*B rows, without a transposed copy. The 4 row values of a block are
 * adjacent in AT. Each block of W (KC rows x one column block) is copied once into a
 * contiguous panel that stays in L1 for all row blocks of C (W's power-of-two row stride
 * would map it onto a few L1 sets). */
FL_INLINE void FN(mm_block_tn)(int R, int K, const REAL *AT, int ldat, const REAL *W, int ldw,
                               REAL *C, int ldc) {
    FN(vec) acc[FL_RB][FL_NV];
    int r, v, k;
    for (r = 0; r < R; r++)
        for (v = 0; v < FL_NV; v++) acc[r][v] = FN(vload)(C + (long)r * ldc + v * FL_VL);
    for (k = 0; k < K; k++) {
        const REAL *w = W + (long)k * ldw;
        const REAL *a = AT + (long)k * ldat;
        FN(vec) wv[FL_NV];
        for (v = 0; v < FL_NV; v++) wv[v] = FN(vload)(w + v * FL_VL);
        for (r = 0; r < R; r++)
            for (v = 0; v < FL_NV; v++) acc[r][v] += wv[v] * a[r];
    }
    for (r = 0; r < R; r++)
        for (v = 0; v < FL_NV; v++) FN(vstore)(C + (long)r * ldc + v * FL_VL, acc[r][v]);
}

FL_TARGET static void FN(fl_matmul_tn_acc)(int M, int N, int K, const REAL *AT, int ldat,
                                           const REAL *W, int ldw, REAL *C, int ldc) {
    enum { KC = 128 };
    const int step = FL_NV * FL_VL;
    REAL panel[KC * FL_NV * FL_VL];   /* 32 KiB: one block of W, copied to stay in L1 */
    for (int k0 = 0; k0 < K; k0 += KC) {
        const int kc = K - k0 < KC ? K - k0 : KC;
        const REAL *A0 = AT + (long)k0 * ldat, *W0 = W + (long)k0 * ldw;
        int i, j = 0;
        for (; j + step <= N; j += step) {
            for (int k = 0; k < kc; k++)
                memcpy(panel + (long)k * step, W0 + (long)k * ldw + j, step * sizeof(REAL));
            for (i = 0; i + FL_RB <= M; i += FL_RB)
                FN(mm_block_tn)(FL_RB, kc, A0 + i, ldat, panel, step, C + (long)i * ldc + j, ldc);
            for (; i < M; i++)
                FN(mm_block_tn)(1, kc, A0 + i, ldat, panel, step, C + (long)i * ldc + j, ldc);
        }
        if (j < N) {
            for (i = 0; i < M; i++) {
                REAL *c = C + (long)i * ldc;
                for (int k = 0; k < kc; k++) {
                    const REAL ak = A0[(long)k * ldat + i];
                    const REAL *w = W0 + (long)k * ldw;
                    for (int jj = j; jj < N; jj++) c[jj] += ak * w[jj];
                }
            }
        }
    }
}

#undef FN
#undef FL_VL
#undef FL_RB
#undef FL_NV
