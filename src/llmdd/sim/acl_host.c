/* llmdd's host runtime: the ACL subset llmdd calls, implemented on host memory.
 *
 * It keeps the rules of CANN's runtime that a caller can observe (docs/facts.md section 7):
 * aclInit once, devices set per thread through contexts, 64-byte-aligned starts, sizes
 * charged as round_up(size, 32) + 32, size 0 illegal, memory not zeroed, a device capacity
 * that runs out with ACL_ERROR_RT_MEMORY_ALLOCATION, and aclrtGetMemInfo telling the truth.
 * IPC memory (aclrtIpcMem*, section 10) shares device memory with other processes of the host
 * through a memfd, with ACL's rules: a key names one export, only the pids set may import it, and
 * a closed key, a pid not allowed or a range outside device memory is refused.
 *
 * One implementation, two uses: linked into the extension for the `sim` build, and built as
 * a stand-alone libascendcl.so against CANN's real headers for the ACL conformance build.
 *
 * Configuration, read by aclInit: LLMDD_SIM_DEVICE_COUNT (default 8) and
 * LLMDD_SIM_DEVICE_MEMORY (bytes per device, suffixes K/M/G/T, KiB.., KB..; default 64GiB). */
#define _GNU_SOURCE
#include <ctype.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef LLMDD_HOST_RUNTIME_REAL_HEADERS
#include <acl/acl.h>
#else
#include "acl_subset.h"
#endif
#include "sim_control.h"
#include "../acl_ipc.h"
#include "../u64_table.h"

#define SIM_DEFAULT_DEVICE_COUNT 8u
#define SIM_MAX_DEVICE_COUNT 1024u
#define SIM_DEFAULT_DEVICE_MEMORY (64ull << 30)
/* From this size on, an allocation is address space reserved with mmap and committed only
 * when touched, so a 16 GiB simulated cache costs no host RAM until it is written. */
#define SIM_RESERVE_THRESHOLD (1ull << 20)
/* Allocation tags keep the device in the low 32 bits, a flag for mmap-backed memory, one for
 * memory in the shared arena (exportable), and for malloc-backed memory the distance from
 * malloc's pointer to the 64-byte-aligned start. */
#define SIM_RESERVED_FLAG (1ull << 32)
#define SIM_SHARED_FLAG (1ull << 33)
#define SIM_OFFSET_SHIFT 40
#define SIM_DEVICE_OF(tag) ((int32_t)((tag) & 0xFFFFFFFFu))
#define SIM_MEM_ATTR_COUNT 12 /* aclrtMemAttr has values 0..11 */
#define SIM_VERSION_MAJOR 1
#define SIM_VERSION_MINOR 0
#define SIM_VERSION_PATCH 0

/* IPC memory. Allocations from SIM_RESERVE_THRESHOLD bytes on are mappings of one memfd per
 * process (the arena), each at arena offsets never used again, so another process maps the same
 * bytes through /proc/<pid>/fd/<arena fd> and no stale import ever sees a later allocation.
 * Smaller allocations stay on malloc, the allocation hot path, and cannot be exported. The
 * arena's first bytes are the export table importers read; data starts at SIM_ARENA_DATA_START. */
#define SIM_PAGE_BYTES 4096ull
#define SIM_ARENA_FILE_BYTES (1ull << 62) /* sparse: pages exist only where written */
#define SIM_ARENA_MAGIC 0x31617261646d6c6cull /* "llmdara1" */
#define SIM_EXPORT_SLOTS 4096u
#define SIM_EXPORT_PIDS 16u
#define SIM_IPC_KEY_PREFIX "llmdd"
/* llmdd + pid, arena fd, slot, serial and nonce in hex: 5 + 8 + 8 + 4 + 16 + 16 characters. */
#define SIM_IPC_KEY_LENGTH 57u
/* How ACL reports what its driver refuses (an unknown or closed key, a pid not allowed, memory
 * it cannot export): every such refusal surfaces as the driver's internal error (section 10). */
#define SIM_IPC_REFUSED ACL_ERROR_RT_DRV_INTERNAL_ERROR

/* One export, in the arena where importers read it. serial is 0 while the slot is free; the
 * exporter publishes it last and withdraws it first, and the pid list only grows while it is
 * live, so an importer that reads the same serial before and after the rest read a whole entry. */
typedef struct {
    uint64_t serial;
    uint64_t nonce;  /* with the serial, tells this export from any other that used the slot */
    uint64_t offset; /* arena offset of the exported bytes, page aligned */
    uint64_t bytes;  /* as exported */
    uint32_t validate_pids;
    uint32_t pid_count;
    int32_t pids[SIM_EXPORT_PIDS];
} sim_export_slot;

typedef struct {
    uint64_t magic;
    uint64_t slot_count;
    sim_export_slot slots[SIM_EXPORT_SLOTS];
} sim_arena_header;

#define SIM_ARENA_DATA_START ((((uint64_t)sizeof(sim_arena_header)) + (2ull << 20) - 1) & ~((2ull << 20) - 1))

/* Another process's export mapped into this one. */
typedef struct {
    char key[LLMDD_ACL_IPC_KEY_BYTES];
    void *address;
    uint64_t bytes;  /* as exported: what copies may touch */
    uint64_t mapped; /* the mapping, whole pages */
    uint32_t references; /* importing a key again hands out the same mapping */
    int32_t device;
} sim_import;

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
    sim_arena_header *arena;            /* the shared arena's export table; NULL until needed */
    int arena_fd;                       /* valid while arena is not NULL */
    uint64_t arena_next_offset;
    llmdd_u64_table arena_ranges;       /* address of a shared allocation -> (arena offset, mapped bytes) */
    uint32_t live_exports;
    uint64_t next_export_serial;        /* never reset: a key is never valid twice */
    sim_import *imports;
    uint32_t import_count;
    uint32_t import_capacity;
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

static uint64_t round_to_pages(uint64_t bytes) { return (bytes + SIM_PAGE_BYTES - 1) & ~(SIM_PAGE_BYTES - 1); }

/* Makes the shared arena: a sparse memfd whose first bytes are the export table. Returns 0, or
 * -1 when the host refuses (no memfd, no descriptor left). Lock held. */
static int open_arena(void) {
    int fd = memfd_create("llmdd-device-memory", MFD_CLOEXEC);
    if (fd < 0) return -1;
    void *header = MAP_FAILED;
    if (ftruncate(fd, (off_t)SIM_ARENA_FILE_BYTES) == 0)
        header = mmap(NULL, sizeof(sim_arena_header), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (header == MAP_FAILED) {
        close(fd);
        return -1;
    }
    sim.arena = (sim_arena_header *)header;
    sim.arena->slot_count = SIM_EXPORT_SLOTS;
    __atomic_store_n(&sim.arena->magic, SIM_ARENA_MAGIC, __ATOMIC_RELEASE);
    sim.arena_fd = fd;
    sim.arena_next_offset = SIM_ARENA_DATA_START;
    return 0;
}

/* Closes the arena, once nothing of it is allocated (aclFinalize) or what is allocated is no
 * longer the arena's (a forked child's copies). Lock held. */
static void close_arena(void) {
    if (sim.arena == NULL) return;
    munmap(sim.arena, sizeof(sim_arena_header));
    close(sim.arena_fd);
    sim.arena = NULL;
    llmdd_u64_release(&sim.arena_ranges);
    sim.live_exports = 0;
}

/* `bytes` of fresh arena, mapped shared; NULL when there is no arena or no room. Lock held. */
static void *map_from_arena(uint64_t bytes) {
    if (sim.arena == NULL && open_arena() != 0) return NULL;
    uint64_t mapped = round_to_pages(bytes);
    if (mapped > SIM_ARENA_FILE_BYTES - sim.arena_next_offset) return NULL;
    void *memory = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, sim.arena_fd,
                        (off_t)sim.arena_next_offset);
    if (memory == MAP_FAILED) return NULL;
    if (llmdd_u64_insert(&sim.arena_ranges, (uint64_t)(uintptr_t)memory, sim.arena_next_offset, mapped) != 0) {
        munmap(memory, mapped);
        return NULL;
    }
    sim.arena_next_offset += mapped;
    return memory;
}

/* Withdraws the export in `slot`: importers reading it from now on find it gone. Lock held. */
static void withdraw_export(sim_export_slot *slot) {
    __atomic_store_n(&slot->serial, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&slot->pid_count, 0, __ATOMIC_RELAXED);
    sim.live_exports--;
}

/* Withdraws every export of arena bytes [offset, offset + bytes). Lock held. */
static void withdraw_exports_within(uint64_t offset, uint64_t bytes) {
    for (uint32_t i = 0; i < SIM_EXPORT_SLOTS && sim.live_exports != 0; i++) {
        sim_export_slot *slot = &sim.arena->slots[i];
        if (slot->serial != 0 && slot->offset >= offset && slot->offset - offset < bytes) withdraw_export(slot);
    }
}

/* Host memory behind `bytes` device bytes, 64-byte aligned; NULL when the host has none.
 * Plain malloc with room to align costs a fraction of posix_memalign on the hot path.
 * Lock held. */
static void *acquire_backing(uint64_t bytes, uint64_t *tag) {
    if (bytes >= SIM_RESERVE_THRESHOLD) {
        void *memory = map_from_arena(bytes);
        if (memory != NULL) {
            *tag |= SIM_RESERVED_FLAG | SIM_SHARED_FLAG;
            return memory;
        }
        /* No arena (no memfd, no descriptor left): private memory, which cannot be exported. */
        memory = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        *tag |= SIM_RESERVED_FLAG;
        return memory == MAP_FAILED ? NULL : memory;
    }
    char *block = (char *)malloc(bytes + 63);
    if (block == NULL) return NULL;
    char *start = block + ((64 - (uintptr_t)block % 64) % 64);
    *tag |= (uint64_t)(start - block) << SIM_OFFSET_SHIFT;
    return start;
}

/* Gives an allocation's memory back to the host. The lock must be held for arena memory: its
 * exports are withdrawn and its pages dropped, and the range is never handed out again. */
static void release_backing(uint64_t address, uint64_t bytes, uint64_t tag) {
    if (tag & SIM_SHARED_FLAG) {
        llmdd_u64_slot *range = llmdd_u64_find(&sim.arena_ranges, address);
        uint64_t offset = range->first, mapped = range->second;
        llmdd_u64_erase(&sim.arena_ranges, range);
        withdraw_exports_within(offset, mapped);
        munmap((void *)(uintptr_t)address, mapped);
        fallocate(sim.arena_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)mapped);
    } else if (tag & SIM_RESERVED_FLAG) {
        munmap((void *)(uintptr_t)address, bytes);
    } else {
        free((char *)(uintptr_t)address - (tag >> SIM_OFFSET_SHIFT));
    }
}

/* Unmaps the imports made on `device` (or on every device when device < 0). Lock held. */
static void drop_imports(int32_t device) {
    uint32_t kept = 0;
    for (uint32_t i = 0; i < sim.import_count; i++) {
        if (device < 0 || sim.imports[i].device == device)
            munmap(sim.imports[i].address, sim.imports[i].mapped);
        else
            sim.imports[kept++] = sim.imports[i];
    }
    sim.import_count = kept;
}

/* Frees every allocation of `device` (or of all devices when device < 0), and drops its
 * imports. Lock held. */
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
    drop_imports(device);
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

/* Whether [address, address + bytes) is device memory: this process's allocations, or the
 * exported bytes of an import. Lock held. */
static int is_device_memory(const void *address, size_t bytes) {
    if (containing_allocation(address, bytes) != NULL) return 1;
    uint64_t start = (uint64_t)(uintptr_t)address;
    for (uint32_t i = 0; i < sim.import_count; i++) {
        uint64_t base = (uint64_t)(uintptr_t)sim.imports[i].address;
        if (start >= base && start - base <= sim.imports[i].bytes && bytes <= sim.imports[i].bytes - (start - base))
            return 1;
    }
    return 0;
}

/* fork() while another thread holds the lock would leave the child's copy locked for good:
 * hold it across the fork, and release both copies after. */
static void lock_for_fork(void) { pthread_mutex_lock(&sim.lock); }
static void unlock_after_fork(void) { pthread_mutex_unlock(&sim.lock); }

/* In a forked child, the parent's arena memory is mapped shared: a write would land in the
 * parent's device memory. Each allocation becomes the child's own copy-on-write view, the child
 * has no exports (they are the parent's) and none of the parent's imports, and its own
 * allocations will come from an arena of its own. */
static void unlock_in_child(void) {
    if (sim.arena != NULL) {
        llmdd_u64_table *table = &sim.device_allocations;
        for (uint64_t i = 0; i < table->capacity; i++) {
            llmdd_u64_slot *slot = &table->slots[i];
            if (slot->key == 0 || !(slot->second & SIM_SHARED_FLAG)) continue;
            const llmdd_u64_slot *range = llmdd_u64_find(&sim.arena_ranges, slot->key);
            void *address = (void *)(uintptr_t)slot->key;
            if (mmap(address, range->second, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, sim.arena_fd,
                     (off_t)range->first) == MAP_FAILED)
                mmap(address, range->second, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
            slot->second &= ~SIM_SHARED_FLAG;
        }
        close_arena();
    }
    drop_imports(-1);
    pthread_mutex_unlock(&sim.lock);
}
static pthread_once_t fork_handlers_once = PTHREAD_ONCE_INIT;
static void install_fork_handlers(void) { pthread_atfork(lock_for_fork, unlock_after_fork, unlock_in_child); }

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
    close_arena();
    free(sim.imports);
    sim.imports = NULL;
    sim.import_capacity = 0;
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
    if (tag & SIM_SHARED_FLAG) { /* the arena's state changes too */
        release_backing((uint64_t)(uintptr_t)devPtr, charged, tag);
        return unlock_with(ACL_SUCCESS);
    }
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
    if (!is_device_memory(devPtr, count))
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "[%p, +%zu) is not device memory", devPtr, count));
    pthread_mutex_unlock(&sim.lock);
    memset(devPtr, value, count);
    return ACL_SUCCESS;
}

/* Maps the pages of a large copy's destination in one pass before it is written, instead of a
 * fault a page: a fresh import of 64 MiB (the same-host path maps one a transfer) took 46 ms to
 * fill with faults, 22 ms so. Device memory never faults; this keeps the host runtime's copies
 * near memcpy's speed. Kernels without MADV_POPULATE_WRITE (before 5.14) just fault. */
#define PREFAULT_MIN_BYTES (256u << 10)
static void prefault_for_writing(void *dst, size_t count) {
#ifdef MADV_POPULATE_WRITE
    if (count < PREFAULT_MIN_BYTES) return;
    uintptr_t start = (uintptr_t)dst & ~(uintptr_t)(SIM_PAGE_BYTES - 1);
    (void)madvise((void *)start, (uintptr_t)dst + count - start, MADV_POPULATE_WRITE);
#else
    (void)dst, (void)count;
#endif
}

aclError aclrtMemcpy(void *dst, size_t destMax, const void *src, size_t count, aclrtMemcpyKind kind) {
    SIM_ENTER(LLMDD_SIM_MEMCPY);
    if (dst == NULL || src == NULL || count > destMax)
        return unlock_with(fail(ACL_ERROR_INVALID_PARAM, "copy of %zu bytes into %zu", count, destMax));
    int dst_on_device = is_device_memory(dst, count);
    int src_on_device = is_device_memory(src, count);
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
    prefault_for_writing(dst, count);
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

/* ---- IPC memory (docs/facts.md section 10) ---- */

typedef struct {
    int32_t pid;
    int32_t fd;
    uint32_t slot;
    uint64_t serial;
    uint64_t nonce;
} sim_key;

/* ACL's own check of a key argument: given, not empty, and terminated within its 65 bytes. */
static int key_argument_valid(const char *key) {
    if (key == NULL) return 0;
    size_t length = strnlen(key, LLMDD_ACL_IPC_KEY_BYTES);
    return length != 0 && length < LLMDD_ACL_IPC_KEY_BYTES;
}

static int parse_hex(const char *text, unsigned digits, uint64_t *value) {
    *value = 0;
    for (unsigned i = 0; i < digits; i++) {
        char c = text[i];
        unsigned digit;
        if (c >= '0' && c <= '9')
            digit = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            digit = (unsigned)(c - 'a') + 10u;
        else
            return -1;
        *value = *value << 4 | digit;
    }
    return 0;
}

/* Reads a key this runtime made (in any process); -1 for any other text. */
static int parse_key(const char *key, sim_key *parsed) {
    const size_t prefix = sizeof SIM_IPC_KEY_PREFIX - 1;
    uint64_t pid, fd, slot;
    if (strlen(key) != SIM_IPC_KEY_LENGTH || strncmp(key, SIM_IPC_KEY_PREFIX, prefix) != 0) return -1;
    const char *fields = key + prefix;
    if (parse_hex(fields, 8, &pid) != 0 || parse_hex(fields + 8, 8, &fd) != 0 ||
        parse_hex(fields + 16, 4, &slot) != 0 || parse_hex(fields + 20, 16, &parsed->serial) != 0 ||
        parse_hex(fields + 36, 16, &parsed->nonce) != 0)
        return -1;
    if (pid == 0 || pid > INT32_MAX || fd > INT32_MAX || slot >= SIM_EXPORT_SLOTS || parsed->serial == 0) return -1;
    parsed->pid = (int32_t)pid;
    parsed->fd = (int32_t)fd;
    parsed->slot = (uint32_t)slot;
    return 0;
}

/* This process's live export that `key` names, or NULL. Lock held. */
static sim_export_slot *own_export(const char *key) {
    sim_key parsed;
    if (sim.arena == NULL || parse_key(key, &parsed) != 0 || parsed.pid != (int32_t)getpid() ||
        parsed.fd != sim.arena_fd)
        return NULL;
    sim_export_slot *slot = &sim.arena->slots[parsed.slot];
    return slot->serial == parsed.serial && slot->nonce == parsed.nonce ? slot : NULL;
}

/* Unguessable with the serial, so that a key outlives neither its export nor its process (a
 * later process with the same pid and descriptor number makes other nonces). */
static uint64_t export_nonce(void) {
    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, GRND_NONBLOCK) != (ssize_t)sizeof nonce) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        nonce = ((uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec) * 0x9E3779B97F4A7C15ull;
    }
    return nonce;
}

aclError aclrtIpcMemGetExportKey(void *devPtr, size_t size, char *key, size_t len, uint64_t flags) {
    SIM_ENTER(LLMDD_SIM_IPC_EXPORT);
    if (devPtr == NULL || key == NULL || size == 0)
        return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "devPtr, key and a non-zero size must be given"));
    if (len < LLMDD_ACL_IPC_KEY_BYTES)
        return unlock_with(
            fail(ACL_ERROR_RT_PARAM_INVALID, "a key takes %d bytes, len is %zu", LLMDD_ACL_IPC_KEY_BYTES, len));
    if (flags > ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION)
        return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "unknown export flags %#llx", (unsigned long long)flags));
    if (bound_context() == NULL)
        return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    const llmdd_u64_slot *allocation = containing_allocation(devPtr, size);
    if (allocation == NULL)
        return unlock_with(fail(SIM_IPC_REFUSED, "[%p, +%zu) is not within one device allocation", devPtr, size));
    if (!(allocation->second & SIM_SHARED_FLAG))
        return unlock_with(fail(SIM_IPC_REFUSED,
                                "the host runtime exports allocations of %llu bytes or more, from its shared arena; "
                                "this one has %llu",
                                (unsigned long long)SIM_RESERVE_THRESHOLD, (unsigned long long)allocation->first));
    if ((uintptr_t)devPtr % SIM_PAGE_BYTES != 0)
        return unlock_with(fail(SIM_IPC_REFUSED, "%p is not at a page boundary: exports start at one", devPtr));
    uint32_t index = 0;
    while (index < SIM_EXPORT_SLOTS && sim.arena->slots[index].serial != 0) index++;
    if (index == SIM_EXPORT_SLOTS)
        return unlock_with(fail(SIM_IPC_REFUSED, "%u exports are open: close one first", SIM_EXPORT_SLOTS));
    const llmdd_u64_slot *range = llmdd_u64_find(&sim.arena_ranges, allocation->key);
    sim_export_slot *slot = &sim.arena->slots[index];
    uint64_t nonce = export_nonce(), serial = ++sim.next_export_serial;
    __atomic_store_n(&slot->nonce, nonce, __ATOMIC_RELAXED);
    __atomic_store_n(&slot->offset, range->first + ((uint64_t)(uintptr_t)devPtr - allocation->key), __ATOMIC_RELAXED);
    __atomic_store_n(&slot->bytes, (uint64_t)size, __ATOMIC_RELAXED);
    __atomic_store_n(&slot->validate_pids, (flags & ACL_RT_IPC_MEM_EXPORT_FLAG_DISABLE_PID_VALIDATION) == 0,
                     __ATOMIC_RELAXED);
    __atomic_store_n(&slot->pid_count, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&slot->serial, serial, __ATOMIC_RELEASE);
    sim.live_exports++;
    snprintf(key, len, SIM_IPC_KEY_PREFIX "%08x%08x%04x%016llx%016llx", (unsigned)getpid(), (unsigned)sim.arena_fd,
             index, (unsigned long long)serial, (unsigned long long)nonce);
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtIpcMemSetImportPid(const char *key, int32_t *pid, size_t num) {
    SIM_ENTER(LLMDD_SIM_IPC_SET_PID);
    if (!key_argument_valid(key) || pid == NULL || num == 0)
        return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "a key and at least one pid must be given"));
    for (size_t i = 0; i < num; i++) {
        if (pid[i] <= 0) return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "pid %d is not a process", pid[i]));
    }
    if (bound_context() == NULL)
        return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    sim_export_slot *slot = own_export(key);
    if (slot == NULL) return unlock_with(fail(SIM_IPC_REFUSED, "%.64s is not an open export of this process", key));
    /* All or nothing: the pids not yet allowed must fit. */
    int32_t added[SIM_EXPORT_PIDS];
    uint32_t count = slot->pid_count, adding = 0;
    for (size_t i = 0; i < num; i++) {
        int known = 0;
        for (uint32_t j = 0; j < count; j++) known |= slot->pids[j] == pid[i];
        for (uint32_t j = 0; j < adding; j++) known |= added[j] == pid[i];
        if (known) continue;
        if (count + adding == SIM_EXPORT_PIDS)
            return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "an export allows at most %u pids", SIM_EXPORT_PIDS));
        added[adding++] = pid[i];
    }
    for (uint32_t j = 0; j < adding; j++) {
        __atomic_store_n(&slot->pids[count + j], added[j], __ATOMIC_RELAXED);
        __atomic_store_n(&slot->pid_count, count + j + 1, __ATOMIC_RELEASE);
    }
    return unlock_with(ACL_SUCCESS);
}

/* Maps the export `parsed` names from its process's arena into this one, if that process allows
 * this one. Lock held (imports are rare; the checks and the mapping are a few system calls). */
static aclError map_export(const char *key, const sim_key *parsed, sim_import *import) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)parsed->pid, (int)parsed->fd);
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) return fail(SIM_IPC_REFUSED, "%.64s is not exported: its process or its arena is gone", key);
    uint64_t table_bytes =
        round_to_pages(offsetof(sim_arena_header, slots) + ((uint64_t)parsed->slot + 1) * sizeof(sim_export_slot));
    struct stat file;
    void *table_view = MAP_FAILED;
    if (fstat(fd, &file) == 0 && S_ISREG(file.st_mode) && (uint64_t)file.st_size == SIM_ARENA_FILE_BYTES)
        table_view = mmap(NULL, table_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (table_view == MAP_FAILED) {
        close(fd);
        return fail(SIM_IPC_REFUSED, "%.64s does not name memory of llmdd's host runtime", key);
    }
    sim_arena_header *table = (sim_arena_header *)table_view;
    sim_export_slot *slot = &table->slots[parsed->slot];
    int32_t me = (int32_t)getpid();
    int live = __atomic_load_n(&table->magic, __ATOMIC_ACQUIRE) == SIM_ARENA_MAGIC &&
               __atomic_load_n(&slot->serial, __ATOMIC_ACQUIRE) == parsed->serial;
    uint64_t nonce = __atomic_load_n(&slot->nonce, __ATOMIC_RELAXED);
    uint64_t offset = __atomic_load_n(&slot->offset, __ATOMIC_RELAXED);
    uint64_t bytes = __atomic_load_n(&slot->bytes, __ATOMIC_RELAXED);
    int allowed = !__atomic_load_n(&slot->validate_pids, __ATOMIC_RELAXED);
    uint32_t pid_count = __atomic_load_n(&slot->pid_count, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < pid_count && i < SIM_EXPORT_PIDS; i++)
        allowed |= __atomic_load_n(&slot->pids[i], __ATOMIC_RELAXED) == me;
    /* The same serial after the reads: the entry read is the export's, not a later one's. */
    live = live && nonce == parsed->nonce && __atomic_load_n(&slot->serial, __ATOMIC_ACQUIRE) == parsed->serial;
    munmap(table_view, table_bytes);
    aclError error = ACL_SUCCESS;
    void *address = MAP_FAILED;
    if (!live)
        error = fail(SIM_IPC_REFUSED, "%.64s is closed, or was never exported", key);
    else if (!allowed)
        error = fail(SIM_IPC_REFUSED, "process %d may not import %.64s: its exporter did not allow this pid", me, key);
    else if (offset % SIM_PAGE_BYTES != 0 || offset < SIM_ARENA_DATA_START || bytes == 0 ||
             bytes > SIM_ARENA_FILE_BYTES - offset)
        error = fail(SIM_IPC_REFUSED, "%.64s names no memory of its arena", key);
    else if ((address = mmap(NULL, round_to_pages(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset)) ==
             MAP_FAILED)
        error = fail(ACL_ERROR_RT_MEMORY_ALLOCATION, "no address space to map %llu bytes of %.64s",
                     (unsigned long long)bytes, key);
    close(fd);
    if (error != ACL_SUCCESS) return error;
    snprintf(import->key, sizeof import->key, "%s", key);
    import->address = address;
    import->bytes = bytes;
    import->mapped = round_to_pages(bytes);
    import->references = 1;
    return ACL_SUCCESS;
}

aclError aclrtIpcMemImportByKey(void **devPtr, const char *key, uint64_t flags) {
    SIM_ENTER(LLMDD_SIM_IPC_IMPORT);
    if (devPtr == NULL || !key_argument_valid(key))
        return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "devPtr and a key of at most 64 characters must be given"));
    /* The flag asks for peer access to another device: the host runtime needs no setting up. */
    if (flags > ACL_RT_IPC_MEM_IMPORT_FLAG_ENABLE_PEER_ACCESS)
        return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "unknown import flags %#llx", (unsigned long long)flags));
    sim_context *context = bound_context();
    if (context == NULL) return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    for (uint32_t i = 0; i < sim.import_count; i++) {
        if (strcmp(sim.imports[i].key, key) == 0) {
            sim.imports[i].references++;
            *devPtr = sim.imports[i].address;
            return unlock_with(ACL_SUCCESS);
        }
    }
    sim_key parsed;
    if (parse_key(key, &parsed) != 0)
        return unlock_with(fail(SIM_IPC_REFUSED, "%.64s is not an export key of llmdd's host runtime", key));
    /* ACL's driver counts the exporter as having opened its memory already. */
    if (parsed.pid == (int32_t)getpid())
        return unlock_with(fail(ACL_ERROR_RT_INVALID_HANDLE, "a process cannot import its own export %.64s", key));
    if (sim.import_count == sim.import_capacity) {
        uint32_t capacity = sim.import_capacity ? sim.import_capacity * 2 : 16;
        sim_import *grown = (sim_import *)realloc(sim.imports, capacity * sizeof(sim_import));
        if (grown == NULL) return unlock_with(fail(ACL_ERROR_BAD_ALLOC, "no host memory for the import table"));
        sim.imports = grown;
        sim.import_capacity = capacity;
    }
    sim_import *import = &sim.imports[sim.import_count];
    aclError error = map_export(key, &parsed, import);
    if (error != ACL_SUCCESS) return unlock_with(error);
    import->device = context->device;
    sim.import_count++;
    *devPtr = import->address;
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtIpcMemClose(const char *key) {
    SIM_ENTER(LLMDD_SIM_IPC_CLOSE);
    if (!key_argument_valid(key))
        return unlock_with(fail(ACL_ERROR_RT_PARAM_INVALID, "a key of at most 64 characters must be given"));
    if (bound_context() == NULL)
        return unlock_with(fail(ACL_ERROR_RT_CONTEXT_NULL, "no context is current on this thread"));
    for (uint32_t i = 0; i < sim.import_count; i++) {
        if (strcmp(sim.imports[i].key, key) != 0) continue;
        if (--sim.imports[i].references == 0) {
            munmap(sim.imports[i].address, sim.imports[i].mapped);
            sim.imports[i] = sim.imports[--sim.import_count];
        }
        return unlock_with(ACL_SUCCESS);
    }
    sim_export_slot *slot = own_export(key);
    if (slot == NULL)
        return unlock_with(fail(SIM_IPC_REFUSED, "%.64s is neither imported nor exported by this process", key));
    withdraw_export(slot);
    return unlock_with(ACL_SUCCESS);
}

aclError aclrtDeviceGetBareTgid(int32_t *pid) {
    if (pid == NULL) return fail(ACL_ERROR_RT_PARAM_INVALID, "pid is NULL");
    *pid = (int32_t)getpid(); /* the host runtime runs on the host itself: no container or VM pid */
    return ACL_SUCCESS;
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

int llmdd_sim_ipc_import_bytes(const void *address, uint64_t *bytes) {
    pthread_mutex_lock(&sim.lock);
    for (uint32_t i = 0; i < sim.import_count; i++) {
        if (sim.imports[i].address == address) {
            *bytes = sim.imports[i].bytes;
            return (int)unlock_with(0);
        }
    }
    return (int)unlock_with(-1);
}

int llmdd_sim_device_usage(int32_t device, uint64_t *bytes_charged, uint64_t *allocations) {
    pthread_mutex_lock(&sim.lock);
    if (!sim.initialized || !valid_device(device)) return (int)unlock_with(-1);
    *bytes_charged = sim.devices[device].charged;
    *allocations = sim.devices[device].allocations;
    return (int)unlock_with(0);
}
