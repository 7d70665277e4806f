# Cython view of gates.h, with fused wrappers that pick the float or double kernel.
from blas cimport floating

cdef extern from "gates.h" nogil:
    ctypedef struct fl_act:
        int kind
        double alpha
        double beta
    int fl_isa_level()
    const char *fl_isa_name()
    void fl_force_isa_level(int level)
    void fl_act_forward_f(fl_act act, float *z, long n)
    void fl_act_forward_d(fl_act act, double *z, long n)
    void fl_act_grad_f(fl_act act, const float *y, const float *g, float *out, long n)
    void fl_act_grad_d(fl_act act, const double *y, const double *g, double *out, long n)
    void fl_mul_f(const float *a, const float *b, float *out, long n)
    void fl_mul_d(const double *a, const double *b, double *out, long n)
    void fl_merge_rows_f(int B, int H, const unsigned char *mask, const float *scale,
                         const float *src, float *dst)
    void fl_merge_rows_d(int B, int H, const unsigned char *mask, const double *scale,
                         const double *src, double *dst)
    void fl_lstm_fwd_step_f(int B, int H, int coupled, fl_act act, fl_act ract, float *z,
                            const float *peep, const unsigned char *mask, const float *h_in,
                            const float *c_in, float *h_out, float *c_out,
                            const float *out_prev, float *out, float *scratch)
    void fl_lstm_fwd_step_d(int B, int H, int coupled, fl_act act, fl_act ract, double *z,
                            const double *peep, const unsigned char *mask, const double *h_in,
                            const double *c_in, double *h_out, double *c_out,
                            const double *out_prev, double *out, double *scratch)
    void fl_lstm_bwd_step_f(int B, int H, int coupled, fl_act act, fl_act ract, float *z,
                            const float *c, const float *c_prev, const float *peep,
                            const unsigned char *mask, const float *dy, const float *dh,
                            float *dc, float *dout, float *dpeep, float *scratch)
    void fl_lstm_bwd_step_d(int B, int H, int coupled, fl_act act, fl_act ract, double *z,
                            const double *c, const double *c_prev, const double *peep,
                            const unsigned char *mask, const double *dy, const double *dh,
                            double *dc, double *dout, double *dpeep, double *scratch)


cdef inline fl_act make_act(object activation):
    """The C description of a fastlstm.activations.Activation."""
    cdef fl_act a
    a.kind = activation.code
    a.alpha = activation.alpha
    a.beta = activation.beta
    return a


cdef inline void act_forward(fl_act act, floating *z, long n) noexcept nogil:
    if floating is float:
        fl_act_forward_f(act, z, n)
    else:
        fl_act_forward_d(act, z, n)


cdef inline void mul(const floating *a, const floating *b, floating *out, long n) noexcept nogil:
    if floating is float:
        fl_mul_f(a, b, out, n)
    else:
        fl_mul_d(a, b, out, n)


cdef inline void merge_rows(int B, int H, const unsigned char *mask, const floating *scale,
                            const floating *src, floating *dst) noexcept nogil:
    if floating is float:
        fl_merge_rows_f(B, H, mask, scale, src, dst)
    else:
        fl_merge_rows_d(B, H, mask, scale, src, dst)
