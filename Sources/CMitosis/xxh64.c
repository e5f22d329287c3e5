// XXH64's stripe loop, from its published specification: each 8-byte lane of a stripe goes
// through acc = rotl(acc + lane * PRIME2, 31) * PRIME1. With AVX-512 (F, DQ, VL) one `vpmullq`
// multiplies the four lanes of a hash at once, or the eight lanes of two hashes fed the same
// bytes: a 1 GiB dump hashes every byte twice, and this loop was a fifth of its CPU time.
#include "mitosis_xxh64.h"
#include <string.h>

#define PRIME1 0x9E3779B185EBCA87ULL
#define PRIME2 0xC2B2AE3D27D4EB4FULL

static inline uint64_t rotl(uint64_t value, int bits) { return (value << bits) | (value >> (64 - bits)); }
static inline uint64_t round1(uint64_t acc, uint64_t lane) { return rotl(acc + lane * PRIME2, 31) * PRIME1; }

void mitosis_xxh64_stripes_portable(uint64_t a[4], uint64_t *b, const void *bytes, size_t stripes) {
    const unsigned char *p = bytes;
    uint64_t a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
    uint64_t b0 = b ? b[0] : 0, b1 = b ? b[1] : 0, b2 = b ? b[2] : 0, b3 = b ? b[3] : 0;
    for (size_t i = 0; i < stripes; i++, p += 32) {
        uint64_t l[4];
        memcpy(l, p, 32);  // little-endian lanes (x86-64, aarch64)
        a0 = round1(a0, l[0]); a1 = round1(a1, l[1]); a2 = round1(a2, l[2]); a3 = round1(a3, l[3]);
        if (b) { b0 = round1(b0, l[0]); b1 = round1(b1, l[1]); b2 = round1(b2, l[2]); b3 = round1(b3, l[3]); }
    }
    a[0] = a0; a[1] = a1; a[2] = a2; a[3] = a3;
    if (b) { b[0] = b0; b[1] = b1; b[2] = b2; b[3] = b3; }
}

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

__attribute__((target("avx512f,avx512dq,avx512vl")))
static void stripes_avx512(uint64_t a[4], uint64_t *b, const unsigned char *p, size_t stripes) {
    if (b) {
        // Lanes 0-3: a's, 4-7: b's; each stripe is loaded once into both halves.
        const __m512i prime1 = _mm512_set1_epi64((long long)PRIME1), prime2 = _mm512_set1_epi64((long long)PRIME2);
        __m512i acc = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const void *)a)), _mm256_loadu_si256((const void *)b), 1);
        for (size_t i = 0; i < stripes; i++, p += 32) {
            __m512i lanes = _mm512_broadcast_i64x4(_mm256_loadu_si256((const void *)p));
            acc = _mm512_mullo_epi64(_mm512_rol_epi64(_mm512_add_epi64(acc, _mm512_mullo_epi64(lanes, prime2)), 31), prime1);
        }
        _mm256_storeu_si256((void *)a, _mm512_castsi512_si256(acc));
        _mm256_storeu_si256((void *)b, _mm512_extracti64x4_epi64(acc, 1));
        return;
    }
    const __m256i prime1 = _mm256_set1_epi64x((long long)PRIME1), prime2 = _mm256_set1_epi64x((long long)PRIME2);
    __m256i acc = _mm256_loadu_si256((const void *)a);
    for (size_t i = 0; i < stripes; i++, p += 32) {
        __m256i lanes = _mm256_loadu_si256((const void *)p);
        acc = _mm256_mullo_epi64(_mm256_rol_epi64(_mm256_add_epi64(acc, _mm256_mullo_epi64(lanes, prime2)), 31), prime1);
    }
    _mm256_storeu_si256((void *)a, acc);
}

// CPUID leaf 7 for the instructions, XGETBV for the kernel saving the ZMM registers.
static int detect_avx512(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return 0;  // OSXSAVE
    unsigned int xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 0xE6) != 0xE6) return 0;  // SSE, AVX, opmask, ZMM state
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return 0;
    const unsigned int f = 1u << 16, dq = 1u << 17, vl = 1u << 31;
    return (ebx & (f | dq | vl)) == (f | dq | vl);
}

int mitosis_xxh64_vectorized(void) {
    // 0: not known yet, 1: no, 2: yes. Every thread computes the same answer.
    static int known = 0;
    int value = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (value == 0) {
        value = detect_avx512() ? 2 : 1;
        __atomic_store_n(&known, value, __ATOMIC_RELAXED);
    }
    return value == 2;
}

void mitosis_xxh64_stripes(uint64_t a[4], uint64_t *b, const void *bytes, size_t stripes) {
    if (mitosis_xxh64_vectorized()) stripes_avx512(a, b, bytes, stripes);
    else mitosis_xxh64_stripes_portable(a, b, bytes, stripes);
}
#else
int mitosis_xxh64_vectorized(void) { return 0; }

void mitosis_xxh64_stripes(uint64_t a[4], uint64_t *b, const void *bytes, size_t stripes) {
    mitosis_xxh64_stripes_portable(a, b, bytes, stripes);
}
#endif
