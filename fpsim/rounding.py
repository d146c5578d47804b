"""Rounding onto a format's grid: ``quantize``, and the helpers built on it.

``quantize(x, fmt)`` returns float32 values that lie exactly on ``fmt``'s grid: the
*fake quantization* every simulator uses. It is bit-exact against ml_dtypes'
``x.astype(T).astype(float32)`` for every float32 input.

How it works (all integer arithmetic on the bits, see ``fpsim._bits``):

1. Write a finite float32 magnitude as an integer significand times a power of two,
   ``|x| = sig * 2**(E - 150)``, where ``sig`` includes the implicit leading 1.
2. The target format's grid near ``|x|`` has spacing (quantum) ``2**q`` with
   ``q = max(exponent(x), emin) - mantissa_bits``. Below ``2**emin`` the spacing stops
   shrinking: those grid points are the subnormals.
3. Rounding to the grid is dropping ``shift = q - (E - 150)`` low bits of ``sig``; the
   dropped bits (the remainder) decide whether to round up: more than half, or exactly
   half with an odd result, for round-to-nearest-even; any at all for a directed mode;
   with probability remainder / quantum for stochastic rounding.
4. A carry out of the mantissa simply increments the exponent field: the integer
   encoding of positive floats is monotonic, which is what makes this work.
5. Finally the format's conventions: overflow to inf (IEEE), to NaN (the "fn"/"fnuz"
   FP8 formats) or to max (FP6/FP4, or ``saturate=True``); flush of subnormal results
   (``subnormals=False``); no negative zero in "fnuz" formats.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fpsim import _bits, _e8m0
from fpsim.formats import Format, get_format

Rounding = Literal["nearest", "toward_zero", "up", "down", "stochastic"]
ROUNDING_MODES: tuple[str, ...] = get_args(Rounding)
FormatLike = Format | str


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------
def check_rounding(rounding: str) -> None:
    """Raise a ValueError naming the valid modes if ``rounding`` is not one of them."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(
            f"unknown rounding mode {rounding!r}; valid: {', '.join(ROUNDING_MODES)}"
        )


def _round_to_odd_f32(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 with round-to-odd, on the host.

    Converting float64 to float32 by nearest rounding and then to a narrower format
    rounds *twice*, and double rounding can be wrong (a value just above a tie of the
    narrow format lands exactly on the tie after the first rounding). Rounding to odd
    first (truncate, then set the last bit if anything was dropped) keeps the
    information "was there anything beyond?", which makes the second rounding correct
    for any format at least two bits narrower than float32 (Boldo & Melquiond 2008).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        y = x.astype(np.float32)
        inexact = np.isfinite(x) & (y.astype(np.float64) != x)
    bits = y.view(np.uint32)
    even = (bits & 1) == 0
    fix = inexact & even
    toward = np.where(x > y.astype(np.float64), np.inf, -np.inf).astype(np.float32)
    y = np.where(fix, np.nextafter(y, toward), y)
    return y.astype(np.float32)


def _directed_f32(x: np.ndarray, rounding: str) -> np.ndarray:
    """float64 -> float32 rounded toward zero, up or down, on the host."""
    with np.errstate(invalid="ignore", over="ignore"):
        y = x.astype(np.float32)
        wide = y.astype(np.float64)
    if rounding == "up":
        fix, toward = wide < x, np.inf
    elif rounding == "down":
        fix, toward = wide > x, -np.inf
    else:  # toward_zero
        fix, toward = np.abs(wide) > np.abs(x), 0.0
    return np.where(fix, np.nextafter(y, np.float32(toward)), y).astype(np.float32)


def as_float_array(x, fmt: Format | None = None, rounding: str = "nearest") -> jax.Array:
    """Convert input to a float32 (or, under x64, float64) JAX array, exactly.

    Accepts JAX and numpy arrays and Python scalars. Narrow float inputs (float16,
    bfloat16, float8) are widened exactly to float32. Host float64 data with x64 off is
    converted so that rounding it on to ``fmt`` in ``rounding`` is rounding it once:
    with round-to-odd for formats of at most 21 mantissa bits; in the same direction
    for the directed modes; to nearest for round-to-nearest into float32 itself.

    Raises:
      TypeError: for integer, boolean or complex arrays.
      ValueError: for stochastic rounding of float64 host data to a format with 22 or
        more mantissa bits (float32's own grid): the bits beyond float32 would be lost
        before the random draw; enable x64 or pass float32.
    """
    if isinstance(x, bool) or (isinstance(x, np.ndarray | jax.Array) and x.dtype == bool):
        raise TypeError("quantize takes floating-point input; got booleans")
    if isinstance(x, int | float):
        x = np.asarray(float(x), np.float64)
    elif not hasattr(x, "dtype"):
        x = np.asarray(x)
    dtype = jnp.dtype(x.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"quantize takes floating-point input (float32, float64 under x64, or a "
            f"narrower float), got dtype {dtype}; cast integers with .astype(float32)"
        )
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        if isinstance(x, jax.core.Tracer):  # pragma: no cover - cannot happen without x64
            return x.astype(jnp.float32)
        host = np.asarray(x)
        if fmt is not None and fmt.mantissa_bits <= 21:
            return jnp.asarray(_round_to_odd_f32(host))
        if rounding in ("toward_zero", "up", "down"):
            return jnp.asarray(_directed_f32(host, rounding))
        if rounding == "stochastic":
            raise ValueError(
                f"stochastic rounding of float64 data to {getattr(fmt, 'name', 'fp32')} "
                "would first round it to float32, losing the bits the random draw needs; "
                "enable x64 (jax.config.update('jax_enable_x64', True)) or pass float32"
            )
        with np.errstate(over="ignore"):
            return jnp.asarray(host.astype(np.float32))
    if dtype in (np.float32, np.float64):
        return jnp.asarray(x)
    if dtype == jnp.bfloat16:  # exact, also for bfloat16 subnormals (float32 subnormals)
        raw = lax.bitcast_convert_type(jnp.asarray(x), jnp.uint16)
        return lax.bitcast_convert_type(raw.astype(jnp.uint32) << 16, jnp.float32)
    return jnp.asarray(x).astype(jnp.float32)


def _check_key(key) -> None:
    if key is None:
        raise ValueError(
            "rounding='stochastic' needs a random key: quantize(x, fmt, 'stochastic', "
            "key=jax.random.key(0)); use a different key at every call site and step"
        )
    dt = getattr(key, "dtype", None)
    is_typed = dt is not None and jnp.issubdtype(dt, jax.dtypes.prng_key)
    is_raw = dt == jnp.uint32 and getattr(key, "shape", None) == (2,)
    if not (is_typed or is_raw):
        raise TypeError(
            "key must be a JAX random key (jax.random.key(seed) or jax.random.PRNGKey), "
            f"got {type(key).__name__}"
        )


def _random_words(key, shape, c: _bits.Carrier, random_bits: int | None) -> jax.Array:
    """Uniform random integers of ``random_bits`` bits (default: the carrier's width)."""
    k = c.width if random_bits is None else random_bits
    width = next(w for w in (8, 16, 32, 64) if w >= k)
    size = int(np.prod(shape, dtype=np.int64))
    if width < 32:  # draw 32-bit words and cut each into 32/width pieces: fewer draws
        per_word = 32 // width
        raw = jax.random.bits(key, (-(-size // per_word),), jnp.uint32)
        pieces = lax.bitcast_convert_type(raw, jnp.dtype(f"uint{width}"))
        words = pieces.reshape(-1)[:size].reshape(shape)
    else:
        words = jax.random.bits(key, shape, jnp.dtype(f"uint{width}"))
    return words >> (width - k) if width > k else words


# --------------------------------------------------------------------------------------
# The rounding core
# --------------------------------------------------------------------------------------
def _directed_up(rounding: str, neg):
    """Whether a directed mode rounds the magnitude up (away from zero)."""
    if rounding == "up":
        return ~neg
    if rounding == "down":
        return neg
    return jnp.zeros_like(neg)  # toward_zero


def _round_core(x, rand, fmt: Format, rounding: str, saturate: bool, subnormals: bool,
                random_bits: int | None):  # fmt: skip
    c = _bits.carrier_of(x.dtype)
    u = c.uint
    P, W = c.mant, c.width
    one = u(1)

    bits = c.to_bits(x)
    sign = bits & u(c.sign_mask)
    neg = sign != 0
    a = bits & u(c.abs_mask)

    # 1.-2. the grid's spacing at |x| is 2**shift units of x's own last place
    big_e = (a >> P).astype(jnp.int32)
    shift_true = _bits.grid_shift(big_e, fmt, c)
    # 3. With shift <= P, rounding |x|'s bit pattern itself to a multiple of 2**shift
    #    is rounding the value: the implicit 1 (2**P) is a multiple of 2**shift, and a
    #    carry out of the mantissa lands on the next binade's first value.
    shift = jnp.minimum(shift_true, P).astype(u)
    mask = (one << shift) - one
    if rounding == "nearest":  # add just under half an ulp, plus the kept lsb: ties to even
        # the last kept bit; at shift == P it is the implicit 1 (normals), not E's lsb
        lsb = jnp.where(shift == u(P), (big_e > 0).astype(u), (a >> shift) & one)
        on_grid = (a + (((mask >> one) + lsb) & mask)) & ~mask
    elif rounding == "stochastic":  # add `shift` random bits: carries with P = rem/2**shift
        if random_bits is None:
            r = rand.astype(u) >> (u(W) - shift)
        else:
            k = u(random_bits)
            rk = rand.astype(u)
            r = jnp.where(shift >= k, rk << (shift - k), rk >> (k - shift))
        on_grid = (a + (r & mask)) & ~mask
    else:
        up = _directed_up(rounding, neg) & ((a & mask) != 0)
        on_grid = (a & ~mask) + jnp.where(up, one << shift, u(0))
    # Below the smallest subnormal's binade (|x| < min_subnormal, shift > P) the only
    # candidates are 0 and min_subnormal.
    min_sub = u(c.bits_of(fmt.min_subnormal))
    if rounding == "nearest":
        half_min_sub = fmt.min_subnormal / 2
        up = a > u(c.bits_of(half_min_sub)) if half_min_sub >= 2.0**-149 else a > 0
    elif rounding == "stochastic":  # P(up) = |x| / min_sub = sig / 2**shift_true
        sig = (a & u((1 << P) - 1)) | jnp.where(big_e > 0, u(1 << P), u(0))
        lshift = jnp.clip(W - shift_true, 0, W - 1).astype(u)
        rshift = jnp.clip(shift_true - W, 0, W - 1).astype(u)
        threshold = jnp.where(shift_true <= W, sig << lshift, sig >> rshift)
        if random_bits is not None:
            threshold = threshold >> u(W - random_bits)
        up = rand.astype(u) < threshold
    else:
        up = _directed_up(rounding, neg) & (a != 0)
    mag = jnp.where(shift_true <= P, on_grid, jnp.where(up, min_sub, u(0)))

    # 5. the format's conventions
    max_bits = u(c.bits_of(fmt.max))
    is_nan = a > u(c.inf_bits)
    is_inf = a == u(c.inf_bits)
    qnan = u(c.qnan_bits)
    overflow_value = {"ieee": u(c.inf_bits), "fn": qnan, "fnuz": qnan, "none": max_bits}[
        fmt.convention
    ]
    if saturate:
        overflow_value = max_bits
    away = {"nearest": True, "stochastic": True, "toward_zero": False}.get(rounding)
    if away is None:  # "up" overflows away from zero only for positives, "down" negatives
        away = ~neg if rounding == "up" else neg
    over = jnp.where(away, overflow_value, max_bits)
    mag = jnp.where(mag > max_bits, over, mag)
    mag = jnp.where(is_inf, overflow_value, mag)
    if not subnormals:
        mag = jnp.where(mag < u(c.bits_of(fmt.min_normal)), u(0), mag)
    out = sign | mag
    if fmt.convention == "fnuz":  # no negative zero: its pattern is the NaN
        out = jnp.where(mag == 0, u(0), out)
    if fmt.has_nan:
        out = jnp.where(is_nan, bits, out)  # keep the NaN as it came (FP32: identity)
    else:  # ml_dtypes turns NaN into a zero whose sign is the NaN's sign flipped
        out = jnp.where(is_nan, sign ^ u(c.sign_mask), out)
    return c.from_bits(out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _quantize_ste(x, rand, fmt, rounding, saturate, subnormals, random_bits):
    return _round_core(x, rand, fmt, rounding, saturate, subnormals, random_bits)


@_quantize_ste.defjvp
def _quantize_ste_jvp(fmt, rounding, saturate, subnormals, random_bits, primals, tangents):
    x, rand = primals
    out = _quantize_ste(x, rand, fmt, rounding, saturate, subnormals, random_bits)
    return out, tangents[0]  # straight-through: d quantize(x) / dx := 1


_quantize_jit = jax.jit(_quantize_ste, static_argnums=(2, 3, 4, 5, 6))


def quantize(
    x: jax.typing.ArrayLike,
    fmt: FormatLike,
    rounding: Rounding = "nearest",
    *,
    key: jax.Array | None = None,
    saturate: bool = False,
    subnormals: bool = True,
    random_bits: int | None = None,
) -> jax.Array:
    """Round ``x`` to the values representable in ``fmt`` (fake quantization).

    The result has ``x``'s shape and is float32 (float64 for float64 input under x64),
    but every element is exactly a value of ``fmt``: this is how a simulator computes
    "in FP8" on hardware that has no FP8.

    Args:
      x: floating-point array or scalar. Integer, boolean and complex input raise.
      fmt: a :class:`~fpsim.Format` or a name such as ``"e4m3"`` or ``"bfloat16"``.
      rounding: ``"nearest"`` (ties to even, the IEEE default), ``"toward_zero"``
        (truncation), ``"up"`` (toward +inf), ``"down"`` (toward -inf) or
        ``"stochastic"``: round up with probability ``(x - lo) / (hi - lo)``, where
        ``lo <= x <= hi`` are the neighbouring values, so the *expected* result is x.
      key: a JAX random key, required by (and only used by) stochastic rounding.
      saturate: overflow and +-inf go to +-max instead of inf or NaN (NaN stays NaN).
      subnormals: if False, results that are subnormal in ``fmt`` flush to zero (with
        their sign), as hardware with flush-to-zero does.
      random_bits: stochastic rounding with a limited number of random bits, as
        hardware does: the dropped bits are truncated to ``random_bits`` bits before
        being compared with as many random bits, so probabilities are multiples of
        ``2**-random_bits`` (biased by at most that much). Default: exact (to 2**-32).

    Returns:
      An array on ``fmt``'s grid. Under ``jax.grad`` the rounding is transparent
      (straight-through estimator): the cotangent passes unchanged.

    Raises:
      ValueError: unknown format or rounding mode, or stochastic rounding without key.
      TypeError: non-floating input, or a key that is not a JAX key.

    Examples:
      >>> import fpsim
      >>> float(fpsim.quantize(1 + 2**-10, "bf16"))  # bf16 keeps 8 significant bits
      1.0
      >>> float(fpsim.quantize(464.0, "e4m3")), float(fpsim.quantize(465.0, "e4m3"))
      (448.0, nan)
    """
    fmt = get_format(fmt)
    check_rounding(rounding)
    if fmt.convention == "fnu":  # E8M0, the exponent-only scale type: its own rules
        return _e8m0.quantize(as_float_array(x), fmt, rounding, saturate=saturate)
    x = as_float_array(x, fmt, rounding)
    c = _bits.carrier_of(x.dtype)
    if random_bits is not None and not (
        isinstance(random_bits, int) and 1 <= random_bits <= c.width
    ):
        raise ValueError(f"random_bits must be an int in 1..{c.width}, got {random_bits!r}")
    if rounding == "stochastic":
        _check_key(key)
        rand = _random_words(key, x.shape, c, random_bits)
    else:
        rand = jnp.zeros((), jnp.uint8)
    return _quantize_jit(x, rand, fmt, rounding, saturate, subnormals, random_bits)


# --------------------------------------------------------------------------------------
# Neighbours and spacing
# --------------------------------------------------------------------------------------
@jax.jit
def _carrier_step_up(x):
    """The next float of x's own type above x (+0 and -0 both step to the tiniest)."""
    c = _bits.carrier_of(x.dtype)
    b = c.to_bits(x)
    u = c.uint
    pos = (b & u(c.sign_mask)) == 0
    stepped = jnp.where(pos, b + u(1), jnp.where(b == u(c.sign_mask), u(1), b - u(1)))
    stepped = jnp.where((b & u(c.abs_mask)) >= u(c.inf_bits), b, stepped)  # nan, +-inf
    stepped = jnp.where(
        b == u(c.inf_bits | c.sign_mask), u(c.sign_mask | (c.inf_bits - 1)), stepped
    )
    return c.from_bits(stepped)


def next_up(x: jax.typing.ArrayLike, fmt: FormatLike) -> jax.Array:
    """The smallest value of ``fmt`` strictly greater than ``x``.

    Past ``fmt.max`` this is what rounding up overflows to: inf (IEEE formats), NaN
    (the FP8 "fn"/"fnuz" formats) or max itself (FP6/FP4, which have neither).
    """
    return quantize(_carrier_step_up(as_float_array(x, get_format(fmt))), fmt, "up")


def next_down(x: jax.typing.ArrayLike, fmt: FormatLike) -> jax.Array:
    """The largest value of ``fmt`` strictly less than ``x`` (``-next_up(-x)``)."""
    return -next_up(-as_float_array(x, get_format(fmt)), fmt)


@functools.partial(jax.jit, static_argnums=(1,))
def _ulp(q, fmt: Format):
    c = _bits.carrier_of(q.dtype)
    u = c.uint
    a = c.to_bits(q) & u(c.abs_mask)
    exponent = jnp.maximum((a >> c.mant).astype(jnp.int32) - c.bias, fmt.emin)
    exponent = jnp.minimum(exponent, fmt.emax) - fmt.mantissa_bits  # log2 of the spacing
    normal = (exponent + c.bias).astype(u) << c.mant
    tiny = u(1) << jnp.maximum(exponent + c.bias + c.mant - 1, 0).astype(u)
    out = c.from_bits(jnp.where(exponent >= 1 - c.bias, normal, tiny))
    return jnp.where(a >= u(c.inf_bits), jnp.nan, out)


def ulp(x: jax.typing.ArrayLike, fmt: FormatLike) -> jax.Array:
    """The unit in the last place: the spacing of ``fmt``'s grid at ``|x|``.

    For ``2**e <= |x| < 2**(e+1)`` it is ``2**(e - mantissa_bits)``; in the subnormal
    range it stays at ``fmt.min_subnormal``; past ``fmt.max`` it is the spacing of the
    top binade. NaN for inf and NaN. Rounding to nearest errs by at most ulp/2.

    Example:
      >>> import fpsim
      >>> float(fpsim.ulp(1.0, "fp16")), float(fpsim.ulp(2048.0, "fp16"))
      (0.0009765625, 2.0)
    """
    fmt = get_format(fmt)
    return _ulp(quantize(as_float_array(x, fmt), fmt, "toward_zero", saturate=True), fmt)
