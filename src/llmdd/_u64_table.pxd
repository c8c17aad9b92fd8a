# The C hash table of u64_table.h. Declarations only.
from libc.stdint cimport uint64_t


cdef extern from "u64_table.h" nogil:
    ctypedef struct llmdd_u64_slot:
        uint64_t key
        uint64_t first
        uint64_t second

    ctypedef struct llmdd_u64_table:
        llmdd_u64_slot* slots
        uint64_t capacity
        uint64_t count

    llmdd_u64_slot* llmdd_u64_find(const llmdd_u64_table* table, uint64_t key)
    int llmdd_u64_insert(llmdd_u64_table* table, uint64_t key, uint64_t first, uint64_t second)
    void llmdd_u64_erase(llmdd_u64_table* table, llmdd_u64_slot* slot)
    void llmdd_u64_release(llmdd_u64_table* table)
