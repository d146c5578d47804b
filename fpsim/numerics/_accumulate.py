"""Sums and dot products accumulated in a low-precision format, in a chosen order.

A sum ``s = x_0 + x_1 + ... + x_{n-1}`` on hardware is a sequence of roundings, and the
order of the additions decides how much the roundings cost:

``"sequential"``
    ``s_{i+1} = fmt(s_i + x_i)``: one rounding after every addition, the naive loop.
    Its error bound grows like ``n * u`` (u = unit roundoff). Worse, once ``|s|`` is
    large, an addend smaller than half an ulp of ``s`` is lost entirely: *swamping*.
    Adding 1.0 to an FP16 accumulator stops at 2048, where the ulp becomes 2.
``"pairwise"``
    Add neighbours, then neighbours of the results, as a balanced tree:
    ``log2(n)`` roundings on any path, error bound ``~ log2(n) * u``.
``"chunked"``
    Wang et al. (2018), "Training Deep Neural Networks with 8-bit Floating Point
    Numbers": add sequentially inside chunks of ``chunk`` consecutive terms, then add
    the chunk sums sequentially. Bound ``~ (chunk + n / chunk) * u``; cheap in hardware.
``"kahan"``
    Compensated summation: a second accumulator ``c`` catches the low part that each
    addition loses (``c = (t - s) - y``) and feeds it back into the next addend. The
    error bound no longer grows with n: ``~ 2u + O(n u**2)``.
``"native"``
    XLA's own float32 reduction or dot (fast; its order is the compiler's business).
    Only with a float32 accumulator; the default there.

Every rounding goes through :func:`fpsim.quantize`, so each step is bit-exact.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax import lax

from fpsim.formats import FP16, Format, get_format
from fpsim.numerics._arith import add_round, check_exact_sum, is_float32_format, round_to
from fpsim.rounding import FormatLike, as_float_array, check_rounding

Order = Literal["native", "sequential", "pairwise", "chunked", "kahan"]
ORDERS: tuple[str, ...] = get_args(Order)


def _check(accum: Format, order: str | None, chunk: int, rounding: str, key) -> str:
    check_rounding(rounding)
    if order is None:
        order = "native" if is_float32_format(accum) else "sequential"
    if order not in ORDERS:
        valid = ", ".join(ORDERS)
        raise ValueError(f"unknown accumulation order {order!r}; valid: {valid}")
    if order == "native" and not is_float32_format(accum):
        raise ValueError(
            f"order='native' is XLA's float32 reduction; with accum={accum.name} choose "
            "'sequential', 'pairwise', 'chunked' or 'kahan'"
        )
    if not (isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if rounding == "stochastic" and key is None:
        raise ValueError("stochastic rounding of the accumulator needs key=...")
    check_exact_sum(accum, rounding)  # e.g. a float32 accumulator rounding "up"
    return order


def _key(key, stage: int, i=None):
    if key is None:
        return None
    k = jax.random.fold_in(key, stage)
    return k if i is None else jax.random.fold_in(k, i)


def _scan_sum(xs, term, init, fmt, rounding, key, stage):
    """Sequential: ``acc = fmt(acc + term(x_i))`` over the leading axis of ``xs``."""
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]

    def step(acc, x_i):
        x, i = x_i
        return add_round(acc, term(x), fmt, rounding, _key(key, stage, i)), None

    return lax.scan(step, init, (xs, jnp.arange(n)))[0]


def _scan_kahan(xs, term, init, fmt, rounding, key):
    """Kahan: ``y = x - c; t = s + y; c = (t - s) - y; s = t``, each rounded to fmt."""
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]

    def step(carry, x_i):
        s, c = carry
        x, i = x_i
        k = [_key(key, 10 + j, i) for j in range(4)]
        y = add_round(term(x), -c, fmt, rounding, k[0])
        t = add_round(s, y, fmt, rounding, k[1])
        c = add_round(add_round(t, -s, fmt, rounding, k[2]), -y, fmt, rounding, k[3])
        return (t, c), None

    return lax.scan(step, (init, jnp.zeros_like(init)), (xs, jnp.arange(n)))[0][0]


def _pairwise(terms, fmt, rounding, key):
    """Balanced tree over the leading axis; an odd last element waits one level."""
    level = 0
    while terms.shape[0] > 1:
        n2 = terms.shape[0] // 2 * 2
        pairs = add_round(terms[0:n2:2], terms[1:n2:2], fmt, rounding, _key(key, 20, level))
        terms = jnp.concatenate([pairs, terms[n2:]]) if n2 < terms.shape[0] else pairs
        level += 1
    return terms[0]


def _accumulate(xs, term, n: int, init, fmt: Format, order: str, chunk: int, rounding,
                key):  # fmt: skip
    """Sum ``term(x)`` over the leading axis (length n) of the pytree ``xs`` in ``fmt``.

    ``term`` maps a slice of ``xs`` (leading axis removed, or kept as a batch axis) to
    the addend; for a dot product it forms the rounded products lazily, so sequential
    and chunked orders never hold all ``n`` products at once.
    """
    if n == 0:
        return init
    if order == "sequential":
        return _scan_sum(xs, term, init, fmt, rounding, key, 0)
    if order == "kahan":
        return _scan_kahan(xs, term, init, fmt, rounding, key)
    if order == "pairwise":
        return _pairwise(term(xs), fmt, rounding, key)
    # chunked: full chunks in parallel (scan over the position inside the chunk) ...
    nfull, tail = divmod(n, chunk)
    sums = []
    if nfull:
        main = jax.tree_util.tree_map(
            lambda a: jnp.swapaxes(a[: nfull * chunk].reshape(nfull, chunk, *a.shape[1:]),
                                   0, 1), xs)  # fmt: skip
        init_b = jnp.broadcast_to(init, (nfull, *init.shape))
        sums.append(_scan_sum(main, term, init_b, fmt, rounding, key, 1))
    if tail:  # ... and the short last chunk
        rest = jax.tree_util.tree_map(lambda a: a[nfull * chunk :], xs)
        sums.append(_scan_sum(rest, term, init, fmt, rounding, key, 2)[None])
    chunk_sums = jnp.concatenate(sums) if len(sums) > 1 else sums[0]
    return _scan_sum(chunk_sums, lambda s: s, init, fmt, rounding, key, 3)


def lp_sum(
    x: jax.typing.ArrayLike,
    axis: int = -1,
    *,
    accum: FormatLike = FP16,
    order: Order | None = None,
    chunk: int = 64,
    rounding: str = "nearest",
    key: jax.Array | None = None,
) -> jax.Array:
    """Sum along ``axis`` with an accumulator in ``accum``, in the given order.

    The values are first rounded to ``accum`` (as they would be stored), then added
    with one rounding to ``accum`` after every addition, in ``order``.

    Args:
      x: floating-point array.
      axis: the axis to reduce (one axis).
      accum: the accumulator's format.
      order: ``"sequential"`` (default for narrow accumulators), ``"pairwise"``,
        ``"chunked"``, ``"kahan"`` or ``"native"`` (XLA's reduction; float32 only, and
        the default for an FP32 accumulator). See the module docstring.
      chunk: chunk length for ``"chunked"``.
      rounding: rounding mode of every addition; ``"stochastic"`` needs ``key``.
      key: random key for stochastic rounding (each addition gets its own).

    Returns:
      float32 array with ``axis`` removed, on ``accum``'s grid.

    Example:
      >>> import fpsim, jax.numpy as jnp
      >>> ones = jnp.ones(4096)
      >>> float(fpsim.lp_sum(ones, accum="fp16"))  # swamping: 2048 + 1 rounds to 2048
      2048.0
      >>> float(fpsim.lp_sum(ones, accum="fp16", order="kahan"))
      4096.0
    """
    accum = get_format(accum)
    order = _check(accum, order, chunk, rounding, key)
    x = jnp.moveaxis(as_float_array(x, accum), axis, 0)
    return _lp_sum(x, key, accum, order, chunk, rounding)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _lp_sum(x, key, accum: Format, order: str, chunk: int, rounding: str):
    # compiled once per (shape, format, order): eagerly, the scans and the pairwise
    # tree would otherwise dispatch one small computation per step
    x = round_to(x, accum)
    if order == "native":
        return jnp.sum(x, axis=0)
    init = jnp.zeros(x.shape[1:], x.dtype)
    return _accumulate(x, lambda t: t, x.shape[0], init, accum, order, chunk, rounding, key)
