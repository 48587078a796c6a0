"""The one decorator every kernel uses; its flags live in ``config.NUMBA_FLAGS``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba

from flowsense.config import NUMBA_FLAGS


def kernel(fn: Callable[..., Any]) -> Any:
    return numba.njit(**NUMBA_FLAGS)(fn)


def inline_kernel(fn: Callable[..., Any]) -> Any:
    """For small helpers called per packet: inlined into the caller at numba's IR level, so no
    call, and no reference counting of the arrays passed."""
    return numba.njit(inline="always", **NUMBA_FLAGS)(fn)
