"""Handing freed memory back to the operating system, what glibc's heaps hold, and the
glibc tunables under which they stop growing with the work done."""

import ctypes
import ctypes.util
import functools
import os
import sys
import time


@functools.cache
def _glibc():
    """The C library where it is glibc (has malloc_trim), else False: loaded on first use and
    kept for the process (a handle to a library every process has mapped; safe across fork)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else False


def release_free_memory() -> bool:
    """Ask glibc's allocator to return the free pages of its heaps (``malloc_trim(0)``);
    False where there is no glibc. A streaming pass frees and allocates arrays of varying
    sizes block after block; without this the freed pages between live ones stay counted in
    the process's RSS, which then creeps up with every block read."""
    libc = _glibc()
    return bool(libc) and bool(libc.malloc_trim(0))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap_stats() -> dict[str, float] | None:
    """glibc's view of its heaps in MB (``mallinfo2``, every arena): 'in_use' (bytes handed
    out by malloc and not yet freed, mmapped blocks included), 'free' (free space held
    inside the heaps, resident or not) and 'mmapped'; None where there is no glibc 2.33+.
    Python's small-object arenas and the interpreter's own mappings are not in it."""
    libc = _glibc()
    if not libc or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    mb = 2 ** 20
    return {"in_use": (m.uordblks + m.hblkhd) / mb, "free": m.fordblks / mb, "mmapped": m.hblkhd / mb}


class PeriodicRelease:
    """:func:`release_free_memory` at most once every ``seconds`` (0: at every call), for a
    loop whose iterations allocate and free buffers of varying sizes (decoded images,
    crops, pair rows). Their holes in the allocator's heaps otherwise stay resident, so
    the process's RSS grows with the iterations run though the bytes in use do not; a
    trim gives them back, and its cost (the walk, then the pages touched again) is paid
    at most once a period."""

    def __init__(self, seconds: float = 1.0):
        self.seconds, self._last = seconds, float("-inf")

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.seconds:
            release_free_memory()
            self._last = now


# glibc's per-thread cache and fast bins keep small freed chunks marked in use, so a chunk
# parked there never merges with its free neighbours. torch asks for 64-byte-aligned memory,
# which glibc cuts out of a larger chunk, freeing small pieces beside every tensor into
# those caches: the holes that freed tensors leave stay split by them, a step's tensors
# (sizes follow each batch's boxes and pairs) keep finding no hole that fits, and the heap
# grows while the bytes in use stay flat. Without the two caches the pieces merge back.
# glibc reads tunables only when a program starts.
HEAP_TUNABLES = ("glibc.malloc.tcache_count=0", "glibc.malloc.mxfast=0")
_TUNABLES_ENV = "GLIBC_TUNABLES"


def with_heap_tunables(env: dict[str, str]) -> dict[str, str]:
    """A copy of environment ``env`` whose ``GLIBC_TUNABLES`` has :data:`HEAP_TUNABLES`
    (a value the environment already gives one of them is kept)."""
    have = [t for t in env.get(_TUNABLES_ENV, "").split(":") if t]
    names = {t.split("=")[0] for t in have}
    add = [t for t in HEAP_TUNABLES if t.split("=")[0] not in names]
    return {**env, _TUNABLES_ENV: ":".join(have + add)} if add else dict(env)


def without_heap_tunables(env: dict[str, str]) -> dict[str, str]:
    """A copy of ``env`` without :data:`HEAP_TUNABLES` (glibc's defaults: the baseline)."""
    names = {t.split("=")[0] for t in HEAP_TUNABLES}
    keep = [t for t in env.get(_TUNABLES_ENV, "").split(":") if t and t.split("=")[0] not in names]
    out = {k: v for k, v in env.items() if k != _TUNABLES_ENV}
    return {**out, _TUNABLES_ENV: ":".join(keep)} if keep else out


def heap_tunables_set() -> bool:
    """This process was started with :data:`HEAP_TUNABLES` (or its own value of each), or
    its C library is not glibc."""
    return not _glibc() or with_heap_tunables(dict(os.environ)) == dict(os.environ)


def exec_with_heap_tunables(argv: list[str]) -> None:
    """Replace this process by ``argv`` (a program and its arguments) started with
    :data:`HEAP_TUNABLES`, so that glibc's heaps stop growing with the work done; returns,
    doing nothing, where they are set already (this is the restarted process, or the user
    set them) or the C library is not glibc."""
    if heap_tunables_set() or not argv[0]:  # (an embedded interpreter may not know its executable)
        return
    env = with_heap_tunables(dict(os.environ))
    sys.stdout.flush(), sys.stderr.flush()
    os.execve(argv[0], argv, env)
