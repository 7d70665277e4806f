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
static const long ITERS = 20000000;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* 24 independent accumulators zmm0-zmm23, in asm: written with intrinsics, GCC copied the
 * accumulators between registers (and to the stack) inside the loop and measured those. */
#define R8(op, a, b, x, y, z, w, u, v, s, t) \
    op " " b ", " a ", %%zmm" #x "\n\t" op " " b ", " a ", %%zmm" #y "\n\t"          \
    op " " b ", " a ", %%zmm" #z "\n\t" op " " b ", " a ", %%zmm" #w "\n\t"          \
    op " " b ", " a ", %%zmm" #u "\n\t" op " " b ", " a ", %%zmm" #v "\n\t"          \
    op " " b ", " a ", %%zmm" #s "\n\t" op " " b ", " a ", %%zmm" #t "\n\t"
#define CHAINS24(op) R8(op, "%%zmm30", "%%zmm31", 0, 1, 2, 3, 4, 5, 6, 7)                  \
    R8(op, "%%zmm30", "%%zmm31", 8, 9, 10, 11, 12, 13, 14, 15)                                \
    R8(op, "%%zmm30", "%%zmm31", 16, 17, 18, 19, 20, 21, 22, 23)
#define ZERO24 R8("vpxord", "%%zmm0", "%%zmm0", 0, 1, 2, 3, 4, 5, 6, 7)                    \
    R8("vpxord", "%%zmm0", "%%zmm0", 8, 9, 10, 11, 12, 13, 14, 15)                            \
    R8("vpxord", "%%zmm0", "%%zmm0", 16, 17, 18, 19, 20, 21, 22, 23)
#define CLOBBER24 "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",     \
    "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17",           \
    "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm30", "xmm31", "cc"

static void *run_vnni(void *out) {
    long n = ITERS;
    const int a = 0x03030303, b = 0x7e7e7e7e;
    __asm__ volatile("vpbroadcastd %[a], %%zmm30\n\t"
                     "vpbroadcastd %[b], %%zmm31\n\t" ZERO24
                     "1:\n\t" CHAINS24("vpdpbusd") "dec %[n]\n\t"
                     "jnz 1b\n\t"
                     : [n] "+r"(n) : [a] "r"(a), [b] "r"(b) : CLOBBER24);
    *(long *)out = n;
    return NULL;
}

static void *run_bf16(void *out) {
    long n = ITERS;
    const int a = 0x3f803f80, b = 0x3a833a83;
    __asm__ volatile("vpbroadcastd %[a], %%zmm30\n\t"
                     "vpbroadcastd %[b], %%zmm31\n\t" ZERO24
                     "1:\n\t" CHAINS24("vdpbf16ps") "dec %[n]\n\t"
                     "jnz 1b\n\t"
                     : [n] "+r"(n) : [a] "r"(a), [b] "r"(b) : CLOBBER24);
    *(long *)out = n;
    return NULL;
}

/* The best of 5 runs (the machines are shared). */
static double measure(void *(*fn)(void *), int threads, double ops_per_instr) {
    pthread_t t[8];
    long out[8];
    double best = 0;
    int i, r;
    for (r = 0; r < 5; r++) {
        const double t0 = now();
        for (i = 0; i < threads; i++) pthread_create(&t[i], NULL, fn, &out[i]);
        for (i = 0; i < threads; i++) pthread_join(t[i], NULL);
        const double rate = (double)ITERS * CHAINS * ops_per_instr * threads / (now() - t0) / 1e9;
        best = rate > best ? rate : best;
    }
    return best;
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
