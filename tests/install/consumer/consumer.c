/*
 * A program outside the spate tree, built against an installed spate the
 * way an application is: it includes only <spate/spate.h> and links only
 * libspate. It calls a little of each kind of public entry point (version,
 * status names, configuration, last error) and exits non-zero with a
 * message when any answer is wrong.
 */
#include <spate/spate.h>

#include <stdio.h>
#include <string.h>

static int failures;

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "consumer: %s\n", what);
        failures++;
    }
}

int main(void)
{
    char version[32];
    sp_conf_t *conf = NULL;
    double fraction = 0.0;
    sp_status_t st;

    snprintf(version, sizeof(version), "%d.%d.%d", SP_VERSION_MAJOR, SP_VERSION_MINOR,
             SP_VERSION_PATCH);
    check(strcmp(sp_version(), version) == 0, "sp_version() differs from the header's version");
    check(strncmp(sp_status_str(SP_ERR_NOMEM), "SP_ERR_NOMEM", 12) == 0,
          "sp_status_str(SP_ERR_NOMEM) does not name SP_ERR_NOMEM");
    check(sp_status_is_no_resource(SP_ERR_NOMEM), "SP_ERR_NOMEM is not a resource error");

    st = sp_conf_create(&conf);
    check(st == SP_OK, "sp_conf_create failed");
    if (st == SP_OK) {
        check(sp_conf_get_double(conf, "memory.fraction", &fraction) == SP_OK && fraction > 0.0,
              "memory.fraction has no positive default");
        check(sp_conf_set(conf, "memory.fraction", "0.75") == SP_OK, "memory.fraction=0.75");
        check(sp_conf_get_double(conf, "memory.fraction", &fraction) == SP_OK && fraction == 0.75,
              "memory.fraction does not read back 0.75");
        st = sp_conf_set(conf, "no.such.key", "1");
        check(st == SP_ERR_BAD_CONF, "an unknown key is not SP_ERR_BAD_CONF");
        check(strstr(sp_last_error(), "no.such.key") != NULL, "sp_last_error() misses the key");
    }
    sp_conf_destroy(conf);

    if (failures != 0)
        return 1;
    printf("consumer: spate %s, %s\n", sp_version(), sp_status_str(SP_OK));
    return 0;
}
