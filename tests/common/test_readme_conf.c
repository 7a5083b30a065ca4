/*
 * Keeps the README's configuration table equal to the key table in the code.
 * The README marks the table with two whole lines, `<!-- conf-table:begin -->`
 * and `<!-- conf-table:end -->`; the bytes between them must be exactly what
 * `spate conf --markdown` (sp_conf_write_markdown) prints. On a mismatch the
 * test prints both tables, the first line that differs, and the command
 * that regenerates the table.
 */
/* LABELS: unit */
#include "conf_int.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char begin_marker[] = "<!-- conf-table:begin -->";
static const char end_marker[] = "<!-- conf-table:end -->";

/*
 * Finds the lines of text that are exactly line (no other characters before
 * the newline). Returns how many there are; *first_p is the start of the
 * first one, or NULL.
 */
static int find_line(const char *text, const char *line, const char **first_p)
{
    size_t len = strlen(line);
    int count = 0;

    *first_p = NULL;
    for (const char *p = text; *p != '\0';) {
        const char *nl = strchr(p, '\n');
        size_t n = nl != NULL ? (size_t)(nl - p) : strlen(p);

        if (n == len && memcmp(p, line, len) == 0) {
            if (count++ == 0)
                *first_p = p;
        }
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    return count;
}

/*
 * Copies the text between the begin and end marker lines into a new string
 * (*table_p, freed by the caller). Returns NULL on success, else what is
 * wrong with the markers.
 */
static const char *extract_table(const char *text, char **table_p)
{
    const char *begin, *end, *body;
    int nbegin = find_line(text, begin_marker, &begin);
    int nend = find_line(text, end_marker, &end);
    char *table;

    if (nbegin != 1)
        return nbegin == 0 ? "no line '<!-- conf-table:begin -->'"
                           : "more than one line '<!-- conf-table:begin -->'";
    if (nend != 1)
        return nend == 0 ? "no line '<!-- conf-table:end -->'"
                         : "more than one line '<!-- conf-table:end -->'";
    body = begin + sizeof(begin_marker); /* the marker and its newline */
    if (end < body)
        return "'<!-- conf-table:end -->' comes before '<!-- conf-table:begin -->'";
    table = malloc((size_t)(end - body) + 1);
    assert_non_null(table);
    memcpy(table, body, (size_t)(end - body));
    table[end - body] = '\0';
    *table_p = table;
    return NULL;
}

/* Reads a whole file into a new string; NULL if it cannot be read. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;

    if (f == NULL)
        return NULL;
    do {
        if (cap - len < 4096) {
            cap = cap * 2 + 8192;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0);
    fclose(f);
    buf[len] = '\0';
    return buf;
}

static char *generated_table(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);

    assert_non_null(out);
    sp_conf_write_markdown(out);
    assert_int_equal(fclose(out), 0);
    assert_non_null(buf);
    return buf;
}

/* Line number (from 1) of the first line where a and b differ. */
static int first_difference(const char *a, const char *b)
{
    int line = 1;

    for (; *a != '\0' && *a == *b; a++, b++)
        line += *a == '\n';
    return line;
}

static void test_readme_extract_finds_table_between_markers(void **state)
{
    char *table = NULL;

    (void)state;
    assert_null(extract_table("intro\n<!-- conf-table:begin -->\n| a |\n| b |\n"
                              "<!-- conf-table:end -->\nafter\n",
                              &table));
    assert_string_equal(table, "| a |\n| b |\n");
    free(table);
    assert_null(extract_table("<!-- conf-table:begin -->\n<!-- conf-table:end -->", &table));
    assert_string_equal(table, "");
    free(table);

    /* A marker counts only as a whole line. */
    assert_non_null(
        extract_table("see <!-- conf-table:begin -->\n| a |\n<!-- conf-table:end -->\n", &table));
    assert_non_null(extract_table("<!-- conf-table:begin -->\n| a |\n", &table));
    assert_non_null(extract_table("<!-- conf-table:end -->\n<!-- conf-table:begin -->\n", &table));
    assert_non_null(extract_table("<!-- conf-table:begin -->\n<!-- conf-table:begin -->\n"
                                  "<!-- conf-table:end -->\n",
                                  &table));
}

static void test_readme_conf_table_matches_code(void **state)
{
    const char *src = getenv("SPATE_SOURCE_DIR");
    char path[4096], *readme, *table = NULL, *expected;
    const char *problem;

    (void)state;
    if (src == NULL || *src == '\0')
        fail_msg("SPATE_SOURCE_DIR is not set; run this test through ctest");
    snprintf(path, sizeof(path), "%s/README.md", src);
    readme = read_file(path);
    if (readme == NULL)
        fail_msg("cannot read %s", path);
    problem = extract_table(readme, &table);
    if (problem != NULL) {
        free(readme);
        fail_msg("%s: %s; the configuration table belongs between those two lines "
                 "(regenerate with: scripts/update-readme-conf)",
                 path, problem);
    }
    expected = generated_table();
    if (strcmp(table, expected) != 0) {
        int line = first_difference(table, expected);

        fprintf(stderr, "README.md table (between the markers):\n%s\n", table);
        fprintf(stderr, "spate conf --markdown prints:\n%s\n", expected);
        fflush(stderr);
        free(table);
        free(expected);
        free(readme);
        fail_msg("the configuration table in %s differs from the code from table line %d on; "
                 "regenerate with: ./build/spate conf --markdown",
                 path, line);
    }
    free(table);
    free(expected);
    free(readme);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_readme_extract_finds_table_between_markers),
        cmocka_unit_test(test_readme_conf_table_matches_code),
    };

    return cmocka_run_group_tests_name("readme_conf", tests, NULL, NULL);
}
