/* Helpers shared by tests that check what files a directory holds. */
#ifndef SPATE_TEST_DIR_UTIL_H
#define SPATE_TEST_DIR_UTIL_H

#include <dirent.h>
#include <stdio.h>
#include <unistd.h>

/* Entries of dir that are not hidden (0 when dir does not exist). */
static inline unsigned test_dir_count(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    unsigned n = 0;

    if (d == NULL)
        return 0;
    while ((de = readdir(d)) != NULL)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Removes every non-hidden file of dir. */
static inline void test_dir_clear(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[1024];

    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        unlink(path);
    }
    closedir(d);
}

#endif
