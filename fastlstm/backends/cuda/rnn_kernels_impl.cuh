/* Body of the CUDA kernels, included by rnn_kernels.cu once per dtype (REAL, FN).
 *
 * Every kernel takes n = B*H first and handles element i = b*H + j (row b, unit j) of one
 * step. Pointers to per-step arrays point at that step's [B,*] slab. "has_*" flags say
 * whether an optional pointer is meaningful (the caller passes a small dummy array
 * otherwise). Activations come as (kind, alpha, beta). Masked rows (mask[b] == 0) keep their
 * state and repeat their previous output, as in the oracle. No __restrict__: some outputs
 * alias inputs on purpose (gates -> gate gradients, out -> h), always element for element.
 */

/* One LSTM step after the recurrent product rec = hin U. xw [B,G]: x_t W + b. h, c [B,H]:
 * state, updated in place; out [B,H]: the output carried over masked steps (may be h when
 * there is no mask); y [B,H]: this step's slab of the output sequence. save: gates [B,G]
 * post-activation, cs = c_t, h_prev = h_{t-1}, c_prev = c_{t-1} (all [B,*] slabs at t). */
extern "C" __global__ void FN(lstm_fwd_step)(
        long long n, int H, int coupled, int has_peep, int has_mask, int has_y, int save,
        int a_kind, double a_alpha, double a_beta, int ra_kind, double ra_alpha, double ra_beta,
        const REAL *xw, const REAL *rec, const REAL *peep, const unsigned char *mask,
        REAL *h, REAL *c, REAL *out, REAL *y, REAL *gates, REAL *cs, REAL *h_prev,
        REAL *c_prev) {
    const long long G = (long long)(coupled ? 3 : 4) * H;
    const int of = coupled ? 0 : H;              /* offset of the forget block */
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const int j = (int)(i - b * H);
        const long long r = b * G;
        const REAL cp = c[i], hp = h[i];
        REAL zf = xw[r + of + j] + rec[r + of + j];
        REAL zc = xw[r + of + H + j] + rec[r + of + H + j];
        REAL zo = xw[r + of + 2 * H + j] + rec[r + of + 2 * H + j];
        REAL zi = 0;
        if (!coupled) zi = xw[r + j] + rec[r + j];
        if (has_peep) {
            zf += peep[H + j] * cp;
            if (!coupled) zi += peep[j] * cp;
        }
        const REAL f = fl_act<REAL>(ra_kind, ra_alpha, ra_beta, zf);
        const REAL ig = coupled ? 1 - f : fl_act<REAL>(ra_kind, ra_alpha, ra_beta, zi);
        const REAL g = fl_act<REAL>(a_kind, a_alpha, a_beta, zc);
        const REAL cn = f * cp + ig * g;
        if (has_peep) zo += peep[2 * H + j] * cn;
        const REAL o = fl_act<REAL>(ra_kind, ra_alpha, ra_beta, zo);
        const REAL hn = o * fl_act<REAL>(a_kind, a_alpha, a_beta, cn);
        if (save) {
            if (!coupled) gates[r + j] = ig;
            gates[r + of + j] = f;
            gates[r + of + H + j] = g;
            gates[r + of + 2 * H + j] = o;
            cs[i] = cn;
            h_prev[i] = hp;
            c_prev[i] = cp;
        }
        const int keep = !has_mask || mask[b];
        if (keep) c[i] = cn;
        fl_store_h<REAL>(keep, has_y, i, hn, h, out, y);
    }
}

/* Backward of one LSTM step. gates [B,G] (post-activation) in, dz [B,G] (pre-activation
 * gradients) out; they may be the same array. cs, c_prev [B,H]: c_t, c_{t-1}. dh [B,H]:
 * gradient reaching h_t from later steps. dc [B,H]: dc_t in, dc_{t-1} out. dout [B,H]:
 * output gradient carried over masked steps (and dy of a last-output-only forward). dy [B,H]:
 * this step's output gradient. Masked rows get dz = 0 and keep dc; their dy joins dout. */
extern "C" __global__ void FN(lstm_bwd_step)(
        long long n, int H, int coupled, int has_peep, int has_mask, int has_dy,
        int a_kind, double a_alpha, double a_beta, int ra_kind, double ra_alpha, double ra_beta,
        const REAL *gates, const REAL *cs, const REAL *c_prev, const REAL *peep,
        const unsigned char *mask, const REAL *dy, const REAL *dh, REAL *dc, REAL *dout,
        REAL *dz) {
    const long long G = (long long)(coupled ? 3 : 4) * H;
    const int of = coupled ? 0 : H;
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const int j = (int)(i - b * H);
        const long long r = b * G;
        const REAL dyv = has_dy ? dy[i] : (REAL)0;
        if (has_mask && !mask[b]) {
            if (!coupled) dz[r + j] = 0;
            dz[r + of + j] = 0;
            dz[r + of + H + j] = 0;
            dz[r + of + 2 * H + j] = 0;
            dout[i] += dyv;
            continue;
        }
        const REAL dhs = dh[i] + dout[i] + dyv;
        dout[i] = 0;
        const REAL f = gates[r + of + j], g = gates[r + of + H + j], o = gates[r + of + 2 * H + j];
        const REAL ig = coupled ? 1 - f : gates[r + j];
        const REAL ct = cs[i], cp = c_prev[i];
        const REAL ac = fl_act<REAL>(a_kind, a_alpha, a_beta, ct);
        const REAL dzo = dhs * ac * fl_act_grad<REAL>(ra_kind, ra_alpha, o);
        REAL dcs = dc[i] + dhs * o * fl_act_grad<REAL>(a_kind, a_alpha, ac);
        if (has_peep) dcs += dzo * peep[2 * H + j];
        const REAL dzc = dcs * ig * fl_act_grad<REAL>(a_kind, a_alpha, g);
        REAL dcp = dcs * f;
        REAL dzf, dzi = 0;
        if (coupled) {
            dzf = dcs * (cp - g) * fl_act_grad<REAL>(ra_kind, ra_alpha, f);
        } else {
            dzi = dcs * g * fl_act_grad<REAL>(ra_kind, ra_alpha, ig);
            dzf = dcs * cp * fl_act_grad<REAL>(ra_kind, ra_alpha, f);
        }
        if (has_peep) {
            dcp += dzf * peep[H + j];
            if (!coupled) dcp += dzi * peep[j];
        }
        dc[i] = dcp;
        if (!coupled) dz[r + j] = dzi;
        dz[r + of + j] = dzf;
        dz[r + of + H + j] = dzc;
        dz[r + of + 2 * H + j] = dzo;
    }
}

/* A step's recurrent product when it is small: c[M,N] = a[M,K] b[K,N], rows of a lda apart,
 * b and c contiguous, one thread per element of c (n = M*N). A cuBLAS call costs 14-19 us of
 * host time on an H100 whatever its size, a launch of this kernel about 5 us, and a small
 * batch's product is far below the size where cuBLAS's tiling pays (cupy_ops._product). */
extern "C" __global__ void FN(small_gemm)(
        long long n, int N, int K, long long lda, const REAL *a, const REAL *b, REAL *c) {
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long row = i / N;
        const long long col = i - row * N;
        const REAL *ar = a + row * lda;
        REAL s = 0;
        for (int k = 0; k < K; k++) s += ar[k] * b[k * (long long)N + col];
        c[i] = s;
    }
}

/* Gradient reaching h_{t-1}: dh = carry + (a + b) * rdm on unmasked rows; masked rows keep
 * dh. a is the product dz U^T of this step; b a second one (GRU reset_after=False), carry the
 * part that bypasses the recurrent products (GRU z * dh). */
extern "C" __global__ void FN(merge_dh)(
        long long n, int H, int has_mask, int has_rdm, int has_carry, int has_b,
        const unsigned char *mask, const REAL *rdm, const REAL *carry, const REAL *a,
        const REAL *b, REAL *dh) {
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        if (has_mask && !mask[i / H]) continue;
        REAL v = a[i];
        if (has_b) v += b[i];
        if (has_rdm) v *= rdm[i];
        if (has_carry) v += carry[i];
        dh[i] = v;
    }
}

/* One GRU step, reset_after=True, after rec = hin U. xw [B,3H]: x_t W + b_in; brec [3H]: the
 * recurrent bias. h, out, y as in lstm_fwd_step. save: gates [B,3H] = z, r, n; rec_h [B,H] =
 * (hin U + b_rec) of the h block; h_prev = h_{t-1}. */
extern "C" __global__ void FN(gru_fwd_step)(
        long long n, int H, int has_brec, int has_mask, int has_y, int save,
        int a_kind, double a_alpha, double a_beta, int ra_kind, double ra_alpha, double ra_beta,
        const REAL *xw, const REAL *rec, const REAL *brec, const unsigned char *mask,
        REAL *h, REAL *out, REAL *y, REAL *gates, REAL *rec_h, REAL *h_prev) {
    const long long G = 3LL * H;
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const int j = (int)(i - b * H);
        const long long r = b * G;
        REAL rz = rec[r + j], rr = rec[r + H + j], rh = rec[r + 2 * H + j];
        if (has_brec) {
            rz += brec[j];
            rr += brec[H + j];
            rh += brec[2 * H + j];
        }
        const REAL z = fl_act<REAL>(ra_kind, ra_alpha, ra_beta, xw[r + j] + rz);
        const REAL rg = fl_act<REAL>(ra_kind, ra_alpha, ra_beta, xw[r + H + j] + rr);
        const REAL ng = fl_act<REAL>(a_kind, a_alpha, a_beta, xw[r + 2 * H + j] + rg * rh);
        const REAL hp = h[i];
        const REAL hn = z * hp + (1 - z) * ng;
        if (save) {
            gates[r + j] = z;
            gates[r + H + j] = rg;
            gates[r + 2 * H + j] = ng;
            rec_h[i] = rh;
            h_prev[i] = hp;
        }
        fl_store_h<REAL>(!has_mask || mask[b], has_y, i, hn, h, out, y);
    }
}

/* GRU reset_after=False, between its two recurrent products: rec2 [B,2H] = hin U[:, :2H].
 * Writes z and r into gates [B,3H] and rh [B,H] = r * hin (the input of the second product). */
extern "C" __global__ void FN(gru_fwd_gates)(
        long long n, int H, int ra_kind, double ra_alpha, double ra_beta,
        const REAL *xw, const REAL *rec2, const REAL *hin, REAL *gates, REAL *rh) {
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const int j = (int)(i - b * H);
        const long long r = b * 3LL * H, r2 = b * 2LL * H;
        const REAL z = fl_act<REAL>(ra_kind, ra_alpha, ra_beta, xw[r + j] + rec2[r2 + j]);
        const REAL rg = fl_act<REAL>(ra_kind, ra_alpha, ra_beta, xw[r + H + j] + rec2[r2 + H + j]);
        gates[r + j] = z;
        gates[r + H + j] = rg;
        rh[i] = rg * hin[i];
    }
}

/* GRU reset_after=False, after recn [B,H] = (r * hin) U[:, 2H:]: n, then the new state.
 * gates [B,3H]: z read, n written. h, out, y, h_prev as in gru_fwd_step. */
extern "C" __global__ void FN(gru_fwd_step0)(
        long long n, int H, int has_mask, int has_y, int save,
        int a_kind, double a_alpha, double a_beta,
        const REAL *xw, const REAL *recn, const unsigned char *mask,
        REAL *h, REAL *out, REAL *y, REAL *gates, REAL *h_prev) {
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const int j = (int)(i - b * H);
        const long long r = b * 3LL * H;
        const REAL ng = fl_act<REAL>(a_kind, a_alpha, a_beta, xw[r + 2 * H + j] + recn[i]);
        const REAL z = gates[r + j];
        const REAL hp = h[i];
        const REAL hn = z * hp + (1 - z) * ng;
        gates[r + 2 * H + j] = ng;
        if (save) h_prev[i] = hp;
        fl_store_h<REAL>(!has_mask || mask[b], has_y, i, hn, h, out, y);
    }
}

/* Backward of one GRU step before its recurrent products. gates [B,3H] = z, r, n; h_prev
 * [B,H]; rec_h [B,H] (reset_after only). dh, dout, dy as in lstm_bwd_step. Writes dz_in [B,3H]
 * = d(x W + b_in) (reset_after=False: the z and h blocks; gru_bwd_reset0 writes r), dz_rec
 * [B,3H] = d(hin U + b_rec) (reset_after only) and carry [B,H] = the z * h_{t-1} share of
 * dh_{t-1}. Masked rows: zero gradients, dy joins dout. */
extern "C" __global__ void FN(gru_bwd_step)(
        long long n, int H, int reset_after, int has_mask, int has_dy,
        int a_kind, double a_alpha, double a_beta, int ra_kind, double ra_alpha, double ra_beta,
        const REAL *gates, const REAL *h_prev, const REAL *rec_h, const unsigned char *mask,
        const REAL *dy, const REAL *dh, REAL *dout, REAL *dz_in, REAL *dz_rec, REAL *carry) {
    const long long G = 3LL * H;
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const int j = (int)(i - b * H);
        const long long r = b * G;
        const REAL dyv = has_dy ? dy[i] : (REAL)0;
        if (has_mask && !mask[b]) {
            dz_in[r + j] = 0;
            dz_in[r + H + j] = 0;
            dz_in[r + 2 * H + j] = 0;
            if (reset_after) {
                dz_rec[r + j] = 0;
                dz_rec[r + H + j] = 0;
                dz_rec[r + 2 * H + j] = 0;
            }
            carry[i] = 0;
            dout[i] += dyv;
            continue;
        }
        const REAL dhs = dh[i] + dout[i] + dyv;
        dout[i] = 0;
        const REAL z = gates[r + j], rg = gates[r + H + j], ng = gates[r + 2 * H + j];
        const REAL dzz = dhs * (h_prev[i] - ng) * fl_act_grad<REAL>(ra_kind, ra_alpha, z);
        const REAL dzn = dhs * (1 - z) * fl_act_grad<REAL>(a_kind, a_alpha, ng);
        dz_in[r + j] = dzz;
        dz_in[r + 2 * H + j] = dzn;
        if (reset_after) {
            const REAL dzr = dzn * rec_h[i] * fl_act_grad<REAL>(ra_kind, ra_alpha, rg);
            dz_in[r + H + j] = dzr;
            dz_rec[r + j] = dzz;
            dz_rec[r + H + j] = dzr;
            dz_rec[r + 2 * H + j] = dzn * rg;
        }
        carry[i] = dhs * z;
    }
}

/* GRU reset_after=False, after drh [B,H] = dn U[:, 2H:]^T: the r block of dz_in [B,3H] and
 * part [B,H] = drh * r, the share of dhin that does not pass through U[:, :2H]. hin =
 * h_prev * rdm (has_rdm). Masked rows: zero. */
extern "C" __global__ void FN(gru_bwd_reset0)(
        long long n, int H, int has_mask, int has_rdm, int ra_kind, double ra_alpha,
        const REAL *gates, const REAL *h_prev, const REAL *rdm, const REAL *drh,
        const unsigned char *mask, REAL *dz_in, REAL *part) {
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const int j = (int)(i - b * H);
        const long long r = b * 3LL * H;
        if (has_mask && !mask[b]) {
            dz_in[r + H + j] = 0;
            part[i] = 0;
            continue;
        }
        const REAL rg = gates[r + H + j];
        const REAL hin = has_rdm ? h_prev[i] * rdm[i] : h_prev[i];
        dz_in[r + H + j] = drh[i] * hin * fl_act_grad<REAL>(ra_kind, ra_alpha, rg);
        part[i] = drh[i] * rg;
    }
}

/* One SimpleRNN step after rec = hin U: h_t = act(xw + rec). h, out, y as in lstm_fwd_step;
 * save: hs [B,H] = act(.) before masking, h_prev = h_{t-1}. */
extern "C" __global__ void FN(rnn_fwd_step)(
        long long n, int H, int has_mask, int has_y, int save,
        int a_kind, double a_alpha, double a_beta,
        const REAL *xw, const REAL *rec, const unsigned char *mask,
        REAL *h, REAL *out, REAL *y, REAL *hs, REAL *h_prev) {
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const long long b = i / H;
        const REAL hn = fl_act<REAL>(a_kind, a_alpha, a_beta, xw[i] + rec[i]);
        if (save) {
            hs[i] = hn;
            h_prev[i] = h[i];
        }
        fl_store_h<REAL>(!has_mask || mask[b], has_y, i, hn, h, out, y);
    }
}

/* Backward of one SimpleRNN step: dz [B,H] = (dh + dout + dy) act'(.), zero on masked rows
 * (whose dy joins dout). */
extern "C" __global__ void FN(rnn_bwd_step)(
        long long n, int H, int has_mask, int has_dy, int a_kind, double a_alpha,
        const REAL *hs, const unsigned char *mask, const REAL *dy, const REAL *dh,
        REAL *dout, REAL *dz) {
    for (long long i = FL_IDX0; i < n; i += FL_STRIDE) {
        const REAL dyv = has_dy ? dy[i] : (REAL)0;
        if (has_mask && !mask[i / H]) {
            dz[i] = 0;
            dout[i] += dyv;
            continue;
        }
        dz[i] = (dh[i] + dout[i] + dyv) * fl_act_grad<REAL>(a_kind, a_alpha, hs[i]);
        dout[i] = 0;
    }
}
