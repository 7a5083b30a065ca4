/*
 * Segment compression and checksums of the shuffle.
 *
 * A segment is one partition's bytes in a spill or data file: raw bytes
 * (SP_CODEC_NONE), one LZ4 frame or one Zstandard frame. Frames start lazily
 * at the first byte written, so an empty segment is 0 bytes and never a frame
 * of its own; that keeps empty partitions free in the index and lets the
 * merge concatenate segments of a partition byte for byte, since both frame
 * formats decode a run of frames as the concatenation of their contents.
 * Frames carry no content checksum: every segment is checksummed as stored
 * (CRC-32C or XXH3-64) by the writer and verified by the reader, which also
 * covers the damage a checksum-less LZ4 frame would decode into garbage.
 *
 * Encoding is push-based into a sink. The encoder owns one output buffer
 * (64 KiB staging for raw bytes, one LZ4 block's worst case, or zstd's
 * recommended stream output size) and calls the sink only when that buffer
 * is full or the segment ends, so records written a few bytes at a time
 * still reach the file in large writes; raw writes of 4 KiB or more go to
 * the sink as they are, and so does the input of an LZ4 block stored raw.
 * A caller that assembles its input from pieces (the sorter's gather of
 * records in partition order) writes it in place instead: the window is
 * the raw staging buffer or the LZ4 block being filled, so those bytes are
 * copied once, by the caller, before they are compressed or sunk.
 *
 * LZ4 frames are written here, not by LZ4F: 64 KiB independent blocks, each
 * compressed with LZ4's block API or stored raw (the frame format's
 * uncompressed block) when compression does not pay, so any LZ4 frame
 * decoder reads them. Random values, as in TeraSort's or the synthetic
 * job's records, do not compress; after a block that fails to shrink by
 * 1/8 the encoder stores the next blocks raw without trying, for a backoff
 * that doubles per miss up to 4 MiB, and tries again after it.
 *
 * Decoding is pull-based over an in-memory input (a fetched block or a
 * mapped file range) that may hold several concatenated frames. The input
 * is untrusted: every library error is SP_ERR_CORRUPT, input that ends
 * inside a frame is SP_ERR_CORRUPT, the zstd window is capped at 2^27 bytes
 * so that a hostile header cannot make the decoder allocate gigabytes, and
 * nothing is written past out + cap. A read that has produced bytes stops
 * at the end of a frame (and before reporting input that ends early), so
 * the bytes of whole frames reach the caller before the error of a later one.
 *
 * Encoders and decoders are single-threaded objects reused for many
 * segments; tasks keep one of each.
 */
#include "codec.h"
#include "shuffle_int.h"

#include <string.h>

#define LZ4F_STATIC_LINKING_ONLY
#include <isa-l/crc.h>
#include <lz4.h>
#include <lz4frame.h>
#include <zstd.h>
#include <zstd_errors.h>

/* Input fed to LZ4 per call: one 64 KiB block, so output stays bounded. */
#define SP_CODEC_CHUNK ((size_t)64 * 1024)
/* Writes at least this long bypass the raw (codec none) staging buffer. */
#define SP_CODEC_NONE_DIRECT ((size_t)4096)
/*
 * LZ4 frame format (lz4_Frame_format.md): magic, FLG = version 01 with
 * independent blocks and no checksums, BD = 64 KiB blocks, then a header
 * checksum byte; each block has a little-endian 32-bit size whose top bit
 * marks it stored uncompressed; a zero size ends the frame.
 */
#define SP_LZ4_MAGIC   0x184D2204u
#define SP_LZ4_FLG     0x60
#define SP_LZ4_BD      0x40
#define SP_LZ4_HEADER  7
#define SP_LZ4_RAW_BIT 0x80000000u
/*
 * Adaptive compression: a block that LZ4 does not shrink by at least
 * 1/SP_LZ4_MIN_GAIN is a miss, and after a miss the next `backoff` blocks
 * are stored raw without trying, backoff doubling per consecutive miss up
 * to SP_LZ4_BACKOFF_MAX blocks (4 MiB): incompressible data costs about
 * one trial per 4 MiB instead of a failed compression of every byte.
 */
#define SP_LZ4_MIN_GAIN    8
#define SP_LZ4_BACKOFF_MAX 64
#define SP_LZ4_PROBE_MIN   ((size_t)1024)
/* Largest zstd window a decoder accepts (128 MiB of history). */
#define SP_CODEC_ZSTD_WINDOW_LOG_MAX 27
#define SP_CODEC_ZSTD_LEVEL_MAX      19
/* crc32_iscsi takes an int length. */
#define SP_CRC_CHUNK ((size_t)1 << 30)

struct sp_encoder {
    sp_codec_t codec;
    sp_sink_fn_t sink; /* NULL outside begin..end */
    void *sink_arg;
    sp_status_t status; /* first error of the segment; sticky until begin */
    bool started;       /* the segment's frame has begun */
    uint64_t encoded;   /* bytes the sink received for this segment */
    unsigned char *buf; /* staging (none) or compressed output not yet sunk */
    size_t buf_cap, buf_len;
    void *lz4_state;        /* LZ4_compress_fast_extState's state */
    unsigned char *lz4_blk; /* input of the LZ4 block being filled */
    size_t lz4_blk_len;
    size_t lz4_bound;     /* room one block, its size and the end mark need */
    uint32_t lz4_skip;    /* blocks still to store raw without trying */
    uint32_t lz4_backoff; /* blocks to skip after the next miss */
    ZSTD_CCtx *zstd;
};

struct sp_decoder {
    sp_codec_t codec;
    const unsigned char *in;
    size_t len, pos;
    bool in_frame;      /* the library is inside a frame it has not finished */
    sp_status_t status; /* first error since reset; sticky until reset */
    LZ4F_dctx *lz4;
    ZSTD_DCtx *zstd;
};

static bool sp_codec_valid(sp_codec_t codec)
{
    return codec == SP_CODEC_NONE || codec == SP_CODEC_LZ4 || codec == SP_CODEC_ZSTD;
}

sp_status_t sp_codec_parse(const char *name, sp_codec_t *codec_p)
{
    static const sp_codec_t codecs[] = {SP_CODEC_NONE, SP_CODEC_LZ4, SP_CODEC_ZSTD};

    for (size_t i = 0; name != NULL && i < SP_ARRAY_SIZE(codecs); i++) {
        if (strcmp(name, sp_codec_name(codecs[i])) == 0) {
            *codec_p = codecs[i];
            return SP_OK;
        }
    }
    return SP_RAISE(SP_ERR_BAD_CONF, "unknown codec '%s' (expected none, lz4 or zstd)",
                    name != NULL ? name : "(null)");
}

const char *sp_codec_name(sp_codec_t codec)
{
    switch (codec) {
    case SP_CODEC_NONE: return "none";
    case SP_CODEC_LZ4: return "lz4";
    case SP_CODEC_ZSTD: return "zstd";
    }
    return "unknown";
}

sp_status_t sp_checksum_parse(const char *name, sp_checksum_kind_t *kind_p)
{
    static const sp_checksum_kind_t kinds[] = {SP_CHECKSUM_CRC32C, SP_CHECKSUM_XXH3};

    for (size_t i = 0; name != NULL && i < SP_ARRAY_SIZE(kinds); i++) {
        if (strcmp(name, sp_checksum_name(kinds[i])) == 0) {
            *kind_p = kinds[i];
            return SP_OK;
        }
    }
    return SP_RAISE(SP_ERR_BAD_CONF, "unknown checksum '%s' (expected crc32c or xxh3)",
                    name != NULL ? name : "(null)");
}

const char *sp_checksum_name(sp_checksum_kind_t kind)
{
    switch (kind) {
    case SP_CHECKSUM_CRC32C: return "crc32c";
    case SP_CHECKSUM_XXH3: return "xxh3";
    }
    return "unknown";
}

bool sp__codec_concatenable(sp_codec_t codec) { return sp_codec_valid(codec); }

/* Raises an LZ4 frame error; an allocation failure inside LZ4 is NOMEM. */
static sp_status_t sp_codec_lz4_error(size_t code, sp_status_t status, const char *what, size_t at)
{
    if (LZ4F_getErrorCode(code) == LZ4F_ERROR_allocation_failed)
        status = SP_ERR_NOMEM;
    return SP_RAISE(status, "%s (at byte %zu): LZ4 error %s", what, at, LZ4F_getErrorName(code));
}

/* Raises a zstd error; an allocation failure inside zstd is NOMEM. */
static sp_status_t sp_codec_zstd_error(size_t code, sp_status_t status, const char *what, size_t at)
{
    if (ZSTD_getErrorCode(code) == ZSTD_error_memory_allocation)
        status = SP_ERR_NOMEM;
    return SP_RAISE(status, "%s (at byte %zu): zstd error %s", what, at, ZSTD_getErrorName(code));
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                  */
/* ------------------------------------------------------------------------ */

sp_status_t sp__encoder_create(sp_codec_t codec, int level, sp_encoder_t **enc_p)
{
    sp_encoder_t *enc;
    sp_status_t st;
    size_t r;

    if (!sp_codec_valid(codec))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "no codec has the number %d", (int)codec);
    if (codec == SP_CODEC_ZSTD && (level < 0 || level > SP_CODEC_ZSTD_LEVEL_MAX))
        return SP_RAISE(SP_ERR_INVALID_PARAM,
                        "zstd level %d is outside 1..%d (0 selects the default, %d)", level,
                        SP_CODEC_ZSTD_LEVEL_MAX, ZSTD_CLEVEL_DEFAULT);
    enc = sp__calloc(1, sizeof(*enc));
    if (enc == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a %s encoder", sp_codec_name(codec));
    enc->codec = codec;
    switch (codec) {
    case SP_CODEC_NONE: enc->buf_cap = SP_CODEC_CHUNK; break;
    case SP_CODEC_LZ4:
        enc->lz4_bound = 4 + (size_t)LZ4_COMPRESSBOUND(SP_CODEC_CHUNK) + 4;
        enc->buf_cap = SP_LZ4_HEADER + enc->lz4_bound;
        break;
    case SP_CODEC_ZSTD: enc->buf_cap = ZSTD_CStreamOutSize(); break;
    }
    enc->buf = sp__malloc(enc->buf_cap);
    if (enc->buf == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for the %zu-byte buffer of a %s encoder",
                      enc->buf_cap, sp_codec_name(codec));
        goto err_free_enc;
    }
    if (codec == SP_CODEC_LZ4) {
        enc->lz4_state = sp__malloc((size_t)LZ4_sizeofState());
        enc->lz4_blk = sp__malloc(SP_CODEC_CHUNK);
        if (enc->lz4_state == NULL || enc->lz4_blk == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for the LZ4 state and block of an encoder");
            goto err_free_lz4;
        }
    } else if (codec == SP_CODEC_ZSTD) {
        enc->zstd = ZSTD_createCCtx();
        if (enc->zstd == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for a zstd compression context");
            goto err_free_lz4;
        }
        r = ZSTD_CCtx_setParameter(enc->zstd, ZSTD_c_compressionLevel,
                                   level != 0 ? level : ZSTD_CLEVEL_DEFAULT);
        if (!ZSTD_isError(r))
            r = ZSTD_CCtx_setParameter(enc->zstd, ZSTD_c_checksumFlag, 0);
        if (ZSTD_isError(r)) {
            st = sp_codec_zstd_error(r, SP_ERR_INTERNAL, "set zstd compression parameters", 0);
            goto err_free_zstd;
        }
    }
    *enc_p = enc;
    return SP_OK;

err_free_zstd:
    ZSTD_freeCCtx(enc->zstd);
err_free_lz4:
    sp__free(enc->lz4_state);
    sp__free(enc->lz4_blk);
    sp__free(enc->buf);
err_free_enc:
    sp__free(enc);
    return st;
}

void sp__encoder_destroy(sp_encoder_t *enc)
{
    if (enc == NULL)
        return;
    sp__free(enc->lz4_state);
    sp__free(enc->lz4_blk);
    ZSTD_freeCCtx(enc->zstd);
    sp__free(enc->buf);
    sp__free(enc);
}

void sp__encoder_begin(sp_encoder_t *enc, sp_sink_fn_t sink, void *arg)
{
    SP_ASSERT(sink != NULL);
    enc->sink = sink;
    enc->sink_arg = arg;
    enc->status = SP_OK;
    enc->started = false;
    enc->encoded = 0;
    enc->buf_len = 0;
    enc->lz4_blk_len = 0;
    /* Drops whatever a segment abandoned after an error left in the context. */
    if (enc->codec == SP_CODEC_ZSTD)
        (void)ZSTD_CCtx_reset(enc->zstd, ZSTD_reset_session_only);
}

/* Hands len bytes to the sink; its error is passed up as it is. */
static sp_status_t sp_enc_emit(sp_encoder_t *enc, const void *data, size_t len)
{
    sp_status_t st = enc->sink(enc->sink_arg, data, len);

    if (st == SP_OK)
        enc->encoded += len;
    return st;
}

static sp_status_t sp_enc_flush(sp_encoder_t *enc)
{
    sp_status_t st;

    if (enc->buf_len == 0)
        return SP_OK;
    st = sp_enc_emit(enc, enc->buf, enc->buf_len);
    if (st == SP_OK)
        enc->buf_len = 0;
    return st;
}

static sp_status_t sp_enc_none_write(sp_encoder_t *enc, const unsigned char *p, size_t len)
{
    sp_status_t st;

    /* Large writes come staged already: the sink gets them as they are. */
    if (len < SP_CODEC_NONE_DIRECT && len <= enc->buf_cap - enc->buf_len) {
        memcpy(enc->buf + enc->buf_len, p, len);
        enc->buf_len += len;
        return SP_OK;
    }
    st = sp_enc_flush(enc);
    if (st != SP_OK)
        return st;
    if (len >= SP_CODEC_NONE_DIRECT)
        return sp_enc_emit(enc, p, len);
    memcpy(enc->buf, p, len);
    enc->buf_len = len;
    return SP_OK;
}

/* The frame header for SP_LZ4_FLG/SP_LZ4_BD, at the front of the buffer. */
static void sp_enc_lz4_begin(sp_encoder_t *enc)
{
    unsigned char *h = enc->buf + enc->buf_len;

    sp__le_put_u32(h, SP_LZ4_MAGIC);
    h[4] = SP_LZ4_FLG;
    h[5] = SP_LZ4_BD;
    h[6] = (unsigned char)(XXH32(h + 4, 2, 0) >> 8);
    enc->buf_len += SP_LZ4_HEADER;
    enc->started = true;
}

/*
 * Appends one block of len <= SP_CODEC_CHUNK input bytes: compressed when
 * that is tried and shrinks it, else stored raw (see SP_LZ4_MIN_GAIN).
 */
static sp_status_t sp_enc_lz4_block(sp_encoder_t *enc, const unsigned char *p, size_t len)
{
    unsigned char *out;
    sp_status_t st;
    bool hit;
    int n = 0;

    if (enc->buf_cap - enc->buf_len < enc->lz4_bound) {
        st = sp_enc_flush(enc);
        if (st != SP_OK)
            return st;
    }
    out = enc->buf + enc->buf_len;
    if (enc->lz4_skip > 0) {
        enc->lz4_skip--;
    } else {
        /* 0 (does not fit in len - 1 bytes) is a miss like a poor ratio. */
        n = LZ4_compress_fast_extState(enc->lz4_state, (const char *)p, (char *)out + 4, (int)len,
                                       (int)len - 1, 1);
        hit = n > 0 && (size_t)n <= len - len / SP_LZ4_MIN_GAIN;
        /* A short tail says little about the data: it leaves the backoff as it is. */
        if (hit) {
            enc->lz4_backoff = 0;
        } else if (len >= SP_LZ4_PROBE_MIN) {
            enc->lz4_backoff = SP_MIN(SP_MAX(enc->lz4_backoff * 2, 1u), SP_LZ4_BACKOFF_MAX);
            enc->lz4_skip = enc->lz4_backoff;
        }
    }
    if (n > 0) {
        sp__le_put_u32(out, (uint32_t)n);
        enc->buf_len += 4 + (size_t)n;
        return SP_OK;
    }
    /*
     * Stored raw: the block's header ends the buffer, which goes out first,
     * and the input follows it to the sink as it is rather than through a
     * copy into the buffer (the sink checksums it while it is still hot).
     */
    sp__le_put_u32(out, (uint32_t)len | SP_LZ4_RAW_BIT);
    enc->buf_len += 4;
    st = sp_enc_flush(enc);
    if (st == SP_OK)
        st = sp_enc_emit(enc, p, len);
    return st;
}

static sp_status_t sp_enc_lz4_write(sp_encoder_t *enc, const unsigned char *p, size_t len)
{
    sp_status_t st;

    if (!enc->started)
        sp_enc_lz4_begin(enc);
    while (len > 0) {
        size_t n;

        /* Whole blocks of input go in place; the rest fills lz4_blk. */
        if (enc->lz4_blk_len == 0 && len >= SP_CODEC_CHUNK) {
            st = sp_enc_lz4_block(enc, p, SP_CODEC_CHUNK);
            if (st != SP_OK)
                return st;
            p += SP_CODEC_CHUNK;
            len -= SP_CODEC_CHUNK;
            continue;
        }
        n = SP_MIN(len, SP_CODEC_CHUNK - enc->lz4_blk_len);
        memcpy(enc->lz4_blk + enc->lz4_blk_len, p, n);
        enc->lz4_blk_len += n;
        p += n;
        len -= n;
        if (enc->lz4_blk_len == SP_CODEC_CHUNK) {
            st = sp_enc_lz4_block(enc, enc->lz4_blk, SP_CODEC_CHUNK);
            if (st != SP_OK)
                return st;
            enc->lz4_blk_len = 0;
        }
    }
    return SP_OK;
}

static sp_status_t sp_enc_lz4_end(sp_encoder_t *enc)
{
    sp_status_t st;

    if (!enc->started)
        return SP_OK;
    if (enc->lz4_blk_len > 0) {
        st = sp_enc_lz4_block(enc, enc->lz4_blk, enc->lz4_blk_len);
        if (st != SP_OK)
            return st;
        enc->lz4_blk_len = 0;
    }
    /* sp_enc_lz4_block left room for the end mark. */
    if (enc->buf_cap - enc->buf_len < 4) {
        st = sp_enc_flush(enc);
        if (st != SP_OK)
            return st;
    }
    sp__le_put_u32(enc->buf + enc->buf_len, 0);
    enc->buf_len += 4;
    return sp_enc_flush(enc);
}

/* Runs one zstd step over in; the output goes to the sink when the buffer fills. */
static sp_status_t sp_enc_zstd_step(sp_encoder_t *enc, ZSTD_inBuffer *in, ZSTD_EndDirective op,
                                    size_t *remaining_p)
{
    ZSTD_outBuffer out = {enc->buf, enc->buf_cap, enc->buf_len};
    sp_status_t st;
    size_t r;

    if (out.pos == out.size) {
        st = sp_enc_flush(enc);
        if (st != SP_OK)
            return st;
        out.pos = 0;
    }
    r = ZSTD_compressStream2(enc->zstd, &out, in, op);
    if (ZSTD_isError(r))
        return sp_codec_zstd_error(r, SP_ERR_INTERNAL, "compress into a zstd frame",
                                   (size_t)enc->encoded + enc->buf_len);
    enc->buf_len = out.pos;
    *remaining_p = r;
    return SP_OK;
}

static sp_status_t sp_enc_zstd_write(sp_encoder_t *enc, const unsigned char *p, size_t len)
{
    ZSTD_inBuffer in = {p, len, 0};
    sp_status_t st;
    size_t remaining;

    /* The frame begins with the first byte: compressStream2 starts it. */
    enc->started = true;
    while (in.pos < in.size) {
        st = sp_enc_zstd_step(enc, &in, ZSTD_e_continue, &remaining);
        if (st != SP_OK)
            return st;
    }
    return SP_OK;
}

static sp_status_t sp_enc_zstd_end(sp_encoder_t *enc)
{
    static const unsigned char none[1];
    ZSTD_inBuffer in = {none, 0, 0};
    sp_status_t st;
    size_t remaining;

    if (!enc->started)
        return SP_OK;
    do {
        st = sp_enc_zstd_step(enc, &in, ZSTD_e_end, &remaining);
        if (st != SP_OK)
            return st;
    } while (remaining != 0);
    return sp_enc_flush(enc);
}

sp_status_t sp__encoder_write(sp_encoder_t *enc, const void *data, size_t len)
{
    sp_status_t st = SP_OK;

    SP_ASSERT(enc->sink != NULL);
    if (enc->status != SP_OK)
        return enc->status;
    if (len == 0)
        return SP_OK;
    switch (enc->codec) {
    case SP_CODEC_NONE:
        enc->started = true;
        st = sp_enc_none_write(enc, data, len);
        break;
    case SP_CODEC_LZ4: st = sp_enc_lz4_write(enc, data, len); break;
    case SP_CODEC_ZSTD: st = sp_enc_zstd_write(enc, data, len); break;
    }
    enc->status = st;
    return st;
}

unsigned char *sp__encoder_window(sp_encoder_t *enc, size_t *room_p)
{
    SP_ASSERT(enc->sink != NULL);
    if (enc->status != SP_OK)
        return NULL;
    switch (enc->codec) {
    case SP_CODEC_NONE:
        if (enc->buf_len == enc->buf_cap && (enc->status = sp_enc_flush(enc)) != SP_OK)
            return NULL;
        *room_p = enc->buf_cap - enc->buf_len;
        return enc->buf + enc->buf_len;
    case SP_CODEC_LZ4:
        *room_p = SP_CODEC_CHUNK - enc->lz4_blk_len;
        return enc->lz4_blk + enc->lz4_blk_len;
    case SP_CODEC_ZSTD: break;
    }
    return NULL;
}

sp_status_t sp__encoder_wrote(sp_encoder_t *enc, size_t len)
{
    sp_status_t st = SP_OK;

    SP_ASSERT(enc->sink != NULL);
    if (enc->status != SP_OK)
        return enc->status;
    if (len == 0)
        return SP_OK;
    switch (enc->codec) {
    case SP_CODEC_NONE:
        SP_ASSERT(len <= enc->buf_cap - enc->buf_len);
        enc->started = true;
        enc->buf_len += len;
        if (enc->buf_len == enc->buf_cap)
            st = sp_enc_flush(enc);
        break;
    case SP_CODEC_LZ4:
        SP_ASSERT(len <= SP_CODEC_CHUNK - enc->lz4_blk_len);
        if (!enc->started)
            sp_enc_lz4_begin(enc);
        enc->lz4_blk_len += len;
        if (enc->lz4_blk_len == SP_CODEC_CHUNK) {
            st = sp_enc_lz4_block(enc, enc->lz4_blk, SP_CODEC_CHUNK);
            enc->lz4_blk_len = 0;
        }
        break;
    case SP_CODEC_ZSTD: SP_ASSERT(!"zstd takes no input in place"); break;
    }
    enc->status = st;
    return st;
}

sp_status_t sp__encoder_end(sp_encoder_t *enc, uint64_t *encoded_p)
{
    sp_status_t st = SP_OK;

    SP_ASSERT(enc->sink != NULL);
    if (enc->status != SP_OK)
        return enc->status;
    switch (enc->codec) {
    case SP_CODEC_NONE: st = sp_enc_flush(enc); break;
    case SP_CODEC_LZ4: st = sp_enc_lz4_end(enc); break;
    case SP_CODEC_ZSTD: st = sp_enc_zstd_end(enc); break;
    }
    if (st != SP_OK) {
        enc->status = st;
        return st;
    }
    enc->sink = NULL;
    *encoded_p = enc->encoded;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Decoder                                                                  */
/* ------------------------------------------------------------------------ */

sp_status_t sp__decoder_create(sp_codec_t codec, sp_decoder_t **dec_p)
{
    sp_decoder_t *dec;
    sp_status_t st;
    size_t r;

    if (!sp_codec_valid(codec))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "no codec has the number %d", (int)codec);
    dec = sp__calloc(1, sizeof(*dec));
    if (dec == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a %s decoder", sp_codec_name(codec));
    dec->codec = codec;
    if (codec == SP_CODEC_LZ4) {
        r = LZ4F_createDecompressionContext(&dec->lz4, LZ4F_VERSION);
        if (LZ4F_isError(r)) {
            st = SP_RAISE(SP_ERR_NOMEM, "create an LZ4 decompression context: LZ4 error %s",
                          LZ4F_getErrorName(r));
            goto err_free_dec;
        }
    } else if (codec == SP_CODEC_ZSTD) {
        dec->zstd = ZSTD_createDCtx();
        if (dec->zstd == NULL) {
            st = SP_RAISE(SP_ERR_NOMEM, "no memory for a zstd decompression context");
            goto err_free_dec;
        }
        r = ZSTD_DCtx_setParameter(dec->zstd, ZSTD_d_windowLogMax, SP_CODEC_ZSTD_WINDOW_LOG_MAX);
        if (ZSTD_isError(r)) {
            st = sp_codec_zstd_error(r, SP_ERR_INTERNAL, "bound the zstd window", 0);
            goto err_free_zstd;
        }
    }
    *dec_p = dec;
    return SP_OK;

err_free_zstd:
    ZSTD_freeDCtx(dec->zstd);
err_free_dec:
    sp__free(dec);
    return st;
}

void sp__decoder_destroy(sp_decoder_t *dec)
{
    if (dec == NULL)
        return;
    if (dec->lz4 != NULL)
        LZ4F_freeDecompressionContext(dec->lz4);
    ZSTD_freeDCtx(dec->zstd);
    sp__free(dec);
}

void sp__decoder_reset(sp_decoder_t *dec, const void *in, size_t len)
{
    SP_ASSERT(in != NULL || len == 0);
    dec->in = in;
    dec->len = len;
    dec->pos = 0;
    dec->in_frame = false;
    dec->status = SP_OK;
    /* A previous input may have stopped in the middle of a frame. */
    if (dec->codec == SP_CODEC_LZ4)
        LZ4F_resetDecompressionContext(dec->lz4);
    else if (dec->codec == SP_CODEC_ZSTD)
        (void)ZSTD_DCtx_reset(dec->zstd, ZSTD_reset_session_only);
}

/*
 * Input that ends inside a frame. Bytes already decoded by this call are
 * returned first; the next call, which can make no progress, raises.
 */
static sp_status_t sp_dec_truncated(sp_decoder_t *dec)
{
    return SP_RAISE(SP_ERR_CORRUPT, "truncated frame: %s input of %zu bytes ends inside a frame",
                    sp_codec_name(dec->codec), dec->len);
}

static sp_status_t sp_dec_lz4_read(sp_decoder_t *dec, unsigned char *out, size_t cap,
                                   size_t *produced_p)
{
    size_t produced = 0;

    while (produced < cap) {
        size_t src = dec->len - dec->pos, dst = cap - produced, hint;

        if (src == 0 && !dec->in_frame)
            break;
        /* With src == 0 the library may still flush output it holds. */
        hint = LZ4F_decompress(dec->lz4, out + produced, &dst, dec->in + dec->pos, &src, NULL);
        if (LZ4F_isError(hint))
            return sp_codec_lz4_error(hint, SP_ERR_CORRUPT, "decode an LZ4 frame", dec->pos);
        dec->pos += src;
        produced += dst;
        /* 0: the frame is complete; the next byte, if any, starts another. */
        dec->in_frame = hint != 0;
        if (!dec->in_frame && produced > 0)
            break;
        if (src == 0 && dst == 0) {
            if (produced > 0)
                break;
            if (dec->pos == dec->len)
                return sp_dec_truncated(dec);
            return SP_RAISE(SP_ERR_CORRUPT, "LZ4 frame at byte %zu of %zu makes no progress",
                            dec->pos, dec->len);
        }
    }
    *produced_p = produced;
    return SP_OK;
}

static sp_status_t sp_dec_zstd_read(sp_decoder_t *dec, unsigned char *out, size_t cap,
                                    size_t *produced_p)
{
    ZSTD_outBuffer ob = {out, cap, 0};

    while (ob.pos < ob.size) {
        ZSTD_inBuffer ib = {dec->in, dec->len, dec->pos};
        size_t before = ob.pos, r;

        if (ib.pos == ib.size && !dec->in_frame)
            break;
        r = ZSTD_decompressStream(dec->zstd, &ob, &ib);
        if (ZSTD_isError(r))
            return sp_codec_zstd_error(r, SP_ERR_CORRUPT, "decode a zstd frame", dec->pos);
        /* 0: the frame is complete and flushed; another may follow. */
        dec->in_frame = r != 0;
        if (!dec->in_frame && ob.pos > 0) {
            dec->pos = ib.pos;
            break;
        }
        if (ib.pos == dec->pos && ob.pos == before) {
            if (ob.pos > 0)
                break;
            if (ib.pos == ib.size)
                return sp_dec_truncated(dec);
            return SP_RAISE(SP_ERR_CORRUPT, "zstd frame at byte %zu of %zu makes no progress",
                            dec->pos, dec->len);
        }
        dec->pos = ib.pos;
    }
    *produced_p = ob.pos;
    return SP_OK;
}

sp_status_t sp__decoder_read(sp_decoder_t *dec, void *out, size_t cap, size_t *produced_p)
{
    sp_status_t st = SP_OK;
    size_t produced = 0;

    /* A later call repeats the first error; its message is already raised. */
    if (dec->status != SP_OK)
        return dec->status;
    if (cap == 0)
        return SP_RAISE(SP_ERR_INVALID_PARAM, "decoder read into a 0-byte buffer");
    switch (dec->codec) {
    case SP_CODEC_NONE:
        produced = SP_MIN(cap, dec->len - dec->pos);
        if (produced > 0)
            memcpy(out, dec->in + dec->pos, produced);
        dec->pos += produced;
        break;
    case SP_CODEC_LZ4: st = sp_dec_lz4_read(dec, out, cap, &produced); break;
    case SP_CODEC_ZSTD: st = sp_dec_zstd_read(dec, out, cap, &produced); break;
    }
    if (st != SP_OK) {
        dec->status = st;
        return st;
    }
    *produced_p = produced;
    return SP_OK;
}

/* ------------------------------------------------------------------------ */
/* Checksums                                                                */
/* ------------------------------------------------------------------------ */

/*
 * crc32_iscsi() neither inverts its initial value nor its result: it carries
 * the raw CRC register. The conventional CRC-32C (iSCSI, ext4, Btrfs; check
 * value 0xE3069283 for "123456789") is therefore init 0xFFFFFFFF, the raw
 * register passed from call to call, and a final xor with 0xFFFFFFFF.
 */
#define SP_CRC32C_INIT UINT32_C(0xFFFFFFFF)
#define SP_CRC32C_XOR  UINT32_C(0xFFFFFFFF)

void sp__checksum_init(sp_checksum_t *cs, sp_checksum_kind_t kind)
{
    SP_ASSERT(kind == SP_CHECKSUM_CRC32C || kind == SP_CHECKSUM_XXH3);
    cs->kind = kind;
    cs->crc = SP_CRC32C_INIT;
    if (kind == SP_CHECKSUM_XXH3)
        (void)XXH3_64bits_reset(sp__checksum_xxh(cs));
}

/* Feeds len bytes to the raw CRC register, at most 1 GiB per library call. */
static uint32_t sp_crc32c_update(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len > 0) {
        size_t n = SP_MIN(len, SP_CRC_CHUNK);

        crc = crc32_iscsi((unsigned char *)p, (int)n, crc);
        p += n;
        len -= n;
    }
    return crc;
}

void sp__checksum_update(sp_checksum_t *cs, const void *data, size_t len)
{
    if (len == 0)
        return;
    if (cs->kind == SP_CHECKSUM_XXH3)
        (void)XXH3_64bits_update(sp__checksum_xxh(cs), data, len);
    else
        cs->crc = sp_crc32c_update(cs->crc, data, len);
}

uint64_t sp__checksum_final(const sp_checksum_t *cs)
{
    if (cs->kind == SP_CHECKSUM_XXH3)
        return XXH3_64bits_digest(sp__checksum_xxh(cs));
    return cs->crc ^ SP_CRC32C_XOR;
}

uint64_t sp__checksum_buf(sp_checksum_kind_t kind, const void *data, size_t len)
{
    SP_ASSERT(kind == SP_CHECKSUM_CRC32C || kind == SP_CHECKSUM_XXH3);
    if (kind == SP_CHECKSUM_XXH3)
        return XXH3_64bits(data, len);
    return sp_crc32c_update(SP_CRC32C_INIT, data, len) ^ SP_CRC32C_XOR;
}
