// Optional compression of a checkpoint's page data (`mitosis dump --compress`): Zstandard at a
// fast level, one frame per run of pages. Only these wrappers see <zstd.h>, so the module map
// needs no header of libzstd-dev beyond this target's build.
#ifndef MITOSIS_ZSTD_H
#define MITOSIS_ZSTD_H
#include <stddef.h>

// A compression context, reused for every run of one image; NULL when out of memory.
void *mitosis_zstd_cctx_create(void);
void mitosis_zstd_cctx_free(void *cctx);
// Compresses `size` bytes into `out` (`capacity` bytes) at `level`; returns the frame's length,
// or 0 when it does not fit (the caller then stores the bytes as they are) or on an error.
size_t mitosis_zstd_compress(void *cctx, void *out, size_t capacity, const void *in, size_t size, int level);
// Decompresses the frame of `size` bytes at `in` into `out`, writing at most `capacity` bytes;
// returns the length written, or (size_t)-1 on damaged, hostile or oversized input.
size_t mitosis_zstd_decompress(void *out, size_t capacity, const void *in, size_t size);
#endif
