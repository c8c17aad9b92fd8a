/* llmdd's host runtime: the ACL subset llmdd calls, implemented on host memory.
 *
 * It keeps the rules of CANN's runtime that a caller can observe (docs/facts.md section 7):
 * aclInit once, devices set per thread through contexts, 64-byte-aligned starts, sizes
 * charged as round_up(size, 32) + 32, size 0 illegal, memory not zeroed, a device capacity
 * that runs out with ACL_ERROR_RT_MEMORY_ALLOCATION, and aclrtGetMemInfo telling the truth.
 *
 * One implementation, two uses: linked into the extension for the `sim` build, and built as
 * a stand-alone libascendcl.so against CANN's real headers for the ACL conformance build.
 *
 * Configuration, read by aclInit: LLMDD_SIM_DEVICE_COUNT (default 8) and
 * LLMDD_SIM_DEVICE_MEMORY (bytes per device, suffixes K/M/G/T, KiB.., KB..; default 64GiB). */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifdef LLMDD_HOST_RUNTIME_REAL_HEADERS
#include <acl/acl.h>
#else
#include "acl_subset.h"
#endif
#include "sim_control.h"
#include "../u64_table.h"

#define SIM_DEFAULT_DEVICE_COUNT 8u
#define SIM_MAX_DEVICE_COUNT 1024u
#define SIM_DEFAULT_DEVICE_MEMORY (64ull << 30)
/* From this size on, an allocation is address space reserved with mmap and committed only
 * when touched, so a 16 GiB simulated cache costs no host RAM until it is written. */
#define SIM_RESERVE_THRESHOLD (1ull << 20)
/* Allocation tags keep the device in the low 32 bits, a flag for mmap-backed memory, and for
 * malloc-backed memory the distance from malloc's pointer to the 64-byte-aligned start. */
#define SIM_RESERVED_FLAG (1ull << 32)
#define SIM_OFFSET_SHIFT 40
#define SIM_DEVICE_OF(tag) ((int32_t)((tag) & 0xFFFFFFFFu))
#define SIM_MEM_ATTR_COUNT 12 /* aclrtMemAttr has values 0..11 */
#define SIM_VERSION_MAJOR 1
#define SIM_VERSION_MINOR 0
#define SIM_VERSION_PATCH 0

typedef struct {
    int32_t device;
} sim_context;

typedef struct {
    uint64_t capacity;
    uint64_t charged;
    uint64_t allocations;
    uint32_t set_count; /* aclrtSetDevice calls not yet matched by aclrtResetDevice */
    sim_context default_context;
} sim_device;

static struct {
    pthread_mutex_t lock;
    int initialized;
    uint32_t device_count;
    sim_device *devices;
    llmdd_u64_table device_allocations; /* address -> (charged bytes, device | SIM_RESERVED_FLAG) */
    llmdd_u64_table host_allocations;   /* address -> (bytes, 0) */
    llmdd_u64_table contexts;           /* live context -> (device, serial) */
    uint64_t next_context_serial;       /* tells a context from a later one at the same address */
    uint64_t call_counts[LLMDD_SIM_CALL_COUNT];
    uint64_t failure_countdown[LLMDD_SIM_CALL_COUNT];
    int failure_error[LLMDD_SIM_CALL_COUNT];
} sim = {.lock = PTHREAD_MUTEX_INITIALIZER};

static _Thread_local sim_context *current_context;
static _Thread_local uint64_t current_serial; /* the serial current_context had when bound */
static _Thread_local char recent_error[256];

static aclError fail(aclError error, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int used = snprintf(recent_error, sizeof recent_error, "llmdd host runtime: ");
    vsnprintf(recent_error + used, sizeof recent_error - (size_t)used, format, args);
    va_end(args);
    return error;
}

/* Counts the call and says whether an injected failure is due. Called with the lock held. */
static int injected_failure(llmdd_sim_call call, aclError *error) {
    sim.call_counts[call]++;
    if (sim.failure_countdown[call] == 0 || --sim.failure_countdown[call] != 0) return 0;
    *error = fail(sim.failure_error[call], "injected failure of %s", llmdd_sim_call_names[call]);
    return 1;
}

#define SIM_ENTER(call)                                        \
    aclError injected_error;                                   \
    pthread_mutex_lock(&sim.lock);                             \
    if (injected_failure(call, &injected_error)) {             \
        pthread_mutex_unlock(&sim.lock);                       \
        return injected_error;                                 \
    }                                                          \
    if (!sim.initialized) {                                    \
        pthread_mutex_unlock(&sim.lock);                       \
        return fail(ACL_ERROR_UNINITIALIZE, "aclInit has not been called"); \
    }

static aclError unlock_with(aclError error) {
    pthread_mutex_unlock(&sim.lock);
    return error;
}

/* The calling thread's context if it is still alive, else NULL. Lock held. The serial check
 * keeps a destroyed context's address, reused by a new context, from reviving the binding. */
static sim_context *bound_context(void) {
    llmdd_u64_slot *slot = llmdd_u64_find(&sim.contexts, (uint64_t)(uintptr_t)current_context);
    return slot != NULL && slot->second == current_serial ? current_context : NULL;
}

/* Registers a new context. Returns 0, or -1 when the host is out of memory. Lock held. */
static int register_context(sim_context *context, int32_t device) {
    return llmdd_u64_insert(&sim.contexts, (uint64_t)(uintptr_t)context, (uint64_t)device, ++sim.next_context_serial);
}

/* Makes a registered context the calling thread's current one. Lock held. */
static void bind(sim_context *context) {
    current_context = context;
    current_serial = llmdd_u64_find(&sim.contexts, (uint64_t)(uintptr_t)context)->second;
}

static int valid_device(int32_t device) { return device >= 0 && (uint32_t)device < sim.device_count; }

/* Parses a byte count with an optional unit; 0 when malformed, zero or overflowing. */
static uint64_t parse_size(const char *text) {
    static const struct { const char *unit; uint64_t scale; } units[] = {
        {"", 1}, {"B", 1},
        {"K", 1ull << 10}, {"KiB", 1ull << 10}, {"KB", 1000ull},
        {"M", 1ull << 20}, {"MiB", 1ull << 20}, {"MB", 1000000ull},
        {"G", 1ull << 30}, {"GiB", 1ull << 30}, {"GB", 1000000000ull},
        {"T", 1ull << 40}, {"TiB", 1ull << 40}, {"TB", 1000000000000ull},
    };
    uint64_t number = 0;
    const char *p = text;
    if (!isdigit((unsigned char)*p)) return 0;
    for (; isdigit((unsigned char)*p); p++) {
        if (number > (UINT64_MAX - 9) / 10) return 0;
        number = number * 10 + (uint64_t)(*p - '0');
    }
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(p, units[i].unit) == 0) {
            if (number > UINT64_MAX / units[i].scale) return 0;
            return number * units[i].scale;
        }
    }
    return 0;
}

static aclError read_configuration(uint32_t *device_count, uint64_t *device_memory) {
    const char *count_text = getenv("LLMDD_SIM_DEVICE_COUNT");
    const char *memory_text = getenv("LLMDD_SIM_DEVICE_MEMORY");
    *device_count = SIM_DEFAULT_DEVICE_COUNT;
    *device_memory = SIM_DEFAULT_DEVICE_MEMORY;
    if (count_text != NULL && *count_text != '\0') {
        uint64_t count = parse_size(count_text);
        if (count == 0 || count > SIM_MAX_DEVICE_COUNT || !isdigit((unsigned char)count_text[strlen(count_text) - 1]))
            return fail(ACL_ERROR_INVALID_PARAM, "LLMDD_SIM_DEVICE_COUNT='%.64s' is not a count in [1, %u]",
                        count_text, SIM_MAX_DEVICE_COUNT);
        *device_count = (uint32_t)count;
    }
    if (memory_text != NULL && *memory_text != '\0') {
        *device_memory = parse_size(memory_text);
        if (*device_memory == 0)
            return fail(ACL_ERROR_INVALID_PARAM,
                        "LLMDD_SIM_DEVICE_MEMORY='%.64s' is not a positive byte count such as 1073741824 or 64GiB",
                        memory_text);
    }
    return ACL_SUCCESS;
}

/* Host memory behind `bytes` device bytes, 64-byte aligned; NULL when the host has none.
 * Plain malloc with room to align costs a fraction of posix_memalign on the hot path. */
static void *acquire_backing(uint64_t bytes, uint64_t *tag) {
    if (bytes >= SIM_RESERVE_THRESHOLD) {
        void *memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        *tag |= SIM_RESERVED_FLAG;
        return memory == MAP_FAILED ? NULL : memory;
    }
    char *block = (char *)malloc(bytes + 63);
    if (block == NULL) return NULL;
    char *start = block + ((64 - (uintptr_t)block % 64) % 64);
    *tag |= (uint64_t)(start - block) << SIM_OFFSET_SHIFT;
    return start;
}

static void release_backing(uint64_t address, uint64_t bytes, uint64_t tag) {
    if (tag & SIM_RESERVED_FLAG)
        munmap((void *)(uintptr_t)address, bytes);
    else
        free((char *)(uintptr_t)address - (tag >> SIM_OFFSET_SHIFT));
}

/* Frees every allocation of `device` (or of all devices when device < 0). Lock held. */
static void reclaim_device_memory(int32_t device) {
    llmdd_u64_table *table = &sim.device_allocations;
    for (uint64_t i = 0; i < table->capacity;) {
        llmdd_u64_slot *slot = &table->slots[i];
        int32_t owner = SIM_DEVICE_OF(slot->second);
        if (slot->key != 0 && (device < 0 || owner == device)) {
            release_backing(slot->key, slot->first, slot->second);
            sim.devices[owner].charged -= slot->first;
            sim.devices[owner].allocations--;
            llmdd_u64_erase(table, slot); /* a later entry may shift into slot i: look again */
        } else {
            i++;
        }
    }
}

/* Finds the device allocation holding [address, address + bytes). Lock held. A scan: the
 * simulation favours the allocation path; copies validate with it. */
static llmdd_u64_slot *containing_allocation(const void *address, size_t bytes) {
    uint64_t start = (uint64_t)(uintptr_t)address;
    const llmdd_u64_table *table = &sim.device_allocations;
    for (uint64_t i = 0; i < table->capacity; i++) {
        const llmdd_u64_slot *slot = &table->slots[i];
        if (slot->key != 0 && start >= slot->key && start - slot->key <= slot->first &&
            bytes <= slot->first - (start - slot->key))
            return &table->slots[i];
    }
    return NULL;
}

/* fork() while another thread holds the lock would leave the child's copy locked for good:
 * hold it across the fork, and release both copies after. */
static void lock_for_fork(void) { pthread_mutex_lock(&sim.lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&sim.lock); }
static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;
static void install_fork_handlers(void) { pthread_atfork(lock_for_fork, unlock_after_fork, unlock_after_fork); }

aclError aclInit(const char *configPath) {
    (void)configPath; /* the host runtime has no configuration file */
    aclError error;
    pthread_once(&fork_handlers_once, install_fork_handlers);
    pthread_mutex_lock(&sim.lock);
    if (injected_failure(LLMDD_SIM_INIT, &error)) return unlock_with(error);
    if (sim.initialized) return unlock_with(fail(ACL_ERROR_REPEAT_INITIALIZE, "aclInit was already called"));
    uint32_t device_count;
    uint64_t device_memory;
    error = read_configuration(&device_count, &device_memory);
    if (error != ACL_SUCCESS) return unlock_with(error);
    sim.devices = (sim_device *)calloc(device_count, sizeof(sim_device));
    if (sim.devices == NULL) return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "no host memory for the device table"));
    for (uint32_t i = 0; i < device_count; i++) {
        sim.devices[i].capacity = device_memory;
        sim.devices[i].default_context.device = (int32_t)i;
    }
    sim.device_count = device_count;
    sim.initialized = 1;
    return unlock_with(ACL_SUCCESS);
}

aclError aclFinalize(void) {
    pthread_mutex_lock(&sim.lock);
    if (!sim.initialized) return unlock_with(fail(ACL_ERROR_REPEAT_FINALIZE, "aclFinalize without aclInit"));
    reclaim_device_memory(-1);
    for (uint64_t i = 0; i < sim.host_allocations.capacity; i++) {
        if (sim.host_allocations.slots[i].key != 0) free((void *)(uintptr_t)sim.host_allocations.slots[i].key);
    }
    for (uint64_t i = 0; i < sim.contexts.capacity; i++) {
        llmdd_u64_slot *slot = &sim.contexts.slots[i];
        sim_context *context = (sim_context *)(uintptr_t)slot->key;
        if (slot->key != 0 && context != &sim.devices[slot->first].default_context) free(context);
    }
    llmdd_u64_release(&sim.device_allocations);
    llmdd_u64_release(&sim.host_allocations);
    llmdd_u64_release(&sim.contexts);
    free(sim.devices);
    sim.devices = NULL;
    sim.device_count = 0;
    sim.initialized = 0;
    current_context = NULL;
    return unlock_with(ACL_SUCCESS);
}

const char *aclGetRecentErrMsg(void) { return recent_error[0] != '\0' ? recent_error : NULL; }

aclError aclrtSetDevice(int32_t deviceId) {
    SIM_ENTER(LLMDD_SIM_SET_DEVICE);
    if (!valid_device(deviceId))
        return unlock_with(fail(ACL_ERROR_RT_INVALID_DEVICEID, "device %d does not exist (%u devices)", deviceId,
                                sim.device_count));
    sim_device *device = &sim.devices[deviceId];
    if (device->set_count == 0 &&
        register_context(&device->default_context, deviceId) != 0)
        return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "no host memory for the context table"));
    device->set_count++;
    bind(&device->default_context);
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtResetDevice(int32_t deviceId) {
    SIM_ENTER(LLMDD_SIM_RESET_DEVICE);
    if (!valid_device(deviceId))
        return unlock_with(fail(ACL_ERROR_RT_INVALID_DEVICEID, "device %d does not exist", deviceId));
    sim_device *device = &sim.devices[deviceId];
    if (device->set_count == 0)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "device %d was not set", deviceId));
    if (--device->set_count == 0) {
        /* The last reset releases what the process still holds on the device, as ACL does. */
        reclaim_device_memory(deviceId);
        llmdd_u64_erase(&sim.contexts, llmdd_u64_find(&sim.contexts, (uint64_t)(uintptr_t)&device->default_context));
        if (current_context == &device->default_context) current_context = NULL;
    }
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtGetDevice(int32_t *deviceId) {
    pthread_mutex_lock(&sim.lock);
    sim_context *context = sim.initialized ? bound_context() : NULL;
    if (context == NULL) return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no device is set on this thread"));
    if (deviceId == NULL) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "deviceId is NULL"));
    *deviceId = context->device;
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtGetDeviceCount(uint32_t *count) {
    pthread_mutex_lock(&sim.lock);
    if (!sim.initialized) return unlock_with(fail(ACL_ERROR_UNINITIALIZE, "aclInit has not been called"));
    if (count == NULL) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "count is NULL"));
    *count = sim.device_count;
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtGetVersion(int32_t *majorVersion, int32_t *minorVersion, int32_t *patchVersion) {
    if (majorVersion == NULL || minorVersion == NULL || patchVersion == NULL)
        return fail(ACL_ERROR_INVALID_PARAM, "a version pointer is NULL");
    *majorVersion = SIM_VERSION_MAJOR;
    *minorVersion = SIM_VERSION_MINOR;
    *patchVersion = SIM_VERSION_PATCH;
    return ACL_SUCCESS;
}

aclError aclrtCreateContext(aclrtContext *context, int32_t deviceId) {
    SIM_ENTER(LLMDD_SIM_CREATE_CONTEXT);
    if (context == NULL) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "context is NULL"));
    if (!valid_device(deviceId))
        return unlock_with(fail(ACL_ERROR_RT_INVALID_DEVICEID, "device %d does not exist", deviceId));
    sim_context *created = (sim_context *)malloc(sizeof(sim_context));
    if (created == NULL) return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "no host memory for a context"));
    created->device = deviceId;
    if (register_context(created, deviceId) != 0) {
        free(created);
        return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "no host memory for the context table"));
    }
    bind(created); /* as in ACL, a new context becomes the thread's current one */
    *context = created;
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtDestroyContext(aclrtContext context) {
    SIM_ENTER(LLMDD_SIM_DESTROY_CONTEXT);
    llmdd_u64_slot *slot = llmdd_u64_find(&sim.contexts, (uint64_t)(uintptr_t)context);
    if (slot == NULL || context == &sim.devices[slot->first].default_context)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "%p is not a context made by aclrtCreateContext", context));
    llmdd_u64_erase(&sim.contexts, slot);
    if (current_context == context) current_context = NULL;
    free(context);
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtSetCurrentContext(aclrtContext context) {
    SIM_ENTER(LLMDD_SIM_SET_CURRENT_CONTEXT);
    if (llmdd_u64_find(&sim.contexts, (uint64_t)(uintptr_t)context) == NULL)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "%p is not a live context", context));
    bind((sim_context *)context);
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtGetCurrentContext(aclrtContext *context) {
    pthread_mutex_lock(&sim.lock);
    sim_context *bound = sim.initialized ? bound_context() : NULL;
    if (bound == NULL) return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    if (context == NULL) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "context is NULL"));
    *context = bound;
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtMalloc(void **devPtr, size_t size, aclrtMemMallocPolicy policy) {
    SIM_ENTER(LLMDD_SIM_MALLOC);
    if (devPtr == NULL) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "devPtr is NULL"));
    if (size == 0) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "size 0 is illegal"));
    if ((unsigned)policy > (unsigned)ACL_MEM_MALLOC_NORMAL_ONLY_P2P)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "unknown malloc policy %d", (int)policy));
    sim_context *context = bound_context();
    if (context == NULL) return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    sim_device *device = &sim.devices[context->device];
    /* ACL charges the size rounded up to 32 bytes, plus 32 bytes. */
    if (size > UINT64_MAX - 64 || size > SIZE_MAX - 64)
        return unlock_with(fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "%zu bytes can never fit", size));
    uint64_t charged = (((uint64_t)size + 31u) & ~(uint64_t)31u) + 32u;
    if (charged > device->capacity - device->charged)
        return unlock_with(fail(ACL_ERROR_RT_MEMORY_ALLOCATION,
                                "out of memory on device %d: %zu bytes asked, %llu of %llu bytes free",
                                context->device, size, (unsigned long long)(device->capacity - device->charged),
                                (unsigned long long)device->capacity));
    uint64_t tag = (uint64_t)context->device;
    void *memory = acquire_backing(charged, &tag);
    if (memory == NULL)
        return unlock_with(fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "the host could not back %llu bytes",
                                (unsigned long long)charged));
    if (llmdd_u64_insert(&sim.device_allocations, (uint64_t)(uintptr_t)memory, charged, tag) != 0) {
        release_backing((uint64_t)(uintptr_t)memory, charged, tag);
        return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "no host memory for the allocation table"));
    }
    device->charged += charged;
    device->allocations++;
    *devPtr = memory;
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtFree(void *devPtr) {
    SIM_ENTER(LLMDD_SIM_FREE);
    if (devPtr == NULL) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "devPtr is NULL"));
    if (bound_context() == NULL)
        return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    llmdd_u64_slot *slot = llmdd_u64_find(&sim.device_allocations, (uint64_t)(uintptr_t)devPtr);
    if (slot == NULL)
        return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "%p was not returned by aclrtMalloc or is already freed",
                                devPtr));
    uint64_t charged = slot->first, tag = slot->second;
    sim_device *device = &sim.devices[SIM_DEVICE_OF(tag)];
    device->charged -= charged;
    device->allocations--;
    llmdd_u64_erase(&sim.device_allocations, slot);
    pthread_mutex_unlock(&sim.lock);
    release_backing((uint64_t)(uintptr_t)devPtr, charged, tag);
    return ACL_SUCCESS;
}

aclError aclrtMallocHost(void **hostPtr, size_t size) {
    SIM_ENTER(LLMDD_SIM_MALLOC_HOST);
    if (hostPtr == NULL) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "hostPtr is NULL"));
    if (size == 0) return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "size 0 is illegal"));
    void *memory = NULL;
    if (posix_memalign(&memory, 64, size) != 0)
        return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "the host could not allocate %zu bytes", size));
    if (llmdd_u64_insert(&sim.host_allocations, (uint64_t)(uintptr_t)memory, size, 0) != 0) {
        free(memory);
        return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "no host memory for the allocation table"));
    }
    *hostPtr = memory;
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtFreeHost(void *hostPtr) {
    SIM_ENTER(LLMDD_SIM_FREE_HOST);
    llmdd_u64_slot *slot = llmdd_u64_find(&sim.host_allocations, (uint64_t)(uintptr_t)hostPtr);
    if (slot == NULL)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "%p was not returned by aclrtMallocHost", hostPtr));
    llmdd_u64_erase(&sim.host_allocations, slot);
    pthread_mutex_unlock(&sim.lock);
    free(hostPtr);
    return ACL_SUCCESS;
}

aclError aclrtMemset(void *devPtr, size_t maxCount, int32_t value, size_t count) {
    SIM_ENTER(LLMDD_SIM_MEMSET);
    if (devPtr == NULL || count > maxCount)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "memset of %zu bytes into %zu at %p", count, maxCount, devPtr));
    if (containing_allocation(devPtr, count) == NULL)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "[%p, +%zu) is not device memory", devPtr, count));
    pthread_mutex_unlock(&sim.lock);
    memset(devPtr, value, count);
    return ACL_SUCCESS;
}

aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind) {
    SIM_ENTER(LLMDD_SIM_MEMCPY);
    if (dst == NULL || src == NULL || count > destMax)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "copy of %zu bytes into %zu", count, destMax));
    int dst_on_device = containing_allocation(dst, count) != NULL;
    int src_on_device = containing_allocation(src, count) != NULL;
    int kind_matches;
    switch (kind) {
    case ACL_MEMCPY_HOST_TO_HOST: kind_matches = !src_on_device && !dst_on_device; break;
    case ACL_MEMCPY_HOST_TO_DEVICE: kind_matches = !src_on_device && dst_on_device; break;
    case ACL_MEMCPY_DEVICE_TO_HOST: kind_matches = src_on_device && !dst_on_device; break;
    case ACL_MEMCPY_DEVICE_TO_DEVICE: kind_matches = src_on_device && dst_on_device; break;
    case ACL_MEMCPY_DEFAULT: kind_matches = 1; break;
    default: return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "unknown memcpy kind %d", (int)kind));
    }
    if (!kind_matches)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "memcpy kind %d does not match the memory: src %s, dst %s",
                                (int)kind, src_on_device ? "device" : "host", dst_on_device ? "device" : "host"));
    pthread_mutex_unlock(&sim.lock);
    memmove(dst, src, count);
    return ACL_SUCCESS;
}

aclError aclrtGetMemInfo(aclrtMemAttr attr, size_t *free, size_t *total) {
    pthread_mutex_lock(&sim.lock);
    sim_context *context = sim.initialized ? bound_context() : NULL;
    if (context == NULL) return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    if ((unsigned)attr >= SIM_MEM_ATTR_COUNT || free == NULL || total == NULL)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "bad aclrtGetMemInfo arguments"));
    const sim_device *device = &sim.devices[context->device];
    *total = (size_t)device->capacity;
    *free = (size_t)(device->capacity - device->charged);
    return unlock_with(ACL_SUCCESS);
}

int llmdd_sim_inject_failure(int call, uint64_t nth, int error) {
    if (call < 0 || call >= LLMDD_SIM_CALL_COUNT) return -1;
    pthread_mutex_lock(&sim.lock);
    sim.failure_countdown[call] = nth;
    sim.failure_error[call] = error;
    pthread_mutex_unlock(&sim.lock);
    return 0;
}

uint64_t llmdd_sim_call_count(int call) {
    if (call < 0 || call >= LLMDD_SIM_CALL_COUNT) return 0;
    pthread_mutex_lock(&sim.lock);
    uint64_t count = sim.call_counts[call];
    pthread_mutex_unlock(&sim.lock);
    return count;
}

int llmdd_sim_device_usage(int32_t device, uint64_t *bytes_charged, uint64_t *allocations) {
    pthread_mutex_lock(&sim.lock);
    if (!sim.initialized || !valid_device(device)) return (int)unlock_with(-1);
    *bytes_charged = sim.devices[device].charged;
    *allocations = sim.devices[device].allocations;
    return (int)unlock_with(0);
}
