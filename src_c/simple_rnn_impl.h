/* Template body of the SimpleRNN elementwise kernels; included by gates.c after
 * gates_impl.h, once per (REAL, ISA), with the same macros (REAL, S, V, FL_TARGET) and the
 * helpers act_fwd/act_grad of gates_impl.h. No `restrict`: outputs may alias inputs. */

#define FN(name) FL_XCAT3(name, S, V)

/* One step after the recurrent product. z [B,H]: pre-activations in, a(.) out (rows of
 * masked steps are left as they are). h_in [B,H]: state before the step; h_out [B,H] after
 * it (may alias h_in; masked rows copy h_in). out [B,H]: the step's output, out_prev [B,H]
 * the previous one (NULL = zeros); both used only with a mask. */
FL_TARGET static void FN(fl_rnn_fwd_step)(int B, int H, fl_act act, REAL *z,
                                          const unsigned char *mask, const REAL *h_in,
                                          REAL *h_out, const REAL *out_prev, REAL *out) {
    for (int b = 0; b < B; b++) {
        const long r = (long)b * H;
        REAL *zr = z + r, *hn = h_out + r;
        int j;
        if (mask && !mask[b]) {
            const REAL *hp = h_in + r;
            if (hn != hp) for (j = 0; j < H; j++) hn[j] = hp[j];
            if (out != out_prev) {
                REAL *o = out + r;
                if (out_prev) for (j = 0; j < H; j++) o[j] = out_prev[r + j];
                else for (j = 0; j < H; j++) o[j] = 0;
            }
            continue;
        }
        FN(act_fwd)(act, zr, H);
        for (j = 0; j < H; j++) hn[j] = zr[j];
        if (mask) {
            REAL *o = out + r;
            for (j = 0; j < H; j++) o[j] = zr[j];
        }
    }
}

/* Backward of one step. z [B,H]: a(.) in, pre-activation gradient out. dh [B,H]: gradient
 * reaching h_t from later steps (read). dy [B,H] or NULL: gradient of this step's output.
 * Masked rows: z row 0, dout += dy. dout [B,H] only with a mask: the output gradient
 * carried over masked steps. */
FL_TARGET static void FN(fl_rnn_bwd_step)(int B, int H, fl_act act, REAL *z,
                                          const unsigned char *mask, const REAL *dy, long ldy,
                                          const REAL *dh, REAL *dout, REAL *scratch) {
    for (int b = 0; b < B; b++) {
        const long r = (long)b * H;
        REAL *zr = z + r;
        int j;
        if (mask && !mask[b]) {
            for (j = 0; j < H; j++) zr[j] = 0;
            if (dy) for (j = 0; j < H; j++) dout[r + j] += dy[(long)b * ldy + j];
            continue;
        }
        for (j = 0; j < H; j++) scratch[j] = dh[r + j];
        if (dy) for (j = 0; j < H; j++) scratch[j] += dy[(long)b * ldy + j];
        if (dout) for (j = 0; j < H; j++) { scratch[j] += dout[r + j]; dout[r + j] = 0; }
        FN(act_grad)(act, zr, scratch, zr, H);
    }
}

#undef FN
