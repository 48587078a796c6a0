"""Where compiled kernels are cached, set before numba is first imported.

numba's cache is keyed on the source file of each function only: it does not see edits to
callees in other files nor to the constants of ``schema.py``. We therefore key the cache
directory on a digest of every file the kernels depend on, so any edit compiles afresh.
The base directory is ``$FLOWSENSE_CACHE_DIR``, else ``$XDG_CACHE_HOME/flowsense`` (or
``~/.cache/flowsense``); an explicit ``NUMBA_CACHE_DIR`` is respected as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
KERNEL_SOURCES = (
    "schema.py",
    "capture/kernels.py",
    "capture/decode_kernels.py",
    "jit.py",
    "config.py",
    "detect/kernels.py",
    "flows/kernels.py",
    "flows/table_kernels.py",
    "flows/text_kernels.py",
    "flows/export_kernels.py",
    "report/kernels.py",
    "sidecar/ring_kernels.py",
    "parallel/kernels.py",
)


def kernel_digest() -> str:
    h = hashlib.sha256()
    for rel in KERNEL_SOURCES:
        try:
            h.update((_HERE / rel).read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]


def configure() -> None:
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    base = os.environ.get("FLOWSENSE_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "flowsense")
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "numba-" + kernel_digest())
