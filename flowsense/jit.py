"""The one decorator every kernel uses; its flags live in ``config.NUMBA_FLAGS``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba

from flowsense.config import NUMBA_FLAGS


def kernel(fn: Callable[..., Any]) -> Any:
    return numba.njit(**NUMBA_FLAGS)(fn)
