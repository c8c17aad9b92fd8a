/* ACL's IPC memory rules (docs/facts.md section 10), checked directly on llmdd's host runtime
 * across real processes: forked children import what this process exports. Built and run by
 * tests/core/test_ipc_memory.py; prints one line per check and exits non-zero if any failed. */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "acl_ipc.h"
#include "sim/acl_subset.h"

#define REFUSED ACL_ERROR_RT_DRV_INTERNAL_ERROR
#define MIB (1u << 20)

static int failures;

#define CHECK(condition, what)                                             \
    do {                                                                   \
        int ok_ = (condition);                                             \
        printf("%s %s\n", ok_ ? "ok  " : "FAIL", what);                    \
        if (!ok_) failures++;                                              \
    } while (0)

/* Entries of a /proc/self directory listing (fd) or lines of a /proc/self file (maps). */
static int open_descriptors(void) {
    int count = 0;
    DIR *listing = opendir("/proc/self/fd");
    while (readdir(listing) != NULL) count++;
    closedir(listing);
    return count;
}

static int mappings(void) {
    int count = 0, c;
    FILE *maps = fopen("/proc/self/maps", "r");
    while ((c = fgetc(maps)) != EOF) count += c == '\n';
    fclose(maps);
    return count;
}

/* Runs `check` in a forked child once this process has let it go on (after the child's pid is
 * known, so that it can be allowed first); returns how many of the child's checks failed. */
typedef void (*child_check)(const char *key, void *argument);

static pid_t start_child(int *go, child_check check, const char *key, void *argument) {
    int pipe_ends[2];
    if (pipe(pipe_ends) != 0) abort();
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        char byte;
        close(pipe_ends[1]);
        if (read(pipe_ends[0], &byte, 1) != 1) _exit(100);
        failures = 0;
        check(key, argument);
        fflush(stdout);
        _exit(failures);
    }
    close(pipe_ends[0]);
    *go = pipe_ends[1];
    return child;
}

static int finish_child(int go, pid_t child) {
    int status = 0;
    if (write(go, "g", 1) != 1) abort();
    close(go);
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

static int run_child(child_check check, const char *key, void *argument) {
    int go;
    pid_t child = start_child(&go, check, key, argument);
    return finish_child(go, child);
}

/* The allowed importer: reads what the exporter wrote, writes back, imports again, copies. */
static void import_and_write(const char *key, void *argument) {
    (void)argument;
    void *imported = NULL, *again = NULL, *mine = NULL;
    int descriptors = open_descriptors(), maps = mappings();
    CHECK(aclrtIpcMemImportByKey(&imported, key, ACL_RT_IPC_MEM_IMPORT_FLAG_DEFAULT) == ACL_SUCCESS,
          "child: the allowed pid imports the key");
    if (imported == NULL) return;
    CHECK(((unsigned char *)imported)[0] == 0x5A && ((unsigned char *)imported)[MIB - 1] == 0x5A,
          "child: it reads the exporter's bytes");
    memset(imported, 0xC3, 4096);
    CHECK(aclrtIpcMemImportByKey(&again, key, ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS) == ACL_SUCCESS &&
              again == imported,
          "child: importing again hands out the same address");
    CHECK(aclrtMalloc(&mine, 64, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_SUCCESS, "child: allocates its own memory");
    CHECK(aclrtMemcpy(mine, 64, (char *)imported + 4096, 64, ACL_MEMCPY_DEVICE_TO_DEVICE) == ACL_SUCCESS &&
              ((unsigned char *)mine)[63] == 0x5A,
          "child: imported memory is device memory to copies");
    CHECK(aclrtMemcpy((char *)imported + MIB - 32, 64, mine, 64, ACL_MEMCPY_DEVICE_TO_DEVICE) ==
              ACL_ERROR_INVALID_PARAM,
          "child: a copy past the exported bytes is refused");
    aclrtFree(mine);
    CHECK(aclrtFree(imported) == ACL_ERROR_RT_PARAM_INVALID, "child: imported memory cannot be freed");
    CHECK(aclrtIpcMemClose(key) == ACL_SUCCESS && aclrtIpcMemClose(key) == ACL_SUCCESS,
          "child: each import is closed on its own");
    CHECK(aclrtIpcMemClose(key) == REFUSED, "child: a third close finds no import");
    CHECK(open_descriptors() == descriptors && mappings() == maps, "child: no descriptor or mapping is left behind");
}

static void import_open_export(const char *key, void *argument) {
    (void)argument;
    void *imported = NULL;
    CHECK(aclrtIpcMemImportByKey(&imported, key, 0) == ACL_SUCCESS && ((unsigned char *)imported)[0] == 0xC3,
          "child: a pid nobody allowed imports an export made without pid validation");
    CHECK(aclrtIpcMemClose(key) == ACL_SUCCESS, "child: and closes it");
}

static void import_refused(const char *key, void *argument) {
    void *imported = NULL;
    CHECK(aclrtIpcMemImportByKey(&imported, key, 0) == REFUSED && imported == NULL, (const char *)argument);
}

/* Writes where the parent's arena memory is mapped, without importing anything. */
static void write_inherited(const char *key, void *argument) {
    (void)key;
    memset(argument, 0x11, 4096);
    CHECK(((unsigned char *)argument)[0] == 0x11, "child: the inherited allocation is its own to write");
}

static void export_and_leave(const char *key, void *argument) {
    (void)key;
    void *memory = NULL;
    char *out = (char *)argument;
    CHECK(aclrtMalloc(&memory, MIB, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_SUCCESS &&
              aclrtIpcMemGetExportKey(memory, MIB, out, LLMDD_ACL_IPC_KEY_BYTES, 1) == ACL_SUCCESS,
          "child: exports memory of its own, open to every pid");
}

int main(void) {
    void *large = NULL, *small = NULL, *imported = NULL;
    char key[LLMDD_ACL_IPC_KEY_BYTES], other[LLMDD_ACL_IPC_KEY_BYTES], host[4096];
    int32_t pid;

    int descriptors = open_descriptors();
    CHECK(aclrtIpcMemGetExportKey(host, 64, key, sizeof key, 0) == ACL_ERROR_UNINITIALIZE, "export before aclInit");
    CHECK(aclInit(NULL) == ACL_SUCCESS && aclrtSetDevice(0) == ACL_SUCCESS, "aclInit, device 0");
    CHECK(aclrtDeviceGetBareTgid(&pid) == ACL_SUCCESS && pid == getpid(), "the bare tgid is the pid");
    CHECK(aclrtDeviceGetBareTgid(NULL) == ACL_ERROR_RT_PARAM_INVALID, "GetBareTgid(NULL)");
    aclrtMalloc(&large, 2 * MIB, ACL_MEM_MALLOC_HUGE_FIRST);
    aclrtMalloc(&small, 4096, ACL_MEM_MALLOC_HUGE_FIRST);
    memset(large, 0x5A, 2 * MIB);

    /* The runtime's argument checks. */
    CHECK(aclrtIpcMemGetExportKey(NULL, 64, key, sizeof key, 0) == ACL_ERROR_RT_PARAM_INVALID, "export of NULL");
    CHECK(aclrtIpcMemGetExportKey(large, 0, key, sizeof key, 0) == ACL_ERROR_RT_PARAM_INVALID, "export of 0 bytes");
    CHECK(aclrtIpcMemGetExportKey(large, MIB, NULL, sizeof key, 0) == ACL_ERROR_RT_PARAM_INVALID, "no key buffer");
    CHECK(aclrtIpcMemGetExportKey(large, MIB, key, LLMDD_ACL_IPC_KEY_BYTES - 1, 0) == ACL_ERROR_RT_PARAM_INVALID,
          "a key buffer under 65 bytes");
    CHECK(aclrtIpcMemGetExportKey(large, MIB, key, sizeof key, 2) == ACL_ERROR_RT_PARAM_INVALID, "unknown export flag");
    CHECK(aclrtIpcMemImportByKey(NULL, "llmdd", 0) == ACL_ERROR_RT_PARAM_INVALID, "import into NULL");
    CHECK(aclrtIpcMemImportByKey(&imported, "", 0) == ACL_ERROR_RT_PARAM_INVALID, "import of an empty key");
    memset(other, 'a', sizeof other);
    CHECK(aclrtIpcMemImportByKey(&imported, other, 0) == ACL_ERROR_RT_PARAM_INVALID &&
              aclrtIpcMemClose(other) == ACL_ERROR_RT_PARAM_INVALID,
          "a key with no NUL in 65 bytes");
    CHECK(aclrtIpcMemImportByKey(&imported, "llmdd", 2) == ACL_ERROR_RT_PARAM_INVALID, "unknown import flag");

    /* Memory the driver will not export. */
    CHECK(aclrtIpcMemGetExportKey(host, 64, key, sizeof key, 0) == REFUSED, "host memory is refused");
    CHECK(aclrtIpcMemGetExportKey(large, 2 * MIB + 4096, key, sizeof key, 0) == REFUSED,
          "a size past the allocation is refused");
    CHECK(aclrtIpcMemGetExportKey((char *)large + 64, 4096, key, sizeof key, 0) == REFUSED,
          "a start inside a page is refused");
    CHECK(aclrtIpcMemGetExportKey(small, 4096, key, sizeof key, 0) == REFUSED,
          "an allocation under 1 MiB (malloc-backed) is refused");

    CHECK(aclrtIpcMemGetExportKey(large, MIB, key, sizeof key, 0) == ACL_SUCCESS && strlen(key) < sizeof key,
          "the first MiB of a 2 MiB allocation is exported");
    CHECK(aclrtIpcMemGetExportKey((char *)large + MIB, MIB, other, sizeof other, 0) == ACL_SUCCESS &&
              strcmp(key, other) != 0,
          "its second MiB is another export with another key");
    CHECK(aclrtIpcMemImportByKey(&imported, key, 0) == ACL_ERROR_RT_INVALID_HANDLE,
          "the exporting process cannot import its own key");

    int32_t bad_pid = -4, many[17];
    for (int i = 0; i < 17; i++) many[i] = 1000 + i;
    CHECK(aclrtIpcMemSetImportPid(key, NULL, 1) == ACL_ERROR_RT_PARAM_INVALID, "SetImportPid with no pids");
    CHECK(aclrtIpcMemSetImportPid(key, many, 0) == ACL_ERROR_RT_PARAM_INVALID, "SetImportPid of 0 pids");
    CHECK(aclrtIpcMemSetImportPid(key, &bad_pid, 1) == ACL_ERROR_RT_PARAM_INVALID, "a negative pid");
    CHECK(aclrtIpcMemSetImportPid(other, many, 17) == ACL_ERROR_RT_PARAM_INVALID, "17 pids are more than fit");
    CHECK(aclrtIpcMemSetImportPid("llmdd0000000100000003000000000000000000000001ffffffffffffffff", many, 1) == REFUSED,
          "SetImportPid of a key that is not this process's export");

    /* Across processes. */
    int go;
    pid_t allowed = start_child(&go, import_and_write, key, NULL);
    int32_t allowed_pid = (int32_t)allowed;
    CHECK(aclrtIpcMemSetImportPid(key, &allowed_pid, 1) == ACL_SUCCESS, "the child's pid is allowed");
    CHECK(finish_child(go, allowed) == 0, "the allowed child's checks pass");
    CHECK(((unsigned char *)large)[0] == 0xC3 && ((unsigned char *)large)[4095] == 0xC3 &&
              ((unsigned char *)large)[4096] == 0x5A,
          "the exporter sees the bytes the importer wrote");
    CHECK(run_child(import_refused, key, "child: a pid the exporter did not allow is refused") == 0,
          "a third process is refused");
    CHECK(run_child(import_refused, other, "child: an export with no pid allowed is refused") == 0,
          "an export nobody was allowed is refused");

    CHECK(aclrtIpcMemClose(key) == ACL_SUCCESS, "the exporter closes its key");
    CHECK(aclrtIpcMemClose(key) == REFUSED, "closing it twice is refused");
    CHECK(aclrtIpcMemSetImportPid(key, &allowed_pid, 1) == REFUSED, "a closed key takes no pids");
    allowed = start_child(&go, import_refused, key, "child: a closed key is refused, even to an allowed pid");
    CHECK(finish_child(go, allowed) == 0, "after close the key is refused");

    char open_key[LLMDD_ACL_IPC_KEY_BYTES];
    CHECK(aclrtIpcMemGetExportKey(large, 4096, open_key, sizeof open_key,
                                  ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION) == ACL_SUCCESS,
          "an export without pid validation");
    CHECK(run_child(import_open_export, open_key, NULL) == 0, "any process imports it");

    CHECK(aclrtFree(large) == ACL_SUCCESS, "the exported allocation is freed");
    CHECK(aclrtIpcMemClose(other) == REFUSED, "freeing withdrew its exports");
    CHECK(run_child(import_refused, open_key, "child: the export of freed memory is refused") == 0,
          "no process imports freed memory");

    void *pooled = NULL;
    aclrtMalloc(&pooled, 4 * MIB, ACL_MEM_MALLOC_HUGE_FIRST);
    memset(pooled, 0x22, 4096);
    CHECK(run_child(write_inherited, NULL, pooled) == 0 && ((unsigned char *)pooled)[0] == 0x22,
          "a forked child's writes to inherited device memory stay in the child");

    char gone[LLMDD_ACL_IPC_KEY_BYTES] = {0};
    char *shared_key = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(run_child(export_and_leave, NULL, shared_key) == 0, "a child exported and exited");
    memcpy(gone, shared_key, sizeof gone);
    CHECK(aclrtIpcMemImportByKey(&imported, gone, 0) == REFUSED, "the key of an exporter that exited is refused");
    CHECK(aclrtIpcMemClose(gone) == REFUSED, "and it cannot be closed here");

    aclrtFree(pooled);
    aclrtFree(small);
    CHECK(aclrtResetDevice(0) == ACL_SUCCESS && aclFinalize() == ACL_SUCCESS, "reset and aclFinalize");
    CHECK(open_descriptors() == descriptors, "aclFinalize closes the arena");
    printf("%d failed\n", failures);
    return failures != 0;
}
