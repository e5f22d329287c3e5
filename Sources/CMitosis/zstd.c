#include "mitosis_zstd.h"
#include <zstd.h>

void *mitosis_zstd_cctx_create(void) { return ZSTD_createCCtx(); }

void mitosis_zstd_cctx_free(void *cctx) { ZSTD_freeCCtx(cctx); }

size_t mitosis_zstd_compress(void *cctx, void *out, size_t capacity, const void *in, size_t size, int level) {
    size_t written = ZSTD_compressCCtx(cctx, out, capacity, in, size, level);
    return ZSTD_isError(written) ? 0 : written;
}

size_t mitosis_zstd_decompress(void *out, size_t capacity, const void *in, size_t size) {
    // ZSTD_decompress never writes past `capacity` and checks every offset and length of the
    // frame against its input, whatever the frame header claims.
    size_t written = ZSTD_decompress(out, capacity, in, size);
    return ZSTD_isError(written) ? (size_t)-1 : written;
}
