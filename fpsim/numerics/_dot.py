"""Dot and matrix products with four formats: inputs, products, accumulator, output.

A hardware dot product unit (a tensor core, an FP8 MMA) does three things, each in its
own precision:

1. reads the operands, stored in the *input* format (FP16, BF16, E4M3, ...);
2. multiplies pairs: the *product* format. Two ``p``-bit significands multiply to at
   most ``2p`` bits, so the product of two FP16 values (p = 11) is exact in float32
   (24 bits), as long as its exponent stays in float32's normal range. BF16 products
   can leave it: BF16 has float32's exponent range, so ``2**-100 * 2**-100``
   underflows (and, on CPU, float32 subnormal products are flushed to zero);
3. adds the products into an *accumulator*: FP32 on most tensor cores, FP16 on some
   older or cheaper paths, in an order fixed by the hardware (see ``_accumulate``).

The result is finally rounded to the *output* format. ``lp_dot_general`` simulates all
four roundings bit-exactly, with ``lax.dot_general``'s dimension numbers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from fpsim import _bits, _keys
from fpsim.arith import round_to
from fpsim.formats import FP32, Format, get_format
from fpsim.numerics._accumulate import (
    Order,
    check_reduction,
    reduce_terms,
    reduction_key,
    resolve_order,
)
from fpsim.numerics._operands import canonical_operands
from fpsim.numerics._tensor_core import AccumulatorModel, get_accumulator, tc_dot_general
from fpsim.rounding import FormatLike, as_float_array, check_rounding


def _fmt(f: FormatLike | None) -> Format | None:
    return None if f is None else get_format(f)


def lp_dot_general(
    lhs: jax.typing.ArrayLike,
    rhs: jax.typing.ArrayLike,
    dimension_numbers,
    *,
    inputs: FormatLike | None = None,
    products: FormatLike | None = None,
    accum: FormatLike | None = None,
    output: FormatLike | None = None,
    order: Order | None = None,
    chunk: int | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    accumulator: str | AccumulatorModel | None = None,
) -> jax.Array:
    """``lax.dot_general`` with simulated input, product, accumulator and output formats.

    Args:
      lhs: and ``rhs``: floating-point operands.
      dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch,
        rhs_batch))`` as for ``lax.dot_general``; the output is batch dims, then lhs
        free dims, then rhs free dims.
      inputs: format the operands are rounded to first (None: as given).
      products: format each product is rounded to (None: kept as the carrier computes
        it, exact in float32 for inputs of at most 12 significant bits, away from
        under/overflow). Product ``i`` of the contraction rounds with its own key.
      accum: the accumulator's format (None: FP32).
      output: format of the result (None: the accumulator's value).
      order: accumulation order (see :func:`fpsim.lp_sum`); default ``"native"`` (XLA's
        dot) for an accumulator that holds every carrier value (FP32 on float32 data)
        without a product format, else ``"sequential"``. ``"native"`` with a narrower
        accumulator is XLA's dot rounded once to it.
      chunk: chunk length for ``order="chunked"`` (None: 64).
      rounding: rounding mode of the products and the accumulation.
      key: random key, for stochastic rounding.
      accumulator: a tensor-core accumulator model (:class:`fpsim.AccumulatorModel`
        or a preset name such as ``"hopper_fp8_promote128"``; see
        :func:`fpsim.tc_dot_general`): exact products added ``group_size`` at a time,
        aligned to the group's largest exponent and truncated to the model's bits.
        The model fixes the products (exact), the accumulator's format, its roundings
        and its order, so ``products``, ``accum``, ``order``, ``chunk``, ``rounding``
        and ``key`` cannot be given with it; ``inputs`` is required (at most 12
        significant bits) and ``output`` still rounds the result.

    Returns:
      float32 array (float64 for float64 operands under x64). Memory: sequential,
      chunked and Kahan orders hold ``B*M*N`` (times the number of chunks) values at a
      time; pairwise about ``(32 + K/16)*B*M*N`` (blocks of 16 products and the block
      sums), but all ``B*M*K*N`` products with stochastic rounding, whose random
      bits are drawn a whole tree level at a time.
    """
    inputs, products, output = _fmt(inputs), _fmt(products), _fmt(output)
    if accumulator is not None:
        return _tensor_core_dot(lhs, rhs, dimension_numbers, accumulator, inputs, output,
                                products=products, accum=accum, order=order, chunk=chunk,
                                rounding=rounding, key=key)  # fmt: skip
    accum = FP32 if accum is None else get_format(accum)
    chunk = 64 if chunk is None else chunk
    check_rounding(rounding)
    lhs, rhs = as_float_array(lhs, inputs), as_float_array(rhs, inputs)
    dtype = jnp.result_type(lhs, rhs)
    lhs, rhs = lhs.astype(dtype), rhs.astype(dtype)
    c = _bits.carrier_of(dtype)
    if order is None and products is not None:
        order = "sequential"
    order = resolve_order(order, accum, c, rounding=rounding)
    if order == "native" and products is not None:
        raise ValueError(
            f"order='native' is XLA's dot, which cannot round each product to "
            f"{products.name}; choose 'sequential', 'pairwise', 'chunked' or 'kahan'"
        )
    check_reduction(accum, order, chunk, rounding, key, c)
    key = _keys.canonical_key(key) if rounding == "stochastic" else None
    dims = jax.tree_util.tree_map(int, dimension_numbers)
    dims = tuple(tuple(tuple(d) for d in pair) for pair in dims)
    return _lp_dot_general(lhs, rhs, key, dims, inputs, products, accum, output, order,
                           chunk, rounding)  # fmt: skip


def _tensor_core_dot(lhs, rhs, dimension_numbers, accumulator, inputs, output,
                     **others):  # fmt: skip
    """``lp_dot_general`` with a tensor-core model: check the combination, then
    :func:`fpsim.tc_dot_general` and the output rounding."""
    model = get_accumulator(accumulator)
    given = [
        k for k, v in others.items() if v is not None and (k, v) != ("rounding", "nearest")
    ]
    if given:
        raise ValueError(
            f"accumulator={model.name!r} is a whole accumulation model: it fixes the "
            f"products (exact), the accumulator's format ({model.accumulator.name}), its "
            f"roundings and its order, so {', '.join(given)} cannot be given with it; "
            "drop them, or drop accumulator= to choose a format and an order instead"
        )
    if inputs is None:
        raise ValueError(
            f"accumulator={model.name!r} needs inputs=... (the operands' format, at most "
            "12 significant bits: fp16, bf16, tf32, e4m3, e5m2, ...)"
        )
    lhs, rhs = as_float_array(lhs), as_float_array(rhs)
    dtype = jnp.result_type(lhs, rhs)
    out = tc_dot_general(lhs.astype(jnp.float32), rhs.astype(jnp.float32),
                         dimension_numbers, model, inputs=inputs)  # fmt: skip
    return round_to(out, output).astype(dtype)


@functools.partial(jax.jit, static_argnums=tuple(range(3, 11)))
def _lp_dot_general(lhs, rhs, key, dimension_numbers, inputs, products, accum, output,
                    order, chunk, rounding):  # fmt: skip
    # compiled once per configuration: eagerly, every scan step would dispatch alone
    lhs, rhs = round_to(lhs, inputs), round_to(rhs, inputs)
    if order == "native":
        out = lax.dot_general(lhs, rhs, dimension_numbers,
                              precision=lax.Precision.HIGHEST)  # fmt: skip
        out = round_to(out, accum, rounding, reduction_key(key, "native"))
        return round_to(out, output)
    a, b, out_shape = canonical_operands(lhs, rhs, dimension_numbers)

    def term(ab, i):  # the rounded products of contraction index i
        ak, bk = ab
        k = reduction_key(key, "products", i)
        return round_to(ak[..., :, None] * bk[..., None, :], products, rounding, k)

    def reduce(a):  # (B, m, K) rows of the lhs against all of b
        xs = (jnp.moveaxis(a, 2, 0), jnp.moveaxis(b, 1, 0))  # (K, B, m) and (K, B, N)
        init = jnp.zeros((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
        return reduce_terms(xs, term, a.shape[2], init, accum, order, chunk, rounding, key)

    rows = _pairwise_rows(order, key, *a.shape, b.shape[2])
    if rows is None:
        out = reduce(a)
    else:  # tiles of rows, so that a tile's pairwise blocks stay in cache
        bsz, m, k = a.shape
        tiles = -(-m // rows)
        padded = jnp.pad(a, ((0, 0), (0, tiles * rows - m), (0, 0)))
        parts = jnp.moveaxis(padded.reshape(bsz, tiles, rows, k), 1, 0)
        out = jnp.moveaxis(lax.map(reduce, parts), 0, 1).reshape(bsz, tiles * rows, -1)
        out = out[:, :m]
    return round_to(out.reshape(out_shape), output)


#: Bytes of products a tile of the pairwise tree may hold (a block of 16 per element).
PAIRWISE_TILE_BYTES = 1 << 20


def _pairwise_rows(order: str, key, bsz: int, m: int, k: int, n: int) -> int | None:
    """Rows of the lhs per tile of a pairwise product, or None for no tiling.

    Each output element's tree is its own, so cutting the rows into tiles changes no
    bit; stochastic rounding draws a level's bits for the whole output, so it is not
    tiled."""
    if order != "pairwise" or key is not None:
        return None
    rows = max(1, PAIRWISE_TILE_BYTES // (16 * 4 * bsz * n))
    return None if rows >= m else rows


def lp_dot(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike, **spec) -> jax.Array:
    """Dot product of vectors along the last axis, in simulated low precision.

    ``a`` and ``b`` have the same shape ``(..., n)``; leading axes are batch axes.
    Keyword arguments are those of :func:`lp_dot_general`.

    Example:
      >>> import fpsim, jax.numpy as jnp
      >>> x = jnp.ones(5000)  # 1.0 * 1.0 summed 5000 times, in an FP16 accumulator
      >>> float(fpsim.lp_dot(x, x, inputs="fp16", accum="fp16"))
      2048.0
      >>> float(fpsim.lp_dot(x, x, inputs="fp16", accum="fp16", order="chunked"))
      5000.0
    """
    a, b = as_float_array(a), as_float_array(b)
    if a.shape != b.shape or a.ndim == 0:
        raise ValueError(f"lp_dot needs two arrays of one shape (..., n), got {a.shape}, "
                         f"{b.shape}")  # fmt: skip
    batch = tuple(range(a.ndim - 1))
    return lp_dot_general(a, b, (((a.ndim - 1,), (a.ndim - 1,)), (batch, batch)), **spec)


def lp_matmul(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike, **spec) -> jax.Array:
    """Matrix product ``a @ b`` in simulated low precision.

    ``a`` is ``(..., m, k)``; ``b`` is ``(k, n)``, or ``(..., k, n)`` with the same
    leading (batch) shape as ``a``. Keyword arguments are those of
    :func:`lp_dot_general`: for instance ``inputs="fp16", accum="fp16",
    order="chunked", chunk=32``, or a tensor core's accumulator model.

    Example:
      >>> import fpsim, jax.numpy as jnp
      >>> a = jnp.full((1, 4096), 1.125)  # each product 1.265625, exact sum 5184
      >>> float(fpsim.lp_matmul(a, a.T, inputs="e4m3", accumulator="hopper_fp8")[0, 0])
      4923.5
    """
    a, b = as_float_array(a), as_float_array(b)
    if a.ndim < 2 or b.ndim < 2 or (b.ndim > 2 and b.shape[:-2] != a.shape[:-2]):
        raise ValueError(f"lp_matmul needs (..., m, k) @ (k, n) or (..., k, n) with the "
                         f"same batch shape, got {a.shape} @ {b.shape}")  # fmt: skip
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"contracting sizes differ: {a.shape} @ {b.shape}")
    if b.ndim == 2:
        dn = (((a.ndim - 1,), (0,)), ((), ()))
    else:
        batch = tuple(range(a.ndim - 2))
        dn = (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch))
    return lp_dot_general(a, b, dn, **spec)
