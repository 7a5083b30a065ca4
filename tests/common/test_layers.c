/*
 * Keeps the layers apart (docs/ARCHITECTURE.md, "Layers"). The test reads every
 * `#include "..."` and `#include <...>` line of every .c and .h under the layer folders,
 * include/spate/ and examples/, resolves the name to a file the way the compiler does (the
 * including file's own folder first for quoted names, then the whole tree's include path,
 * CMake's SPATE_TREE_INCLUDE_DIRS, passed in SPATE_LAYER_INCLUDE_PATH), and finds the layer
 * of both ends: a file's layer is its top folder (executor/jobs/ is executor), a public
 * header's is given by public_headers[] or is the layer it is named after, and headers CMake
 * generates (spate_build.h) stand on the common floor. It fails, naming file, line and edge, on:
 *   - an upward edge: a layer includes a header of a layer above it;
 *   - a sideways edge: two layers on one floor (transport/ and control/) include each other;
 *   - a private header (*_int.h) of another layer, unless exceptions[] names the edge;
 *   - a header of a layer that narrow[] lets the including layer reach through one header
 *     only (the launcher and control/control.h);
 *   - a public header that includes anything but public headers, and an example that
 *     includes anything but public headers;
 *   - a name that resolves to no file in the tree (a typo, or a header in a folder that is
 *     in no layer) and a top folder with C sources that is in no layer.
 * Includes that resolve outside the tree (system and library headers) are not edges.
 *
 * The build compiles each layer against a view of the tree that hides the upper layers and
 * the other layers of its floor, so an upward or sideways include also fails to compile; the
 * last test checks that CMake's table of layers, floors and public headers agrees with this
 * one.
 *
 * The first test runs the same scan over a small tree it writes, with one violation of each
 * kind, and compares what it reports with the list it planted, so a checker that stopped
 * seeing an edge fails here rather than passing on the real tree. tests/ and bench/ are not
 * scanned: tests reach sp__ internals on purpose, and bench may use every layer.
 */
/* LABELS: unit */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_IPATH 64

/*
 * The layers, lowest first. A layer may include its own headers and those of every layer
 * on a lower floor; two layers on one floor must not know each other. control/ (driver-
 * executor messaging, issue 14) stands on the transport floor beside transport/.
 */
typedef struct layer {
    const char *name;
    int floor;
} layer_t;

static const layer_t layers[] = {
    {"common", 0},  {"memory", 1},   {"transport", 2}, {"control", 2},
    {"shuffle", 3}, {"executor", 4}, {"launcher", 5},
};

/* Top folders that are in no layer and hold no library code the layers could include. */
static const char *const other_folders[] = {"bench", "tests",  "examples", "include",
                                            "cmake", "deploy", "scripts",  "docs"};

/*
 * Public headers (include/spate/) whose layer is not the one they are named after. spate.h
 * gathers the library's headers for applications and plugins, so it stands on the top
 * floor of libspate. A new header named after its layer (control.h) needs no entry here.
 */
static const struct {
    const char *header;
    const char *layer;
} public_headers[] = {
    {"common.h", "common"}, {"conf.h", "common"},    {"graph.h", "executor"},
    {"job.h", "executor"},  {"spate.h", "executor"},
};

/*
 * Private headers included from outside their layer on purpose today. Each names the
 * including file ("*" for any) and the included header, both relative to the source root.
 * Keep this list short: a new entry needs the reason beside it.
 */
typedef struct exception {
    const char *from;
    const char *header;
} exception_t;

static const exception_t exceptions[] = {
    /* The common floor's toolbox (SP_RAISE, assertions, sp_container_of, allocation with
     * fault injection, build switches) is shared by every layer by design: CMakeLists.txt
     * puts common/ on every layer's include path for it. */
    {"*", "common/common_int.h"},
    /* `spate conf` prints the table of configuration keys with their defaults and ranges
     * (sp__conf_defs), which only the configuration module's private header declares. */
    {"launcher/cmd_conf.c", "common/conf_int.h"},
};

/*
 * Layers that a layer above may reach through one header only. The launcher opens and closes
 * control conns through control/control.h (an opaque conn, listen, connect, pair, secrets) and
 * never through control/ctl.h, the executor's header (frames, the codec, the hub).
 */
static const struct {
    const char *from;   /* the including layer */
    const char *to;     /* the included layer */
    const char *header; /* the one header of `to` that `from` may include */
} narrow[] = {
    {"launcher", "control", "control/control.h"},
};

/* What a scan found: one line per violation, and which exceptions it used. */
typedef struct scan {
    char root[PATH_MAX];   /* source root, resolved */
    char bindir[PATH_MAX]; /* build tree, resolved; "" if none */
    char *ipath[MAX_IPATH];
    size_t nipath;
    char **violations;
    size_t nviolations;
    size_t nedges; /* include lines resolved to a file in the tree */
    bool exception_used[sizeof(exceptions) / sizeof(exceptions[0])];
} scan_t;

/* The kind of file at each end of an edge. */
typedef enum kind { KIND_LAYER, KIND_PUBLIC, KIND_EXAMPLE, KIND_NONE } kind_t;

typedef struct where {
    kind_t kind;
    const layer_t *layer; /* KIND_LAYER and KIND_PUBLIC */
} where_t;

static void add_violation(scan_t *s, const char *fmt, ...)
{
    va_list ap;
    char *line = NULL;

    va_start(ap, fmt);
    assert_true(vasprintf(&line, fmt, ap) >= 0);
    va_end(ap);
    s->violations = realloc(s->violations, (s->nviolations + 1) * sizeof(*s->violations));
    assert_non_null(s->violations);
    s->violations[s->nviolations++] = line;
}

static const layer_t *layer_named(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(layers) / sizeof(layers[0]); i++) {
        if (strlen(layers[i].name) == len && memcmp(layers[i].name, name, len) == 0)
            return &layers[i];
    }
    return NULL;
}

/* Where a file of the tree (path relative to the source root) belongs. */
static where_t where_is(const char *rel)
{
    where_t w = {KIND_NONE, NULL};
    const char *slash = strchr(rel, '/');

    if (slash == NULL)
        return w;
    if (strncmp(rel, "include/spate/", 14) == 0) {
        const char *name = rel + 14;
        size_t len = strlen(name);

        for (size_t i = 0; i < sizeof(public_headers) / sizeof(public_headers[0]); i++) {
            if (strcmp(public_headers[i].header, name) == 0) {
                w.layer = layer_named(public_headers[i].layer, strlen(public_headers[i].layer));
                break;
            }
        }
        if (w.layer == NULL && len > 2 && strcmp(name + len - 2, ".h") == 0 &&
            strchr(name, '/') == NULL)
            w.layer = layer_named(name, len - 2);
        if (w.layer != NULL)
            w.kind = KIND_PUBLIC;
        return w;
    }
    if (strncmp(rel, "examples/", 9) == 0) {
        w.kind = KIND_EXAMPLE;
        return w;
    }
    w.layer = layer_named(rel, (size_t)(slash - rel));
    if (w.layer != NULL)
        w.kind = KIND_LAYER;
    return w;
}

/* Writes a + "/" + b to out (cap bytes); a path that long fails the test. */
static void join(char *out, size_t cap, const char *a, const char *b)
{
    int n = snprintf(out, cap, "%s/%s", a, b);

    if (n < 0 || (size_t)n >= cap)
        fail_msg("path too long: %s/%s", a, b);
}

static bool is_regular_file(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The path of abs relative to dir, or NULL if abs is not under dir. */
static const char *under(const char *abs, const char *dir)
{
    size_t n = strlen(dir);

    if (n == 0 || strncmp(abs, dir, n) != 0 || abs[n] != '/')
        return NULL;
    return abs + n + 1;
}

/*
 * Resolves an include name from the file at dir (absolute) as the compiler does: quoted
 * names first in dir, then every name along the include path. Writes the resolved absolute
 * path to out; returns false if no candidate exists.
 */
static bool resolve(const scan_t *s, const char *dir, const char *name, bool quoted,
                    char out[PATH_MAX])
{
    char cand[PATH_MAX + 512];

    if (quoted) {
        join(cand, sizeof(cand), dir, name);
        if (is_regular_file(cand) && realpath(cand, out) != NULL)
            return true;
    }
    for (size_t i = 0; i < s->nipath; i++) {
        join(cand, sizeof(cand), s->ipath[i], name);
        if (is_regular_file(cand) && realpath(cand, out) != NULL)
            return true;
    }
    return false;
}

static const exception_t *find_exception(scan_t *s, const char *from, const char *header)
{
    for (size_t i = 0; i < sizeof(exceptions) / sizeof(exceptions[0]); i++) {
        if (strcmp(exceptions[i].header, header) == 0 &&
            (strcmp(exceptions[i].from, "*") == 0 || strcmp(exceptions[i].from, from) == 0)) {
            s->exception_used[i] = true;
            return &exceptions[i];
        }
    }
    return NULL;
}

static bool is_private_header(const char *rel)
{
    size_t n = strlen(rel);

    return n >= 6 && strcmp(rel + n - 6, "_int.h") == 0;
}

/* Checks one include edge: from (relative path, at line) includes spelled, resolved to to. */
static void check_edge(scan_t *s, const char *from, int line, const char *spelled, const char *to)
{
    where_t a = where_is(from), b;
    const char *gen;

    s->nedges++;
    /* Headers CMake writes into the build tree (spate_build.h) stand on the common floor. */
    if (s->bindir[0] != '\0' && (gen = under(to, s->bindir)) != NULL) {
        b.kind = KIND_LAYER;
        b.layer = &layers[0];
        to = gen;
    } else {
        to = under(to, s->root);
        assert_non_null(to);
        b = where_is(to);
    }
    if (b.kind == KIND_NONE) {
        add_violation(s, "%s:%d: %s resolves to %s, which is in no layer", from, line, spelled, to);
        return;
    }
    if (b.kind == KIND_EXAMPLE) {
        add_violation(s, "%s:%d: %s includes an example (%s)", from, line, spelled, to);
        return;
    }
    if (a.kind == KIND_EXAMPLE) {
        if (b.kind != KIND_PUBLIC)
            add_violation(s,
                          "%s:%d: example -> %s: %s (%s); an example includes only "
                          "<spate/...> public headers",
                          from, line, b.layer->name, spelled, to);
        return;
    }
    if (a.kind == KIND_PUBLIC && b.kind != KIND_PUBLIC) {
        add_violation(s,
                      "%s:%d: public header -> %s: %s (%s); a public header includes only "
                      "<spate/...> public headers",
                      from, line, b.layer->name, spelled, to);
        return;
    }
    if (b.layer->floor > a.layer->floor) {
        add_violation(s, "%s:%d: upward edge %s -> %s: %s (%s)", from, line, a.layer->name,
                      b.layer->name, spelled, to);
        return;
    }
    if (b.layer != a.layer && b.layer->floor == a.layer->floor) {
        add_violation(s, "%s:%d: sideways edge %s -> %s: %s (%s)", from, line, a.layer->name,
                      b.layer->name, spelled, to);
        return;
    }
    for (size_t i = 0; i < sizeof(narrow) / sizeof(narrow[0]); i++) {
        if (strcmp(a.layer->name, narrow[i].from) == 0 &&
            strcmp(b.layer->name, narrow[i].to) == 0 && b.kind == KIND_LAYER &&
            strcmp(to, narrow[i].header) != 0) {
            add_violation(s, "%s:%d: %s -> %s: %s (%s); the %s includes only %s of %s/", from, line,
                          a.layer->name, b.layer->name, spelled, to, a.layer->name,
                          narrow[i].header, b.layer->name);
            return;
        }
    }
    if (b.layer != a.layer && is_private_header(to) && find_exception(s, from, to) == NULL)
        add_violation(s, "%s:%d: private header of another layer %s -> %s: %s (%s)", from, line,
                      a.layer->name, b.layer->name, spelled, to);
}

/* Reads the include lines of one file (path relative to the root). */
static void scan_file(scan_t *s, const char *rel)
{
    char path[PATH_MAX * 2], dir[PATH_MAX * 2], buf[4096], resolved[PATH_MAX];
    FILE *f;
    int line = 0;

    if (where_is(rel).kind == KIND_NONE) {
        add_violation(s,
                      "%s: a public header in no layer; add it to public_headers[] in "
                      "tests/common/test_layers.c",
                      rel);
        return;
    }
    join(path, sizeof(path), s->root, rel);
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = '\0';
    f = fopen(path, "r");
    if (f == NULL)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    while (fgets(buf, sizeof(buf), f) != NULL) {
        const char *p = buf;
        char close, name[1024];
        size_t n;

        line++;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p++ != '#')
            continue;
        while (*p == ' ' || *p == '\t')
            p++;
        if (strncmp(p, "include", 7) != 0)
            continue;
        p += 7;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '"')
            close = '"';
        else if (*p == '<')
            close = '>';
        else
            continue; /* #include MACRO: no file to follow */
        n = strcspn(p + 1, close == '"' ? "\"\n" : ">\n");
        if (p[1 + n] != close || n == 0 || n >= sizeof(name))
            fail_msg("%s:%d: cannot read the include line: %s", rel, line, buf);
        memcpy(name, p + 1, n);
        name[n] = '\0';
        if (!resolve(s, dir, name, close == '"', resolved)) {
            /* A quoted name is ours (the tree uses <> for every outside header); a <spate/>
             * name is ours by its folder. Anything else is a system or library header. */
            if (close == '"' || strncmp(name, "spate/", 6) == 0)
                add_violation(s, "%s:%d: %c%s%c resolves to no file (include path: %s ...)", rel,
                              line, close == '"' ? '"' : '<', name, close,
                              s->nipath > 0 ? s->ipath[0] : "empty");
            continue;
        }
        if (under(resolved, s->root) == NULL &&
            (s->bindir[0] == '\0' || under(resolved, s->bindir) == NULL))
            continue; /* outside the tree: not an edge */
        {
            char spelled[1100];

            snprintf(spelled, sizeof(spelled), "#include %c%s%c", close == '"' ? '"' : '<', name,
                     close);
            check_edge(s, rel, line, spelled, resolved);
        }
    }
    fclose(f);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Scans the .c and .h files under rel (a folder relative to the root), in name order so
 * that the report is stable. Returns how many it scanned.
 */
static size_t scan_dir(scan_t *s, const char *rel)
{
    char path[PATH_MAX * 2];
    DIR *d;
    struct dirent *e;
    char **names = NULL;
    size_t nnames = 0, nfiles = 0;

    join(path, sizeof(path), s->root, rel);
    d = opendir(path);
    if (d == NULL)
        return 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        names = realloc(names, (nnames + 1) * sizeof(*names));
        assert_non_null(names);
        assert_true(asprintf(&names[nnames++], "%s/%s", rel, e->d_name) >= 0);
    }
    closedir(d);
    if (nnames > 0)
        qsort(names, nnames, sizeof(*names), cmp_str);
    for (size_t i = 0; i < nnames; i++) {
        struct stat st;
        size_t len = strlen(names[i]);

        join(path, sizeof(path), s->root, names[i]);
        if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            nfiles += scan_dir(s, names[i]);
        } else if (S_ISREG(st.st_mode) && len > 2 &&
                   (strcmp(names[i] + len - 2, ".c") == 0 ||
                    strcmp(names[i] + len - 2, ".h") == 0)) {
            scan_file(s, names[i]);
            nfiles++;
        }
        free(names[i]);
    }
    free(names);
    return nfiles;
}

/* Whether the folder at rel (relative to the root) holds a .c or .h file, at any depth. */
static bool holds_c_sources(const scan_t *s, const char *rel)
{
    char path[PATH_MAX * 2];
    DIR *d;
    struct dirent *e;
    bool found = false;

    join(path, sizeof(path), s->root, rel);
    d = opendir(path);
    if (d == NULL)
        return false;
    while (!found && (e = readdir(d)) != NULL) {
        char sub[PATH_MAX * 2];
        struct stat st;
        size_t len = strlen(e->d_name);

        if (e->d_name[0] == '.')
            continue;
        join(sub, sizeof(sub), rel, e->d_name);
        join(path, sizeof(path), s->root, sub);
        if (lstat(path, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode))
            found = holds_c_sources(s, sub);
        else if (S_ISREG(st.st_mode) && len > 2 &&
                 (strcmp(e->d_name + len - 2, ".c") == 0 || strcmp(e->d_name + len - 2, ".h") == 0))
            found = true;
    }
    closedir(d);
    return found;
}

/* A top folder with C sources must be a layer or one of other_folders[]; build trees
 * (a CMakeCache.txt inside) and hidden folders are not sources. */
static void check_top_folders(scan_t *s)
{
    DIR *d = opendir(s->root);
    struct dirent *e;

    assert_non_null(d);
    while ((e = readdir(d)) != NULL) {
        char path[PATH_MAX * 2];
        struct stat st;
        bool known = layer_named(e->d_name, strlen(e->d_name)) != NULL;

        if (e->d_name[0] == '.')
            continue;
        for (size_t i = 0; i < sizeof(other_folders) / sizeof(other_folders[0]); i++)
            known = known || strcmp(other_folders[i], e->d_name) == 0;
        join(path, sizeof(path), s->root, e->d_name);
        if (known || lstat(path, &st) != 0 || !S_ISDIR(st.st_mode))
            continue;
        snprintf(path, sizeof(path), "%s/%s/CMakeCache.txt", s->root, e->d_name);
        if (is_regular_file(path))
            continue;
        join(path, sizeof(path), s->root, e->d_name);
        if (s->bindir[0] != '\0' && strcmp(path, s->bindir) == 0)
            continue;
        if (holds_c_sources(s, e->d_name))
            add_violation(s,
                          "%s/: holds C sources but is in no layer; add it to layers[] in "
                          "tests/common/test_layers.c (and docs/ARCHITECTURE.md)",
                          e->d_name);
    }
    closedir(d);
}

/*
 * Prepares a scan of the tree at root. ipath is the include path, ':'-separated; relative
 * entries and entries that do not exist are dropped (the compiler ignores the latter too).
 */
static void scan_init(scan_t *s, const char *root, const char *bindir, const char *ipath)
{
    char *copy, *save = NULL;

    memset(s, 0, sizeof(*s));
    if (realpath(root, s->root) == NULL)
        fail_msg("source root %s: %s", root, strerror(errno));
    if (bindir != NULL && *bindir != '\0' && realpath(bindir, s->bindir) == NULL)
        s->bindir[0] = '\0';
    copy = strdup(ipath);
    assert_non_null(copy);
    for (char *tok = strtok_r(copy, ":", &save); tok != NULL; tok = strtok_r(NULL, ":", &save)) {
        char real[PATH_MAX];

        if (tok[0] != '/' || realpath(tok, real) == NULL)
            continue;
        assert_true(s->nipath < MAX_IPATH);
        s->ipath[s->nipath] = strdup(real);
        assert_non_null(s->ipath[s->nipath]);
        s->nipath++;
    }
    free(copy);
}

/* Scans the layer folders, include/spate/ and examples/. Returns the files scanned. */
static size_t scan_run(scan_t *s)
{
    size_t nfiles = 0;

    check_top_folders(s);
    for (size_t i = 0; i < sizeof(layers) / sizeof(layers[0]); i++)
        nfiles += scan_dir(s, layers[i].name);
    nfiles += scan_dir(s, "include/spate");
    nfiles += scan_dir(s, "examples");
    return nfiles;
}

static void scan_fini(scan_t *s)
{
    for (size_t i = 0; i < s->nviolations; i++)
        free(s->violations[i]);
    free(s->violations);
    for (size_t i = 0; i < s->nipath; i++)
        free(s->ipath[i]);
}

/* Writes path (relative to root) with the given lines. */
static void write_file(const char *root, const char *rel, const char *text)
{
    char path[PATH_MAX * 2], *slash;
    FILE *f;

    join(path, sizeof(path), root, rel);
    for (slash = strchr(path + strlen(root) + 1, '/'); slash != NULL;
         slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        assert_true(mkdir(path, 0700) == 0 || errno == EEXIST);
        *slash = '/';
    }
    f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/*
 * The checker against a tree with one planted violation of each kind and a few allowed
 * edges of each kind: it must report exactly the planted ones, by file and line.
 */
static void test_layers_checker_reports_each_kind_of_edge(void **state)
{
    char root[] = "/tmp/spate_test_layers_XXXXXX", ipath[256];
    static const char *const expected[] = {
        "common/bad.c:1: upward edge common -> memory: #include \"memory/memory_int.h\" "
        "(memory/memory_int.h)",
        "control/ctl.c:2: sideways edge control -> transport: #include <spate/transport.h> "
        "(include/spate/transport.h)",
        "examples/ex.c:2: example -> common: #include \"common_int.h\" (common/common_int.h)",
        "executor/jobs/job.c:3: upward edge executor -> launcher: #include \"launcher/cli.h\" "
        "(launcher/cli.h)",
        "include/spate/bytes.h: a public header in no layer; ",
        "include/spate/memory.h:2: upward edge memory -> shuffle: #include <spate/shuffle.h> "
        "(include/spate/shuffle.h)",
        "include/spate/transport.h:1: public header -> common: #include \"common_int.h\" "
        "(common/common_int.h)",
        "launcher/conn.c:2: launcher -> control: #include \"control/ctl.h\" (control/ctl.h); the "
        "launcher includes only control/control.h of control/",
        "launcher/run.c:2: private header of another layer launcher -> memory: "
        "#include \"memory/memory_int.h\" (memory/memory_int.h)",
        "monitor/: holds C sources but is in no layer; add it to layers[] in "
        "tests/common/test_layers.c (and docs/ARCHITECTURE.md)",
        "shuffle/reader.c:4: \"missing.h\" resolves to no file (include path: ",
        "transport/t.c:1: private header of another layer transport -> memory: "
        "#include \"../memory/topology_int.h\" (memory/topology_int.h)",
    };
    scan_t s;
    size_t nfiles;

    (void)state;
    assert_non_null(mkdtemp(root));
    write_file(root, "common/common_int.h", "#include <spate/common.h>\n#include <stdio.h>\n");
    write_file(root, "common/bad.c",
               "#include \"memory/memory_int.h\"\n#include \"common_int.h\"\n");
    write_file(root, "memory/memory_int.h",
               "#include \"common_int.h\"\n#include <spate/memory.h>\n");
    write_file(root, "memory/topology_int.h", "#include \"memory_int.h\"\n");
    write_file(root, "transport/t.c", "#  include \"../memory/topology_int.h\"\n");
    write_file(root, "control/ctl.c", "#include \"common_int.h\"\n#include <spate/transport.h>\n");
    write_file(root, "control/control.h", "#include <spate/common.h>\n");
    write_file(root, "control/ctl.h", "#include \"control/control.h\"\n");
    write_file(root, "launcher/conn.c",
               "#include \"control/control.h\"\n#include \"control/ctl.h\"\n");
    write_file(root, "shuffle/reader.c",
               "/* #include lines in comments do not start with # */\n#include <spate/memory.h>\n"
               "#include \"shuffle/codec.h\"\n#include \"missing.h\"\n#include SOME_MACRO\n");
    write_file(root, "shuffle/codec.h", "#include <spate/shuffle.h>\n#include <zlib.h>\n");
    write_file(
        root, "executor/jobs/job.c",
        "#include \"shuffle/codec.h\"\n#include <spate/job.h>\n#include \"launcher/cli.h\"\n");
    write_file(root, "launcher/cli.h", "#include <spate/spate.h>\n");
    write_file(root, "launcher/run.c",
               "#include \"cli.h\"\n#include \"memory/memory_int.h\"\n"
               "#include \"common_int.h\"\n#include \"executor/jobs/job.c\"\n");
    write_file(root, "include/spate/common.h", "#include <stdint.h>\n");
    write_file(root, "include/spate/memory.h",
               "#include <spate/common.h>\n#include <spate/shuffle.h>\n");
    write_file(root, "include/spate/shuffle.h", "#include <spate/memory.h>\n");
    write_file(root, "include/spate/transport.h", "#include \"common_int.h\"\n");
    write_file(root, "include/spate/bytes.h", "#include <spate/common.h>\n");
    write_file(root, "include/spate/job.h", "#include <spate/shuffle.h>\n");
    write_file(root, "include/spate/spate.h", "#include <spate/job.h>\n");
    write_file(root, "examples/ex.c", "#include <spate/spate.h>\n#include \"common_int.h\"\n");
    write_file(root, "monitor/page.c", "int x;\n");
    write_file(root, "tests/t.c", "#include \"launcher/cli.h\"\n");
    write_file(root, "build/CMakeCache.txt", "\n");
    write_file(root, "build/x.c", "#include \"launcher/cli.h\"\n");

    snprintf(ipath, sizeof(ipath), "%s/include:%s:%s/common:relative/dir:%s/nonexistent", root,
             root, root, root);
    scan_init(&s, root, NULL, ipath);
    nfiles = scan_run(&s);
    assert_int_equal(nfiles, 22);
    qsort(s.violations, s.nviolations, sizeof(*s.violations), cmp_str);
    for (size_t i = 0; i < sizeof(expected) / sizeof(expected[0]) || i < s.nviolations; i++) {
        if (i < s.nviolations && i < sizeof(expected) / sizeof(expected[0]) &&
            strncmp(s.violations[i], expected[i], strlen(expected[i])) == 0)
            continue;
        for (size_t j = 0; j < s.nviolations; j++)
            print_message("reported: %s\n", s.violations[j]);
        fail_msg("violation %zu:\n  reported: %s\n  expected: %s", i,
                 i < s.nviolations ? s.violations[i] : "(none)",
                 i < sizeof(expected) / sizeof(expected[0]) ? expected[i] : "(none)");
    }
    scan_fini(&s);
    assert_int_equal(nftw(root, remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0);
}

static void test_layers_tree_has_no_forbidden_edge(void **state)
{
    const char *src = getenv("SPATE_SOURCE_DIR"), *bin = getenv("SPATE_BINARY_DIR");
    const char *ipath = getenv("SPATE_LAYER_INCLUDE_PATH");
    scan_t s;
    size_t nfiles;

    (void)state;
    if (src == NULL || *src == '\0' || ipath == NULL || *ipath == '\0')
        fail_msg("SPATE_SOURCE_DIR or SPATE_LAYER_INCLUDE_PATH is not set; run this test "
                 "through ctest");
    scan_init(&s, src, bin, ipath);
    if (s.nipath == 0)
        fail_msg("SPATE_LAYER_INCLUDE_PATH (%s) names no existing folder", ipath);
    nfiles = scan_run(&s);
    print_message("%zu files, %zu include edges inside the tree\n", nfiles, s.nedges);
    /* An empty scan would pass everything: the tree has well over 50 sources. */
    assert_true(nfiles > 50);
    for (size_t i = 0; i < sizeof(exceptions) / sizeof(exceptions[0]); i++) {
        if (!s.exception_used[i])
            print_message("note: exception %s -> %s is no longer used; remove it from "
                          "exceptions[]\n",
                          exceptions[i].from, exceptions[i].header);
    }
    if (s.nviolations > 0) {
        for (size_t i = 0; i < s.nviolations; i++)
            fprintf(stderr, "%s\n", s.violations[i]);
        fflush(stderr);
        fail_msg("%zu include edge(s) break the layers (docs/ARCHITECTURE.md, \"Layers\"): "
                 "lower layers never include upper ones, layers on one floor never include "
                 "each other, and a *_int.h header stays in its layer",
                 s.nviolations);
    }
    scan_fini(&s);
}

/*
 * CMakeLists.txt compiles each layer against a view holding only its own folder and public
 * headers and those of the layers on lower floors (SPATE_LAYERS, SPATE_LAYER_FLOOR_<layer>,
 * SPATE_LAYER_HEADERS_<layer>), passed here as "layer:floor:header,header ..." lowest first.
 * Its table must say what layers[] and public_headers[] say: every layer of libspate in it,
 * in floor order, on the floor the test gives it, and each public header with the layer the
 * test gives it.
 */
static void test_layers_cmake_table_matches(void **state)
{
    const char *env = getenv("SPATE_CMAKE_LAYERS"), *src = getenv("SPATE_SOURCE_DIR");
    char *copy, *save = NULL;
    const layer_t *prev = NULL;
    bool seen[sizeof(layers) / sizeof(layers[0])] = {false};

    (void)state;
    if (env == NULL || *env == '\0' || src == NULL)
        fail_msg("SPATE_CMAKE_LAYERS or SPATE_SOURCE_DIR is not set; run this test through ctest");
    copy = strdup(env);
    assert_non_null(copy);
    for (char *tok = strtok_r(copy, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
        char *colon = strchr(tok, ':'), *hsave = NULL, *headers = NULL, *end = NULL;
        const layer_t *layer;
        long floor;

        if (colon == NULL || (headers = strchr(colon + 1, ':')) == NULL)
            fail_msg("SPATE_CMAKE_LAYERS: '%s' is not layer:floor:headers", tok);
        *colon = '\0';
        *headers++ = '\0';
        layer = layer_named(tok, strlen(tok));
        if (layer == NULL)
            fail_msg("CMakeLists.txt's layer %s is not in layers[] of this test", tok);
        floor = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end != '\0' || floor != layer->floor)
            fail_msg("CMakeLists.txt puts %s on floor '%s', this test on floor %d", layer->name,
                     colon + 1, layer->floor);
        if (prev != NULL && layer->floor < prev->floor)
            fail_msg("CMakeLists.txt lists %s (floor %d) after %s (floor %d)", layer->name,
                     layer->floor, prev->name, prev->floor);
        seen[layer - layers] = true;
        prev = layer;
        for (char *h = strtok_r(headers, ",", &hsave); h != NULL; h = strtok_r(NULL, ",", &hsave)) {
            char rel[PATH_MAX];
            where_t w;

            snprintf(rel, sizeof(rel), "include/spate/%s", h);
            w = where_is(rel);
            if (w.kind != KIND_PUBLIC || w.layer != layer)
                fail_msg("CMakeLists.txt gives %s to %s, this test to %s", rel, layer->name,
                         w.layer != NULL ? w.layer->name : "no layer");
        }
    }
    free(copy);
    /* Every layer below the launcher (which is not in libspate) that exists is compiled. */
    for (size_t i = 0; i < sizeof(layers) / sizeof(layers[0]); i++) {
        char path[PATH_MAX * 2];
        struct stat st;

        join(path, sizeof(path), src, layers[i].name);
        if (!seen[i] && strcmp(layers[i].name, "launcher") != 0 && stat(path, &st) == 0)
            fail_msg("%s/ is a layer here but not in CMakeLists.txt's SPATE_LAYERS",
                     layers[i].name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layers_checker_reports_each_kind_of_edge),
        cmocka_unit_test(test_layers_tree_has_no_forbidden_edge),
        cmocka_unit_test(test_layers_cmake_table_matches),
    };

    return cmocka_run_group_tests_name("layers", tests, NULL, NULL);
}
