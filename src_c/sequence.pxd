# The problem a sequence kernel works on, one struct per pass, filled once per call by the
# driver (src_c/driver.pxi) and the cell's own forward/backward; the time loops take a
# pointer to it plus the slice they run (batch rows [b0, b0+nb), steps [s0, s1)).
#
# Arrays are void pointers to the dtype of the call (the cells cast them to `floating *`);
# shapes in the notation of fastlstm/backends/oracle/__init__.py (the inputs I are `In`
# here: C's complex.h defines a macro I). IN: read; OUT: written;
# WORK: the kernels' own. T, element offsets and row strides are 64-bit; B, I, H, G stay
# `int` (the products take them so) and the driver checks them.
from gates cimport fl_act, fl_barrier
from lowp cimport fl_qmat
from products cimport Settings


cdef struct LayerNorm:
    # Layer norm of a pass (src_c/layer_norm.pxi). IN: g [2,G] the gains of LN(x W) and
    # LN(h U) (the GRU's: of its [T,B,3H] products), or NULL for none; h [2,H] the LSTM's
    # gamma_h, beta_h (else NULL). Forward's OUT when training (else NULL), backward's IN:
    # XN [T,B,G] LN(x W) and XS [T,B] its 1/sqrt(var + eps), RN, RS the same of h U, CN
    # [T,B,H], CS [T,B] of the LSTM's c_t.
    void *g
    void *h
    void *XN
    void *XS
    void *RN
    void *RS
    void *CN
    void *CS


cdef struct Fwd:
    Settings cfg                 # IN: threads, product policy and thresholds of this call
    # IN: sizes. G is the width of U [H,G]; ZW the width of a row of Z (G, but 4H for the GRU
    # with reset_after, whose Z keeps the recurrent h block apart).
    long T
    int B, In, H, G, ZW
    bint go_backwards, training, return_sequences
    # IN: the cell's options.
    fl_act act, ract
    bint coupled                 # LSTM: coupled input-forget gate (G = 3H)
    bint reset_after             # GRU: the cuDNN form
    bint pipeline                # the cell's projection may run beside its loop
    int wsplit                   # W's columns [0, wsplit) and [wsplit, G) packed apart (0: one)
    int usplit                   # the same for U
    int nchunks                  # threads of the time loop, each its batch rows
    long scratch                 # WORK elements a thread of the loop takes from `scratch`
    # IN: x [T,B,I], row (t, b) at x + t*sxt + b*sxb; each chunk of `chunk` steps is copied
    # time-major into `stage` first when it is not NULL (chunk_rows).
    void *x
    long sxt
    long sxb
    void *stage
    long chunk
    # IN, per chunk: its rows of x [nrows, I], time-major, and the first time Z holds.
    void *X
    long zt0
    # IN: weights. W [I,G]; Wp, Wp2 its packed blocks (NULL: read in place); bias: a row of
    # Z's width added by the projection (NULL: none). U [H,G]; Up, Up2 packed by pack_b, or
    # Upan, Upan2 in panels (all NULL: read in place). P: LSTM peepholes [3,H] or NULL.
    void *W
    void *Wp
    void *Wp2
    void *bias
    void *U
    void *Up
    void *Up2
    void *Upan
    void *Upan2
    void *P
    # IN: quantized inference (int8/bfloat16, float32 calls only): W's and U's blocks as
    # the reduced-precision products take them (split as Wp/Wp2, Up/Up2), W and U NULL;
    # all NULL for float weights.
    const fl_qmat *qW
    const fl_qmat *qW2
    const fl_qmat *qU
    const fl_qmat *qU2
    bint qsplit                  # the quantized per-step products split their columns over
                                 # the threads (one thread's loop, a large U; no pipeline)
    # IN: mask [T,B] or NULL; rdrop: recurrent dropout mask [B,H] or NULL.
    const unsigned char *mask
    void *rdrop
    # OUT: Z [*,B,ZW] the projection of the chunk, then the gates (all T steps when
    # training); HIN [T,B,H] h_{t-1} as U saw it; HPREV [T,B,H] h_{t-1} (GRU); C [T,B,H]
    # the cell states (LSTM); RH [T,B,H] r*hin (GRU, reset_after=0; [B,H] at inference);
    # Y [T,B,H] the outputs or out [B,H] the masked last output; h, c [B,H] the state.
    void *Z
    void *HIN
    void *HPREV
    void *C
    void *RH
    void *Y
    void *out
    void *h
    void *c
    void *hd                     # WORK [B,H]: h*rdrop at inference
    # IN: the LSTM's one-row split of the units over ncols threads (0: none): their work
    # space, the state h double-buffered [2,H], and their barrier.
    int ncols
    void *work
    void *hbuf
    fl_barrier *bar
    LayerNorm ln                 # layer norm (g NULL: none)


cdef struct Bwd:
    Settings cfg
    # IN: sizes and options, as in Fwd.
    long T
    int B, In, H, G, ZW
    bint go_backwards
    fl_act act, ract
    bint coupled
    bint reset_after
    int nchunks
    long scratch                 # WORK elements per thread of the loop
    long acc                     # per-thread accumulator elements (LSTM peepholes: 3H)
    bint own                     # the many-row products on our packed GEMM (else BLAS)
    # IN: mixed_bfloat16 training (float32 only): U^T's blocks in bf16 for the per-step
    # dh = dz U^T (qUT: all of U^T, or U_zr^T for the GRU without reset_after, whose
    # qUT2 is U_h^T); NULL otherwise. With them the loop leaves dZ in Z and param_grads
    # is not run (the weight and input gradients are bf16 products of the caller).
    const fl_qmat *qUT
    const fl_qmat *qUT2
    # IN/OUT: Z [T,B,ZW] the saved gates in, their gradients out.
    void *Z
    # IN: what forward saved: X [T,B,I] (times the input dropout mask), HIN [T,B,H] the
    # input of U, HPREV (GRU), RH (GRU, reset_after=0), C [T,B,H] and c0 [B,H] (LSTM).
    void *X
    void *HIN
    void *HPREV
    void *RH
    void *C
    void *c0
    # IN: weights, as in Fwd; UT [G,H] U^T row-major, UTp, UTp2 U^T packed (or NULL).
    void *W
    void *WTp
    void *WTp2
    void *U
    void *UT
    void *UTp
    void *UTp2
    void *P
    const unsigned char *mask
    void *rdrop
    void *idrop                  # input dropout mask [B,I] or NULL
    # IN: DY [T,B,H] steps dys and rows dyr apart, or NULL.
    void *DY
    long dys
    long dyr
    # IN/OUT: dh [B,H] (dc: LSTM) the gradients of the final state in, of the initial one
    # out; dout [B,H] the output gradient carried over masked steps (mask only); dhp [B,H]
    # where the recurrent product writes dh_{t-1} before it is merged (dh itself when there
    # is nothing to merge); drh [B,H] WORK (GRU, reset_after=0).
    void *dh
    void *dc
    void *dout
    void *dhp
    void *drh
    # OUT: dX [T,B,I], dW [I,G], dU [H,G], db [ZW] (column sums of dZ; NULL without bias);
    # ones [T*B] for BLAS's db.
    void *dX
    void *dW
    void *dU
    void *db
    void *ones
    # IN: layer norm, as in Fwd (what forward saved; backward writes the gradients of the
    # normalized products over XN and RN); lnacc: where a thread's accumulator (acc) holds
    # the gains' gradients: [G] of g's row 1, then the LSTM's [2,H] of h.
    LayerNorm ln
    long lnacc
    void *lnpart                 # WORK: ln_param_grads's per-thread sums [threads, 2, G]
