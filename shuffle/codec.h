/*
 * Private: segment compression and checksums for the shuffle. A segment is
 * the bytes of one partition in a spill or data file: one independent frame
 * (or raw bytes for SP_CODEC_NONE), so that segments of the same partition
 * from several spills concatenate into a valid stream. An empty segment is 0
 * bytes (no frame at all).
 */
#ifndef SPATE_SHUFFLE_CODEC_H
#define SPATE_SHUFFLE_CODEC_H

#include "common_int.h"
#include <spate/shuffle.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

/* Receives encoded (or decoded) bytes; an error stops the stream. */
typedef sp_status_t (*sp_sink_fn_t)(void *arg, const void *buf, size_t len);

typedef struct sp_encoder sp_encoder_t;

/*
 * Creates an encoder; level is the codec's level (zstd 1..19, 0 = default;
 * ignored by the others). Returns SP_ERR_NOMEM or SP_ERR_INVALID_PARAM.
 */
sp_status_t sp__encoder_create(sp_codec_t codec, int level, sp_encoder_t **enc_p);
void sp__encoder_destroy(sp_encoder_t *enc);

/* Starts a segment whose encoded bytes go to sink(arg, ...). */
void sp__encoder_begin(sp_encoder_t *enc, sp_sink_fn_t sink, void *arg);
/* Adds len bytes to the segment; may call the sink zero or more times. */
sp_status_t sp__encoder_write(sp_encoder_t *enc, const void *data, size_t len);
/*
 * Input in place: where the next bytes of the segment may be written
 * directly, with *room_p (at least 1) bytes of room, or NULL when the codec
 * takes no input in place (zstd) or the segment has failed. After writing
 * n <= *room_p bytes there, sp__encoder_wrote(enc, n) adds them to the
 * segment as sp__encoder_write() of the same bytes would (and may call the
 * sink); the window is then stale. Other calls in between are allowed:
 * ask for the window again after them.
 */
unsigned char *sp__encoder_window(sp_encoder_t *enc, size_t *room_p);
sp_status_t sp__encoder_wrote(sp_encoder_t *enc, size_t len);
/*
 * Ends the segment: flushes everything to the sink and returns in
 * *encoded_p the bytes the sink received for it (0 if no byte was written).
 */
sp_status_t sp__encoder_end(sp_encoder_t *enc, uint64_t *encoded_p);

/* True when segments of the codec can be concatenated byte for byte. */
bool sp__codec_concatenable(sp_codec_t codec);

typedef struct sp_decoder sp_decoder_t;

sp_status_t sp__decoder_create(sp_codec_t codec, sp_decoder_t **dec_p);
void sp__decoder_destroy(sp_decoder_t *dec);
/* Starts decoding in[0..len) (one or more concatenated segments). */
void sp__decoder_reset(sp_decoder_t *dec, const void *in, size_t len);
/*
 * Decodes up to cap bytes into out; *produced_p = 0 means the input is
 * exhausted. Never writes past out+cap. A damaged or truncated frame is
 * SP_ERR_CORRUPT with the codec's own error text in the message.
 */
sp_status_t sp__decoder_read(sp_decoder_t *dec, void *out, size_t cap, size_t *produced_p);

/*
 * Streaming checksum of segment bytes. XXH3's state must be 64-byte
 * aligned, which malloc does not promise for the structs this is embedded
 * in, so it lives at the first aligned address inside xxh_space (found from
 * the struct's own address: a checksum must not be moved while in use).
 */
typedef struct sp_checksum {
    sp_checksum_kind_t kind;
    uint32_t crc;
    unsigned char xxh_space[sizeof(XXH3_state_t) + 64];
} sp_checksum_t;

static inline XXH3_state_t *sp__checksum_xxh(const sp_checksum_t *cs)
{
    uintptr_t at = ((uintptr_t)cs->xxh_space + 63) & ~(uintptr_t)63;
    return (XXH3_state_t *)at;
}

void sp__checksum_init(sp_checksum_t *cs, sp_checksum_kind_t kind);
void sp__checksum_update(sp_checksum_t *cs, const void *data, size_t len);
uint64_t sp__checksum_final(const sp_checksum_t *cs);
/* One-shot checksum of a buffer. */
uint64_t sp__checksum_buf(sp_checksum_kind_t kind, const void *data, size_t len);

#endif
