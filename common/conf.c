/*
 * Configuration: a flat array of values parallel to a table of key
 * definitions (common/conf_keys.h). Every value is validated when it is set,
 * so getters never fail for a known key of the right type and readers see
 * only values that passed their range check. Lookups are linear: the table
 * holds tens of keys and configuration is read at start-up, not per record.
 *
 * A conf file is read whole before any line is applied, so that what is not
 * a conf file is refused without a side effect: a regular file or a pipe
 * (`--conf-file <(...)`, a FIFO, /dev/stdin redirected from one) of at most
 * SP_CONF_FILE_MAX bytes, without a NUL byte. Anything else (/dev/zero, a
 * terminal, a socket) is refused before it is read, and a pipe is read only
 * up to the limit, so no file makes the reader spin or grow without bound.
 */
#include "conf_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The largest conf file: one holds tens of keys, and a million bytes is not one. */
#define SP_CONF_FILE_MAX (1u << 20)
/* The longest line of a conf file, without its newline (a value is at most 4095 bytes). */
#define SP_CONF_LINE_MAX 4350u

#define SP_CONF_KEY(k, t, d, lo, hi, ch, doc) {k, t, d, lo, hi, ch, doc},
const sp_conf_def_t sp__conf_defs[] = {
#include "conf_keys.h"
};
#undef SP_CONF_KEY
const size_t sp__conf_ndefs = SP_ARRAY_SIZE(sp__conf_defs);

typedef union sp_conf_value {
    uint64_t u; /* SIZE, DURATION (ns) */
    int64_t i;
    double d;
    bool b;
} sp_conf_value_t;

typedef struct sp_conf_entry {
    sp_conf_value_t v;
    char *text; /* the value as given, or the default; owned */
    bool set;
} sp_conf_entry_t;

struct sp_conf {
    const sp_conf_def_t *defs;
    size_t ndefs;
    sp_conf_entry_t *entries;
};

const char *sp__conf_type_name(sp_conf_type_t type)
{
    switch (type) {
    case SP_CONF_SIZE: return "size";
    case SP_CONF_INT: return "int";
    case SP_CONF_DOUBLE: return "double";
    case SP_CONF_BOOL: return "bool";
    case SP_CONF_DURATION: return "duration";
    case SP_CONF_STRING: return "string";
    case SP_CONF_ENUM: return "enum";
    }
    return "?";
}

/* Skips spaces; true when only spaces remain. */
static bool sp_conf_at_end(const char *p)
{
    while (isspace((unsigned char)*p))
        p++;
    return *p == '\0';
}

static sp_status_t sp_conf_bad_syntax(const char *what, const char *text)
{
    return SP_RAISE(SP_ERR_BAD_CONF, "'%s' is not a valid %s", text, what);
}

sp_status_t sp_conf_parse_size(const char *text, uint64_t *bytes_p)
{
    const char *p = text;
    uint64_t value = 0, mult = 1;
    unsigned shift = 0;

    while (isspace((unsigned char)*p))
        p++;
    if (!isdigit((unsigned char)*p))
        return sp_conf_bad_syntax("size (like 4096, 64k, 512m, 4g)", text);
    for (; isdigit((unsigned char)*p); p++) {
        unsigned digit = (unsigned)(*p - '0');
        if (value > (UINT64_MAX - digit) / 10)
            return SP_RAISE(SP_ERR_BAD_CONF, "size '%s' does not fit in 64 bits", text);
        value = value * 10 + digit;
    }
    while (isspace((unsigned char)*p))
        p++;
    switch (tolower((unsigned char)*p)) {
    case 'k': shift = 10; break;
    case 'm': shift = 20; break;
    case 'g': shift = 30; break;
    case 't': shift = 40; break;
    case 'p': shift = 50; break;
    case 'b':
        shift = 0;
        p--;
        break; /* "4096b": the 'b' is eaten below */
    case '\0': break;
    default: return sp_conf_bad_syntax("size (like 4096, 64k, 512m, 4g)", text);
    }
    if (*p != '\0') {
        p++;
        if (tolower((unsigned char)*p) == 'i' && shift != 0)
            p++;
        if (tolower((unsigned char)*p) == 'b')
            p++;
    }
    if (!sp_conf_at_end(p))
        return sp_conf_bad_syntax("size (like 4096, 64k, 512m, 4g)", text);
    mult = UINT64_C(1) << shift;
    if (value > UINT64_MAX / mult)
        return SP_RAISE(SP_ERR_BAD_CONF, "size '%s' does not fit in 64 bits", text);
    *bytes_p = value * mult;
    return SP_OK;
}

sp_status_t sp_conf_parse_duration(const char *text, uint64_t *ns_p)
{
    static const struct {
        const char *unit;
        double ns;
    } units[] = {{"ns", 1.0}, {"us", 1e3},   {"ms", 1e6}, {"s", 1e9},
                 {"", 1e9},   {"min", 60e9}, {"m", 60e9}, {"h", 3600e9}};
    const char *syntax = "duration (like 250ms, 30s, 5m, 1h)";
    char *end;
    double value;
    size_t len;

    errno = 0;
    value = strtod(text, &end);
    if (end == text || errno != 0 || !isfinite(value) || value < 0 || isspace((unsigned char)*text))
        return sp_conf_bad_syntax(syntax, text);
    while (isspace((unsigned char)*end))
        end++;
    len = strlen(end);
    while (len > 0 && isspace((unsigned char)end[len - 1]))
        len--;
    for (size_t i = 0; i < SP_ARRAY_SIZE(units); i++) {
        if (strlen(units[i].unit) == len && strncmp(end, units[i].unit, len) == 0) {
            double ns = value * units[i].ns;
            if (ns >= 9.2e18)
                return SP_RAISE(SP_ERR_BAD_CONF, "duration '%s' is too long", text);
            *ns_p = (uint64_t)ns;
            return SP_OK;
        }
    }
    return sp_conf_bad_syntax(syntax, text);
}

static sp_status_t sp_conf_parse_int(const char *text, int64_t *v_p)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(text, &end, 10);
    if (end == text || errno != 0 || !sp_conf_at_end(end) || isspace((unsigned char)*text))
        return sp_conf_bad_syntax("integer", text);
    *v_p = v;
    return SP_OK;
}

static sp_status_t sp_conf_parse_double(const char *text, double *v_p)
{
    char *end;
    double v;

    errno = 0;
    v = strtod(text, &end);
    if (end == text || errno != 0 || !isfinite(v) || !sp_conf_at_end(end) ||
        isspace((unsigned char)*text))
        return sp_conf_bad_syntax("number", text);
    *v_p = v;
    return SP_OK;
}

static sp_status_t sp_conf_parse_bool(const char *text, bool *v_p)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};

    for (size_t i = 0; i < SP_ARRAY_SIZE(yes); i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *v_p = true;
            return SP_OK;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *v_p = false;
            return SP_OK;
        }
    }
    return sp_conf_bad_syntax("boolean (true/false, yes/no, on/off, 1/0)", text);
}

static bool sp_conf_enum_has(const char *choices, const char *text)
{
    size_t len = strlen(text);
    const char *p = choices;

    while (p != NULL && *p != '\0') {
        const char *bar = strchr(p, '|');
        size_t n = bar != NULL ? (size_t)(bar - p) : strlen(p);
        if (n == len && strncmp(p, text, n) == 0)
            return true;
        p = bar != NULL ? bar + 1 : NULL;
    }
    return false;
}

/* Parses text as def's type into *v_p; the message names the key. */
static sp_status_t sp_conf_parse_value(const sp_conf_def_t *def, const char *text,
                                       sp_conf_value_t *v_p)
{
    sp_conf_value_t v = {0}, lo = {0}, hi = {0};
    sp_status_t st = SP_OK;
    bool below = false, above = false;

    switch (def->type) {
    case SP_CONF_SIZE:
        st = sp_conf_parse_size(text, &v.u);
        if (st == SP_OK && def->min != NULL && sp_conf_parse_size(def->min, &lo.u) == SP_OK)
            below = v.u < lo.u;
        if (st == SP_OK && def->max != NULL && sp_conf_parse_size(def->max, &hi.u) == SP_OK)
            above = v.u > hi.u;
        break;
    case SP_CONF_DURATION:
        st = sp_conf_parse_duration(text, &v.u);
        if (st == SP_OK && def->min != NULL && sp_conf_parse_duration(def->min, &lo.u) == SP_OK)
            below = v.u < lo.u;
        if (st == SP_OK && def->max != NULL && sp_conf_parse_duration(def->max, &hi.u) == SP_OK)
            above = v.u > hi.u;
        break;
    case SP_CONF_INT:
        st = sp_conf_parse_int(text, &v.i);
        if (st == SP_OK && def->min != NULL && sp_conf_parse_int(def->min, &lo.i) == SP_OK)
            below = v.i < lo.i;
        if (st == SP_OK && def->max != NULL && sp_conf_parse_int(def->max, &hi.i) == SP_OK)
            above = v.i > hi.i;
        break;
    case SP_CONF_DOUBLE:
        st = sp_conf_parse_double(text, &v.d);
        if (st == SP_OK && def->min != NULL && sp_conf_parse_double(def->min, &lo.d) == SP_OK)
            below = v.d < lo.d;
        if (st == SP_OK && def->max != NULL && sp_conf_parse_double(def->max, &hi.d) == SP_OK)
            above = v.d > hi.d;
        break;
    case SP_CONF_BOOL: st = sp_conf_parse_bool(text, &v.b); break;
    case SP_CONF_STRING: break;
    case SP_CONF_ENUM:
        if (!sp_conf_enum_has(def->choices, text))
            return SP_RAISE(SP_ERR_BAD_CONF, "conf key '%s': '%s' is not one of %s", def->key, text,
                            def->choices);
        break;
    }
    if (st != SP_OK)
        return SP_RAISE(SP_ERR_BAD_CONF, "conf key '%s' (%s): %s", def->key,
                        sp__conf_type_name(def->type), sp_last_error());
    if (below || above)
        return SP_RAISE(SP_ERR_BAD_CONF, "conf key '%s': value '%s' is out of range [%s, %s]",
                        def->key, text, def->min != NULL ? def->min : "-inf",
                        def->max != NULL ? def->max : "inf");
    *v_p = v;
    return SP_OK;
}

static const sp_conf_def_t *sp_conf_find(const sp_conf_t *conf, const char *key, size_t *idx_p)
{
    for (size_t i = 0; i < conf->ndefs; i++) {
        if (strcmp(conf->defs[i].key, key) == 0) {
            *idx_p = i;
            return &conf->defs[i];
        }
    }
    return NULL;
}

static sp_status_t sp_conf_store(sp_conf_t *conf, size_t idx, const char *text, bool set)
{
    const sp_conf_def_t *def = &conf->defs[idx];
    sp_conf_value_t v;
    sp_status_t st;
    char *copy;

    st = sp_conf_parse_value(def, text, &v);
    if (st != SP_OK)
        return st;
    copy = sp__strdup(text);
    if (copy == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "conf key '%s': no memory for its value", def->key);
    sp__free(conf->entries[idx].text);
    conf->entries[idx].text = copy;
    conf->entries[idx].v = v;
    conf->entries[idx].set = set;
    return SP_OK;
}

sp_status_t sp__conf_create_defs(const sp_conf_def_t *defs, size_t ndefs, sp_conf_t **conf_p)
{
    sp_conf_t *conf;
    sp_status_t st;

    conf = sp__calloc(1, sizeof(*conf));
    if (conf == NULL)
        return SP_RAISE(SP_ERR_NOMEM, "no memory for a configuration");
    conf->defs = defs;
    conf->ndefs = ndefs;
    conf->entries = sp__calloc(ndefs != 0 ? ndefs : 1, sizeof(*conf->entries));
    if (conf->entries == NULL) {
        st = SP_RAISE(SP_ERR_NOMEM, "no memory for %zu configuration entries", ndefs);
        goto err_free_conf;
    }
    for (size_t i = 0; i < ndefs; i++) {
        st = sp_conf_store(conf, i, defs[i].def, false);
        if (st != SP_OK)
            goto err_free_entries;
    }
    *conf_p = conf;
    return SP_OK;

err_free_entries:
    for (size_t i = 0; i < ndefs; i++)
        sp__free(conf->entries[i].text);
    sp__free(conf->entries);
err_free_conf:
    sp__free(conf);
    return st;
}

sp_status_t sp_conf_create(sp_conf_t **conf_p)
{
    return sp__conf_create_defs(sp__conf_defs, sp__conf_ndefs, conf_p);
}

void sp_conf_destroy(sp_conf_t *conf)
{
    if (conf == NULL)
        return;
    for (size_t i = 0; i < conf->ndefs; i++)
        sp__free(conf->entries[i].text);
    sp__free(conf->entries);
    sp__free(conf);
}

sp_status_t sp_conf_dup(const sp_conf_t *conf, sp_conf_t **copy_p)
{
    sp_conf_t *copy;
    sp_status_t st;

    st = sp__conf_create_defs(conf->defs, conf->ndefs, &copy);
    if (st != SP_OK)
        return st;
    for (size_t i = 0; i < conf->ndefs; i++) {
        if (!conf->entries[i].set)
            continue;
        st = sp_conf_store(copy, i, conf->entries[i].text, true);
        if (st != SP_OK) {
            sp_conf_destroy(copy);
            return st;
        }
    }
    *copy_p = copy;
    return SP_OK;
}

sp_status_t sp_conf_set(sp_conf_t *conf, const char *key, const char *value)
{
    size_t idx;

    if (sp_conf_find(conf, key, &idx) == NULL)
        return SP_RAISE(SP_ERR_BAD_CONF, "unknown conf key '%s' (see `spate conf` for the list)",
                        key);
    return sp_conf_store(conf, idx, value, true);
}

/* Trims spaces at both ends of [*begin, *end). */
static void sp_conf_trim(const char **begin, const char **end)
{
    while (*begin < *end && isspace((unsigned char)**begin))
        (*begin)++;
    while (*end > *begin && isspace((unsigned char)(*end)[-1]))
        (*end)--;
}

/* Splits "key=value" (spaces allowed around both) and sets it. */
static sp_status_t sp_conf_set_span(sp_conf_t *conf, const char *line, size_t len,
                                    const char *origin)
{
    const char *eq = memchr(line, '=', len);
    const char *kb = line, *ke, *vb, *ve = line + len;
    char key[128], value[4096];

    if (eq == NULL)
        return SP_RAISE(SP_ERR_BAD_CONF, "%s: '%.*s' is not key=value", origin,
                        (int)SP_MIN(len, 200), line);
    ke = eq;
    vb = eq + 1;
    sp_conf_trim(&kb, &ke);
    sp_conf_trim(&vb, &ve);
    if (ke == kb)
        return SP_RAISE(SP_ERR_BAD_CONF, "%s: empty key in '%.*s'", origin, (int)SP_MIN(len, 200),
                        line);
    if ((size_t)(ke - kb) >= sizeof(key) || (size_t)(ve - vb) >= sizeof(value))
        return SP_RAISE(SP_ERR_BAD_CONF, "%s: key or value too long", origin);
    memcpy(key, kb, (size_t)(ke - kb));
    key[ke - kb] = '\0';
    memcpy(value, vb, (size_t)(ve - vb));
    value[ve - vb] = '\0';
    return sp_conf_set(conf, key, value);
}

sp_status_t sp_conf_set_assignment(sp_conf_t *conf, const char *assignment)
{
    return sp_conf_set_span(conf, assignment, strlen(assignment), "--conf");
}

/* What st is, for a message about a file that is neither a regular file nor a pipe. */
static const char *sp_conf_file_kind(const struct stat *st)
{
    if (S_ISCHR(st->st_mode))
        return "a character device";
    if (S_ISBLK(st->st_mode))
        return "a block device";
    if (S_ISSOCK(st->st_mode))
        return "a socket";
    return "not a regular file";
}

/*
 * All of path, malloc'ed in *text_p (*len_p bytes, NUL-terminated for
 * convenience; the text itself holds no NUL, checked by the caller). Refuses
 * what is not a regular file or a pipe, and more than SP_CONF_FILE_MAX bytes.
 */
static sp_status_t sp_conf_read_file(const char *path, char **text_p, size_t *len_p)
{
    size_t len = 0, cap;
    struct stat st;
    sp_status_t status;
    char *text;
    int fd;

    /* A device is refused before it is opened: opening one may do something (a tape rewinds). */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode) &&
        !S_ISDIR(st.st_mode))
        return SP_RAISE(SP_ERR_BAD_CONF,
                        "conf file '%s' is %s; a conf file is a regular file or a pipe", path,
                        sp_conf_file_kind(&st));
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SP_RAISE(SP_ERR_IO, "cannot open conf file '%s': %s (errno %d)", path,
                        strerror(errno), errno);
    /* What was opened is checked again: the path may have changed in between. */
    if (fstat(fd, &st) != 0) {
        status = SP_RAISE(SP_ERR_IO, "cannot stat conf file '%s': %s (errno %d)", path,
                          strerror(errno), errno);
        goto err_close;
    }
    if (S_ISDIR(st.st_mode)) {
        status = SP_RAISE(SP_ERR_IO, "cannot read conf file '%s': %s (errno %d)", path,
                          strerror(EISDIR), EISDIR);
        goto err_close;
    }
    if (!S_ISREG(st.st_mode) && !S_ISFIFO(st.st_mode)) {
        status = SP_RAISE(SP_ERR_BAD_CONF,
                          "conf file '%s' is %s; a conf file is a regular file or a pipe", path,
                          sp_conf_file_kind(&st));
        goto err_close;
    }
    if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > SP_CONF_FILE_MAX) {
        status = SP_RAISE(SP_ERR_BAD_CONF,
                          "conf file '%s' is %lld bytes; a conf file is at most %u bytes (1 MiB)",
                          path, (long long)st.st_size, SP_CONF_FILE_MAX);
        goto err_close;
    }
    /* A regular file's size is a hint (it may grow while read); a pipe's is 0. */
    cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 4096;
    text = sp__malloc(cap);
    if (text == NULL) {
        status = SP_RAISE(SP_ERR_NOMEM, "no memory to read conf file '%s'", path);
        goto err_close;
    }
    for (;;) {
        ssize_t n;

        if (len == cap - 1) {
            size_t want = SP_MIN(2 * cap, (size_t)SP_CONF_FILE_MAX + 2);
            char *grown;

            if (len > SP_CONF_FILE_MAX) {
                status = SP_RAISE(SP_ERR_BAD_CONF,
                                  "conf file '%s' is longer than %u bytes (1 MiB), the most a "
                                  "conf file may be",
                                  path, SP_CONF_FILE_MAX);
                goto err_free;
            }
            grown = sp__realloc(text, want);
            if (grown == NULL) {
                status = SP_RAISE(SP_ERR_NOMEM, "no memory to read conf file '%s'", path);
                goto err_free;
            }
            text = grown;
            cap = want;
        }
        n = read(fd, text + len, cap - 1 - len);
        if (n == 0)
            break;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            status = SP_RAISE(SP_ERR_IO, "error reading conf file '%s': %s (errno %d)", path,
                              strerror(errno), errno);
            goto err_free;
        }
        len += (size_t)n;
    }
    if (len > SP_CONF_FILE_MAX) {
        status = SP_RAISE(SP_ERR_BAD_CONF,
                          "conf file '%s' is longer than %u bytes (1 MiB), the most a conf file "
                          "may be",
                          path, SP_CONF_FILE_MAX);
        goto err_free;
    }
    close(fd);
    text[len] = '\0';
    *text_p = text;
    *len_p = len;
    return SP_OK;

err_free:
    sp__free(text);
err_close:
    close(fd);
    return status;
}

sp_status_t sp_conf_load_file(sp_conf_t *conf, const char *path)
{
    const char *p, *end, *nul;
    char origin[512], *text = NULL;
    unsigned lineno = 0;
    size_t len = 0;
    sp_status_t st;

    if ((st = sp_conf_read_file(path, &text, &len)) != SP_OK)
        return st;
    end = text + len;
    /* A NUL byte would silently end a line for every string function below: refuse the file. */
    nul = memchr(text, '\0', len);
    if (nul != NULL) {
        unsigned line = 1;

        for (p = text; p < nul; p++)
            line += *p == '\n';
        st = SP_RAISE(SP_ERR_BAD_CONF,
                      "%s:%u: a NUL byte (at byte %zu of the file); a conf file is text", path,
                      line, (size_t)(nul - text));
        goto out;
    }
    for (p = text; p < end && st == SP_OK;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *b = p, *e = nl != NULL ? nl : end;

        lineno++;
        p = nl != NULL ? nl + 1 : end;
        if ((size_t)(e - b) > SP_CONF_LINE_MAX) {
            st = SP_RAISE(SP_ERR_BAD_CONF, "%s:%u: line longer than %u bytes", path, lineno,
                          SP_CONF_LINE_MAX);
            break;
        }
        sp_conf_trim(&b, &e);
        if (b == e || *b == '#')
            continue;
        snprintf(origin, sizeof(origin), "%s:%u", path, lineno);
        st = sp_conf_set_span(conf, b, (size_t)(e - b), origin);
        if (st != SP_OK && strncmp(sp_last_error(), origin, strlen(origin)) != 0)
            st = SP_RAISE(st, "%s: %s", origin, sp_last_error());
    }
out:
    sp__free(text);
    return st;
}

/* "memory.storage_fraction" -> "MEMORY_STORAGE_FRACTION" compared to env_key. */
static bool sp_conf_env_matches(const char *key, const char *env_key, size_t env_len)
{
    size_t i;

    for (i = 0; key[i] != '\0' && i < env_len; i++) {
        char c = key[i] == '.' || key[i] == '-' ? '_' : (char)toupper((unsigned char)key[i]);
        if (c != env_key[i])
            return false;
    }
    return key[i] == '\0' && i == env_len;
}

sp_status_t sp_conf_load_env(sp_conf_t *conf, char *const *envp)
{
    static const char prefix[] = "SPATE_CONF_";

    for (; envp != NULL && *envp != NULL; envp++) {
        const char *var = *envp, *eq, *name;
        size_t idx, name_len;
        bool found = false;
        sp_status_t st;

        if (strncmp(var, prefix, sizeof(prefix) - 1) != 0)
            continue;
        eq = strchr(var, '=');
        if (eq == NULL)
            continue;
        name = var + sizeof(prefix) - 1;
        name_len = (size_t)(eq - name);
        for (idx = 0; idx < conf->ndefs && !found; idx++) {
            if (sp_conf_env_matches(conf->defs[idx].key, name, name_len)) {
                found = true;
                st = sp_conf_store(conf, idx, eq + 1, true);
                if (st != SP_OK)
                    return SP_RAISE(st, "environment %.*s: %s", (int)(eq - var), var,
                                    sp_last_error());
            }
        }
        if (!found)
            return SP_RAISE(SP_ERR_BAD_CONF, "environment %.*s names no conf key", (int)(eq - var),
                            var);
    }
    return SP_OK;
}

static sp_status_t sp_conf_lookup(const sp_conf_t *conf, const char *key, sp_conf_type_t type,
                                  const sp_conf_entry_t **entry_p)
{
    const sp_conf_def_t *def;
    size_t idx;

    def = sp_conf_find(conf, key, &idx);
    if (def == NULL)
        return SP_RAISE(SP_ERR_NOT_FOUND, "unknown conf key '%s'", key);
    if (def->type != type && !(type == SP_CONF_STRING && def->type == SP_CONF_ENUM))
        return SP_RAISE(SP_ERR_INVALID_PARAM, "conf key '%s' is a %s, not a %s", key,
                        sp__conf_type_name(def->type), sp__conf_type_name(type));
    *entry_p = &conf->entries[idx];
    return SP_OK;
}

#define SP_CONF_GETTER(fn, ctype, type, field)                                                     \
    sp_status_t fn(const sp_conf_t *conf, const char *key, ctype *value_p)                         \
    {                                                                                              \
        const sp_conf_entry_t *e;                                                                  \
        sp_status_t st = sp_conf_lookup(conf, key, type, &e);                                      \
        if (st == SP_OK)                                                                           \
            *value_p = e->v.field;                                                                 \
        return st;                                                                                 \
    }
SP_CONF_GETTER(sp_conf_get_size, uint64_t, SP_CONF_SIZE, u)
SP_CONF_GETTER(sp_conf_get_duration, uint64_t, SP_CONF_DURATION, u)
SP_CONF_GETTER(sp_conf_get_int, int64_t, SP_CONF_INT, i)
SP_CONF_GETTER(sp_conf_get_double, double, SP_CONF_DOUBLE, d)
SP_CONF_GETTER(sp_conf_get_bool, bool, SP_CONF_BOOL, b)

sp_status_t sp_conf_get_string(const sp_conf_t *conf, const char *key, const char **value_p)
{
    const sp_conf_entry_t *e;
    sp_status_t st = sp_conf_lookup(conf, key, SP_CONF_STRING, &e);

    if (st == SP_OK)
        *value_p = e->text;
    return st;
}

void sp_conf_foreach_set(const sp_conf_t *conf,
                         void (*fn)(void *arg, const char *key, const char *value), void *arg)
{
    for (size_t i = 0; i < conf->ndefs; i++)
        if (conf->entries[i].set)
            fn(arg, conf->defs[i].key, conf->entries[i].text);
}

bool sp_conf_is_set(const sp_conf_t *conf, const char *key)
{
    size_t idx;

    return sp_conf_find(conf, key, &idx) != NULL && conf->entries[idx].set;
}

void sp__conf_write_markdown_defs(const sp_conf_def_t *defs, size_t ndefs, FILE *out)
{
    fprintf(out, "| Key | Type | Default | Range | Description |\n");
    fprintf(out, "|---|---|---|---|---|\n");
    for (size_t i = 0; i < ndefs; i++) {
        const sp_conf_def_t *d = &defs[i];
        char range[160];

        if (d->type == SP_CONF_ENUM) {
            /* A '|' would end the table cell: list the choices as "a, b, c". */
            size_t n = 0;
            for (const char *c = d->choices; c != NULL && *c != '\0' && n + 3 < sizeof(range);
                 c++) {
                if (*c == '|') {
                    range[n++] = ',';
                    range[n++] = ' ';
                } else {
                    range[n++] = *c;
                }
            }
            range[n] = '\0';
        } else if (d->type == SP_CONF_BOOL)
            snprintf(range, sizeof(range), "true, false");
        else if (d->min != NULL || d->max != NULL)
            snprintf(range, sizeof(range), "%s .. %s", d->min != NULL ? d->min : "",
                     d->max != NULL ? d->max : "");
        else
            snprintf(range, sizeof(range), "any");
        fprintf(out, "| `%s` | %s | %s%s%s | %s | %s |\n", d->key, sp__conf_type_name(d->type),
                *d->def != '\0' ? "`" : "", *d->def != '\0' ? d->def : "(empty)",
                *d->def != '\0' ? "`" : "", range, d->doc);
    }
}

void sp_conf_write_markdown(FILE *out)
{
    sp__conf_write_markdown_defs(sp__conf_defs, sp__conf_ndefs, out);
}
