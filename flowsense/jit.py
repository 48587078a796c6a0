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



def _prefetch_codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
    from llvmlite import ir
    from numba.core import cgutils

    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, list(args[1:]),
                                   wraparound=False)
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    # a read, kept in all cache levels, data cache
    builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
    return context.get_dummy_value()


@numba.extending.intrinsic
def prefetch(typingctx: Any, arr: Any, i: Any) -> Any:
    """Hint the CPU to start loading ``arr[i]`` of a 1-D array (in bounds) and go on: the flow
    table's look-ahead overlaps the lookups of the next packets with this one's work."""
    from numba.core import types

    return types.void(arr, i), _prefetch_codegen


@numba.extending.intrinsic
def prefetch2(typingctx: Any, arr: Any, i: Any, j: Any) -> Any:
    """``prefetch`` for ``arr[i, j]`` of a 2-D array."""
    from numba.core import types

    return types.void(arr, i, j), _prefetch_codegen
