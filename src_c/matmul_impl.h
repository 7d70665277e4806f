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

/* One row: c[N] += a[K] W[K,N], 8 rows per pass over c (c stays in L1): 8 FMAs per load
 * and store of c. For short rows (below FL_GEMV_ONE_ROW_BYTES) this is the faster way. */
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

/* One row a pass: W is read as a single sequential stream, which one core pulls from its L2
 * faster than 8 rows at once, at one load and store of c (in L1) per row. Short rows pay that
 * per-row cost on too little W: from 1 KiB a row (bench/RESULTS.md, "Kernel thresholds";
 * bench/row_product_bandwidth.c). */
#ifndef FL_GEMV_ONE_ROW_BYTES
#define FL_GEMV_ONE_ROW_BYTES 1024
#endif
FL_INLINE void FN(gemv_one_row)(int N, const REAL s, const REAL *w, REAL *c) {
    int j = 0;
    for (; j + 2 * FL_VL <= N; j += 2 * FL_VL) {
        const FN(vec) c0 = FN(vload)(c + j), c1 = FN(vload)(c + j + FL_VL);
        FN(vstore)(c + j, c0 + FN(vload)(w + j) * s);
        FN(vstore)(c + j + FL_VL, c1 + FN(vload)(w + j + FL_VL) * s);
    }
    for (; j + FL_VL <= N; j += FL_VL) FN(vstore)(c + j, FN(vload)(c + j) + FN(vload)(w + j) * s);
    for (; j < N; j++) c[j] += w[j] * s;
}

/* Eight rows a pass with each element of c summed over the rows in order, as gemv_one_row
 * sums it (the same bits): one load and store of c per 8 rows of W. On cores that store a
 * 512-bit vector every other cycle (AMD Zen 4) the store per row of gemv_one_row bounds it
 * (1.4x slower there, bench/row_product_bandwidth.c); on others one stream is faster. */
FL_INLINE void FN(gemv_rows8_ordered)(int N, const REAL *a, const REAL *W, int ldw, REAL *c) {
    int j = 0, r;
    const REAL *w[8];
    for (r = 0; r < 8; r++) w[r] = W + (long)r * ldw;
    for (; j + FL_VL <= N; j += FL_VL) {
        FN(vec) acc = FN(vload)(c + j);
        for (r = 0; r < 8; r++) acc += FN(vload)(w[r] + j) * a[r];
        FN(vstore)(c + j, acc);
    }
    for (; j < N; j++) {
        REAL t = c[j];
        for (r = 0; r < 8; r++) t += w[r][j] * a[r];
        c[j] = t;
    }
}

/* c[N] += a[K] W[K,N]: rows of FL_GEMV_ONE_ROW_BYTES and more one a pass (rows_per_pass 1)
 * or eight (8), with the same bits; shorter rows eight a pass (gemv_rows). */
FL_TARGET static void FN(fl_gemv_acc)(int rows_per_pass, int N, int K, const REAL *a,
                                      const REAL *W, int ldw, REAL *c) {
    int k = 0;
    if ((long)N * (long)sizeof(REAL) >= FL_GEMV_ONE_ROW_BYTES) {
        if (rows_per_pass == 8)
            for (; k + 8 <= K; k += 8) FN(gemv_rows8_ordered)(N, a + k, W + (long)k * ldw, ldw, c);
        for (; k < K; k++) FN(gemv_one_row)(N, a[k], W + (long)k * ldw, c);
        return;
    }
    for (; k + 8 <= K; k += 8) FN(gemv_rows)(8, N, a + k, W + (long)k * ldw, ldw, c);
    if (k < K) FN(gemv_rows)(K - k, N, a + k, W + (long)k * ldw, ldw, c);
}

/* The sum of a vector's lanes: halves folded onto each other down to 16 bytes (a few
 * shuffles and adds), then the last 2-4 lanes; a plain loop over the lanes was a chain of
 * dependent scalar adds that dominated a short dot product. */
FL_INLINE REAL FN(hsum)(FN(vec) a) {
    typedef REAL q16 __attribute__((vector_size(16)));
    q16 q, r;
    int l;
    REAL t = 0;
#if FL_VBYTES >= 64
    typedef REAL q32 __attribute__((vector_size(32)));
    q32 lo, hi;
    memcpy(&lo, &a, 32);
    memcpy(&hi, (const char *)&a + 32, 32);
    lo += hi;
    memcpy(&q, &lo, 16);
    memcpy(&r, (const char *)&lo + 16, 16);
    q += r;
#elif FL_VBYTES >= 32
    memcpy(&q, &a, 16);
    memcpy(&r, (const char *)&a + 16, 16);
    q += r;
#else
    memcpy(&q, &a, 16);
#endif
    (void)r;
    for (l = 0; l < (int)(16 / sizeof(REAL)); l++) t += q[l];
    return t;
}

/* y[N] += W[N,K] x[K]: a dot product per row of W, for the gradient dh = dz U^T at one row
 * (U^T as U read by rows: no transposed copy of U). R rows at a time (a compile-time count
 * when inlined), two accumulators each; x stays in L1 while W streams through once. */
FL_INLINE void FN(gemv_t_rows)(const int R, int K, const REAL *W, int ldw, const REAL *x,
                               REAL *y) {
    FN(vec) a0[4], a1[4];
    int k, r;
    for (r = 0; r < R; r++) a0[r] = a1[r] = (FN(vec)){0};
    for (k = 0; k + 2 * FL_VL <= K; k += 2 * FL_VL) {
        const FN(vec) x0 = FN(vload)(x + k), x1 = FN(vload)(x + k + FL_VL);
        for (r = 0; r < R; r++) {
            a0[r] += FN(vload)(W + (long)r * ldw + k) * x0;
            a1[r] += FN(vload)(W + (long)r * ldw + k + FL_VL) * x1;
        }
    }
    for (r = 0; r < R; r++) {
        REAL t = FN(hsum)(a0[r] + a1[r]);
        for (int kk = k; kk < K; kk++) t += W[(long)r * ldw + kk] * x[kk];
        y[r] += t;
    }
}

FL_TARGET static void FN(fl_gemv_t_acc)(int N, int K, const REAL *W, int ldw, const REAL *x,
                                        REAL *y) {
    int i = 0;
    for (; i + 4 <= N; i += 4) FN(gemv_t_rows)(4, K, W + (long)i * ldw, ldw, x, y + i);
    switch (N - i) {
    case 3: FN(gemv_t_rows)(3, K, W + (long)i * ldw, ldw, x, y + i); break;
    case 2: FN(gemv_t_rows)(2, K, W + (long)i * ldw, ldw, x, y + i); break;
    case 1: FN(gemv_t_rows)(1, K, W + (long)i * ldw, ldw, x, y + i); break;
    default: break;
    }
}

/* Columns [j, N) of C[M,N] += A W (fewer than one register tile): plain loops, vectorized
 * over the columns by the compiler. */
FL_INLINE void FN(mm_cols_left)(int j, int M, int N, int K, const REAL *A, int lda,
                                const REAL *W, int ldw, REAL *C, int ldc) {
    for (int i = 0; i < M; i++) {
        const REAL *a = A + (long)i * lda;
        REAL *c = C + (long)i * ldc;
        for (int k = 0; k < K; k++) {
            const REAL ak = a[k];
            const REAL *w = W + (long)k * ldw;
            for (int jj = j; jj < N; jj++) c[jj] += ak * w[jj];
        }
    }
}

/* C[M,N] += A[M,K] W[K,N] with every row computed the same way whatever M (no one-row GEMV,
 * no blocking over K): a row's bits do not depend on how rows are grouped into calls. The
 * input projections of a few rows use it (products.pxd: project_rows), which the pipelined
 * forward pass splits into blocks of steps. */
FL_TARGET static void FN(fl_matmul_rows_acc)(int M, int N, int K, const REAL *A, int lda,
                                             const REAL *W, int ldw, REAL *C, int ldc) {
    const int step = FL_NV * FL_VL;
    int i, j = 0;
    for (; j + step <= N; j += step) {
        for (i = 0; i + FL_RB <= M; i += FL_RB)
            FN(mm_block)(FL_RB, K, A + (long)i * lda, lda, W + j, ldw, C + (long)i * ldc + j, ldc);
        for (; i < M; i++)
            FN(mm_block)(1, K, A + (long)i * lda, lda, W + j, ldw, C + (long)i * ldc + j, ldc);
    }
    if (j < N) FN(mm_cols_left)(j, M, N, K, A, lda, W, ldw, C, ldc);
}

FL_TARGET static void FN(fl_matmul_acc)(int M, int N, int K, const REAL *A, int lda,
                                        const REAL *W, int ldw, REAL *C, int ldc) {
    const int step = FL_NV * FL_VL;
    int i, j = 0;
    if (M == 1) {
        FN(fl_gemv_acc)(1, N, K, A, W, ldw, C);
        return;
    }
    if (M < 32) {
        FN(fl_matmul_rows_acc)(M, N, K, A, lda, W, ldw, C, ldc);
        return;
    }
    /* many row blocks: share L1 copies of W's blocks */
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
    j = N - N % step;
    if (j < N) FN(mm_cols_left)(j, M, N, K, A, lda, W, ldw, C, ldc);
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

/* Packed GEMM for the many-row products (input projection, input and weight gradients) and
 * the recurrent product with a pre-packed kernel: C[M,N] += op(A)[M,K] B[K,N], op(A) = A
 * or A^T read in place, B packed into panels of FL_PW columns (fl_pack_b). Blocking: a
 * KC x NC block of packed B stays in L2 while each MR-row slice of A (in L1) sweeps it;
 * every panel is read contiguously, so wide B no longer thrashes the TLB and cache sets
 * the way strided reads of W in place do. */
#define FL_MR 6
#define FL_CH (FL_NV * FL_VL)                 /* columns of one register tile */

/* C rows [0,R) x columns [0,ncols) of one panel += op(A) slice x panel (kc deep); with
 * init, C = that product + bias (a row, or zero when NULL): the first block of a product that
 * overwrites C neither reads C nor needs C cleared or filled with the bias beforehand (one
 * pass over C saved: it is the size of the input projection). */
FL_INLINE void FN(gk_tile)(const int R, const int trans, int kc, const REAL *a, long lda,
                           const REAL *b, REAL *c, long ldc, int ncols, const REAL *bias,
                           int init) {
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
            if (init) {
                FN(vec) bb[FL_NV];
                for (v = 0; v < FL_NV; v++)
                    bb[v] = bias != NULL ? FN(vload)(bias + j0 + v * FL_VL) : (FN(vec)){0};
                for (r = 0; r < R; r++)
                    for (v = 0; v < FL_NV; v++)
                        FN(vstore)(c + (long)r * ldc + j0 + v * FL_VL, acc[r][v] + bb[v]);
            } else {
                for (r = 0; r < R; r++)
                    for (v = 0; v < FL_NV; v++) {
                        REAL *p = c + (long)r * ldc + j0 + v * FL_VL;
                        FN(vstore)(p, FN(vload)(p) + acc[r][v]);
                    }
            }
        } else {                                  /* last, partial tile of the matrix */
            REAL t[FL_CH];
            for (r = 0; r < R; r++) {
                REAL *p = c + (long)r * ldc + j0;
                for (v = 0; v < FL_NV; v++) FN(vstore)(t + v * FL_VL, acc[r][v]);
                if (init)
                    for (k = 0; k < ncols - j0; k++)
                        p[k] = t[k] + (bias != NULL ? bias[j0 + k] : (REAL)0);
                else
                    for (k = 0; k < ncols - j0; k++) p[k] += t[k];
            }
        }
    }
}

/* Row counts and the transpose as compile-time constants of gk_tile. */
#define FL_TILE_CASE(n)                                                                   \
    case n:                                                                               \
        if (trans) FN(gk_tile)(n, 1, kc, a, lda, b, cp, ldc, ncols, bp, init);             \
        else FN(gk_tile)(n, 0, kc, a, lda, b, cp, ldc, ncols, bp, init);                  \
        break;

FL_TARGET static void FN(gk_tiles)(int R, int trans, int kc, const REAL *a, long lda,
                                   const REAL *blk, long ps, int nc, REAL *c, long ldc,
                                   const REAL *bias, int init) {
    int p;
    for (p = 0; p * FL_PW < nc; p++) {
        const REAL *b = blk + (long)p * ps;
        const REAL *bp = bias != NULL ? bias + (long)p * FL_PW : NULL;
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

/* s[0, ncols) += the column sums of a packed block (kc rows, panels of FL_PW columns ps
 * apart), read from L2 right after packing: the bias gradient (column sums of dZ) without a
 * pass of its own over dZ, which is read from memory. */
FL_INLINE void FN(block_colsums)(int kc, int ncols, const REAL *blk, long ps, REAL *s) {
    enum { NP = 256 / FL_VBYTES };               /* vectors per panel row (FL_PW is 256 bytes) */
    int p, k, v, j;
    for (p = 0; p * FL_PW < ncols; p++) {
        const REAL *b = blk + (long)p * ps;
        const int w = ncols - p * FL_PW < FL_PW ? ncols - p * FL_PW : FL_PW;
        FN(vec) acc[NP];
        REAL t[FL_PW];
        for (v = 0; v < NP; v++) acc[v] = (FN(vec)){0};
        for (k = 0; k < kc; k++)
            for (v = 0; v < NP; v++) acc[v] += FN(vload)(b + (long)k * FL_PW + v * FL_VL);
        for (v = 0; v < NP; v++) FN(vstore)(t + v * FL_VL, acc[v]);
        for (j = 0; j < w; j++) s[p * FL_PW + j] += t[j];
    }
}

/* C[M,N] += op(A) B, or with init C = op(A) B + bias (bias a row of N, or NULL for none).
 * B is either row-major (ldb; packed here block by block into buf, which holds
 * FL_KC * FL_NC elements) or, when Bp != NULL, pre-packed whole by fl_pack_b. A is [M,K]
 * (trans = 0) or [K,M] (trans = 1), row stride lda. K > 0. With M2 > 0 a second product
 * C2[M2,N] (=|+=) op(A2) B shares every packed block of B (the weight gradients X^T dZ and
 * H^T dZ: dZ, the larger operand, is packed once for both). With bsum (B not pre-packed),
 * bsum[N] += the column sums of B. */
FL_TARGET static void FN(fl_gemm_run)(int trans, int M, int N, int K, const REAL *A, long lda,
                                      const REAL *B, long ldb, const REAL *Bp,
                                      const REAL *bias, int init, REAL *C, long ldc,
                                      int M2, const REAL *A2, long lda2, REAL *C2, long ldc2,
                                      REAL *buf, REAL *bsum) {
    int pc, jc, ic, part, R;
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
                fl_pack_padded(S)(kc, nc, B + (long)pc * ldb + jc, ldb, buf);
                blk = buf;
                ps = (long)kc * FL_PW;
                if (bsum != NULL) FN(block_colsums)(kc, nc, blk, ps, bsum + jc);
            }
            for (part = 0; part < 2; part++) {
                const int m = part ? M2 : M;
                const REAL *Ap = part ? A2 : A;
                const long la = part ? lda2 : lda, lc = part ? ldc2 : ldc;
                REAL *Cp = part ? C2 : C;
                for (ic = 0; ic < m; ic += R) {
                    /* 6-row tiles; a remainder of 1-3 rows shares the last 7-9 rows with the
                     * tile before it (4+4 rather than 6+2): a tile of 1-3 rows reads a whole
                     * panel from L2 for a few FMAs and runs at about half speed. */
                    const int left = m - ic;
                    R = left <= FL_MR ? left : left < FL_MR + 4 ? left - left / 2 : FL_MR;
                    const REAL *a = trans ? Ap + (long)pc * la + ic : Ap + (long)ic * la + pc;
                    FN(gk_tiles)(R, trans, kc, a, la, blk, ps, nc, Cp + (long)ic * lc + jc, lc,
                                 bias != NULL ? bias + jc : NULL, init && pc == 0);
                }
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
