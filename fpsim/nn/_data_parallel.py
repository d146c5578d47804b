"""Data-parallel gradients whose all-reduce runs in a low-precision format.

One pitfall this avoids: inside ``shard_map``, the gradient with respect to
*replicated* parameters comes back already summed over the devices (JAX's autodiff
inserts a float32 ``psum``), so a low-precision all-reduce after it would reduce a sum.
The parameters are first marked device-varying (``lax.pcast(params, axis, to=
"varying")``) so that each device's gradient stays local until
:func:`fpsim.comm.lp_all_reduce` combines them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from fpsim import _keys
from fpsim.comm import lp_all_reduce
from fpsim.comm._checks import check_args
from fpsim.numerics._accumulate import Order
from fpsim.rounding import FormatLike


def _check_batch(batch, n: int, axis_name: str) -> None:
    """Every leaf an array with one shared leading (batch) size that ``n`` divides,
    with errors in the style of ``jax.vmap``'s."""
    leaves = jax.tree_util.tree_leaves_with_path(batch)
    if not leaves:
        raise ValueError("the batch has no leaves: pass arrays with a leading batch axis")
    sizes = {}
    for path, leaf in leaves:
        name = "batch" + jax.tree_util.keystr(path)
        if not (hasattr(leaf, "shape") or isinstance(leaf, int | float | np.number)):
            raise TypeError(
                f"{name} is a {type(leaf).__name__}; every leaf of the batch must be an "
                "array with a leading batch axis"
            )
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise ValueError(
                f"{name} is a scalar (shape ()): every leaf of the batch needs a leading "
                f"batch axis to split over the {n} devices of mesh axis {axis_name!r} "
                "(lists of numbers count as scalars: pass np.asarray(...))"
            )
        sizes[name] = shape[0]
    if len(set(sizes.values())) > 1:
        listing = "; ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(
            f"the batch's leaves have different leading (batch) sizes ({listing}); they "
            "must share one batch axis"
        )
    size = next(iter(sizes.values()))
    if size % n:
        raise ValueError(
            f"the batch's leading axis ({size}) must divide evenly over the {n} devices "
            f"of mesh axis {axis_name!r}"
        )


def data_parallel_grads(
    loss_fn: Callable,
    mesh: Mesh,
    fmt: FormatLike,
    *,
    axis_name: str | None = None,
    order: Order = "ring",
    rounding: str = "nearest",
    divide: str = "after",
    wire_format: FormatLike | None = None,
) -> Callable:
    """Data-parallel ``value_and_grad`` whose gradient all-reduce runs in ``fmt``.

    Returns ``step_grads(params, batch, key=None) -> (loss, grads)``, jitted. Each
    device evaluates ``jax.value_and_grad(loss_fn)(params, shard)`` on its shard of the
    batch (every leaf of ``batch`` is split along its leading axis over ``axis_name``),
    then every gradient leaf goes through :func:`fpsim.comm.lp_all_reduce` with
    ``mean=True``. ``grads`` is the mean gradient, replicated, on ``fmt``'s grid;
    ``loss`` is the mean of the per-device losses (float32 ``pmean``). Use it with any
    params pytree and any optax optimizer::

        grads_fn = data_parallel_grads(loss_fn, jax.make_mesh((4,), ("data",)), "fp16")
        loss, grads = grads_fn(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)

    Args:
      loss_fn: ``loss_fn(params, batch_shard) -> scalar``, the mean loss of a shard.
      mesh: the device mesh.
      fmt: the reduction format (see :func:`fpsim.comm.lp_reduce`).
      axis_name: the mesh axis the batch is split over; default the mesh's only axis.
      order, rounding, divide, wire_format: as for :func:`fpsim.comm.lp_reduce`. With
        stochastic rounding pass a new ``key`` every step; gradient leaf ``i`` (in
        ``jax.tree_util`` order) uses ``fpsim._keys.derive(key, i)``.

    Returns:
      The jitted function ``step_grads(params, batch, key=None)``.

    Raises:
      ValueError: (from ``step_grads``) a batch leaf that is a scalar, leaves of
        different leading sizes, or a size the device count does not divide.
    """
    # the key comes per call (checked in step_grads); a placeholder passes the check
    fmt, _, order = check_args(fmt, wire_format, order, 64, rounding, "per call", divide)
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

        def reduce(g, k=None):
            return lp_all_reduce(g, axis_name, fmt, key=k, mean=True, **opts)

        if key is None:
            reduced = jax.tree_util.tree_map(reduce, grads)
        else:
            reduced = jax.tree_util.tree_map(reduce, grads, _keys.tree_keys(key, grads))
        return lax.pmean(loss, axis_name), reduced

    def with_key(params, batch, key):
        return per_device(params, batch, key)

    def without_key(params, batch):
        return per_device(params, batch, None)

    specs = dict(mesh=mesh, out_specs=(P(), P()))
    sharded_key = jax.jit(
        jax.shard_map(with_key, in_specs=(P(), P(axis_name), P()), **specs)
    )
    sharded = jax.jit(jax.shard_map(without_key, in_specs=(P(), P(axis_name)), **specs))

    def step_grads(params, batch, key=None):
        _check_batch(batch, n, axis_name)
        # place the inputs as the shard_map expects (needed for meshes with Explicit
        # axes, such as jax.make_mesh's default; a no-op when they already are)
        params = jax.device_put(params, NamedSharding(mesh, P()))
        batch = jax.device_put(batch, NamedSharding(mesh, P(axis_name)))
        if rounding == "stochastic":
            if key is None:
                raise ValueError("rounding='stochastic' needs step_grads(..., key=...)")
            return sharded_key(params, batch, _keys.canonical_key(key))
        return sharded(params, batch)

    return step_grads
