/* fsstress: many files and directories created, written, renamed and deleted on
 * the ext2 disk, then every remaining file verified byte by byte.
 *
 *   python -m exo boot guest_apps/fsstress --disk IMG
 *
 * Built into the static ELF `fsstress` by `make` (gcc; see Makefile). */
#include "exo.h"
#include "libos.h"

#define NFILES 48
#define O_RDONLY 0
#define O_WRONLY 1
#define O_CREAT 0x40
#define O_TRUNC 0x200

static char buf[8192];
static char name[64];
static char other[64];

static unsigned pattern(int i, long j) { return (unsigned)((i * 131 + j * 7) & 0xff); }
static long size_of(int i) { return i % 8 == 0 ? 70000 + i * 100 : 500 + i * 173; }

static void make_name(char *out, const char *dir, char tag, int i) {
    int n = 0;
    while (*dir) out[n++] = *dir++;
    out[n++] = '/';
    out[n++] = tag;
    out[n++] = (char)('0' + i / 10);
    out[n++] = (char)('0' + i % 10);
    out[n] = 0;
}

static int where(int i) { return i % 2 == 0; } /* renamed to /stress/b */
static int removed(int i) { return i % 3 == 0; }

__attribute__((force_align_arg_pointer)) void _start(void) {
    long failures = 0, written = 0, renamed = 0, gone = 0, verified = 0;
    unsigned long checksum = 0;
    lib_fs_mkdir((long)"/stress", 0755);
    lib_fs_mkdir((long)"/stress/a", 0755);
    lib_fs_mkdir((long)"/stress/b", 0755);
    for (int i = 0; i < NFILES; i++) {
        make_name(name, "/stress/a", 'f', i);
        long fd = lib_fs_open((long)name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) { failures++; continue; }
        for (long off = 0; off < size_of(i); off += (long)sizeof buf) {
            long n = size_of(i) - off < (long)sizeof buf ? size_of(i) - off : (long)sizeof buf;
            for (long j = 0; j < n; j++) buf[j] = (char)pattern(i, off + j);
            if (lib_fs_write(fd, (long)buf, n) != n) failures++;
        }
        lib_fs_close(fd);
        written++;
    }
    for (int i = 0; i < NFILES; i++) {
        if (!where(i)) continue;
        make_name(name, "/stress/a", 'f', i);
        make_name(other, "/stress/b", 'g', i);
        if (lib_fs_rename((long)name, (long)other) < 0) failures++; else renamed++;
    }
    for (int i = 0; i < NFILES; i++) {
        if (!removed(i)) continue;
        make_name(name, where(i) ? "/stress/b" : "/stress/a", where(i) ? 'g' : 'f', i);
        if (lib_fs_unlink((long)name) < 0) failures++; else gone++;
    }
    lib_fs_mkdir((long)"/stress/c", 0755);
    if (lib_fs_rmdir((long)"/stress/c") < 0) failures++;
    for (int i = 0; i < NFILES; i++) {
        if (removed(i)) continue;
        make_name(name, where(i) ? "/stress/b" : "/stress/a", where(i) ? 'g' : 'f', i);
        long fd = lib_fs_open((long)name, O_RDONLY, 0);
        if (fd < 0) { failures++; continue; }
        long off = 0, n;
        while ((n = lib_fs_read(fd, (long)buf, sizeof buf)) > 0) {
            for (long j = 0; j < n; j++) {
                unsigned b = (unsigned char)buf[j];
                if (b != pattern(i, off + j)) failures++;
                checksum = checksum * 31 + b;
            }
            off += n;
        }
        if (off != size_of(i)) failures++;
        lib_fs_close(fd);
        verified++;
    }
    lib_fs_sync();
    lib_console_printf((long)"fsstress: %d written, %d renamed, %d removed, %d verified, checksum %lx\n",
                       written, renamed, gone, verified, (long)checksum);
    if (failures) lib_console_printf((long)"fsstress: %d FAILURES\n", failures, 0, 0, 0, 0);
    lib_core_exit(failures ? 1 : 0);
}
