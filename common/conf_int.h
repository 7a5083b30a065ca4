/* Private interface of the configuration module, for tests and the CLI. */
#ifndef SPATE_CONF_INT_H
#define SPATE_CONF_INT_H

#include "common_int.h"
#include <spate/conf.h>

typedef struct sp_conf_def {
    const char *key;
    sp_conf_type_t type;
    const char *def;     /* default, in the key's own syntax */
    const char *min;     /* numeric types: lowest valid value, or NULL */
    const char *max;     /* numeric types: highest valid value, or NULL */
    const char *choices; /* SP_CONF_ENUM: "a|b|c" */
    const char *doc;
} sp_conf_def_t;

/* The built-in table (common/conf_keys.h) and its length. */
extern const sp_conf_def_t sp__conf_defs[];
extern const size_t sp__conf_ndefs;

/* A conf over another table: lets tests exercise every type and range. */
sp_status_t sp__conf_create_defs(const sp_conf_def_t *defs, size_t ndefs, sp_conf_t **conf_p);

/* Markdown table of a definition table. */
void sp__conf_write_markdown_defs(const sp_conf_def_t *defs, size_t ndefs, FILE *out);

const char *sp__conf_type_name(sp_conf_type_t type);

#endif
