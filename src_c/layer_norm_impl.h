/* Template body of the layer-normalization kernels (haste's LayerNormLSTM/GRU: each row of a
 * product normalized over its last axis, eps 1e-5, biased variance, no affine of its own);
 * included by gates.c after gates_impl.h, once per (REAL, ISA), with its macros. The LSTM's
 * LN(c_t) lives in its step kernels (gates_impl.h), which call fl_ln_row_stats / the row
 * backward below. Rows are summed in order, eight partial sums a row: the same bits for a
 * row whichever rows share the call. */

#define FN(name) FL_XCAT3(name, S, V)
#define FL_LN_EPS 1e-5

/* Sum of a[0:n], in eight interleaved partial sums. */
FL_INLINE REAL FN(ln_sum)(const REAL *a, long n) {
    REAL s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    long j = 0, k;
    for (; j + 8 <= n; j += 8)
        for (k = 0; k < 8; k++) s[k] += a[j + k];
    for (k = 0; j < n; j++, k++) s[k] += a[j];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

/* mean and 1/sqrt(var + eps) of v[0:n], the variance from the deviations (two passes). */
FL_INLINE void FN(ln_row_stats)(const REAL *v, long n, REAL *mean, REAL *rstd) {
    const REAL m = FN(ln_sum)(v, n) / (REAL)n;
    REAL s[8] = {0, 0, 0, 0, 0, 0, 0, 0}, d;
    long j = 0, k;
    for (; j + 8 <= n; j += 8)
        for (k = 0; k < 8; k++) { d = v[j + k] - m; s[k] += d * d; }
    for (k = 0; j < n; j++, k++) { d = v[j] - m; s[k] += d * d; }
    const REAL var = (((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]))) / (REAL)n;
    *mean = m;
    *rstd = (REAL)(1 / sqrt((double)(var + (REAL)FL_LN_EPS)));
}

/* The backward of y = LN(v) gamma (one row of n; gamma NULL: ones): with g = dy gamma,
 * dv = rstd (g - mean(g) - vhat mean(g vhat)); dgamma += dy vhat (or NULL). Both means are
 * taken before dv is written, so dv may alias dy or vhat. */
FL_INLINE void FN(ln_row_bwd)(const REAL *dy, const REAL *gamma, const REAL *vhat, REAL rstd,
                              REAL *dgamma, REAL *dv, long n) {
    REAL s1[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s2[8] = {0, 0, 0, 0, 0, 0, 0, 0}, g;
    long j = 0, k;
    if (dgamma) for (j = 0; j < n; j++) dgamma[j] += dy[j] * vhat[j];
    for (j = 0; j + 8 <= n; j += 8)
        for (k = 0; k < 8; k++) {
            g = gamma ? dy[j + k] * gamma[j + k] : dy[j + k];
            s1[k] += g;
            s2[k] += g * vhat[j + k];
        }
    for (k = 0; j < n; j++, k++) {
        g = gamma ? dy[j] * gamma[j] : dy[j];
        s1[k] += g;
        s2[k] += g * vhat[j];
    }
    const REAL mg = (((s1[0] + s1[4]) + (s1[1] + s1[5])) + ((s1[2] + s1[6]) + (s1[3] + s1[7])))
                    / (REAL)n;
    const REAL mgv = (((s2[0] + s2[4]) + (s2[1] + s2[5])) + ((s2[2] + s2[6]) + (s2[3] + s2[7])))
                     / (REAL)n;
    if (gamma) for (j = 0; j < n; j++) dv[j] = rstd * (dy[j] * gamma[j] - mg - vhat[j] * mgv);
    else for (j = 0; j < n; j++) dv[j] = rstd * (dy[j] - mg - vhat[j] * mgv);
}

FL_TARGET static void FN(fl_ln_fwd)(int B, int N, REAL *v, long ldv, const REAL *gamma,
                                    const REAL *beta, int accumulate, REAL *y, long ldy,
                                    REAL *vhat, long ldh, REAL *rstd) {
    for (int b = 0; b < B; b++) {
        REAL *vr = v + b * ldv, *yr = y + b * ldy, m, r;
        REAL *hr = vhat ? vhat + b * ldh : NULL;
        int j;
        FN(ln_row_stats)(vr, N, &m, &r);
        if (rstd) rstd[b] = r;
        if (hr) {
            for (j = 0; j < N; j++) hr[j] = (vr[j] - m) * r;
            vr = hr;
            m = 0;
            r = 1;
        }
        if (accumulate) {
            if (beta) for (j = 0; j < N; j++) yr[j] += ((vr[j] - m) * r) * gamma[j] + beta[j];
            else for (j = 0; j < N; j++) yr[j] += ((vr[j] - m) * r) * gamma[j];
        } else {
            if (beta) for (j = 0; j < N; j++) yr[j] = ((vr[j] - m) * r) * gamma[j] + beta[j];
            else for (j = 0; j < N; j++) yr[j] = ((vr[j] - m) * r) * gamma[j];
        }
    }
}

FL_TARGET static void FN(fl_ln_bwd)(int B, int N, const REAL *dy, long lddy, const REAL *gamma,
                                    const REAL *vhat, long ldh, const REAL *rstd, REAL *dgamma,
                                    REAL *dbeta, REAL *dv, long lddv) {
    for (int b = 0; b < B; b++) {
        const REAL *dr = dy + b * lddy;
        if (dbeta) for (int j = 0; j < N; j++) dbeta[j] += dr[j];
        FN(ln_row_bwd)(dr, gamma, vhat + b * ldh, rstd[b], dgamma, dv + b * lddv, N);
    }
}

#undef FL_LN_EPS
#undef FN
