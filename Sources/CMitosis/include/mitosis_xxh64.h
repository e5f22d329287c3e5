// The bulk loop of XXH64 (Sources/MitosisImage/Checksum.swift has the rest of the hash): whole
// 32-byte stripes fed to the four lanes of one or two hashes, with AVX-512 where the CPU has it.
#ifndef MITOSIS_XXH64_H
#define MITOSIS_XXH64_H
#include <stddef.h>
#include <stdint.h>

// Feeds `stripes` 32-byte stripes at `bytes` to the lanes of `a` and, unless `b` is NULL, to the
// lanes of `b` too: the same bytes hashed twice in one pass (a run's checksum and the data
// file's), loaded once.
void mitosis_xxh64_stripes(uint64_t a[4], uint64_t *b, const void *bytes, size_t stripes);

// The same without AVX-512 (what CPUs without it run; for tests on CPUs with it).
void mitosis_xxh64_stripes_portable(uint64_t a[4], uint64_t *b, const void *bytes, size_t stripes);

// Whether `mitosis_xxh64_stripes` uses AVX-512 on this CPU (for benchmarks and tests).
int mitosis_xxh64_vectorized(void);
#endif
