/* The peak of the reduced-precision dot-product instructions on this CPU: 24 independent
 * AVX-512 chains of vpdpbusd (int8: 64 multiply-adds, 128 ops per instruction) and of
 * vdpbf16ps (bf16: 32 multiply-adds, 64 ops), no memory traffic, on 1 and 2 threads
 * (compare bench/fma_peak.c for float32 FMA); and how fast one core reads a buffer of 1 and
 * 4 MiB over and over (the bound of a one-row product streaming its weights):
 *
 *     gcc -O2 -pthread -mavx512f -mavx512bw -mavx512vnni -mavx512bf16 bench/lowp_peak.c \
 *         -o /tmp/lowp_peak && /tmp/lowp_peak
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CHAINS 24
static const long ITERS = 50000000;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void *run_vnni(void *out) {
    __m512i acc[CHAINS];
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    int i;
    long k, sum = 0;
    for (i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_epi32(i);
    for (k = 0; k < ITERS; k++) {
#pragma GCC unroll 24
        for (i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    }
    for (i = 0; i < CHAINS; i++) sum += _mm512_reduce_add_epi32(acc[i]);
    *(long *)out = sum;
    return NULL;
}

static void *run_bf16(void *out) {
    __m512 acc[CHAINS];
    const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3a83);
    int i;
    long k;
    float sum = 0;
    for (i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (k = 0; k < ITERS; k++) {
#pragma GCC unroll 24
        for (i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
    for (i = 0; i < CHAINS; i++) sum += _mm512_reduce_add_ps(acc[i]);
    *(long *)out = (long)sum;
    return NULL;
}

static double measure(void *(*fn)(void *), int threads, double ops_per_instr) {
    pthread_t t[8];
    long out[8];
    int i;
    const double t0 = now();
    for (i = 0; i < threads; i++) pthread_create(&t[i], NULL, fn, &out[i]);
    for (i = 0; i < threads; i++) pthread_join(t[i], NULL);
    const double s = now() - t0;
    return (double)ITERS * CHAINS * ops_per_instr * threads / s / 1e9;
}

/* GB/s of reading `bytes` (64-byte loads into 8 accumulators), best of 20 passes. */
static double read_rate(long bytes) {
    unsigned char *buf = aligned_alloc(64, (size_t)bytes);
    double best = 0;
    long sum = 0;
    int pass, i;
    for (i = 0; i < bytes; i++) buf[i] = (unsigned char)i;
    for (pass = 0; pass < 20; pass++) {
        __m512i s[8];
        long off;
        const int reps = (int)((64L << 20) / bytes);
        for (i = 0; i < 8; i++) s[i] = _mm512_setzero_si512();
        const double t0 = now();
        for (int r = 0; r < reps; r++)
            for (off = 0; off < bytes; off += 512)
                for (i = 0; i < 8; i++)
                    s[i] = _mm512_add_epi32(s[i], _mm512_load_si512(buf + off + 64 * i));
        const double rate = (double)bytes * reps / (now() - t0) / 1e9;
        best = rate > best ? rate : best;
        for (i = 0; i < 8; i++) sum += _mm512_reduce_add_epi32(s[i]);
    }
    free(buf);
    return sum == 42 ? -best : best;
}

int main(void) {
    int threads;
    printf("read 1 MiB over and over, one core: %.0f GB/s\n", read_rate(1L << 20));
    printf("read 4 MiB over and over, one core: %.0f GB/s\n", read_rate(4L << 20));
    for (threads = 1; threads <= 2; threads++) {
        printf("vpdpbusd zmm, %d thread(s): %.0f GOP/s (int8, 2 ops per multiply-add)\n",
               threads, measure(run_vnni, threads, 128.0));
        printf("vdpbf16ps zmm, %d thread(s): %.0f GFLOP/s (bf16, 2 per multiply-add)\n",
               threads, measure(run_bf16, threads, 64.0));
    }
    return 0;
}
