/*
 * spate — shuffle layer, map side: the writer of one map task's output.
 *
 * A writer takes records (key bytes, value bytes) for a partition, keeps
 * them serialized in task pages, sorts packed pointers to them by partition
 * (and key), spills sorted runs when memory is refused, and at commit merges
 * everything into one committed set of files per map task:
 *   shuffle_<shuffle>_<map>.data      partition segments, back to back
 *   shuffle_<shuffle>_<map>.index     partition offsets into the data file
 *   shuffle_<shuffle>_<map>.checksum  one checksum per partition segment
 * Each partition segment is independently compressed and checksummed. The
 * layouts are in docs/FORMATS.md.
 */
#ifndef SPATE_SHUFFLE_H
#define SPATE_SHUFFLE_H

#include <spate/common.h>
#include <spate/conf.h>
#include <spate/memory.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Compression of partition segments. Every codec's segments concatenate. */
typedef enum sp_codec {
    SP_CODEC_NONE = 0, /**< bytes as they are */
    SP_CODEC_LZ4 = 1,  /**< one LZ4 frame per segment */
    SP_CODEC_ZSTD = 2, /**< one Zstandard frame per segment */
} sp_codec_t;

/** Checksum of a partition segment (over its bytes as stored). */
typedef enum sp_checksum_kind {
    SP_CHECKSUM_CRC32C = 1, /**< CRC-32C (Castagnoli), via ISA-L */
    SP_CHECKSUM_XXH3 = 2,   /**< XXH3-64 */
} sp_checksum_kind_t;

/** Parses "none", "lz4", "zstd"; SP_ERR_BAD_CONF otherwise. */
SP_API sp_status_t sp_codec_parse(const char *name, sp_codec_t *codec_p);
SP_API const char *sp_codec_name(sp_codec_t codec);
/** Parses "crc32c", "xxh3"; SP_ERR_BAD_CONF otherwise. */
SP_API sp_status_t sp_checksum_parse(const char *name, sp_checksum_kind_t *kind_p);
SP_API const char *sp_checksum_name(sp_checksum_kind_t kind);

#ifdef __cplusplus
}
#endif
#endif /* SPATE_SHUFFLE_H */
