/* ACL's observable rules, checked directly on llmdd's host runtime (src/llmdd/sim/acl_host.c).
 * Built and run by tests/test_acl_host.py; prints one line per check and exits non-zero on the
 * first that fails. LLMDD_SIM_DEVICE_MEMORY is set to 1MiB by the caller. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim/acl_subset.h"

static int failures;

#define CHECK(condition, what)                                             \
    do {                                                                   \
        int ok_ = (condition);                                             \
        printf("%s %s\n", ok_ ? "ok  " : "FAIL", what);                    \
        if (!ok_) failures++;                                              \
    } while (0)

static size_t free_bytes(void) {
    size_t free_now = 0, total = 0;
    aclrtGetMemInfo(ACL_HBM_MEM, &free_now, &total);
    return free_now;
}

static void *malloc_on_fresh_thread(void *context) {
    static aclError results[2];
    void *memory = NULL;
    results[0] = aclrtMalloc(&memory, 64, ACL_MEM_MALLOC_HUGE_FIRST);
    aclrtSetCurrentContext((aclrtContext)context);
    results[1] = aclrtMalloc(&memory, 64, ACL_MEM_MALLOC_HUGE_FIRST);
    if (results[1] == ACL_SUCCESS) aclrtFree(memory);
    return results;
}

static void *replace_context(void *context) {
    static aclrtContext replacement;
    aclrtDestroyContext((aclrtContext)context);
    aclrtCreateContext(&replacement, 0); /* malloc may hand it the destroyed one's address */
    return replacement;
}

int main(void) {
    void *memory = NULL;
    CHECK(aclrtMalloc(&memory, 64, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_ERROR_UNINITIALIZE, "malloc before aclInit");
    CHECK(aclInit(NULL) == ACL_SUCCESS, "aclInit");
    CHECK(aclInit(NULL) == ACL_ERROR_REPEAT_INITIALIZE, "a second aclInit is REPEAT_INITIALIZE");
    CHECK(aclrtMalloc(&memory, 64, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_ERROR_RT_CONTEXT_NULL,
          "malloc with no device set is CONTEXT_NULL");
    CHECK(aclrtSetDevice(8) == ACL_ERROR_RT_INVALID_DEVICEID, "device 8 of 8 is INVALID_DEVICEID");
    CHECK(aclrtSetDevice(-1) == ACL_ERROR_RT_INVALID_DEVICEID, "device -1 is INVALID_DEVICEID");
    CHECK(aclrtSetDevice(0) == ACL_SUCCESS, "aclrtSetDevice(0)");
    size_t free_now = 0, total = 0;
    CHECK(aclrtGetMemInfo(ACL_HBM_MEM, &free_now, &total) == ACL_SUCCESS && total == (1u << 20) && free_now == total,
          "GetMemInfo reports the configured capacity");

    CHECK(aclrtMalloc(&memory, 0, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_ERROR_INVALID_PARAM, "size 0 is illegal");
    CHECK(aclGetRecentErrMsg() != NULL && strstr(aclGetRecentErrMsg(), "size 0") != NULL, "the error has a message");
    CHECK(aclrtMalloc(&memory, 64, (aclrtMemMallocPolicy)99) == ACL_ERROR_INVALID_PARAM, "unknown policy");
    CHECK(aclrtMalloc(NULL, 64, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_ERROR_INVALID_PARAM, "NULL devPtr");

    size_t sizes[] = {1, 31, 32, 33, 1000, 4096};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t before = free_bytes();
        CHECK(aclrtMalloc(&memory, sizes[i], ACL_MEM_MALLOC_NORMAL_ONLY) == ACL_SUCCESS, "malloc");
        CHECK((uintptr_t)memory % 64 == 0, "start is 64-byte aligned");
        CHECK(before - free_bytes() == (sizes[i] + 31) / 32 * 32 + 32, "charged round_up(size, 32) + 32");
        memset(memory, 0xAB, sizes[i]);
        CHECK(aclrtFree(memory) == ACL_SUCCESS && free_bytes() == before, "free gives it all back");
        CHECK(aclrtFree(memory) == ACL_ERROR_RT_PARAM_INVALID, "a second free is PARAM_INVALID");
    }
    int local;
    CHECK(aclrtFree(&local) == ACL_ERROR_RT_PARAM_INVALID, "freeing host memory is PARAM_INVALID");

    CHECK(aclrtMalloc(&memory, 1u << 20, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_ERROR_RT_MEMORY_ALLOCATION,
          "more than the capacity is MEMORY_ALLOCATION");

    void *device = NULL;
    char host[256] = {0}, back[256];
    aclrtMalloc(&device, sizeof host, ACL_MEM_MALLOC_HUGE_FIRST);
    memset(host, 7, sizeof host);
    CHECK(aclrtMemcpy(device, sizeof host, host, sizeof host, ACL_MEMCPY_HOST_TO_DEVICE) == ACL_SUCCESS, "H2D");
    CHECK(aclrtMemcpy(back, sizeof back, device, sizeof back, ACL_MEMCPY_DEVICE_TO_HOST) == ACL_SUCCESS &&
              memcmp(host, back, sizeof host) == 0, "D2H brings the bytes back");
    CHECK(aclrtMemcpy(back, sizeof back, device, sizeof back, ACL_MEMCPY_HOST_TO_DEVICE) == ACL_ERROR_INVALID_PARAM,
          "a copy whose kind does not match the memory is refused");
    CHECK(aclrtMemcpy(device, 16, host, sizeof host, ACL_MEMCPY_HOST_TO_DEVICE) == ACL_ERROR_INVALID_PARAM,
          "count beyond destMax is refused");
    CHECK(aclrtMemset(device, sizeof host, 0, sizeof host) == ACL_SUCCESS, "memset of device memory");
    CHECK(aclrtMemset(host, sizeof host, 0, sizeof host) == ACL_ERROR_INVALID_PARAM, "memset of host memory");

    aclrtContext context = NULL;
    CHECK(aclrtCreateContext(&context, 0) == ACL_SUCCESS, "aclrtCreateContext");
    pthread_t thread;
    aclError *results = NULL;
    pthread_create(&thread, NULL, malloc_on_fresh_thread, context);
    pthread_join(thread, (void **)&results);
    CHECK(results[0] == ACL_ERROR_RT_CONTEXT_NULL, "a fresh thread has no context: CONTEXT_NULL");
    CHECK(results[1] == ACL_SUCCESS, "after aclrtSetCurrentContext it allocates");
    CHECK(aclrtDestroyContext(context) == ACL_SUCCESS, "aclrtDestroyContext");
    CHECK(aclrtSetCurrentContext(context) == ACL_ERROR_INVALID_PARAM, "a destroyed context cannot be set");

    aclrtContext stale = NULL, replacement = NULL;
    CHECK(aclrtCreateContext(&stale, 0) == ACL_SUCCESS, "a context bound to this thread");
    pthread_create(&thread, NULL, replace_context, stale);
    pthread_join(thread, &replacement);
    CHECK(aclrtMalloc(&memory, 64, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_ERROR_RT_CONTEXT_NULL,
          "destroyed elsewhere, and its address reused or not, the binding is gone");
    printf("(the replacement context %s the destroyed one's address)\n", replacement == stale ? "reused" : "did not reuse");
    aclrtDestroyContext(replacement);

    void *pinned = NULL;
    CHECK(aclrtMallocHost(&pinned, 100) == ACL_SUCCESS && (uintptr_t)pinned % 64 == 0, "aclrtMallocHost");
    CHECK(aclrtFreeHost(pinned) == ACL_SUCCESS && aclrtFreeHost(pinned) == ACL_ERROR_INVALID_PARAM, "aclrtFreeHost");

    CHECK(aclrtResetDevice(0) == ACL_SUCCESS, "the last aclrtResetDevice releases the device's memory");
    CHECK(aclrtMalloc(&memory, 64, ACL_MEM_MALLOC_HUGE_FIRST) == ACL_ERROR_RT_CONTEXT_NULL,
          "after the reset this thread has no context");
    CHECK(aclFinalize() == ACL_SUCCESS, "aclFinalize");
    CHECK(aclFinalize() == ACL_ERROR_REPEAT_FINALIZE, "a second aclFinalize is REPEAT_FINALIZE");
    CHECK(aclInit(NULL) == ACL_SUCCESS, "aclInit again after aclFinalize");
    CHECK(aclFinalize() == ACL_SUCCESS, "aclFinalize again");
    printf("%d failed\n", failures);
    return failures != 0;
}
