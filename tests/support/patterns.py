"""Byte patterns: bytes that differ per seed and along the buffer, so a transfer that moved the
wrong bytes (another cache's, another tensor's, another block's) cannot pass a check by chance.
Test and peer process compute the same pattern from the same seeds, so only seeds cross the pipe."""
import ctypes

import numpy


def pattern(*seeds_and_nbytes):
    """pattern(seed, ..., nbytes): nbytes of uint8. The seeds are any ints (a cluster id, a cache
    id, a tensor index...); each one's position counts, so (1, 2) and (2, 1) differ."""
    *seeds, nbytes = seeds_and_nbytes
    mixed = 7
    for seed in seeds:
        mixed = (mixed * 131 + seed) % 251
    # 13 and 251 are coprime, so the pattern only repeats every 251 bytes: a shifted copy shows.
    return ((numpy.arange(nbytes, dtype=numpy.uint64) * 13 + mixed) % 251).astype(numpy.uint8)


def memory(addr, nbytes):
    """The nbytes at addr as a writable uint8 array (on the sim build a 'device' address is host memory)."""
    return numpy.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(addr))


def cache_tensor(cache, index):
    """Tensor `index` of an llmdd.Cache as a writable uint8 array."""
    return memory(cache.tensor_addrs[index], cache.cache_desc.size)


def fill_pattern(array, *seeds):
    """Writes pattern(*seeds, len) into a uint8 array (a view of cache memory)."""
    array[:] = pattern(*seeds, array.size)
