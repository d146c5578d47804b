"""Reductions in a low-precision format, in a chosen order: one vocabulary, one engine.

A sum ``s = x_0 + x_1 + ... + x_{n-1}`` on hardware is a sequence of roundings, and the
order of the additions decides how much the roundings cost. The same orders describe a
dot product unit adding its products, a sum over an axis, and an all-reduce adding the
contributions of ``n`` devices (:mod:`fpsim.comm`), so all of them share this module:

``"sequential"``
    ``s_{i+1} = fmt(s_i + x_i)``: one rounding after every addition, the naive loop (a
    chain through the devices, for an all-reduce). Its error bound grows like ``n * u``
    (u = unit roundoff). Worse, once ``|s|`` is large, an addend smaller than half an
    ulp of ``s`` is lost entirely: *swamping*. Adding 1.0 to an FP16 accumulator stops
    at 2048, where the ulp becomes 2.
``"pairwise"``
    Add neighbours, then neighbours of the results, as a balanced tree (a tree
    all-reduce); an odd last term waits a level. ``ceil(log2 n)`` roundings on any
    path, error bound ``~ log2(n) * u``.
``"chunked"``
    Wang et al. (2018), "Training Deep Neural Networks with 8-bit Floating Point
    Numbers": add sequentially inside chunks of ``chunk`` consecutive terms, then add
    the chunk sums sequentially. Bound ``~ (chunk + n / chunk) * u``; cheap in hardware.
``"kahan"``
    Compensated summation: a second accumulator ``c`` catches the low part that each
    addition loses (``c = (t - s) - y``) and feeds it back into the next addend. The
    error bound no longer grows with n: ``~ 2u + O(n u**2)``.
``"native"``
    XLA's own reduction (or dot) in the carrier (float32; float64 for float64 input
    under x64), in the compiler's order, then *one* rounding to the accumulator's
    format: exact-ish accumulation in a wide buffer. With an FP32 accumulator on
    float32 data the rounding is a no-op, and this is the default there.
``"ring"``
    NCCL's ring all-reduce, for :mod:`fpsim.comm` only: the other elements (flattened,
    row-major) are cut into ``n`` chunks of equal length (the last one padded) and
    chunk ``k`` is summed sequentially in the order ``x_{k+1}, x_{k+2}, ..., x_{k+n}``
    (indices mod ``n``): different elements are summed in different orders.

Every addition is the exact sum rounded once to ``fmt`` (:func:`fpsim.arith.add_round`),
so each step is bit-exact in every rounding mode.

**Keys.** With stochastic rounding every addition needs its own random bits. They are
derived from the one ``key`` by position, with :func:`fpsim._keys.derive`, and never
by device, so an all-reduce gives every device the same answer:
``reduction_key(key, stage, *indices)`` is ``derive(key, TAG[stage], *indices)``. The
addition that brings in term ``i`` of a sequential scan uses ``(stage, i)``; level
``l`` of the pairwise tree uses ``("pairwise", l)`` for the whole level; step ``s`` of
chunk ``k`` of the ring uses ``("ring", s, k)``; the one rounding of "native" uses
``("native",)``; Kahan's four roundings of term ``i`` use ``("kahan", i, j)``.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
from jax import lax

from fpsim import _bits, _keys
from fpsim.arith import add_round, check_exact_sum, covers, round_to
from fpsim.formats import FP16, Format, get_format
from fpsim.rounding import NATIVE_NEAREST, FormatLike, as_float_array, check_rounding

Order = Literal["native", "sequential", "pairwise", "chunked", "kahan", "ring"]
#: Every reduction order, of sums, dot products and all-reduces alike.
ORDERS: tuple[str, ...] = get_args(Order)
#: The orders of a reduction on one device (``"ring"`` needs devices: fpsim.comm).
SUM_ORDERS: tuple[str, ...] = tuple(o for o in ORDERS if o != "ring")
_RENAMED = {"tree": "pairwise", "fp32_then_round": "native"}
#: The first integer of the key path of each stage of a reduction (see the docstring).
TAGS = {"sequential": 0, "chunk": 1, "tail": 2, "chunks": 3, "kahan": 10,
        "pairwise": 20, "native": 30, "ring": 40, "products": 99}  # fmt: skip


def reduction_key(key, stage: str, *indices):
    """The key of one stage of a reduction: ``derive(key, TAGS[stage], *indices)``."""
    return None if key is None else _keys.derive(key, TAGS[stage], *indices)


def resolve_order(order: str | None, accum: Format, c: _bits.Carrier,
                  valid: tuple[str, ...] = SUM_ORDERS,
                  rounding: str = "nearest") -> str:  # fmt: skip
    """The order to use: the default for None, else ``order`` checked against ``valid``.

    The default is ``"native"`` where the carrier's own addition *is* the accumulator
    (round to nearest into a format that holds every carrier value), else
    ``"sequential"``.
    """
    if order is None:
        native = covers(accum, c) and rounding == "nearest"
        return "native" if native else "sequential"
    if order in _RENAMED:
        raise ValueError(
            f"order {order!r} is now called {_RENAMED[order]!r} (one vocabulary for every "
            f"reduction); valid: {', '.join(valid)}"
        )
    if order not in valid:
        hint = " ('ring' is the all-reduce's order: fpsim.comm)" if order == "ring" else ""
        raise ValueError(
            f"unknown reduction order {order!r}{hint}; valid: {', '.join(valid)}"
        )
    return order


def check_reduction(accum: Format, order: str, chunk: int, rounding: str, key,
                    c: _bits.Carrier) -> None:  # fmt: skip
    """Raise for a bad chunk, a missing key, or a sum that cannot be rounded exactly."""
    check_rounding(rounding)
    if not (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1):
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if rounding == "stochastic" and key is None:
        raise ValueError(
            "rounding='stochastic' in a reduction needs key=... (each addition derives "
            "its own key from it; use a new key every step)"
        )
    if order != "native":
        check_exact_sum(accum, rounding, c)
    elif rounding != "nearest" and covers(accum, c):  # the one rounding would do nothing
        raise ValueError(
            f"order='native' adds in the carrier (round to nearest); rounding={rounding!r} "
            f"into {accum.name}, which holds every carrier value, cannot be simulated "
            "exactly that way: choose a narrower accumulator or another order"
        )


def _take(xs, start, stop=None):
    return jax.tree_util.tree_map(lambda a: a[start:stop], xs)


def _all_terms(xs, term, n: int):
    """Every addend at once (leading axis n): for the orders that need them all."""
    return jax.vmap(term)(xs, jnp.arange(n))


def _scan(xs, term, init, n: int, fmt, rounding, key, stage: str, on_grid: bool = False):
    """Sequential: ``acc = fmt(acc + term(x_i, i))`` over the leading axis of ``xs``.

    ``init=None`` starts from the first term as it is (an all-reduce: device 0's value
    travels unrounded to device 1); an array (zeros, on every grid) starts there and
    rounds every term in. ``on_grid``: the terms are values of ``fmt`` already.
    """
    start = 0
    if init is None:
        init, start = term(jax.tree_util.tree_map(lambda a: a[0], xs), 0), 1
        on_grid = False  # the first term travels unrounded

    def step(acc, x_i):
        x, i = x_i
        k = reduction_key(key, stage, i)
        return add_round(acc, term(x, i), fmt, rounding, k, on_grid=on_grid), None

    return lax.scan(step, init, (_take(xs, start), jnp.arange(start, n)))[0]


def _kahan(xs, term, init, n: int, fmt, rounding, key):
    """Kahan: ``y = x - c; t = s + y; c = (t - s) - y; s = t``, each rounded to fmt.

    Only ``y`` adds a raw term; ``s``, ``y``, ``t`` and ``c`` are values of ``fmt``
    (``s`` from the second step on, when ``init`` is None), which makes the other three
    roundings cheap to nearest (:func:`fpsim.arith.add_round`'s ``on_grid``).
    """
    start, s_on_grid = 0, True
    if init is None:
        init, start = term(jax.tree_util.tree_map(lambda a: a[0], xs), 0), 1
        s_on_grid = False
    # s and c are values of fmt: held in float16 or bfloat16 where fmt is that type, the
    # two arrays the loop carries move half the bytes (exact: their NaNs are quiet)
    wide = init.dtype
    narrow = NATIVE_NEAREST.get(fmt.dtype_name) if wide == jnp.float32 else None
    store = narrow if narrow is not None and s_on_grid else wide

    def step(carry, x_i):
        s, c = (v.astype(wide) for v in carry)
        x, i = x_i
        k = [reduction_key(key, "kahan", i, j) for j in range(4)]
        y = add_round(term(x, i), -c, fmt, rounding, k[0])
        t = add_round(s, y, fmt, rounding, k[1], on_grid=s_on_grid)
        d = add_round(t, -s, fmt, rounding, k[2], on_grid=s_on_grid)
        c = add_round(d, -y, fmt, rounding, k[3], on_grid=True)
        return (t.astype(store), c.astype(store)), None

    carry = (init.astype(store), jnp.zeros(init.shape, store))
    out = lax.scan(step, carry, (_take(xs, start), jnp.arange(start, n)))[0][0]
    return out.astype(wide)


def _tree(terms, fmt, rounding, key, raw: str = "all", level: int = 0):
    """Balanced tree over the leading axis; an odd last element waits one level.

    ``raw`` says which elements are not values of ``fmt`` yet: ``"all"`` (raw terms),
    ``"last"`` (only the last one: a raw term that waited) or ``"none"``; sums of two
    values of ``fmt`` round cheaply (``add_round``'s ``on_grid``). Level ``l`` of the
    tree (counted from ``level``) rounds with the key ``("pairwise", l)``.
    """
    while terms.shape[0] > 1:
        n = terms.shape[0]
        n2 = n // 2 * 2
        a, b = terms[0:n2:2], terms[1:n2:2]
        k = reduction_key(key, "pairwise", level)
        if raw == "all":
            pairs = add_round(a, b, fmt, rounding, k)
        elif raw == "last" and n2 == n:  # the raw element meets its partner
            pairs = jnp.concatenate([
                add_round(a[:-1], b[:-1], fmt, rounding, k, on_grid=True),
                add_round(a[-1:], b[-1:], fmt, rounding, k),
            ])  # fmt: skip
        else:
            pairs = add_round(a, b, fmt, rounding, k, on_grid=True)
        raw = "last" if raw != "none" and n2 < n else "none"
        terms = jnp.concatenate([pairs, terms[n2:]]) if n2 < n else pairs
        level += 1
    return terms[0]


#: log2 of the block of terms whose pairwise subtree is summed at a time (below).
PAIRWISE_BLOCK_LOG2 = 4


def _pairwise(xs, term, n: int, fmt, rounding, key, on_grid: bool = False):
    """The pairwise tree of ``term(x_i, i)``, holding few terms at a time.

    Element ``i`` of level ``l`` of the tree is the subtree of terms ``[i * 2**l, (i +
    1) * 2**l)`` (cut at ``n``), so the first ``j`` levels are independent trees over
    blocks of ``B = 2**j`` consecutive terms (the short last block included): a scan
    forms each block's terms and sums them, and the tree goes on over the block sums.
    Only ``B`` terms are alive at once instead of all ``n``, the same bits. Stochastic
    rounding draws each level's random bits for the whole level at once, so it builds
    every term, as the keys were defined.
    """
    raw = "none" if on_grid else "all"
    if key is not None:
        return _tree(_all_terms(xs, term, n), fmt, rounding, key, raw)
    j = PAIRWISE_BLOCK_LOG2
    block = 1 << j
    nfull = n // block
    if nfull < 2:
        return _tree(_all_terms(xs, term, n), fmt, rounding, key, raw)
    main = jax.tree_util.tree_map(
        lambda a: a[: nfull * block].reshape(nfull, block, *a.shape[1:]), xs)  # fmt: skip

    def block_sum(_, xb_q):
        xb, q = xb_q
        terms = jax.vmap(term)(xb, q * block + jnp.arange(block))
        return None, _tree(terms, fmt, rounding, None, raw)

    sums = [lax.scan(block_sum, None, (main, jnp.arange(nfull)))[1]]
    tail = n - nfull * block
    if tail:  # the short last block, summed by the same rule
        rest = _all_terms(_take(xs, nfull * block), lambda x, i: term(x, i + nfull * block),
                          tail)  # fmt: skip
        sums.append(_tree(rest, fmt, rounding, None, raw)[None])
    top_raw = "last" if tail == 1 and raw == "all" else "none"
    top = jnp.concatenate(sums) if tail else sums[0]
    return _tree(top, fmt, rounding, None, top_raw, j)


def ring_pieces(x, n: int):
    """Flatten ``x`` row-major, pad with zeros to ``n * L`` and cut into ``(n, L)``."""
    flat = x.reshape(-1)
    length = -(-flat.size // n) if flat.size else 0
    return jnp.pad(flat, (0, n * length - flat.size)).reshape(n, length)


def ring_add(acc, piece, s, k, fmt, rounding, key):
    """Step ``s`` of the ring for chunk ``k``: ``fmt(acc + piece)`` with its own key."""
    return add_round(acc, piece, fmt, rounding, reduction_key(key, "ring", s, k))


def _ring(terms, fmt, rounding, key):
    """The ring all-reduce on a stack of contributions (leading axis: device)."""
    n, shape = terms.shape[0], terms.shape[1:]
    pieces = jax.vmap(lambda x: ring_pieces(x, n))(terms)  # (device, chunk, L)
    chunk = jnp.arange(n)
    # order[s, k]: the device whose piece of chunk k is added at step s
    order = (chunk[None, :] + 1 + jnp.arange(n)[:, None]) % n
    rotated = pieces[order, chunk[None, :]]  # (step, chunk, L)
    add = jax.vmap(ring_add, in_axes=(0, 0, None, 0, None, None, None))

    def step(acc, x_s):
        x, s = x_s
        return add(acc, x, s, chunk, fmt, rounding, key), None

    acc = lax.scan(step, rotated[0], (rotated[1:], jnp.arange(1, n)))[0]
    size = terms[0].size
    return acc.reshape(-1)[:size].reshape(shape)


def reduce_terms(xs, term, n: int, init, fmt: Format, order: str, chunk: int,
                 rounding: str, key, on_grid: bool = False):  # fmt: skip
    """Sum ``term(x_i, i)`` over the leading axis (length n) of the pytree ``xs``, in fmt.

    The one implementation of every order. ``term`` maps a slice of ``xs`` (leading
    axis removed) and its index to the addend; for a dot product it forms the rounded
    products lazily, so sequential, chunked and Kahan orders never hold all ``n``
    products at once. ``init`` is the accumulator's start (zeros for a sum on one
    device) or None (start from the first term as it is: an all-reduce). ``on_grid``
    promises that every term is a value of ``fmt`` already (a sum of rounded inputs):
    the same bits, fewer operations to nearest.
    """
    if n == 0:
        return init
    if init is not None and n == 1 and order in ("pairwise", "ring"):
        order = "sequential"  # one term still goes through the accumulator
    if order == "sequential":
        return _scan(xs, term, init, n, fmt, rounding, key, "sequential", on_grid)
    if order == "kahan":
        return _kahan(xs, term, init, n, fmt, rounding, key)
    if order == "pairwise":
        return _pairwise(xs, term, n, fmt, rounding, key, on_grid)
    if order == "ring":
        return _ring(_all_terms(xs, term, n), fmt, rounding, key)
    if order == "native":
        total = jnp.sum(_all_terms(xs, term, n), axis=0)
        return round_to(total, fmt, rounding, reduction_key(key, "native"))
    # chunked: full chunks in parallel (scan over the position inside the chunk) ...
    nfull, tail = divmod(n, chunk)
    sums = []
    if nfull:
        main = jax.tree_util.tree_map(
            lambda a: jnp.swapaxes(a[: nfull * chunk].reshape(nfull, chunk, *a.shape[1:]),
                                   0, 1), xs)  # fmt: skip
        starts = chunk * jnp.arange(nfull)

        def term_b(x, pos):  # position pos of every full chunk: terms pos + chunk * j
            return jax.vmap(term)(x, starts + pos)

        init_b = None if init is None else jnp.broadcast_to(init, (nfull, *init.shape))
        sums.append(_scan(main, term_b, init_b, chunk, fmt, rounding, key, "chunk",
                          on_grid))  # fmt: skip
    if tail:  # ... and the short last chunk
        rest = _take(xs, nfull * chunk)

        def term_t(x, i):
            return term(x, i + nfull * chunk)

        sums.append(_scan(rest, term_t, init, tail, fmt, rounding, key, "tail",
                          on_grid)[None])  # fmt: skip
    chunk_sums = jnp.concatenate(sums) if len(sums) > 1 else sums[0]
    # the chunk sums are values of fmt (rounded at least once) when init is given
    return _scan(chunk_sums, lambda s, i: s, init, chunk_sums.shape[0], fmt, rounding,
                 key, "chunks", init is not None)  # fmt: skip


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
      x: floating-point array (float32; float64 under x64, computed in float64).
      axis: the axis to reduce (one axis).
      accum: the accumulator's format.
      order: ``"sequential"`` (default for narrow accumulators), ``"pairwise"``,
        ``"chunked"``, ``"kahan"`` or ``"native"`` (XLA's reduction, then one rounding;
        the default for an accumulator that holds every input value, FP32 for float32).
        See the module docstring.
      chunk: chunk length for ``"chunked"``.
      rounding: rounding mode of every addition; ``"stochastic"`` needs ``key`` and is
        exact: each partial sum rounds up with probability (exact remainder) / ulp.
      key: random key for stochastic rounding (each addition derives its own).

    Returns:
      An array of ``x``'s dtype with ``axis`` removed, on ``accum``'s grid.

    Example:
      >>> import fpsim, jax.numpy as jnp
      >>> ones = jnp.ones(4096)
      >>> float(fpsim.lp_sum(ones, accum="fp16"))  # swamping: 2048 + 1 rounds to 2048
      2048.0
      >>> float(fpsim.lp_sum(ones, accum="fp16", order="kahan"))
      4096.0
    """
    accum = get_format(accum)
    check_rounding(rounding)
    x = as_float_array(x, accum)
    c = _bits.carrier_of(x.dtype)
    order = resolve_order(order, accum, c, rounding=rounding)
    check_reduction(accum, order, chunk, rounding, key, c)
    key = _keys.canonical_key(key) if rounding == "stochastic" else None
    return _lp_sum(jnp.moveaxis(x, axis, 0), key, accum, order, chunk, rounding)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _lp_sum(x, key, accum: Format, order: str, chunk: int, rounding: str):
    # compiled once per (shape, format, order): eagerly, the scans and the pairwise
    # tree would otherwise dispatch one small computation per step
    x = round_to(x, accum)
    init = jnp.zeros(x.shape[1:], x.dtype)
    return reduce_terms(x, lambda t, i: t, x.shape[0], init, accum, order, chunk,
                        rounding, key, on_grid=True)  # fmt: skip
