"""Low-precision gradient communication: an all-reduce carried out in a narrow format.

Data-parallel training computes a gradient on every device from its shard of the batch,
then *all-reduces* them: every device ends with the same sum (or mean). Real systems
send the gradients in a narrow format (FP16, BF16, even FP8) to halve the traffic, and
the adds of the reduction happen in that format too. Three things then decide the
numbers, and this module simulates each of them bit for bit:

**The wire format.** Each device rounds its contribution to ``wire_format`` (round to
nearest) before sending it. Values below half the format's smallest subnormal become 0.

**The order of the additions.** Floating-point addition is not associative, so the
topology of the collective is part of the numerics. With ``n`` devices holding
``x_0 ... x_{n-1}``, each addition rounded to ``fmt``:

``"sequential"``
    ``((x_0 + x_1) + x_2) + ...`` in device order: a chain through the devices.
``"ring"``
    NCCL's ring all-reduce. The tensor (flattened, row-major) is cut into ``n`` chunks
    of equal length (the last one padded). In the reduce-scatter phase chunk ``k``
    starts on device ``k+1`` and travels around the ring, each device adding its own
    piece: chunk ``k`` is summed in the order ``x_{k+1}, x_{k+2}, ..., x_{k+n}``
    (indices mod ``n``). So *different elements are summed in different orders*. The
    all-gather phase then copies the finished chunks to everyone, exactly.
``"tree"``
    Pairwise: ``(x_0 + x_1) + (x_2 + x_3)``, level by level; an odd last term waits a
    level. ``ceil(log2 n)`` roundings on any path instead of ``n - 1``.
``"fp32_then_round"``
    A float32 reduction buffer: float32 sum in device order, one rounding to ``fmt`` at
    the end (what "accumulate in higher precision" buys).

Each addition is the exact sum rounded once to ``fmt`` in the chosen mode, as hardware
that adds in ``fmt`` does. It is computed in float32 rounded *to odd* (an error-free
TwoSum, then an odd last bit for inexact sums; Boldo & Melquiond 2008) and then rounded
to ``fmt``, which is exact in every mode for formats of at most 21 mantissa bits (FP16,
BF16, TF32, every FP8); a plain float32 sum rounded again would be right for
round-to-nearest only (Figueroa 1995). One caveat: XLA on CPU flushes float32
subnormals, so BF16 sums below ``2**-126`` become 0.

**Stochastic rounding in the reduction.** With ``rounding="stochastic"`` every addition
rounds up with probability proportional to the remainder, so the reduction is unbiased
in expectation. The random bits must be the same on every device (an all-reduce gives
everyone the same answer) and deterministic, so they are derived from one shared
``key`` by position, never by device:

* sequential: addition ``s`` (``s = 1 .. n-1``, adding ``x_s``) uses
  ``fold_in(key, s)`` for the whole tensor;
* ring: addition ``s`` of chunk ``k`` uses ``fold_in(fold_in(key, s), k)`` for the
  chunk's ``L`` elements;
* tree: pair ``j`` of level ``l`` uses ``fold_in(fold_in(key, l), j)``;
* fp32_then_round: the final rounding uses ``fold_in(key, 0)``.

**Dividing by the device count before or after.** A mean all-reduce divides by ``n``.
``divide="after"`` sends ``x_d``, sums, and rounds ``sum / n`` to ``fmt`` once.
``divide="before"`` (PyTorch DDP's pre-division, which keeps the sum from overflowing)
sends ``x_d / n``: every contribution shrinks by ``n`` *before* it is rounded to the
wire format, so small gradients fall below the format's smallest subnormal and are lost:
the underflow grows with the device count. :func:`wire_counts` counts it.

Two entry points share one implementation of every order:

* :func:`lp_all_reduce` is the collective, called inside :func:`jax.shard_map`;
* :func:`lp_reduce` reduces a stacked leading axis on one device, which simulates any
  number of "virtual" devices (64 devices on a laptop).

They give bitwise the same result for the same inputs, key and options.
:func:`data_parallel_grads` wraps the whole data-parallel gradient computation. One
pitfall it avoids: inside ``shard_map``, the gradient with respect to *replicated*
parameters comes back already summed over the devices (JAX's autodiff inserts a float32
``psum``), so a low-precision all-reduce after it would reduce a sum. The parameters are
first marked device-varying (``lax.pcast(params, axis, to="varying")``) so that each
device's gradient stays local until :func:`lp_all_reduce` combines them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fpsim.formats import Format, get_format
from fpsim.numerics._arith import add_round, check_exact_sum
from fpsim.rounding import FormatLike, as_float_array, check_rounding, quantize
from fpsim.stats import ValueCounts, value_counts

__all__ = [
    "DIVIDE_CHOICES",
    "REDUCE_ORDERS",
    "data_parallel_grads",
    "lp_all_reduce",
    "lp_reduce",
    "wire_counts",
]

ReduceOrder = Literal["sequential", "ring", "tree", "fp32_then_round"]
#: The valid ``order`` values of :func:`lp_reduce` and :func:`lp_all_reduce`.
REDUCE_ORDERS: tuple[str, ...] = get_args(ReduceOrder)
#: The valid ``divide`` values: when a mean divides by the device count.
DIVIDE_CHOICES: tuple[str, ...] = ("after", "before")


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------
def _check(fmt, wire_format, order, rounding, key, divide) -> tuple[Format, Format]:
    fmt = get_format(fmt)
    wire = fmt if wire_format is None else get_format(wire_format)
    if order not in REDUCE_ORDERS:
        raise ValueError(
            f"unknown reduction order {order!r}; valid: {', '.join(REDUCE_ORDERS)}"
        )
    check_rounding(rounding)
    if rounding == "stochastic" and key is None:
        raise ValueError(
            "rounding='stochastic' in the reduction needs key=...: the same key on every "
            "device (the per-addition keys are derived from it), a new one every step"
        )
    if divide not in DIVIDE_CHOICES:
        raise ValueError(
            f"unknown divide {divide!r}; valid: 'after' (sum, then divide by the device "
            "count) or 'before' (each device divides, then sends)"
        )
    if order != "fp32_then_round":
        check_exact_sum(fmt, rounding)
    return fmt, wire


def _key(key, *data):
    for d in data:
        key = jax.random.fold_in(key, d)
    return key


def _add(a, b, fmt: Format, rounding: str, key):
    """``fmt(a + b)``, the exact sum rounded once (round-to-odd in float32 first, so
    directed modes are right too: ``2048 + 2**-24`` rounded "up" to FP16 is 2050)."""
    return add_round(a, b, fmt, rounding, key if rounding == "stochastic" else None)


def _add_keyed(a, b, keys, fmt: Format, rounding: str):
    """:func:`_add` over a leading axis, with one key per row (stochastic rounding)."""
    if rounding != "stochastic":
        return _add(a, b, fmt, rounding, None)
    return jax.vmap(lambda x, y, k: _add(x, y, fmt, rounding, k))(a, b, keys)


# --------------------------------------------------------------------------------------
# The orders, on a stack of contributions (leading axis = device)
# --------------------------------------------------------------------------------------
def _sequential(c, fmt, rounding, key):
    def step(acc, x_s):
        x, s = x_s
        k = None if key is None else _key(key, s)
        return _add(acc, x, fmt, rounding, k), None

    n = c.shape[0]
    return lax.scan(step, c[0], (c[1:], jnp.arange(1, n)))[0]


def _fp32_then_round(c, fmt, rounding, key):
    total = lax.scan(lambda acc, x: (acc + x, None), c[0], c[1:])[0]
    k = None if key is None else _key(key, 0)
    return quantize(total, fmt, rounding, key=k if rounding == "stochastic" else None)


def _tree(c, fmt, rounding, key):
    level = 0
    while c.shape[0] > 1:
        npairs = c.shape[0] // 2
        keys = None
        if rounding == "stochastic":
            keys = jax.vmap(lambda j, lv=level: _key(key, lv, j))(jnp.arange(npairs))
        pairs = _add_keyed(
            c[0 : 2 * npairs : 2], c[1 : 2 * npairs : 2], keys, fmt, rounding
        )
        c = jnp.concatenate([pairs, c[2 * npairs :]]) if c.shape[0] % 2 else pairs
        level += 1
    return c[0]


def _chunks(x, n: int):
    """Flatten ``x`` row-major, pad with zeros to ``n * L`` and cut into ``(n, L)``."""
    flat = x.reshape(-1)
    length = -(-flat.size // n) if flat.size else 0
    flat = jnp.pad(flat, (0, n * length - flat.size))
    return flat.reshape(n, length)


def _ring_keys(key, s, n: int):
    return jax.vmap(lambda k: _key(key, s, k))(jnp.arange(n))


def _ring(c, fmt, rounding, key):
    n, shape = c.shape[0], c.shape[1:]
    pieces = jax.vmap(lambda x: _chunks(x, n))(c)  # (device, chunk, L)
    chunk = jnp.arange(n)
    # order[s, k]: the device whose piece of chunk k is added at step s
    order = (chunk[None, :] + 1 + jnp.arange(n)[:, None]) % n
    rotated = pieces[order, chunk[None, :]]  # (step, chunk, L)

    def step(acc, x_s):
        x, s = x_s
        keys = _ring_keys(key, s, n) if rounding == "stochastic" else None
        return _add_keyed(acc, x, keys, fmt, rounding), None

    acc = lax.scan(step, rotated[0], (rotated[1:], jnp.arange(1, n)))[0]
    size = 1
    for d in shape:
        size *= d
    return acc.reshape(-1)[:size].reshape(shape)


_ORDER_FNS = {
    "sequential": _sequential,
    "ring": _ring,
    "tree": _tree,
    "fp32_then_round": _fp32_then_round,
}


def _contribution(x, n: int, wire: Format, mean: bool, divide: str):
    """What one device sends: its value (divided by n first, if so) on the wire grid."""
    if mean and divide == "before":
        x = x / n
    return quantize(x, wire)


def _finish(total, n: int, fmt: Format, mean: bool, divide: str):
    if mean and divide == "after":
        return quantize(total / n, fmt)
    return total


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
def lp_reduce(
    xs: jax.typing.ArrayLike,
    fmt: FormatLike,
    *,
    axis: int = 0,
    order: ReduceOrder = "ring",
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
      order: ``"sequential"``, ``"ring"`` (default), ``"tree"`` or
        ``"fp32_then_round"``; see the module docstring.
      rounding: rounding mode of the additions (``"stochastic"`` needs ``key``). The
        wire quantization and the final division always round to nearest.
      key: random key for stochastic rounding; see the module docstring for how the
        per-addition keys are derived.
      mean: divide by ``n`` (a mean all-reduce) instead of returning the sum.
      divide: ``"after"`` (sum, then divide) or ``"before"`` (each device divides its
        value by ``n`` before rounding it to the wire format). Only with ``mean``.
      wire_format: the format contributions are sent in; default ``fmt``.

    Returns:
      float32 array of ``xs``'s shape without ``axis``, on ``fmt``'s grid (for ``n > 1``
      or ``mean``; a single device's value is returned as sent).

    Example:
      >>> import fpsim.comm as comm, jax.numpy as jnp
      >>> g = jnp.full((8, 1), 2.0**-24)  # 8 devices, each FP16's smallest subnormal
      >>> float(comm.lp_reduce(g, "fp16", mean=True, divide="after")[0]) == 2.0**-24
      True
      >>> float(comm.lp_reduce(g, "fp16", mean=True, divide="before")[0])  # underflow
      0.0
    """
    fmt, wire = _check(fmt, wire_format, order, rounding, key, divide)
    c = jnp.moveaxis(as_float_array(xs, wire), axis, 0)
    if c.shape[0] == 0:
        raise ValueError("lp_reduce needs at least one device along axis (got size 0)")
    if rounding != "stochastic":
        key = None
    return _reduce_stack(c, key, fmt, wire, order, rounding, bool(mean), divide)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7))
def _reduce_stack(c, key, fmt, wire, order, rounding, mean, divide):
    n = c.shape[0]
    c = _contribution(c, n, wire, mean, divide)
    total = c[0] if n == 1 else _ORDER_FNS[order](c, fmt, rounding, key)
    return _finish(total, n, fmt, mean, divide)


def _ring_collective(c, axis_name, n: int, fmt: Format, rounding: str, key):
    """The ring all-reduce with real ``ppermute`` steps (see the module docstring).

    Device ``d`` starts with its piece of chunk ``d - 1``; at step ``s`` it receives from
    ``d - 1`` the partial sum of chunk ``k = d - 1 - s`` and adds its own piece. After
    ``n - 1`` steps it owns the finished chunk ``d``; an all-gather shares them.
    """
    d = lax.axis_index(axis_name)
    pieces = _chunks(c, n)
    acc = pieces[(d - 1) % n]
    perm = [(i, (i + 1) % n) for i in range(n)]
    for s in range(1, n):
        acc = lax.ppermute(acc, axis_name, perm)
        k = (d - 1 - s) % n
        rk = _key(key, s, k) if rounding == "stochastic" else None
        acc = _add(acc, pieces[k], fmt, rounding, rk)
    full = lax.all_gather(acc, axis_name, to="invarying")  # row k: chunk k
    return full.reshape(-1)[: c.size].reshape(c.shape)


def lp_all_reduce(
    x: jax.Array,
    axis_name: str,
    fmt: FormatLike,
    *,
    order: ReduceOrder = "ring",
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
      x: this device's float32 array.
      axis_name: the mesh axis to reduce over.
      fmt, order, rounding, key, mean, divide, wire_format: as for :func:`lp_reduce`.
        ``key`` must be the same on every device (pass it replicated, ``P()``).

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
    fmt, wire = _check(fmt, wire_format, order, rounding, key, divide)
    x = as_float_array(x, wire)
    n = lax.axis_size(axis_name)
    c = _contribution(x, n, wire, mean, divide)
    if n == 1:
        total = lax.all_gather(c, axis_name, to="invarying")[0]
    elif order == "ring":
        total = _ring_collective(c, axis_name, n, fmt, rounding, key)
    else:
        stack = lax.all_gather(c, axis_name, to="invarying")
        total = _ORDER_FNS[order](stack, fmt, rounding, key)
    return _finish(total, n, fmt, mean, divide)


def wire_counts(
    xs: jax.typing.ArrayLike,
    wire_format: FormatLike,
    *,
    axis: int = 0,
    divide: str = "after",
) -> ValueCounts:
    """How the contributions of a mean all-reduce fare on the wire.

    With ``divide="before"`` each device sends ``x / n``, so the classification is of
    the divided values: the ``underflow`` count is how many nonzero gradient values
    were lost before any addition happened. With ``divide="after"`` the values are sent
    as they are. Compare the two at growing ``n`` to see pre-division's cost.

    Args:
      xs: the per-device values stacked along ``axis`` (``n = xs.shape[axis]``).
      wire_format: the format they are sent in.
      axis: the device axis.
      divide: ``"after"`` or ``"before"``.

    Returns:
      :class:`fpsim.ValueCounts` over all ``n`` contributions.
    """
    wire = get_format(wire_format)
    if divide not in DIVIDE_CHOICES:
        raise ValueError(f"unknown divide {divide!r}; valid: {', '.join(DIVIDE_CHOICES)}")
    x = as_float_array(xs, wire)
    n = x.shape[axis]
    return value_counts(x / n if divide == "before" else x, wire)


def data_parallel_grads(
    loss_fn: Callable,
    mesh: Mesh,
    fmt: FormatLike,
    *,
    axis_name: str | None = None,
    order: ReduceOrder = "ring",
    rounding: str = "nearest",
    divide: str = "after",
    wire_format: FormatLike | None = None,
) -> Callable:
    """Data-parallel ``value_and_grad`` whose gradient all-reduce runs in ``fmt``.

    Returns ``step_grads(params, batch, key=None) -> (loss, grads)``, jitted. Each
    device evaluates ``jax.value_and_grad(loss_fn)(params, shard)`` on its shard of the
    batch (every leaf of ``batch`` is split along its leading axis over ``axis_name``),
    then every gradient leaf goes through :func:`lp_all_reduce` with ``mean=True``.
    ``grads`` is the mean gradient, replicated, on ``fmt``'s grid; ``loss`` is the mean
    of the per-device losses (float32 ``pmean``). Use it with any params pytree and any
    optax optimizer::

        grads_fn = data_parallel_grads(loss_fn, jax.make_mesh((4,), ("data",)), "fp16")
        loss, grads = grads_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)

    Args:
      loss_fn: ``loss_fn(params, batch_shard) -> scalar``, the mean loss of a shard.
      mesh: the device mesh.
      fmt: the reduction format (see :func:`lp_reduce`).
      axis_name: the mesh axis the batch is split over; default the mesh's only axis.
      order, rounding, divide, wire_format: as for :func:`lp_reduce`. With
        stochastic rounding pass a new ``key`` every step; gradient leaf ``i`` (in
        ``jax.tree_util`` order) uses ``fold_in(key, i)``.

    Returns:
      The jitted function ``step_grads(params, batch, key=None)``.
    """
    # the key comes per call (checked in step_grads); a placeholder passes the check
    fmt, _ = _check(fmt, wire_format, order, rounding, "per call", divide)
    if axis_name is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(
                f"the mesh has axes {mesh.axis_names}; pass axis_name= to choose the "
                "data-parallel one"
            )
        axis_name = mesh.axis_names[0]
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"axis_name {axis_name!r} is not a mesh axis; valid: {mesh.axis_names}"
        )
    n = mesh.shape[axis_name]
    opts = dict(order=order, rounding=rounding, divide=divide, wire_format=wire_format)

    def per_device(params, batch, key):
        # params arrive replicated (device-invariant); the gradient of an invariant
        # input would come back already psum-ed in float32 by shard_map's autodiff.
        # Marking them varying keeps each device's gradient local, for lp_all_reduce.
        local = lax.pcast(params, axis_name, to="varying")
        loss, grads = jax.value_and_grad(loss_fn)(local, batch)
        leaves, treedef = jax.tree_util.tree_flatten(grads)
        keys = [None if key is None else _key(key, i) for i in range(len(leaves))]
        reduced = [
            lp_all_reduce(g, axis_name, fmt, key=k, mean=True, **opts)
            for g, k in zip(leaves, keys, strict=True)
        ]
        return lax.pmean(loss, axis_name), jax.tree_util.tree_unflatten(treedef, reduced)

    def with_key(params, batch, key):
        return per_device(params, batch, key)

    def without_key(params, batch):
        return per_device(params, batch, None)

    sharded_key = jax.jit(
        jax.shard_map(
            with_key, mesh=mesh, in_specs=(P(), P(axis_name), P()), out_specs=(P(), P())
        )  # fmt: skip
    )
    sharded = jax.jit(
        jax.shard_map(
            without_key, mesh=mesh, in_specs=(P(), P(axis_name)), out_specs=(P(), P())
        )  # fmt: skip
    )

    def step_grads(params, batch, key=None):
        for leaf in jax.tree_util.tree_leaves(batch):
            if leaf.shape[0] % n:
                raise ValueError(
                    f"the batch's leading axis ({leaf.shape[0]}) must divide evenly over "
                    f"the {n} devices of mesh axis {axis_name!r}"
                )
        # place the inputs as the shard_map expects (needed for meshes with Explicit
        # axes, such as jax.make_mesh's default; a no-op when they already are)
        params = jax.device_put(params, NamedSharding(mesh, P()))
        batch = jax.device_put(batch, NamedSharding(mesh, P(axis_name)))
        if rounding == "stochastic":
            if key is None:
                raise ValueError("rounding='stochastic' needs step_grads(..., key=...)")
            return sharded_key(params, batch, key)
        return sharded(params, batch)

    return step_grads
