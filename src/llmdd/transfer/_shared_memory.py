"""Memory the engine's process and its data-plane helper both map: a memfd, mapped MAP_SHARED by
each (the engine makes it and hands the helper its descriptor over their socket).

Addresses are plain integers, as Mooncake and the caches use them; copies are ctypes.memmove,
which releases the GIL.
"""
import ctypes
import mmap
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_MAP_FAILED = ctypes.c_void_p(-1).value
PAGE_BYTES = mmap.PAGESIZE
copy = ctypes.memmove


def map_fd(fd, nbytes):
    """The address of a shared read-write mapping of the first `nbytes` of `fd`; OSError if not."""
    address = _libc.mmap(None, nbytes, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if address in (None, _MAP_FAILED):
        error = ctypes.get_errno()
        raise OSError(error, f"mmap of {nbytes} bytes: {os.strerror(error)}")
    return address


def unmap(address, nbytes):
    _libc.munmap(address, nbytes)


def zero(address, nbytes):
    ctypes.memset(address, 0, nbytes)


def discard(address, nbytes):
    """Zeroes [address, address + nbytes) of a shared mapping and gives back its whole pages
    (MADV_REMOVE punches them out of the memfd, for every process that maps it); the partial
    pages at either end are zeroed in place, since they hold bytes outside the range."""
    end = address + nbytes
    first_page = -(-address // PAGE_BYTES) * PAGE_BYTES
    last_page = end // PAGE_BYTES * PAGE_BYTES
    if first_page >= last_page:
        ctypes.memset(address, 0, nbytes)
        return
    ctypes.memset(address, 0, first_page - address)
    ctypes.memset(last_page, 0, end - last_page)
    if _libc.madvise(first_page, last_page - first_page, mmap.MADV_REMOVE) != 0:
        ctypes.memset(first_page, 0, last_page - first_page)


class SharedMemory:
    """`nbytes` of a memfd (sparse: pages cost memory once touched), mapped here at `address`."""

    def __init__(self, nbytes, name):
        self.nbytes = nbytes
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, nbytes)
            self.address = map_fd(self.fd, nbytes)
        except OSError:
            os.close(self.fd)
            raise

    def discard(self):
        """Every byte zeroed and every page given back."""
        discard(self.address, self.nbytes)

    def close(self):
        unmap(self.address, self.nbytes)
        os.close(self.fd)
