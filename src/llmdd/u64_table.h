/* An open-addressing hash table from non-zero uint64 keys to two uint64 words.
 *
 * Used twice: the engine's cache table (cache_id -> slab) and the host runtime's
 * allocation table (address -> size). Linear probing with backward-shift deletion, so
 * there are no tombstones and lookups stay short however many inserts and erases
 * a long-running server makes. Not thread-safe: callers hold their own lock. */
#ifndef LLMDD_U64_TABLE_H
#define LLMDD_U64_TABLE_H

#include <stdint.h>
#include <stdlib.h>

typedef struct {
    uint64_t key; /* 0 marks an empty slot */
    uint64_t first;
    uint64_t second;
} llmdd_u64_slot;

typedef struct {
    llmdd_u64_slot *slots;
    uint64_t capacity; /* a power of two, or 0 before the first insert */
    uint64_t count;
} llmdd_u64_table;

static inline uint64_t llmdd_u64_home(const llmdd_u64_table *table, uint64_t key) {
    /* Fibonacci hashing spreads sequential ids and 64-byte-aligned addresses alike. */
    return (key * 0x9E3779B97F4A7C15ull) & (table->capacity - 1);
}

static inline llmdd_u64_slot *llmdd_u64_find(const llmdd_u64_table *table, uint64_t key) {
    if (table->capacity == 0 || key == 0) return NULL;
    for (uint64_t i = llmdd_u64_home(table, key);; i = (i + 1) & (table->capacity - 1)) {
        llmdd_u64_slot *slot = &table->slots[i];
        if (slot->key == key) return slot;
        if (slot->key == 0) return NULL;
    }
}

/* Places a key known to be absent into a table with room for it. */
static inline void llmdd_u64_place(llmdd_u64_table *table, uint64_t key, uint64_t first, uint64_t second) {
    uint64_t i = llmdd_u64_home(table, key);
    while (table->slots[i].key != 0) i = (i + 1) & (table->capacity - 1);
    table->slots[i].key = key;
    table->slots[i].first = first;
    table->slots[i].second = second;
    table->count++;
}

/* Keeps the load factor at or under 1/2. Returns 0, or -1 when memory ran out (table unchanged). */
static inline int llmdd_u64_reserve_one(llmdd_u64_table *table) {
    if ((table->count + 1) * 2 <= table->capacity) return 0;
    uint64_t new_capacity = table->capacity ? table->capacity * 2 : 64;
    llmdd_u64_slot *new_slots = (llmdd_u64_slot *)calloc(new_capacity, sizeof(llmdd_u64_slot));
    if (new_slots == NULL) return -1;
    llmdd_u64_table grown = {new_slots, new_capacity, 0};
    for (uint64_t i = 0; i < table->capacity; i++) {
        if (table->slots[i].key != 0)
            llmdd_u64_place(&grown, table->slots[i].key, table->slots[i].first, table->slots[i].second);
    }
    free(table->slots);
    *table = grown;
    return 0;
}

/* Inserts an absent non-zero key. Returns 0, or -1 when memory ran out (table unchanged). */
static inline int llmdd_u64_insert(llmdd_u64_table *table, uint64_t key, uint64_t first, uint64_t second) {
    if (llmdd_u64_reserve_one(table) != 0) return -1;
    llmdd_u64_place(table, key, first, second);
    return 0;
}

/* Removes the slot returned by llmdd_u64_find, shifting later members of its run back. */
static inline void llmdd_u64_erase(llmdd_u64_table *table, llmdd_u64_slot *slot) {
    uint64_t mask = table->capacity - 1;
    uint64_t hole = (uint64_t)(slot - table->slots);
    for (uint64_t i = (hole + 1) & mask; table->slots[i].key != 0; i = (i + 1) & mask) {
        uint64_t home = llmdd_u64_home(table, table->slots[i].key);
        /* The entry may move into the hole only if its home is not in (hole, i]. */
        int home_between = hole <= i ? (hole < home && home <= i) : (hole < home || home <= i);
        if (!home_between) {
            table->slots[hole] = table->slots[i];
            hole = i;
        }
    }
    table->slots[hole].key = 0;
    table->count--;
}

static inline void llmdd_u64_release(llmdd_u64_table *table) {
    free(table->slots);
    table->slots = NULL;
    table->capacity = 0;
    table->count = 0;
}

#endif
