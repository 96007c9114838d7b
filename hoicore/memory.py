"""Handing freed memory back to the operating system."""

import ctypes
import ctypes.util

_libc = None


def release_free_memory() -> bool:
    """Ask glibc's allocator to return the free pages of its heaps (``malloc_trim(0)``);
    False where there is no glibc. A streaming pass frees and allocates arrays of varying
    sizes block after block; without this the freed pages between live ones stay counted in
    the process's RSS, which then creeps up with every block read."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
        if _libc is not False and not hasattr(_libc, "malloc_trim"):
            _libc = False
    return bool(_libc) and bool(_libc.malloc_trim(0))
