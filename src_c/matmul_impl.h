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

FL_TARGET static void FN(fl_matmul_acc)(int M, int N, int K, const REAL *A, int lda,
                                        const REAL *W, int ldw, REAL *C, int ldc) {
    const int step = FL_NV * FL_VL;
    int i, j = 0;
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


/* Packed GEMM for the many-row products (input projection, input and weight gradients) and
 * the recurrent product with a pre-packed kernel: C[M,N] += op(A)[M,K] B[K,N], op(A) = A
 * or A^T read in place, B packed into panels of FL_PW columns (fl_pack_b). Blocking: a
 * KC x NC block of packed B stays in L2 while each MR-row slice of A (in L1) sweeps it;
 * every panel is read contiguously, so wide B no longer thrashes the TLB and cache sets
 * the way strided reads of W in place do. */
#define FL_MR 6
#define FL_CH (FL_NV * FL_VL)                 /* columns of one register tile */

/* C rows [0,R) x columns [0,ncols) of one panel += op(A) slice x panel (kc deep). */
FL_INLINE void FN(gk_tile)(const int R, const int trans, int kc, const REAL *a, long lda,
                           const REAL *b, REAL *c, long ldc, int ncols) {
    int j0, r, v, k;
    for (j0 = 0; j0 < ncols; j0 += FL_CH) {
        FN(vec) acc[FL_MR][FL_NV];
        const REAL *bj = b + j0;
        for (r = 0; r < R; r++)
            for (v = 0; v < FL_NV; v++) acc[r][v] = (FN(vec)){0};
        for (k = 0; k < kc; k++) {
            FN(vec) bv[FL_NV];
            for (v = 0; v < FL_NV; v++) bv[v] = FN(vload)(bj + (long)k * FL_PW + v * FL_VL);
            for (r = 0; r < R; r++) {
                const REAL ar = trans ? a[(long)k * lda + r] : a[(long)r * lda + k];
                for (v = 0; v < FL_NV; v++) acc[r][v] += bv[v] * ar;
            }
        }
        if (j0 + FL_CH <= ncols) {
            for (r = 0; r < R; r++)
                for (v = 0; v < FL_NV; v++) {
                    REAL *p = c + (long)r * ldc + j0 + v * FL_VL;
                    FN(vstore)(p, FN(vload)(p) + acc[r][v]);
                }
        } else {                                  /* last, partial tile of the matrix */
            REAL t[FL_CH];
            for (r = 0; r < R; r++) {
                REAL *p = c + (long)r * ldc + j0;
                for (v = 0; v < FL_NV; v++) FN(vstore)(t + v * FL_VL, acc[r][v]);
                for (k = 0; k < ncols - j0; k++) p[k] += t[k];
            }
        }
    }
}

/* Row counts and the transpose as compile-time constants of gk_tile. */
#define FL_TILE_CASE(n)                                                                   \
    case n:                                                                               \
        if (trans) FN(gk_tile)(n, 1, kc, a, lda, b, cp, ldc, ncols);                       \
        else FN(gk_tile)(n, 0, kc, a, lda, b, cp, ldc, ncols);                            \
        break;

FL_TARGET static void FN(gk_tiles)(int R, int trans, int kc, const REAL *a, long lda,
                                   const REAL *blk, long ps, int nc, REAL *c, long ldc) {
    int p;
    for (p = 0; p * FL_PW < nc; p++) {
        const REAL *b = blk + (long)p * ps;
        REAL *cp = c + (long)p * FL_PW;
        int ncols = nc - p * FL_PW < FL_PW ? nc - p * FL_PW : FL_PW;
        switch (R) {
        FL_TILE_CASE(6)
        FL_TILE_CASE(5)
        FL_TILE_CASE(4)
        FL_TILE_CASE(3)
        FL_TILE_CASE(2)
        FL_TILE_CASE(1)
        default: break;
        }
    }
}
#undef FL_TILE_CASE

/* C[M,N] += op(A) B. B is either row-major (ldb; packed here block by block into buf, which
 * holds FL_KC * FL_NC elements) or, when Bp != NULL, pre-packed whole by fl_pack_b. A is
 * [M,K] (trans = 0) or [K,M] (trans = 1), row stride lda. */
FL_TARGET static void FN(fl_gemm_run)(int trans, int M, int N, int K, const REAL *A, long lda,
                                      const REAL *B, long ldb, const REAL *Bp, REAL *C,
                                      long ldc, REAL *buf) {
    int pc, jc, ic;
    for (pc = 0; pc < K; pc += FL_KC) {
        const int kc = K - pc < FL_KC ? K - pc : FL_KC;
        for (jc = 0; jc < N; jc += FL_NC) {
            const int nc = N - jc < FL_NC ? N - jc : FL_NC;
            const REAL *blk;
            long ps;
            if (Bp != NULL) {
                blk = Bp + (long)(jc / FL_PW) * K * FL_PW + (long)pc * FL_PW;
                ps = (long)K * FL_PW;
            } else {
                fl_pack_panels(S)(kc, nc, B + (long)pc * ldb + jc, ldb, buf);
                blk = buf;
                ps = (long)kc * FL_PW;
            }
            for (ic = 0; ic < M; ic += FL_MR) {
                const int R = M - ic < FL_MR ? M - ic : FL_MR;
                const REAL *a = trans ? A + (long)pc * lda + ic : A + (long)ic * lda + pc;
                FN(gk_tiles)(R, trans, kc, a, lda, blk, ps, nc, C + (long)ic * ldc + jc, ldc);
            }
        }
    }
}
#undef FL_MR
#undef FL_CH

#undef FN
#undef FL_VL
#undef FL_RB
#undef FL_NV
