"""Memory on 2 MiB pages for the cpu backend's weights and KV caches: why it matters, and how it is asked for.

A decode step streams every weight from memory once. The processor translates each address through the page tables,
and keeps the recent translations in its TLB: a few thousand entries. With the usual 4 KiB pages, 500 MB of weights
are ~120,000 pages, so nearly every new page of a step costs a walk of the page tables (memory reads of their own)
before its data can come; with 2 MiB pages (Linux's transparent huge pages) the same weights are 250 pages. Here the
matrices of a model are laid out in large mappings that ask for 2 MiB pages (PanelMemory), and a KV cache's one
buffer is another (CpuBackend.zeros); nothing else changes: the arrays are NumPy arrays over that memory.
"""
import math
import mmap

import numpy as np

HUGE_PAGE = 2 * 2**20  # bytes: a transparent huge page on x86-64 (and on arm64 with 4 KiB base pages)
MAPPING_FLOATS = 256 * 2**20 // 4  # the weights' memory is taken in mappings of 256 MiB (a larger matrix: its own)


def huge_page_zeros(n: int) -> np.ndarray:
    """n float32 zeros in fresh memory of their own, starting on a 2 MiB boundary and marked for 2 MiB pages
    (madvise MADV_HUGEPAGE).

    Fresh, because memory gets its pages when first touched and keeps them: NumPy marks its arrays of 4 MiB and more,
    but one made in memory reused from freed arrays (the loader's, kept by memory.keep_freed_memory) keeps the 4 KiB
    pages that memory was first given, and smaller arrays are not marked at all. Measured: after loading, 1% of
    GPT-2's layer matrices sat on 2 MiB pages, 50% of the Llama shape's; laid out here, a decode step took 0.85-0.93x
    the time. The mapping is anonymous and private (shared memory gets no huge pages by default), zero-filled by the
    kernel, and unmapped when the last array viewing it goes. Without madvise or MAP_PRIVATE (not Linux) it is the
    same memory with the system's pages.
    """
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    size = n * 4 + HUGE_PAGE  # room to start on a boundary
    if hasattr(mmap, "MAP_PRIVATE"):
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    else:
        memory = mmap.mmap(-1, size)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    raw = np.frombuffer(memory, dtype=np.uint8)  # keeps the mapping alive as long as a view of it lives
    start = -raw.ctypes.data % HUGE_PAGE
    return raw[start : start + n * 4].view(np.float32)


class PanelMemory:
    """Where a backend's Panels live: each matrix takes the next stretch of a large huge-page mapping, in the order the
    model is loaded (layer after layer: the order a step reads them), so all of a model's matrices sit on 2 MiB pages
    (see huge_page_zeros) and waste at most the unused end of the last mapping (never touched: no memory used)."""

    def __init__(self):
        self.free = np.zeros(0, dtype=np.float32)  # the unused end of the current mapping

    def take(self, shape) -> np.ndarray:
        """Zeroed float32 memory of `shape`, 64-byte aligned (a cache line), never handed out before."""
        n = math.prod(shape)
        stretch = -(-n // 16) * 16  # whole cache lines, so the next matrix starts on one too
        if stretch > self.free.size:
            self.free = huge_page_zeros(max(stretch, MAPPING_FLOATS))
        block, self.free = self.free[:n].reshape(shape), self.free[stretch:]
        return block
