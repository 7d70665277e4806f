/* Template body of the elementwise kernels; included by gates.c once per (REAL, ISA).
 * Expects: REAL, S (dtype suffix _f/_d), V (ISA suffix), FL_TARGET (function attribute).
 * No `restrict`: callers may alias the output of a function with one of its inputs, and
 * every loop here is elementwise, so that is safe and still vectorizes. */

#define FN(name) FL_XCAT3(name, S, V)
#define MATH(name) FL_XCAT(name, S)
#ifndef FL_IVDEP
#if defined(__GNUC__) && !defined(__clang__)
#define FL_IVDEP _Pragma("GCC ivdep")
#elif defined(__clang__)
#define FL_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define FL_IVDEP
#endif
#endif
#ifndef FL_DEFAULT_CELL
/* Keras's default LSTM (tanh, sigmoid; no peepholes, no coupled gate), whose backward step
 * runs in one pass a row (the forward one gains nothing so: its time is in exp). */
#define FL_DEFAULT_CELL(coupled, peep, act, ract) \
    (!(coupled) && !(peep) && (act).kind == FL_TANH && (ract).kind == FL_SIGMOID)
#endif

FL_INLINE void FN(act_fwd)(fl_act act, REAL *z, long n) {
    long i;
    switch (act.kind) {
    case FL_TANH:
        for (i = 0; i < n; i++) z[i] = MATH(fl_tanh)(z[i]);
        break;
    case FL_SIGMOID:
        for (i = 0; i < n; i++) z[i] = MATH(fl_sigmoid)(z[i]);
        break;
    case FL_HARD_SIGMOID: {
        const REAL a = (REAL)act.alpha, b = (REAL)act.beta;
        for (i = 0; i < n; i++) {
            REAL v = z[i] * a + b;
            v = v < 0 ? 0 : v;
            z[i] = v > 1 ? 1 : v;
        }
        break;
    }
    case FL_RELU:
        for (i = 0; i < n; i++) z[i] = z[i] <= 0 ? 0 : z[i];   /* NaN stays NaN, as in NumPy */
        break;
    case FL_SOFTSIGN:
        for (i = 0; i < n; i++) z[i] = z[i] / (1 + (z[i] < 0 ? -z[i] : z[i]));
        break;
    default: /* FL_LINEAR */
        break;
    }
}

FL_INLINE void FN(act_grad)(fl_act act, const REAL *y, const REAL *g, REAL *out, long n) {
    long i;
    switch (act.kind) {
    case FL_TANH:
        for (i = 0; i < n; i++) out[i] = g[i] * (1 - y[i] * y[i]);
        break;
    case FL_SIGMOID:
        for (i = 0; i < n; i++) out[i] = g[i] * (y[i] * (1 - y[i]));
        break;
    case FL_HARD_SIGMOID: {
        const REAL a = (REAL)act.alpha;
        for (i = 0; i < n; i++) out[i] = (y[i] > 0 && y[i] < 1) ? g[i] * a : 0;
        break;
    }
    case FL_RELU:
        for (i = 0; i < n; i++) out[i] = y[i] > 0 ? g[i] : 0;
        break;
    case FL_SOFTSIGN:
        for (i = 0; i < n; i++) {
            REAL d = 1 - (y[i] < 0 ? -y[i] : y[i]);
            out[i] = g[i] * (d * d);
        }
        break;
    default: /* FL_LINEAR */
        for (i = 0; i < n; i++) out[i] = g[i];
        break;
    }
}

FL_TARGET static void FN(fl_act_forward)(fl_act act, REAL *z, long n) { FN(act_fwd)(act, z, n); }

FL_TARGET static void FN(fl_act_grad)(fl_act act, const REAL *y, const REAL *g, REAL *out, long n) {
    FN(act_grad)(act, y, g, out, n);
}

FL_TARGET static void FN(fl_mul)(const REAL *a, const REAL *b, REAL *out, long n) {
    for (long i = 0; i < n; i++) out[i] = a[i] * b[i];
}

FL_TARGET static void FN(fl_merge_rows)(int B, int H, const unsigned char *mask, const REAL *scale,
                                        const REAL *src, REAL *dst) {
    for (int b = 0; b < B; b++) {
        if (mask && !mask[b]) continue;
        const REAL *s = src + (long)b * H;
        REAL *d = dst + (long)b * H;
        if (scale) {
            const REAL *m = scale + (long)b * H;
            for (int j = 0; j < H; j++) d[j] = s[j] * m[j];
        } else {
            for (int j = 0; j < H; j++) d[j] = s[j];
        }
    }
}

FL_TARGET static void FN(fl_lstm_fwd_step)(int B, int H, int coupled, fl_act act, fl_act ract,
                                           REAL *z, const REAL *peep, const unsigned char *mask,
                                           const REAL *h_in, const REAL *c_in, REAL *h_out,
                                           REAL *c_out, const REAL *out_prev, REAL *out,
                                           REAL *scratch, const REAL *lnh, REAL *chat,
                                           REAL *crstd) {
    const long G = (long)(coupled ? 3 : 4) * H;
    for (int b = 0; b < B; b++) {
        const long r = (long)b * H;
        const REAL *cp = c_in + r;
        REAL *cn = c_out + r, *hn = h_out + r;
        int j;
        if (mask && !mask[b]) {
            const REAL *hp = h_in + r;
            for (j = 0; j < H; j++) { hn[j] = hp[j]; cn[j] = cp[j]; }
            if (out != out_prev) {
                REAL *o = out + r;
                if (out_prev) for (j = 0; j < H; j++) o[j] = out_prev[r + j];
                else for (j = 0; j < H; j++) o[j] = 0;
            }
            continue;
        }
        REAL *zr = z + b * G;
        REAL *zi = zr, *zf = coupled ? zr : zr + H, *zc = zf + H, *zo = zc + H;
        if (peep) {
            for (j = 0; j < H; j++) zf[j] += peep[H + j] * cp[j];
            if (!coupled) for (j = 0; j < H; j++) zi[j] += peep[j] * cp[j];
        }
        FN(act_fwd)(ract, zi, coupled ? H : 2L * H);   /* i and f are adjacent blocks */
        FN(act_fwd)(act, zc, H);
        if (coupled) for (j = 0; j < H; j++) cn[j] = zf[j] * cp[j] + (1 - zf[j]) * zc[j];
        else for (j = 0; j < H; j++) cn[j] = zf[j] * cp[j] + zi[j] * zc[j];
        if (peep) for (j = 0; j < H; j++) zo[j] += peep[2 * H + j] * cn[j];
        FN(act_fwd)(ract, zo, H);
        if (lnh) {             /* a(LN(c_t) gamma_h + beta_h); LN(c_t) kept in chat */
            REAL m, rs, *ch = chat ? chat + r : scratch;
            FN(ln_row_stats)(cn, H, &m, &rs);
            if (crstd) crstd[b] = rs;
            for (j = 0; j < H; j++) ch[j] = (cn[j] - m) * rs;
            for (j = 0; j < H; j++) scratch[j] = ch[j] * lnh[j] + lnh[H + j];
        } else {
            for (j = 0; j < H; j++) scratch[j] = cn[j];
        }
        FN(act_fwd)(act, scratch, H);
        for (j = 0; j < H; j++) hn[j] = zo[j] * scratch[j];
        if (mask) {
            REAL *o = out + r;
            for (j = 0; j < H; j++) o[j] = hn[j];
        }
    }
}

FL_TARGET static void FN(fl_lstm_bwd_step)(int B, int H, int coupled, fl_act act, fl_act ract,
                                           REAL *z, const REAL *c, const REAL *c_prev,
                                           const REAL *peep, const unsigned char *mask,
                                           const REAL *dy, long ldy, const REAL *dh, REAL *dc,
                                           REAL *dout, REAL *dpeep, REAL *scratch,
                                           const REAL *lnh, const REAL *chat,
                                           const REAL *crstd, REAL *dlnh) {
    const long G = (long)(coupled ? 3 : 4) * H;
    REAL *s_dh = scratch, *s_ac = scratch + H, *s_dcs = scratch + 2 * H;
    REAL *s_t1 = scratch + 3 * H, *s_t2 = scratch + 4 * H;
    for (int b = 0; b < B; b++) {
        const long r = (long)b * H;
        REAL *zr = z + b * G;
        int j;
        if (mask && !mask[b]) {   /* state passes through; the output carries dy back */
            for (j = 0; j < G; j++) zr[j] = 0;
            if (dy) for (j = 0; j < H; j++) dout[r + j] += dy[(long)b * ldy + j];
            continue;
        }
        REAL *zi = zr, *zf = coupled ? zr : zr + H, *zc = zf + H, *zo = zc + H;
        const REAL *ct = c + r, *cp = c_prev + r;
        REAL *dcr = dc + r;
        for (j = 0; j < H; j++) s_dh[j] = dh[r + j];
        if (dy) for (j = 0; j < H; j++) s_dh[j] += dy[(long)b * ldy + j];
        if (dout) for (j = 0; j < H; j++) { s_dh[j] += dout[r + j]; dout[r + j] = 0; }
        if (!lnh && FL_DEFAULT_CELL(coupled, peep, act, ract)) {
            /* The passes below in one, for the default cell (same products, same order).
             * Every access is at unit j (dc in place): no dependence across units. */
            FL_IVDEP
            for (j = 0; j < H; j++) {
                const REAL ac = MATH(fl_tanh)(ct[j]);
                const REAL i = zi[j], f = zf[j], g = zc[j], o = zo[j], d = s_dh[j];
                const REAL dcs = dcr[j] + (d * o) * (1 - ac * ac);
                zo[j] = (d * ac) * (o * (1 - o));
                zi[j] = (dcs * g) * (i * (1 - i));
                zc[j] = (dcs * i) * (1 - g * g);
                zf[j] = (dcs * cp[j]) * (f * (1 - f));
                dcr[j] = dcs * f;
            }
            continue;
        }
        if (lnh) for (j = 0; j < H; j++) s_ac[j] = chat[r + j] * lnh[j] + lnh[H + j];
        else for (j = 0; j < H; j++) s_ac[j] = ct[j];
        FN(act_fwd)(act, s_ac, H);                                  /* a(c_t) */
        for (j = 0; j < H; j++) s_t1[j] = s_dh[j] * zo[j];
        FN(act_grad)(act, s_ac, s_t1, s_t1, H);                     /* dh * o * a'(c_t) */
        if (lnh) {                  /* through LN(c_t) gamma_h + beta_h: d beta_h, d gamma_h */
            for (j = 0; j < H; j++) dlnh[H + j] += s_t1[j];
            FN(ln_row_bwd)(s_t1, lnh, chat + r, crstd[b], dlnh, s_t1, H);
        }
        for (j = 0; j < H; j++) s_dcs[j] = dcr[j] + s_t1[j];
        for (j = 0; j < H; j++) s_dh[j] *= s_ac[j];                 /* do */
        FN(act_grad)(ract, zo, s_dh, zo, H);                        /* zo := dz_o */
        if (peep) {
            for (j = 0; j < H; j++) s_dcs[j] += zo[j] * peep[2 * H + j];
            for (j = 0; j < H; j++) dpeep[2 * H + j] += zo[j] * ct[j];
        }
        if (coupled) {
            for (j = 0; j < H; j++) s_t2[j] = s_dcs[j] * (1 - zf[j]);      /* dg */
            for (j = 0; j < H; j++) s_ac[j] = s_dcs[j] * (cp[j] - zc[j]);  /* df */
        } else {
            for (j = 0; j < H; j++) s_t1[j] = s_dcs[j] * zc[j];            /* di */
            for (j = 0; j < H; j++) s_t2[j] = s_dcs[j] * zi[j];            /* dg */
            for (j = 0; j < H; j++) s_ac[j] = s_dcs[j] * cp[j];            /* df */
        }
        for (j = 0; j < H; j++) dcr[j] = s_dcs[j] * zf[j];                 /* dc_{t-1} */
        if (!coupled) FN(act_grad)(ract, zi, s_t1, zi, H);
        FN(act_grad)(act, zc, s_t2, zc, H);
        FN(act_grad)(ract, zf, s_ac, zf, H);
        if (peep) {
            for (j = 0; j < H; j++) dcr[j] += zf[j] * peep[H + j];
            for (j = 0; j < H; j++) dpeep[H + j] += zf[j] * cp[j];
            if (!coupled) {
                for (j = 0; j < H; j++) dcr[j] += zi[j] * peep[j];
                for (j = 0; j < H; j++) dpeep[j] += zi[j] * cp[j];
            }
        }
    }
}

#undef FN
#undef MATH
