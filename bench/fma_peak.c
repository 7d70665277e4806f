/* The FMA peak of one core, float32: 24 independent AVX-512 FMA chains (enough to cover the
 * latency of two FMA pipes), no memory traffic. Run one copy per core at once for the
 * machine's peak:
 *
 *     gcc -O2 -mavx512f bench/fma_peak.c -o /tmp/fma_peak
 *     /tmp/fma_peak & /tmp/fma_peak; wait
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

int main(void) {
    __m512 acc[24];
    const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    struct timespec t0, t1;
    const long n = 200000000;
    float sum = 0;
    int i;
    for (i = 0; i < 24; i++) acc[i] = _mm512_set1_ps((float)i);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long k = 0; k < n; k++) {
#pragma GCC unroll 24
        for (i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    for (i = 0; i < 24; i++) sum += _mm512_reduce_add_ps(acc[i]);
    const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%.1f GFLOP/s on one core (checksum %g)\n", (double)n * 24 * 16 * 2 / s / 1e9, sum);
    return 0;
}
