"""Large arrays in anonymous maps of their own, on transparent huge pages where the kernel
has them."""

from __future__ import annotations

import mmap

import numpy as np


def zeros(shape: int | tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeroed memory that goes back to the system when freed: large arrays in their own
    anonymous map. (From malloc, a grown table's old arrays could stay resident: glibc raises
    its mmap threshold after the first large free.) Untouched pages cost nothing. Maps of 2 MiB
    and more ask for transparent huge pages (``MADV_HUGEPAGE``; most distributions enable them
    only where asked): a packet's flow row is a random place in tens or hundreds of MiB, and
    with 4 KiB pages nearly every one missed the TLB (the steady pass 8% faster)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n < 1 << 20:
        return np.zeros(shape, dtype=dtype)
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if n >= 2 << 20 and hasattr(mmap, "MADV_HUGEPAGE"):
        m.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(m, dtype=dtype).reshape(shape)
