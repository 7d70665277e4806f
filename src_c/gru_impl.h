/* Template body of the GRU elementwise kernels; included by gates.c after gates_impl.h,
 * once per (REAL, ISA), with the same macros (REAL, S, V, FL_TARGET) and the helpers
 * act_fwd/act_grad of gates_impl.h.
 *
 * Rows of the gate buffer z (notation of fastlstm/backends/oracle/gru.py):
 *   reset_after=1: width 4H, [z | r | rec_h | n]; before the step [pre_z | pre_r |
 *                  hin U_h + b'_h | x W_h + b_h], after it the post-activation z, r, n.
 *   reset_after=0: width 3H, [z | r | n].
 * Backward writes pre-activation gradients over the same columns:
 *   reset_after=1: [dz | dr | d rec_h | dn]   (d(hin U + b_rec) is columns 0:3H,
 *                                             d(x W + b_in) is columns 0:2H and 3H:4H)
 *   reset_after=0: [dz | dr | dn].
 * No `restrict`: outputs may alias inputs (each loop is elementwise). */

#define FN(name) FL_XCAT3(name, S, V)

/* Masked row: the state passes through; the output repeats the previous one (0 at first). */
FL_INLINE void FN(gru_carry_row)(int H, long r, const REAL *h_in, REAL *h_out,
                                 const REAL *out_prev, REAL *out) {
    int j;
    const REAL *hp = h_in + r;
    REAL *hn = h_out + r;
    if (hn != hp) for (j = 0; j < H; j++) hn[j] = hp[j];
    if (out != out_prev) {
        REAL *o = out + r;
        if (out_prev) for (j = 0; j < H; j++) o[j] = out_prev[r + j];
        else for (j = 0; j < H; j++) o[j] = 0;
    }
}

/* reset_after=0, between the two recurrent products: z, r := ra(pre) in columns 0:2H
 * (all rows; masked rows are discarded later) and rh = r * hin [B,H]. */
FL_TARGET static void FN(fl_gru_fwd_reset)(int B, int H, fl_act ract, REAL *z, const REAL *hin,
                                           REAL *rh) {
    const long G = 3L * H;
    for (int b = 0; b < B; b++) {
        REAL *zr = z + b * G;
        const REAL *hr = hin + (long)b * H;
        REAL *o = rh + (long)b * H;
        FN(act_fwd)(ract, zr, 2L * H);
        for (int j = 0; j < H; j++) o[j] = zr[H + j] * hr[j];
    }
}

FL_TARGET static void FN(fl_gru_fwd_step)(int B, int H, int reset_after, fl_act act, fl_act ract,
                                          REAL *z, const unsigned char *mask, const REAL *h_in,
                                          REAL *h_out, const REAL *out_prev, REAL *out) {
    const long G = (reset_after ? 4L : 3L) * H;
    for (int b = 0; b < B; b++) {
        const long r = (long)b * H;
        int j;
        if (mask && !mask[b]) {
            FN(gru_carry_row)(H, r, h_in, h_out, out_prev, out);
            continue;
        }
        REAL *zz = z + b * G, *zr = zz + H, *n;
        if (reset_after) {
            REAL *rec = zz + 2 * H;
            n = zz + 3 * H;
            FN(act_fwd)(ract, zz, 2L * H);                   /* z and r are adjacent */
            for (j = 0; j < H; j++) n[j] += zr[j] * rec[j];
        } else {
            n = zz + 2 * H;                                  /* z, r done by fl_gru_fwd_reset */
        }
        FN(act_fwd)(act, n, H);
        const REAL *hp = h_in + r;
        REAL *hn = h_out + r;
        for (j = 0; j < H; j++) hn[j] = n[j] + zz[j] * (hp[j] - n[j]);
        if (mask) {
            REAL *o = out + r;
            for (j = 0; j < H; j++) o[j] = hn[j];
        }
    }
}

/* Backward of one GRU step, up to the recurrent products. dh [B,H]: in, the gradient
 * reaching h_t from later steps; out, s * z (the carry path's share of dh_{t-1}), with
 * s = dh + dy + dout the whole gradient of h_t. h_prev [B,H]: the state entering the step.
 * Writes the pre-activation gradients over z (see the column layout above); with
 * reset_after=0 column block r keeps r for fl_gru_bwd_reset. Masked rows: gate gradients
 * 0, dh kept, dout += dy. dout [B,H] only with a mask. scratch [2H]. */
FL_TARGET static void FN(fl_gru_bwd_step)(int B, int H, int reset_after, fl_act act, fl_act ract,
                                          REAL *z, const REAL *h_prev, const unsigned char *mask,
                                          const REAL *dy, long ldy, REAL *dh, REAL *dout,
                                          REAL *scratch) {
    const long G = (reset_after ? 4L : 3L) * H;
    REAL *t1 = scratch, *t2 = scratch + H;
    for (int b = 0; b < B; b++) {
        const long r = (long)b * H;
        REAL *zz = z + b * G;
        int j;
        if (mask && !mask[b]) {
            for (j = 0; j < G; j++) zz[j] = 0;
            if (dy) for (j = 0; j < H; j++) dout[r + j] += dy[(long)b * ldy + j];
            continue;
        }
        REAL *zr = zz + H, *n = zz + (reset_after ? 3 : 2) * H;
        const REAL *hp = h_prev + r;
        REAL *dhr = dh + r;
        if (dy) for (j = 0; j < H; j++) dhr[j] += dy[(long)b * ldy + j];
        if (dout) for (j = 0; j < H; j++) { dhr[j] += dout[r + j]; dout[r + j] = 0; }
        if (act.kind == FL_TANH && ract.kind == FL_SIGMOID) {
            /* Keras's default GRU: the passes below in one (same products, same order).
             * Every access is at unit j (dh in place): no dependence across units. */
            if (reset_after) {
                REAL *rec = zz + 2 * H;
                FL_IVDEP
                for (j = 0; j < H; j++) {
                    const REAL s = dhr[j], u = zz[j], v = n[j], q = zr[j], w = rec[j];
                    const REAL dn = (s * (1 - u)) * (1 - v * v);
                    zz[j] = (s * (hp[j] - v)) * (u * (1 - u));
                    dhr[j] = s * u;
                    n[j] = dn;
                    zr[j] = (dn * w) * (q * (1 - q));
                    rec[j] = dn * q;
                }
            } else {
                FL_IVDEP
                for (j = 0; j < H; j++) {
                    const REAL s = dhr[j], u = zz[j], v = n[j];
                    zz[j] = (s * (hp[j] - v)) * (u * (1 - u));
                    dhr[j] = s * u;
                    n[j] = (s * (1 - u)) * (1 - v * v);
                }
            }
            continue;
        }
        for (j = 0; j < H; j++) {
            const REAL sj = dhr[j];
            t1[j] = sj * (hp[j] - n[j]);
            t2[j] = sj * (1 - zz[j]);
            dhr[j] = sj * zz[j];
        }
        FN(act_grad)(ract, zz, t1, zz, H);                   /* dz */
        FN(act_grad)(act, n, t2, n, H);                      /* dn */
        if (reset_after) {
            REAL *rec = zz + 2 * H;
            for (j = 0; j < H; j++) {
                t1[j] = n[j] * rec[j];                       /* dn * rec_h -> dr (post) */
                rec[j] = n[j] * zr[j];                       /* d rec_h = dn * r */
            }
            FN(act_grad)(ract, zr, t1, zr, H);               /* dr */
        }
    }
}

/* reset_after=0, between the two backward recurrent products: drh [B,H] = dn U_h^T is the
 * gradient of r * hin. Writes dr over r (column block 1) and dhin (+)= drh * r, adding
 * when accumulate, else overwriting (masked rows: 0, or left as they are). scratch [H]. */
FL_TARGET static void FN(fl_gru_bwd_reset)(int B, int H, fl_act ract, REAL *z, const REAL *hin,
                                           const REAL *drh, const unsigned char *mask,
                                           REAL *dhin, int accumulate, REAL *scratch) {
    const long G = 3L * H;
    for (int b = 0; b < B; b++) {
        const long r = (long)b * H;
        REAL *zr = z + b * G + H, *o = dhin + r;
        const REAL *d = drh + r, *hr = hin + r;
        int j;
        if (mask && !mask[b]) {     /* fl_gru_bwd_step already zeroed the gate gradients */
            if (!accumulate) for (j = 0; j < H; j++) o[j] = 0;
            continue;
        }
        for (j = 0; j < H; j++) scratch[j] = d[j] * hr[j];
        if (accumulate) for (j = 0; j < H; j++) o[j] += d[j] * zr[j];
        else for (j = 0; j < H; j++) o[j] = d[j] * zr[j];
        FN(act_grad)(ract, zr, scratch, zr, H);
    }
}

/* out[0:n] += a[0:n] * b[0:n] */
FL_TARGET static void FN(fl_add_mul)(const REAL *a, const REAL *b, REAL *out, long n) {
    for (long i = 0; i < n; i++) out[i] += a[i] * b[i];
}

#undef FN
