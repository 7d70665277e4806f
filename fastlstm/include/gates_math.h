/* Branch-free exp, sigmoid and tanh that compilers vectorize (no libm calls).
 *
 * Shared by the CPU kernels (src_c/gates.c, per ISA) and the CUDA kernels of the cupy backend
 * (fastlstm/backends/cuda/), so both compute the gates with the same functions. Under nvcc or
 * NVRTC (__CUDACC__) the functions are __device__ and no system header is included (NVRTC has
 * none); bit casts use the CUDA intrinsics there and memcpy on the host.
 *
 * exp: x = n*ln2 + r with |r| <= ln2/2 (Cody-Waite split of ln2), exp(r) by its Taylor
 * polynomial (degree 7 float / 13 double, truncation error below half an ulp), 2^n built
 * in the exponent bits; n is read from the low mantissa bits after adding 1.5*2^p, which
 * rounds to nearest without a rounding instruction. Inputs are clamped to the normal range.
 * tanh: float as e/(e+2) with e = expm1(2x) (below); double by its odd Taylor series near 0
 * (keeps relative accuracy), 1 - 2/(exp(2|x|)+1) elsewhere.
 * Measured against NumPy in tests/test_gates_math.py.
 */
#ifndef FASTLSTM_GATES_MATH_H
#define FASTLSTM_GATES_MATH_H

#if defined(__CUDACC__)
#define FL_INLINE static __forceinline__ __device__
typedef int fl_i32;
typedef long long fl_i64;
#define fl_f32_bits(x) __float_as_int(x)
#define fl_bits_f32(k) __int_as_float(k)
#define fl_f64_bits(x) __double_as_longlong(x)
#define fl_bits_f64(k) __longlong_as_double(k)
#else
#include <stdint.h>
#include <string.h>
#define FL_INLINE static inline __attribute__((always_inline))
typedef int32_t fl_i32;
typedef int64_t fl_i64;
FL_INLINE fl_i32 fl_f32_bits(float x) { fl_i32 k; memcpy(&k, &x, sizeof k); return k; }
FL_INLINE float fl_bits_f32(fl_i32 k) { float x; memcpy(&x, &k, sizeof x); return x; }
FL_INLINE fl_i64 fl_f64_bits(double x) { fl_i64 k; memcpy(&k, &x, sizeof k); return k; }
FL_INLINE double fl_bits_f64(fl_i64 k) { double x; memcpy(&x, &k, sizeof x); return x; }
#endif

/* float x (in the normal range) = n ln2 + r: returns r, *s = 2^n. Shared by exp and tanh. */
FL_INLINE float fl_reduce_ln2_f(float x, float *s) {
    float kf = x * 1.44269504088896341f + 12582912.0f;   /* 1.5 * 2^23 */
    float n = kf - 12582912.0f;
    fl_i32 k = fl_f32_bits(kf) - 0x4B400000;             /* bits of 1.5 * 2^23 */
    float r = x - n * 0.693359375f;
    *s = fl_bits_f32((fl_i32)((unsigned int)(k + 127) << 23));   /* unsigned: no UB for NaN */
    return r - n * -2.12194440e-4f;
}

FL_INLINE float fl_exp_f(float x) {
    float s;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float r = fl_reduce_ln2_f(x, &s);
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * s;
}

FL_INLINE double fl_exp_d(double x) {
    x = x < -708.0 ? -708.0 : x;
    x = x > 709.0 ? 709.0 : x;
    double kd = x * 1.4426950408889634074 + 6755399441055744.0;   /* 1.5 * 2^52 */
    double n = kd - 6755399441055744.0;
    fl_i64 k = fl_f64_bits(kd) - 0x4338000000000000LL;
    double r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    double p = 1.0 / 6227020800.0;              /* 1/13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    return p * fl_bits_f64((fl_i64)((unsigned long long)(k + 1023) << 52));
}

FL_INLINE float fl_sigmoid_f(float x) { return 1.0f / (1.0f + fl_exp_f(-x)); }
FL_INLINE double fl_sigmoid_d(double x) { return 1.0 / (1.0 + fl_exp_d(-x)); }

/* float: tanh(x) = e / (e + 2) with e = expm1(2x) = 2^n expm1(r) + (2^n - 1), expm1(r) by
 * r times its Taylor quotient (degree 8): one reduction, one polynomial and one division
 * (26% faster than the series near 0 plus exp elsewhere; 1.9 ulp at most against 1.4,
 * measured over [-12, 12] in steps of 1e-5). With n = 0 (|x| < 0.17) e is expm1(2x) itself,
 * so small x keep their relative accuracy. |2x| is clamped to 20, where tanh rounds to +-1;
 * a zero keeps its sign. */
FL_INLINE float fl_tanh_f(float x) {
    float s;                                             /* 2^n */
    float y = 2.0f * x;
    y = y < -20.0f ? -20.0f : y;
    y = y > 20.0f ? 20.0f : y;
    float r = fl_reduce_ln2_f(y, &s);
    float q = 1.0f / 40320.0f;
    q = q * r + 1.0f / 5040.0f;
    q = q * r + 1.0f / 720.0f;
    q = q * r + 1.0f / 120.0f;
    q = q * r + 1.0f / 24.0f;
    q = q * r + 1.0f / 6.0f;
    q = q * r + 0.5f;
    q = q * r + 1.0f;
    float e = s * (r * q) + (s - 1.0f);
    return x == 0.0f ? x : e / (e + 2.0f);
}

FL_INLINE double fl_tanh_d(double x) {
    double ax = x < 0 ? -x : x;
    double z = x * x;
    double p = -3.927832388331683e-05;
    p = p * z + 9.691537956929451e-05;
    p = p * z - 0.00023912911424355248;
    p = p * z + 0.000590027440945586;
    p = p * z - 0.0014558343870513183;
    p = p * z + 0.003592128036572481;
    p = p * z - 0.008863235529902197;
    p = p * z + 0.021869488536155203;
    p = p * z - 0.05396825396825397;
    p = p * z + 0.13333333333333333;
    p = p * z - 0.3333333333333333;
    double small = x + x * z * p;
    double big = 1.0 - 2.0 / (fl_exp_d(2.0 * ax) + 1.0);
    big = x < 0 ? -big : big;
    return ax < 0.25 ? (x == 0.0 ? x : small) : big;       /* a zero keeps its sign */
}

#endif
