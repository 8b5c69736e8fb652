"""Refusing an allocation the machine cannot hold, before making it.

Sizes that come from files or flags (a config's context length, --num-beams, --max-new-tokens, a batch) multiply into
arrays that can need terabytes. Asking NumPy for one either fails with a message about one array's shape, or worse
succeeds: Linux hands out zeroed memory lazily, so `np.zeros` of 30 GiB on a 16 GiB machine can return at once and
the process is killed later, while filling it. So every large allocation whose size the user or a file controls is
first checked here, by one helper, against the memory the machine has free: a MemoryError whose one line names what
was asked for, its size and what is available.

"What is free" is Linux's own estimate, MemAvailable in /proc/meminfo (free memory plus caches it can drop); where
that file does not exist (macOS) the machine's total physical memory is the bound instead. The check is for the
host's memory: on the CuPy backend the KV cache lives on the GPU, whose own allocator refuses with a MemoryError too.
"""
import ctypes
import os

from .files import read_text

GIB = 2**30


def available_bytes() -> int:
    """Bytes a new allocation can take without swapping: MemAvailable, else total physical memory."""
    try:
        return meminfo_available(read_text("/proc/meminfo"))
    except (OSError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def meminfo_available(meminfo: str) -> int:
    """The MemAvailable line of /proc/meminfo in bytes. Example: "MemAvailable:   16384 kB" -> 16777216."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    raise ValueError("/proc/meminfo has no MemAvailable line")


def check_fits(nbytes: int, what: str) -> None:
    """Raise MemoryError, naming `what` and both sizes, if nbytes is more than the machine has available.

    Example: check_fits(3 * 2**40, "a KV cache of 1 x 10**12 positions") -> MemoryError("a KV cache of 1 x 10**12
    positions needs 3,072.0 GiB; this machine has 20.1 GiB available").
    """
    available = available_bytes()
    if nbytes > available:
        raise MemoryError(f"{what} needs {gib(nbytes)}; this machine has {gib(available)} available")


def gib(nbytes: int) -> str:
    """Bytes as GiB with one decimal, in integer arithmetic (a size from a file can be too large for a float).
    Example: 3 * 2**40 -> "3,072.0 GiB"."""
    whole, tenth = divmod(nbytes * 10 // GIB, 10)
    return f"{whole:,}.{tenth} GiB"


# glibc's mallopt parameters (malloc.h). By default the heap gives back freed memory above 128 KiB
# (M_TRIM_THRESHOLD, raised as it goes) and serves big blocks with fresh mmaps (M_MMAP_THRESHOLD, at most 32 MiB).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 * 2**20


def keep_freed_memory() -> bool:
    """Ask the C allocator (glibc's malloc) to keep memory NumPy frees for its next arrays. -> whether it could.

    A forward pass makes and frees the same arrays again and again (a prefill's (T, H) activations: megabytes each).
    By default glibc returns such blocks to the kernel when they are freed and maps fresh ones for the next, and every
    page of a fresh block costs a page fault and zeroing before NumPy writes it: measured on the Qwen2.5-0.5B shape,
    a 128-token prefill spent ~10% of its time there (silu_mul 54 ms -> 18 ms, matmuls 1123 -> 1063 ms). This keeps
    arrays up to 32 MiB on the heap and the heap from shrinking, so the pages are reused warm; the process holds its
    peak memory instead of returning it. It sets the allocator of the whole process, so the programs call it (the
    command line, the server, the benchmarks), not the library. A no-op (False) where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and mallopt(M_TRIM_THRESHOLD, 2**30))
