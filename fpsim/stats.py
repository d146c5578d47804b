"""Value statistics against a format: what would happen to these numbers in ``fmt``?

Before a tensor is stored in a narrow format, every element falls into one of seven
classes, and the class counts say at a glance whether the format fits the data:

========== ==============================================================================
class      meaning
========== ==============================================================================
zero       the input is exactly 0 (either sign)
underflow  a nonzero finite input that rounds to 0: its information is lost entirely
subnormal  rounds to a nonzero subnormal: kept, but with fewer significant bits
normal     rounds to a normal finite value: full relative precision
overflow   a finite input whose rounded magnitude would exceed ``fmt.max`` (IEEE 754's
           overflow: rounded as if the exponent were unbounded). It becomes inf (IEEE
           formats), NaN (the FP8 "fn"/"fnuz" formats) or clamps to max (formats without
           special values, or a directed rounding mode that rounds toward zero)
inf        the input is +-inf
nan        the input is NaN
========== ==============================================================================

The classes partition the elements. The classification is exact: it is computed from
:func:`fpsim.quantize`'s result and from integer bit patterns, never from float compares,
because XLA on CPU treats float32 subnormal *inputs* of float compares as zero
(``x > 0`` is False for ``x = 1e-40``).

Block-scaled formats (``"mxfp4"``, ``"nvfp4"``, a :class:`fpsim.BlockFormat`) are
classified the same way, element by element, after the block's shared scale: an
*underflow* is an element flushed to zero because its block's scale (set by the block's
largest element) puts it below the element format's smallest value, an *overflow* an
element clipped to the largest value its block can hold (MX scales round the amax's
exponent down, so the top of a block can exceed the element's max), and an element
that comes back NaN because its block holds a NaN counts as *nan*. Pass ``axis`` (the
axis the blocks run along). :func:`fpsim.blocks.block_stats` gives the same per block,
with the histogram of scale exponents.

:func:`log2_histogram` shows the same data one binade ``[2**k, 2**(k+1))`` at a time,
which is the picture to hold against the format's range ``[min_subnormal, max]``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fpsim import _bits
from fpsim._modes import MODES, get_mode
from fpsim.formats import Format, get_format
from fpsim.rounding import (
    FormatLike,
    _directed_up,
    as_float_array,
    check_rounding,
    quantize,
)

__all__ = [
    "VALUE_CLASSES",
    "Log2Histogram",
    "ValueCounts",
    "log2_histogram",
    "tree_value_counts",
    "value_classes",
    "value_counts",
    "value_fractions",
]

#: The class names, in the order of their codes in :func:`value_classes`.
VALUE_CLASSES: tuple[str, ...] = (
    "zero", "underflow", "subnormal", "normal", "overflow", "inf", "nan",
)  # fmt: skip


class ValueCounts(NamedTuple):
    """How many values fall in each class (int32 scalars); the last seven sum to total."""

    total: jax.Array
    zero: jax.Array
    underflow: jax.Array
    subnormal: jax.Array
    normal: jax.Array
    overflow: jax.Array
    inf: jax.Array
    nan: jax.Array


class Log2Histogram(NamedTuple):
    """Histogram of ``log2|x|`` with one bin per binade.

    Attributes:
      counts: int32[nbins]; ``counts[i]`` counts ``2**edges[i] <= |x| < 2**edges[i+1]``,
        except that the first bin also holds everything smaller and the last bin
        everything larger (so no finite nonzero value is lost).
      edges: float32[nbins + 1], integer exponents: the bin edges in log2 units.
      zeros: int32, exact zeros (they have no logarithm and are not in ``counts``).
      nonfinite: int32, +-inf and NaN (not in ``counts``).
    """

    counts: jax.Array
    edges: jax.Array
    zeros: jax.Array
    nonfinite: jax.Array


def _check_stats_rounding(rounding: str) -> None:
    if not check_rounding(rounding).deterministic:
        valid = [m.name for m in MODES.values() if m.deterministic]
        raise ValueError(
            f"value statistics need a deterministic rounding mode; {rounding!r} draws "
            "random bits (it rounds to one of the same two neighbours as 'toward_zero' "
            f"and 'up'), so use one of {', '.join(repr(v) for v in valid)}"
        )


def _float_leaves(tree, fmt: Format | None = None, rounding: str = "nearest"):
    """The floating-point leaves of a pytree, as float32 (float64 under x64) arrays.

    Host float64 leaves are converted so that rounding them to ``fmt`` is one rounding.
    """
    out = []
    for leaf in jax.tree_util.tree_leaves(tree):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None and isinstance(leaf, float):
            dtype = np.dtype(np.float64)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            out.append(as_float_array(leaf, fmt, rounding))
    return out


def _overflow_mask(a, neg, fmt: Format, rounding: str, c: _bits.Carrier):
    """Whether finite magnitudes ``a`` (bits) overflow ``fmt`` under ``rounding``.

    With an unbounded exponent the grid would continue past ``max`` with the same
    spacing ``ulp = 2**(emax - m)``; the next point up is ``max + ulp`` (its bit pattern
    in the carrier is ``bits(max) + 2**(P - m)``: a carry into the exponent field is
    right). Overflow means rounding lands there or beyond, so it is a comparison of the
    input's bits against a threshold that depends only on the format and the mode.
    """
    u = c.uint
    m, P = fmt.mantissa_bits, c.mant
    if m >= P:  # the format *is* the carrier: a finite input cannot overflow it
        return jnp.zeros_like(neg)
    max_bits = c.bits_of(fmt.max)
    next_bits = max_bits + (1 << (P - m))
    mid_bits = max_bits + (1 << (P - m - 1))
    # ties go to the even neighbour: past max exactly when max's last format bit is 1
    max_odd = bool((max_bits >> (P - m)) & 1)
    mode = get_mode(rounding)
    if mode.step == "nearest":
        return (a >= u(mid_bits)) if max_odd else (a > u(mid_bits))
    beyond = a >= u(next_bits)  # the magnitude rounds down: overflow from max + ulp on
    above = a > u(max_bits)  # the magnitude rounds up: anything past max overflows
    return jnp.where(_directed_up(mode, neg), above, beyond)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _classify(x, fmt: Format, rounding: str):
    c = _bits.carrier_of(x.dtype)
    u = c.uint
    bits = c.to_bits(x)
    a = bits & u(c.abs_mask)
    neg = (bits & u(c.sign_mask)) != 0
    q = c.to_bits(quantize(x, fmt, rounding)) & u(c.abs_mask)
    cls = jnp.where(q < u(c.bits_of(fmt.min_normal)), 2, 3)  # subnormal / normal
    cls = jnp.where(q == 0, 1, cls)  # underflow
    cls = jnp.where(_overflow_mask(a, neg, fmt, rounding, c), 4, cls)
    return _input_classes(cls, a, c)


def _input_classes(cls, a, c: _bits.Carrier):
    """``cls`` with the classes the input alone decides: zero, inf, nan (``a``: the
    input's magnitude bits)."""
    u = c.uint
    cls = jnp.where(a == 0, 0, cls)
    cls = jnp.where(a == u(c.inf_bits), 5, cls)
    cls = jnp.where(a > u(c.inf_bits), 6, cls)
    return cls.astype(jnp.int8)


def _block_format(fmt):
    """``fmt`` as a :class:`fpsim.BlockFormat` when it is or names one, else None."""
    from fpsim.blocks import BlockFormat, block_format_names, get_block_format

    if isinstance(fmt, BlockFormat):
        return fmt
    if isinstance(fmt, str) and fmt.strip().lower() in block_format_names():
        return get_block_format(fmt)
    return None


@functools.partial(jax.jit, static_argnums=(1, 2))
def _classify_blocks(x, bfmt, axis):
    from fpsim.blocks._format import INT8
    from fpsim.blocks._stats import element_flags

    elements, q, under, sat = element_flags(x, bfmt, axis)
    c = _bits.F32
    ax, aq = c.abs_bits(x), c.abs_bits(q)
    if bfmt.element == INT8:  # integers: no subnormals
        cls = jnp.full(x.shape, 3, jnp.int8)
    else:
        cls = jnp.where(jnp.abs(elements) < bfmt.element.min_normal, 2, 3)
    cls = jnp.where(under, 1, cls)
    cls = jnp.where(sat, 4, cls)
    cls = jnp.where(aq > c.uint(c.inf_bits), 6, cls)  # a NaN block
    return _input_classes(cls, ax, c)


def _check_block_rounding(bfmt, rounding: str) -> None:
    if rounding != "nearest":
        raise ValueError(
            f"block format {bfmt.name!r}: value statistics classify the elements as "
            f"encode_blocks rounds them, to nearest even; got rounding={rounding!r}"
        )


def value_classes(
    x: jax.typing.ArrayLike, fmt: FormatLike, rounding: str = "nearest", *, axis: int = -1
):
    """The class code of every element of ``x`` against ``fmt`` (int8, same shape).

    Codes index :data:`VALUE_CLASSES`: 0 zero, 1 underflow, 2 subnormal, 3 normal,
    4 overflow, 5 inf, 6 nan (see the module docstring). ``fmt`` may be a block format
    (``"mxfp8"``, a :class:`fpsim.BlockFormat`); its blocks run along ``axis``.

    Example (one MXFP8 block: its scale 2**1 comes from 957, which then saturates to
    448 * 2; 0.001 / 2 is below E4M3's smallest subnormal 2**-9 and flushes):
      >>> import numpy as np, fpsim
      >>> x = np.full(32, 0.001, np.float32); x[0] = 957.0; x[1] = 0.25
      >>> [fpsim.VALUE_CLASSES[int(k)] for k in fpsim.value_classes(x, "mxfp8")[:3]]
      ['overflow', 'normal', 'underflow']

    Example:
      >>> import fpsim
      >>> [fpsim.VALUE_CLASSES[int(k)] for k in
      ...  fpsim.value_classes([0.0, 2.0**-25, 2.0**-24, 1.0, 65520.0], "fp16")]
      ['zero', 'underflow', 'subnormal', 'normal', 'overflow']
    """
    bfmt = _block_format(fmt)
    if bfmt is not None:
        _check_block_rounding(bfmt, rounding)
        return _classify_blocks(jnp.asarray(x, jnp.float32), bfmt, axis)
    fmt = get_format(fmt)
    _check_stats_rounding(rounding)
    return _classify(as_float_array(x, fmt, rounding), fmt, rounding)


def _counts_of(x, fmt, rounding: str, axis: int = -1) -> ValueCounts:
    if isinstance(fmt, Format):
        cls = _classify(x, fmt, rounding)
    else:
        cls = _classify_blocks(jnp.asarray(x, jnp.float32), fmt, axis)
    per_class = jnp.bincount(cls.ravel(), length=7)
    per_class = per_class.astype(jnp.int32)
    total = jnp.asarray(x.size, jnp.int32)
    return ValueCounts(total, *(per_class[i] for i in range(7)))


def _zero_counts() -> ValueCounts:
    return ValueCounts(*(jnp.zeros((), jnp.int32) for _ in ValueCounts._fields))


def value_counts(
    tree, fmt: FormatLike, rounding: str = "nearest", *, axis: int = -1
) -> ValueCounts:
    """Count, over all floating-point leaves of ``tree``, how values fare in ``fmt``.

    Args:
      tree: an array or any pytree of arrays (parameters, gradients, activations).
        Non-floating leaves (integer step counters) are not counted.
      fmt: the format the values would be stored in: an element format, or a block
        format (then every leaf is blocked along ``axis``).
      rounding: the deterministic rounding mode to classify under ("nearest" for
        block formats).
      axis: the axis the blocks of a block format run along.

    Returns:
      A :class:`ValueCounts` of int32 scalars; jit-able.

    Example:
      >>> import fpsim, jax.numpy as jnp
      >>> c = fpsim.value_counts({"w": jnp.array([1e-9, 1e-6, 1.0, 7e4])}, "fp16")
      >>> int(c.underflow), int(c.subnormal), int(c.normal), int(c.overflow)
      (1, 1, 1, 1)
    """
    bfmt = _block_format(fmt)
    if bfmt is not None:
        _check_block_rounding(bfmt, rounding)
        leaves = _float_leaves(tree)
        counts = [_counts_of(x, bfmt, rounding, axis) for x in leaves]
    else:
        fmt = get_format(fmt)
        _check_stats_rounding(rounding)
        leaves = _float_leaves(tree, fmt, rounding)
        counts = [_counts_of(x, fmt, rounding) for x in leaves]
    if not counts:
        return _zero_counts()
    return ValueCounts(*(sum(field) for field in zip(*counts, strict=True)))


def tree_value_counts(tree, fmt: FormatLike, rounding: str = "nearest", *, axis=-1):
    """A :class:`ValueCounts` per leaf, in the structure of ``tree`` (per layer stats).

    Non-floating leaves get all-zero counts. ``fmt`` and ``axis`` as for
    :func:`value_counts`.
    """
    fmt = _block_format(fmt) or get_format(fmt)
    return jax.tree_util.tree_map(
        lambda leaf: value_counts(leaf, fmt, rounding, axis=axis), tree
    )


def value_fractions(
    tree, fmt: FormatLike | None = None, rounding: str = "nearest", *, axis: int = -1
):
    """The fraction of values in each class, as a dict of Python floats.

    Args:
      tree: a pytree of arrays (then ``fmt`` is required), or a :class:`ValueCounts`
        already computed (then ``fmt`` is ignored).
      fmt: the format to classify against.
      rounding: as for :func:`value_counts`.
      axis: as for :func:`value_counts` (block formats).

    Returns:
      ``{"zero": ..., "underflow": ..., ..., "nan": ...}``, summing to 1 (all zeros for
      an empty tree). Not jit-able: it reads the counts back to the host.
    """
    if isinstance(tree, ValueCounts):
        counts = tree
    else:
        if fmt is None:
            raise ValueError("value_fractions needs fmt unless given a ValueCounts")
        counts = value_counts(tree, fmt, rounding, axis=axis)
    total = int(counts.total)
    return {name: int(getattr(counts, name)) / max(total, 1) for name in VALUE_CLASSES}


# --------------------------------------------------------------------------------------
# log2 histogram
# --------------------------------------------------------------------------------------
def _default_range(fmt: Format | None) -> tuple[int, int]:
    if fmt is None:  # every finite nonzero float32: 2**-149 .. < 2**128
        return -149, 128
    lo = math.floor(math.log2(fmt.min_subnormal)) - 4
    hi = math.floor(math.log2(fmt.max)) + 1 + 4
    return lo, hi


@functools.partial(jax.jit, static_argnums=(1, 2))
def _histogram(xs: tuple, lo: int, hi: int) -> Log2Histogram:
    nbins = hi - lo
    counts = jnp.zeros((nbins,), jnp.int32)
    zeros = jnp.zeros((), jnp.int32)
    nonfinite = jnp.zeros((), jnp.int32)
    for x in xs:
        c = _bits.carrier_of(x.dtype)
        u = c.uint
        a = (c.to_bits(x) & u(c.abs_mask)).ravel()
        big_e = (a >> c.mant).astype(jnp.int32)
        # floor(log2|x|): the exponent field for normals; for subnormals a = |x| / tiny,
        # so it is the position of the top set bit minus log2(1/tiny)
        top = (c.width - 1 - lax.clz(a)).astype(jnp.int32)
        k = jnp.where(big_e > 0, big_e - c.bias, top - (c.bias + c.mant - 1))
        finite_nonzero = (a > 0) & (a < u(c.inf_bits))
        idx = jnp.clip(k - lo, 0, nbins - 1)
        weights = finite_nonzero.astype(jnp.int32)
        counts = counts + jnp.bincount(idx, weights=weights, length=nbins)
        zeros = zeros + jnp.sum(a == 0, dtype=jnp.int32)
        nonfinite = nonfinite + jnp.sum(a >= u(c.inf_bits), dtype=jnp.int32)
    edges = jnp.arange(lo, hi + 1, dtype=jnp.float32)
    return Log2Histogram(counts, edges, zeros, nonfinite)


def log2_histogram(
    tree, fmt: FormatLike | None = None, *, lo: int | None = None, hi: int | None = None
) -> Log2Histogram:
    """Histogram of ``log2|x|`` over all floating-point leaves, one bin per binade.

    A binade ``[2**k, 2**(k+1))`` is where a format spends one exponent value: inside
    it the grid spacing is constant. Plotting the histogram with the format's range
    marked (``log2(min_subnormal)``, ``emin``, ``log2(max)``) shows which part of the
    data underflows, loses precision in the subnormals, or overflows.

    Args:
      tree: an array or pytree of arrays.
      fmt: sets the default range: from a few binades below ``fmt.min_subnormal`` to a
        few above ``fmt.max``. Without ``fmt`` the range covers every finite nonzero
        float32, ``2**-149 .. 2**128``.
      lo: lowest edge (an integer exponent), overriding the default.
      hi: highest edge; there are ``hi - lo`` bins. Values outside go to the end bins.

    Returns:
      A :class:`Log2Histogram`; jit-able, with a number of bins fixed by fmt, lo, hi.

    Example:
      >>> import fpsim
      >>> h = fpsim.log2_histogram([0.0, 1.0, 1.5, 3.0], lo=-2, hi=3)
      >>> h.counts.tolist(), h.edges.tolist(), int(h.zeros)
      ([0, 0, 2, 1, 0], [-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], 1)
    """
    d_lo, d_hi = _default_range(None if fmt is None else get_format(fmt))
    lo = d_lo if lo is None else lo
    hi = d_hi if hi is None else hi
    if not (isinstance(lo, int | np.integer) and isinstance(hi, int | np.integer)):
        raise TypeError(f"lo and hi must be integer exponents, got {lo!r} and {hi!r}")
    if lo >= hi:
        raise ValueError(f"need lo < hi (integer exponents of the edges), got {lo}, {hi}")
    xs = tuple(x for x in _float_leaves(tree))
    if not xs:
        xs = (jnp.zeros((0,), jnp.float32),)
    return _histogram(xs, int(lo), int(hi))
