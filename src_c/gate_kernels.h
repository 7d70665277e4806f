/* The entry points of gates.c that run per ISA (the elementwise gate kernels and the
 * per-step products), one line each: the one list of them. gates.h declares them from it,
 * gates.c defines their run-time dispatch from it, and src_c/generate_gate_kernels.py writes
 * Cython's declarations and fused wrappers from it (src_c/gate_kernels.pxi). Each kernel's
 * body is FN(name) in gates_impl.h, gru_impl.h, simple_rnn_impl.h or matmul_impl.h.
 *
 * FL_GATE_KERNELS(X, REAL) expands X(name, (parameters), (arguments)) for each, REAL being
 * the dtype; the exported names carry the dtype suffix (_f float, _d double). Shapes follow
 * the notation of fastlstm/backends/oracle/__init__.py: B rows, H units, row-major. */
#ifndef FASTLSTM_GATE_KERNELS_H
#define FASTLSTM_GATE_KERNELS_H

#define FL_GATE_KERNELS(X, REAL)                                                               \
/* z[0:n] = act(z[0:n]) */                                                                     \
X(fl_act_forward, (fl_act act, REAL *z, long n), (act, z, n))                                  \
/* out[0:n] = g[0:n] * act'(.) written through y = act(.); out may alias y or g */             \
X(fl_act_grad, (fl_act act, const REAL *y, const REAL *g, REAL *out, long n),                  \
  (act, y, g, out, n))                                                                         \
/* out[0:n] = a[0:n] * b[0:n] */                                                               \
X(fl_mul, (const REAL *a, const REAL *b, REAL *out, long n), (a, b, out, n))                   \
/* out[0:n] += a[0:n] * b[0:n] */                                                              \
X(fl_add_mul, (const REAL *a, const REAL *b, REAL *out, long n), (a, b, out, n))               \
/* rows b with mask[b] (or all rows when mask is NULL): dst[b] = src[b] (* scale[b]) */        \
X(fl_merge_rows, (int B, int H, const unsigned char *mask, const REAL *scale, const REAL *src, \
                  REAL *dst), (B, H, mask, scale, src, dst))                                   \
/* One LSTM step after the recurrent product. z [B,G]: pre-activations in, gates out (rows of \
 * masked steps are left as they are). h_in, c_in [B,H]: state before the step; h_out, c_out \
 * [B,H]: after it (may alias h_in, c_in; masked rows copy the input state). out [B,H]: the   \
 * step's output, out_prev [B,H] the previous one (NULL = zeros); both are used only with a  \
 * mask. peep [3,H] or NULL. scratch [H]. lnh [2,H] (gamma_h, beta_h) or NULL: layer norm,   \
 * h_t = o a(LN(c_t) gamma_h + beta_h), LN(c_t) written to chat [B,H] and its 1/sqrt(var +   \
 * eps) to crstd [B] (both NULL at inference). */                                             \
X(fl_lstm_fwd_step, (int B, int H, int coupled, fl_act act, fl_act ract, REAL *z,              \
                     const REAL *peep, const unsigned char *mask, const REAL *h_in,            \
                     const REAL *c_in, REAL *h_out, REAL *c_out, const REAL *out_prev,         \
                     REAL *out, REAL *scratch, const REAL *lnh, REAL *chat, REAL *crstd),      \
  (B, H, coupled, act, ract, z, peep, mask, h_in, c_in, h_out, c_out, out_prev, out, scratch,  \
   lnh, chat, crstd))                                                                          \
/* Backward of one LSTM step. z [B,G]: gates in, gate gradients (pre-activation) out. c [B,H]: \
 * c_t; c_prev [B,H]: c_{t-1}. dy [B,H] (rows ldy apart) or NULL: gradient of this step's    \
 * output. dh [B,H]: gradient reaching h_t from later steps (read). dc [B,H]: in dc_t, out    \
 * dc_{t-1} (masked rows keep theirs). dout [B,H] (only with a mask): output gradient carried \
 * over masked steps. dpeep [3,H] or NULL: accumulated. scratch [5H]. */                       \
X(fl_lstm_bwd_step, (int B, int H, int coupled, fl_act act, fl_act ract, REAL *z,              \
                     const REAL *c, const REAL *c_prev, const REAL *peep,                      \
                     const unsigned char *mask, const REAL *dy, long ldy, const REAL *dh,      \
                     REAL *dc, REAL *dout, REAL *dpeep, REAL *scratch, const REAL *lnh,        \
                     const REAL *chat, const REAL *crstd, REAL *dlnh),                         \
  (B, H, coupled, act, ract, z, c, c_prev, peep, mask, dy, ldy, dh, dc, dout, dpeep, scratch,  \
   lnh, chat, crstd, dlnh))                                                                    \
/* Layer norm of rows: y[b] (+)= LN(v[b]) gamma (+ beta) for B rows of N (row strides ldv,  \
 * ldy; accumulate 0 or 1; beta may be NULL; y may alias v). vhat (row stride ldh) gets      \
 * LN(v) and rstd [B] 1/sqrt(var + eps), or NULL; vhat may alias v. */                       \
X(fl_ln_fwd, (int B, int N, REAL *v, long ldv, const REAL *gamma, const REAL *beta,            \
              int accumulate, REAL *y, long ldy, REAL *vhat, long ldh, REAL *rstd),            \
  (B, N, v, ldv, gamma, beta, accumulate, y, ldy, vhat, ldh, rstd))                            \
/* Its backward: dv[b] = d LN(v[b]) from dy[b] gamma (gamma NULL: ones), with vhat, rstd as   \
 * fl_ln_fwd saved them; dgamma += dy vhat, dbeta += dy (each may be NULL). dv may alias dy   \
 * or vhat. */                                                                                 \
X(fl_ln_bwd, (int B, int N, const REAL *dy, long lddy, const REAL *gamma, const REAL *vhat,    \
              long ldh, const REAL *rstd, REAL *dgamma, REAL *dbeta, REAL *dv, long lddv),     \
  (B, N, dy, lddy, gamma, vhat, ldh, rstd, dgamma, dbeta, dv, lddv))                           \
/* GRU (layouts of the gate rows in gru_impl.h). reset_after=0, between the two recurrent     \
 * products: z [B,3H] columns 0:2H := ra(.), rh [B,H] = r * hin. */                            \
X(fl_gru_fwd_reset, (int B, int H, fl_act ract, REAL *z, const REAL *hin, REAL *rh),           \
  (B, H, ract, z, hin, rh))                                                                    \
/* One GRU step after the recurrent product(s). z [B,4H] (reset_after) or [B,3H]:             \
 * pre-activations in, z, r, n out (masked rows left as they are). h_in/h_out [B,H] may       \
 * alias; out, out_prev [B,H] as in fl_lstm_fwd_step (used only with a mask). */               \
X(fl_gru_fwd_step, (int B, int H, int reset_after, fl_act act, fl_act ract, REAL *z,           \
                    const unsigned char *mask, const REAL *h_in, REAL *h_out,                  \
                    const REAL *out_prev, REAL *out),                                          \
  (B, H, reset_after, act, ract, z, mask, h_in, h_out, out_prev, out))                         \
/* Backward of one GRU step before the recurrent products: gate gradients over z; dh [B,H]    \
 * in: gradient from later steps, out: its carry share s*z; h_prev [B,H]; dy [B,H] (row      \
 * stride ldy) or NULL; dout [B,H] only with a mask. scratch [2H]. */                          \
X(fl_gru_bwd_step, (int B, int H, int reset_after, fl_act act, fl_act ract, REAL *z,           \
                    const REAL *h_prev, const unsigned char *mask, const REAL *dy, long ldy,   \
                    REAL *dh, REAL *dout, REAL *scratch),                                      \
  (B, H, reset_after, act, ract, z, h_prev, mask, dy, ldy, dh, dout, scratch))                 \
/* reset_after=0: given drh = dn U_h^T [B,H], dr over column block 1 of z [B,3H] and dhin     \
 * [B,H] (+)= drh * r. scratch [H]. */                                                         \
X(fl_gru_bwd_reset, (int B, int H, fl_act ract, REAL *z, const REAL *hin, const REAL *drh,     \
                     const unsigned char *mask, REAL *dhin, int accumulate, REAL *scratch),    \
  (B, H, ract, z, hin, drh, mask, dhin, accumulate, scratch))                                  \
/* One SimpleRNN step after the recurrent product: z [B,H] := act(z); h_in, h_out, out,       \
 * out_prev as in fl_lstm_fwd_step. */                                                         \
X(fl_rnn_fwd_step, (int B, int H, fl_act act, REAL *z, const unsigned char *mask,              \
                    const REAL *h_in, REAL *h_out, const REAL *out_prev, REAL *out),           \
  (B, H, act, z, mask, h_in, h_out, out_prev, out))                                            \
/* Its backward: z [B,H] := (dh + dy + dout) act'(.) (masked rows 0, dout += dy); dy's rows   \
 * ldy apart. scratch [H] */                                                                   \
X(fl_rnn_bwd_step, (int B, int H, fl_act act, REAL *z, const unsigned char *mask,              \
                    const REAL *dy, long ldy, const REAL *dh, REAL *dout, REAL *scratch),      \
  (B, H, act, z, mask, dy, ldy, dh, dout, scratch))                                            \
/* C[M,N] += A[M,K] W[K,N], row-major with leading dimensions: the per-step recurrent         \
 * product, register-blocked, W read in place (no packing). */                                 \
X(fl_matmul_acc, (int M, int N, int K, const REAL *A, int lda, const REAL *W, int ldw,         \
                  REAL *C, int ldc), (M, N, K, A, lda, W, ldw, C, ldc))                        \
/* The same product with every row computed the same way whatever M: for input projections   \
 * of a few rows, whose bits must not depend on how their rows are split into calls. */        \
X(fl_matmul_rows_acc, (int M, int N, int K, const REAL *A, int lda, const REAL *W, int ldw,    \
                       REAL *C, int ldc), (M, N, K, A, lda, W, ldw, C, ldc))                   \
/* c[N] += a[K] W[K,N] (row stride ldw), one row: rows_per_pass 8 reads 8 rows of W per pass \
 * over c from rows of FL_GEMV_ONE_ROW_BYTES on (else one row a pass); the same bits either    \
 * way, each element summed over the rows in order (bench/RESULTS.md, "Kernel thresholds"). */ \
X(fl_gemv_acc, (int rows_per_pass, int N, int K, const REAL *a, const REAL *W, int ldw,        \
                REAL *c), (rows_per_pass, N, K, a, W, ldw, c))                                 \
/* y[N] += W[N,K] x[K] (row stride ldw): the one-row product with a transposed weight. */     \
X(fl_gemv_t_acc, (int N, int K, const REAL *W, int ldw, const REAL *x, REAL *y),               \
  (N, K, W, ldw, x, y))                                                                        \
/* C[M,N] += A[M,K] W[K,N] with W packed by fl_pack_panels (column panels of FL_PANEL_BYTES). */\
X(fl_matmul_packed_acc, (int M, int N, int K, const REAL *A, int lda, const REAL *Wp,          \
                         REAL *C, int ldc), (M, N, K, A, lda, Wp, C, ldc))

#endif
