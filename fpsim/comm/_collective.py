"""The all-reduce itself: on a stack of contributions (one device) and inside shard_map."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fpsim import _bits, _keys
from fpsim.comm._checks import check_args, contribution, finish
from fpsim.formats import get_format
from fpsim.numerics._accumulate import Order, reduce_terms, ring_add, ring_pieces
from fpsim.rounding import FormatLike, as_float_array


def _reduce(stack, fmt, order: str, chunk: int, rounding: str, key):
    """The contributions stacked on the leading axis, reduced in ``order``: the same
    engine as every single-device sum, started from the first contribution as sent."""
    n = stack.shape[0]
    return reduce_terms(stack, lambda x, i: x, n, None, fmt, order, chunk, rounding, key)


def lp_reduce(
    xs: jax.typing.ArrayLike,
    fmt: FormatLike,
    *,
    axis: int = 0,
    order: Order = "ring",
    chunk: int = 64,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    mean: bool = False,
    divide: str = "after",
    wire_format: FormatLike | None = None,
) -> jax.Array:
    """Reduce ``axis`` of ``xs`` as a low-precision all-reduce over that many devices.

    Entry ``i`` along ``axis`` plays device ``i``'s contribution. This is the
    single-device twin of :func:`lp_all_reduce`: the same options give bitwise the same
    result, so it both checks the collective and simulates device counts you do not
    have (stack 64 gradients and reduce them).

    Args:
      xs: floating-point array; ``xs.shape[axis]`` is the device count ``n``.
      fmt: the reduction format: every addition is rounded to it, and so is the result.
      axis: the device axis.
      order: ``"ring"`` (default), ``"sequential"``, ``"pairwise"`` (a tree),
        ``"chunked"``, ``"kahan"`` or ``"native"`` (a float32 buffer, rounded once);
        see :mod:`fpsim.comm`.
      chunk: chunk length (in devices) for ``"chunked"``.
      rounding: rounding mode of the additions (``"stochastic"`` needs ``key``). The
        wire quantization and the final division always round to nearest.
      key: random key for stochastic rounding; see :mod:`fpsim.comm` for how the
        per-addition keys are derived.
      mean: divide by ``n`` (a mean all-reduce) instead of returning the sum.
      divide: ``"after"`` (sum, then divide) or ``"before"`` (each device divides its
        value by ``n`` before rounding it to the wire format). Only with ``mean``.
      wire_format: the format contributions are sent in; default ``fmt``.

    Returns:
      An array of ``xs``'s shape without ``axis``, on ``fmt``'s grid (for ``n > 1`` or
      ``mean``; a single device's value is returned as sent).

    Example:
      >>> import fpsim.comm as comm, jax.numpy as jnp
      >>> g = jnp.full((8, 1), 2.0**-24)  # 8 devices, each FP16's smallest subnormal
      >>> float(comm.lp_reduce(g, "fp16", mean=True, divide="after")[0]) == 2.0**-24
      True
      >>> float(comm.lp_reduce(g, "fp16", mean=True, divide="before")[0])  # underflow
      0.0
    """
    x = as_float_array(xs, get_format(fmt if wire_format is None else wire_format))
    fmt, wire, order = check_args(fmt, wire_format, order, chunk, rounding, key, divide,
                                  _bits.carrier_of(x.dtype))  # fmt: skip
    c = jnp.moveaxis(x, axis, 0)
    if c.shape[0] == 0:
        raise ValueError("lp_reduce needs at least one device along axis (got size 0)")
    key = _keys.canonical_key(key) if rounding == "stochastic" else None
    return _reduce_stack(c, key, fmt, wire, order, chunk, rounding, bool(mean), divide)


@functools.partial(jax.jit, static_argnums=tuple(range(2, 9)))
def _reduce_stack(c, key, fmt, wire, order, chunk, rounding, mean, divide):
    n = c.shape[0]
    c = contribution(c, n, wire, mean, divide)
    total = c[0] if n == 1 else _reduce(c, fmt, order, chunk, rounding, key)
    return finish(total, n, fmt, mean, divide)


def _ring_collective(c, axis_name, n: int, fmt, rounding: str, key):
    """The ring all-reduce with real ``ppermute`` steps (see :mod:`fpsim.comm`).

    Device ``d`` starts with its piece of chunk ``d - 1``; at step ``s`` it receives from
    ``d - 1`` the partial sum of chunk ``k = d - 1 - s`` and adds its own piece. After
    ``n - 1`` steps it owns the finished chunk ``d``; an all-gather shares them. Each
    addition is ``ring_add``, the very step of the single-device ring.
    """
    d = lax.axis_index(axis_name)
    pieces = ring_pieces(c, n)
    acc = pieces[(d - 1) % n]
    perm = [(i, (i + 1) % n) for i in range(n)]
    for s in range(1, n):
        acc = lax.ppermute(acc, axis_name, perm)
        k = (d - 1 - s) % n
        acc = ring_add(acc, pieces[k], s, k, fmt, rounding, key)
    full = lax.all_gather(acc, axis_name, to="invarying")  # row k: chunk k
    return full.reshape(-1)[: c.size].reshape(c.shape)


def lp_all_reduce(
    x: jax.Array,
    axis_name: str,
    fmt: FormatLike,
    *,
    order: Order = "ring",
    chunk: int = 64,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    mean: bool = False,
    divide: str = "after",
    wire_format: FormatLike | None = None,
) -> jax.Array:
    """All-reduce ``x`` over the mesh axis ``axis_name`` in a low-precision format.

    Call it inside :func:`jax.shard_map` where ``psum`` would go. Every device gets the
    same result, bitwise equal to ``lp_reduce`` of the stacked per-device values.
    ``"ring"`` runs as a real ring (``ppermute`` steps, then an all-gather of the
    chunks); the other orders all-gather the contributions and reduce them in the
    chosen order on every device. The result is invariant over ``axis_name``, so it can
    leave ``shard_map`` with ``out_specs=P()``.

    Args:
      x: this device's float32 array (float64 under x64).
      axis_name: the mesh axis to reduce over.
      fmt, order, chunk, rounding, key, mean, divide, wire_format: as for
        :func:`lp_reduce`. ``key`` must be the same on every device (pass it
        replicated, ``P()``).

    Returns:
      The (mean-)reduced array, ``x``'s shape, on ``fmt``'s grid.

    Example:
      >>> import jax, fpsim.comm as comm
      >>> from jax.sharding import PartitionSpec as P
      >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
      >>> f = jax.shard_map(lambda g: comm.lp_all_reduce(g, "data", "bf16", mean=True),
      ...                   mesh=mesh, in_specs=P("data"), out_specs=P())
      >>> f(jax.numpy.ones((1, 3)) / 3).tolist()
      [[0.333984375, 0.333984375, 0.333984375]]
    """
    x = as_float_array(x, get_format(fmt if wire_format is None else wire_format))
    fmt, wire, order = check_args(fmt, wire_format, order, chunk, rounding, key, divide,
                                  _bits.carrier_of(x.dtype))  # fmt: skip
    key = _keys.canonical_key(key) if rounding == "stochastic" else None
    n = lax.axis_size(axis_name)
    c = contribution(x, n, wire, mean, divide)
    if n == 1:
        total = lax.all_gather(c, axis_name, to="invarying")[0]
    elif order == "ring":
        total = _ring_collective(c, axis_name, n, fmt, rounding, key)
    else:
        stack = lax.all_gather(c, axis_name, to="invarying")
        total = _reduce(stack, fmt, order, chunk, rounding, key)
    return finish(total, n, fmt, mean, divide)
