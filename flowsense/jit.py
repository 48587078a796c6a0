"""The decorators every kernel uses (their flags live in ``config.NUMBA_FLAGS``), and the few
intrinsics the hot loops need: prefetch hints, memcpy and memset.

Reference counts: numba counts a reference on every array a function receives, on entry and
again at each inlined helper's arguments, and each count is an atomic operation. Where its
pruning fails (helpers with branches or loops, a table tuple of 33 arrays passed to a per-flow
helper) this was 13% of a ``flows`` run. The per-packet and per-record loops are therefore
``counted_free_kernel``s, and the helpers they call take scalars where they can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba

from flowsense.config import NUMBA_FLAGS


def kernel(fn: Callable[..., Any]) -> Any:
    return numba.njit(**NUMBA_FLAGS)(fn)


def counted_free_kernel(fn: Callable[..., Any]) -> Any:
    """A kernel compiled without numba's runtime (``_nrt=False``), so without reference
    counting: for the hot loops (see the module docstring). It must not allocate arrays (the
    caller passes every buffer), and what it calls is an ``inline_kernel`` or another
    counted-free kernel (a counted callee would count its arguments on entry)."""
    return numba.njit(_nrt=False, **NUMBA_FLAGS)(fn)


def inline_kernel(fn: Callable[..., Any]) -> Any:
    """For small helpers called per packet: inlined into the caller at numba's IR level, so no
    call. In a counted kernel the arrays passed are still counted per call (see above)."""
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


def _memcpy_codegen(src_pos: int, count_pos: int) -> Any:
    """A memcpy of ``args[count_pos]`` bytes from the source array ``args[src_pos]`` at index
    ``args[src_pos + 1:count_pos]`` to the destination array ``args[0]`` at ``args[1:src_pos]``."""
    from numba.core import cgutils, types

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        def ptr(q: int, idx: range) -> Any:
            aty = sig.args[q]
            arr = context.make_array(aty)(context, builder, args[q])
            ix = [context.cast(builder, args[k], sig.args[k], types.intp) for k in idx]
            return cgutils.get_item_pointer(context, builder, aty, arr, ix, wraparound=False)

        dp = ptr(0, range(1, src_pos))
        sp = ptr(src_pos, range(src_pos + 1, count_pos))
        n = context.cast(builder, args[count_pos], sig.args[count_pos], types.intp)
        cgutils.raw_memcpy(builder, dp, sp, n, 1)
        return context.get_dummy_value()

    return codegen


@numba.extending.intrinsic
def copy_bytes(typingctx: Any, dst: Any, i: Any, src: Any, o: Any, n: Any) -> Any:
    """``dst[i:i+n] = src[o:o+n]`` for contiguous 1-D uint8 arrays, as one ``memcpy``: numba's
    slice assignment copies a byte at a time (7x slower for a payload head). The caller has
    checked every bound."""
    from numba.core import types

    return types.void(dst, i, src, o, n), _memcpy_codegen(2, 4)


@numba.extending.intrinsic
def copy_bytes3(typingctx: Any, dst: Any, i: Any, j: Any, k: Any, src: Any, o: Any,
                n: Any) -> Any:
    """``copy_bytes`` into ``dst[i, j, k:k+n]`` of a C-contiguous 3-D uint8 array."""
    from numba.core import types

    return types.void(dst, i, j, k, src, o, n), _memcpy_codegen(4, 6)


@numba.extending.intrinsic
def zero_row(typingctx: Any, arr: Any, i: Any) -> Any:
    """``arr[i, ...] = 0`` for a C-contiguous array, as one ``memset``."""
    from numba.core import cgutils, types

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        aty = sig.args[0]
        a = context.make_array(aty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        idx = [context.cast(builder, args[1], sig.args[1], types.intp)] + [zero] * (aty.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, aty, a, idx, wraparound=False)
        shape = cgutils.unpack_tuple(builder, a.shape, aty.ndim)
        count = context.get_constant(types.intp, context.get_abi_sizeof(
            context.get_data_type(aty.dtype)))
        for dim in shape[1:]:
            count = builder.mul(count, dim)
        cgutils.memset(builder, ptr, count, 0)
        return context.get_dummy_value()

    return types.void(arr, i), codegen
