/*
 * Spill runs: the format of the files the shuffle spills and writes.
 *
 * Every run and data file of the shuffle has the layout of docs/FORMATS.md:
 * an 8-byte header naming the codec and the checksum, then independent
 * segments of records, each compressed with the codec and checksummed. The
 * writer's sort path, its bypass path and the aggregator all take the codec,
 * its level and the checksum from the same options (shuffle.compress,
 * shuffle.codec, shuffle.codec_level, shuffle.checksum), read here once for
 * all of them, so that none of them depends on another for its format.
 */
#include "shuffle_int.h"

sp_status_t sp__spill_format_init(sp_spill_format_t *format, const sp_conf_t *conf)
{
    const char *codec = NULL, *checksum = NULL;
    sp_spill_format_t f = {0};
    bool compress = true;
    int64_t level = 0;
    sp_status_t st;

    if ((st = sp_conf_get_bool(conf, "shuffle.compress", &compress)) != SP_OK ||
        (st = sp_conf_get_string(conf, "shuffle.codec", &codec)) != SP_OK ||
        (st = sp_conf_get_int(conf, "shuffle.codec_level", &level)) != SP_OK ||
        (st = sp_conf_get_string(conf, "shuffle.checksum", &checksum)) != SP_OK ||
        (st = sp_codec_parse(codec, &f.codec)) != SP_OK ||
        (st = sp_checksum_parse(checksum, &f.checksum)) != SP_OK)
        return st;
    if (!compress)
        f.codec = SP_CODEC_NONE;
    f.level = (int)level;
    *format = f;
    return SP_OK;
}
