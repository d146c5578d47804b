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
   (``subnormals=False``); no negative zero in "fnuz" formats; NaN bits as ml_dtypes.

Round to nearest FP16 and BF16 (no saturation, subnormals kept) takes a shortcut with
the same bits: XLA's own float32 -> float16/bfloat16 conversion, one or a few
instructions instead of the integer steps (see :data:`NATIVE_NEAREST`).

What each mode does at steps 3 and 5 (which way the magnitude steps, where overflow
goes) is read from one table, :data:`fpsim._modes.MODES`. Host float64 data (x64 off)
is rounded once, exactly, in float64 on the host before step 1, so that no format
width suffers double rounding through float32.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fpsim import _bits, _e8m0, _hashrng, _keys
from fpsim._modes import MODE_NAMES, RoundingMode, get_mode
from fpsim.formats import Format, get_format

#: The rounding mode names (one entry per mode in :data:`fpsim._modes.MODES`).
Rounding = Literal["nearest", "toward_zero", "up", "down", "stochastic"]
ROUNDING_MODES: tuple[str, ...] = MODE_NAMES
FormatLike = Format | str


# --------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------
def check_rounding(rounding: str) -> RoundingMode:
    """The mode called ``rounding``; a ValueError naming the valid modes otherwise."""
    return get_mode(rounding)


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


def _host_grid(x: np.ndarray, fmt: Format) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``|x| = (n + frac) * quantum`` on ``fmt``'s grid, exactly, in float64 on the host.

    Returns the integer ``n`` (as float64), the fraction ``frac`` in [0, 1) and the
    quantum ``2**(max(floor(log2|x|), emin) - m)``. Every step is exact: ``frexp``
    gives the exponent, dividing by a power of two is exact, and ``n < 2**(m + 1)``.
    """
    a = np.abs(x)
    _, e = np.frexp(a)  # a = f * 2**e with f in [0.5, 1): floor(log2 a) = e - 1
    quantum = np.ldexp(1.0, np.maximum(e - 1, fmt.emin) - fmt.mantissa_bits)
    scaled = a / quantum
    n = np.floor(scaled)
    return n, scaled - n, quantum


def _host_round(x: np.ndarray, fmt: Format, mode: RoundingMode, overflow: bool):
    """Round float64 ``x`` to ``fmt`` once, exactly, on the host (deterministic modes).

    The result is float32 and lies on ``fmt``'s grid, so rounding it again on the
    device in the same mode changes nothing. With ``overflow=True`` a result past
    ``fmt.max`` becomes +-inf when ``mode`` overflows there (the device then applies
    the format's convention: inf, NaN or max) and +-max otherwise; with False it keeps
    the value past max that an unbounded exponent gives (for classifying overflow).
    """
    finite = np.isfinite(x)
    xf = np.where(finite, x, 0.0)
    neg = np.signbit(xf)
    n, frac, quantum = _host_grid(xf, fmt)
    if mode.step == "nearest":  # rint rounds half to even
        n = np.rint(n + frac)
    else:
        up = np.where(neg, mode.magnitude_up(True), mode.magnitude_up(False))
        n = n + (up & (frac > 0))
    mag = n * quantum
    if overflow:
        away = np.where(neg, mode.overflows(True), mode.overflows(False))
        mag = np.where(mag > fmt.max, np.where(away, np.inf, fmt.max), mag)
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.where(finite, np.copysign(mag, xf), x).astype(np.float32)
    return out


def as_float_array(x, fmt: Format | None = None, rounding: str = "nearest") -> jax.Array:
    """Convert input to a float32 (or, under x64, float64) JAX array, exactly.

    Accepts JAX and numpy arrays and Python scalars. Narrow float inputs (float16,
    bfloat16, float8) are widened exactly to float32. Host float64 data with x64 off is
    converted so that rounding it on to ``fmt`` in ``rounding`` is rounding it once:
    with round-to-odd for formats of at most 21 mantissa bits (right for every mode);
    rounded on the host straight to ``fmt``'s grid for wider formats; to nearest when
    no ``fmt`` is given.

    Raises:
      TypeError: for integer, boolean or complex arrays.
      ValueError: for stochastic rounding of float64 host data to a format with 22 or
        more mantissa bits (float32's own grid): the bits beyond float32 would be lost
        before the random draw; enable x64 or pass float32 (``quantize`` itself
        rounds such data exactly).
    """
    if isinstance(x, jax.Array) and x.dtype == jnp.float32:  # the common case, fast
        return x
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
        mode = get_mode(rounding)
        if fmt is not None and mode.deterministic:
            return jnp.asarray(_host_round(host, fmt, mode, overflow=False))
        if fmt is not None:
            raise ValueError(
                f"stochastic rounding of float64 data to {fmt.name} would first round it "
                "to float32, losing the bits the random draw needs; enable x64 "
                "(jax.config.update('jax_enable_x64', True)) or pass float32"
            )
        with np.errstate(over="ignore"):
            return jnp.asarray(host.astype(np.float32))
    if dtype in (np.float32, np.float64):
        return jnp.asarray(x)
    if dtype == jnp.bfloat16:  # exact, also for bfloat16 subnormals (float32 subnormals)
        raw = lax.bitcast_convert_type(jnp.asarray(x), jnp.uint16)
        return lax.bitcast_convert_type(raw.astype(jnp.uint32) << 16, jnp.float32)
    return jnp.asarray(x).astype(jnp.float32)


def _random_words(key, shape, c: _bits.Carrier, random_bits: int | None,
                  rng: str = "threefry") -> jax.Array:  # fmt: skip
    """Uniform random integers of ``random_bits`` bits (default: the carrier's width)."""
    if rng == "hash":
        return _hashrng.hash_words(_keys.key_data(key), shape, c.width, random_bits)
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
#: ml_dtypes' (and numpy's) rule for a NaN's payload (the mantissa bits of a NaN):
#: numpy's float16 keeps the top bits of it when rounding into the format (a NaN whose
#: kept bits would all be 0 gets the lowest one, so it stays NaN), and float16 and
#: bfloat16 keep every bit when widening back to float32 (a shift). Every other format
#: has one canonical NaN per sign (quiet, payload 0), as ml_dtypes' types do.
_PAYLOAD_ON_ROUND = frozenset({"float32", "float16"})
_PAYLOAD_ON_WIDEN = frozenset({"float32", "float16", "bfloat16"})


def nan_payload_kept(fmt: Format, widening: bool = False) -> bool:
    """Whether ``fmt`` keeps a NaN's payload rounding into it (or widening out of it)."""
    names = _PAYLOAD_ON_WIDEN if widening else _PAYLOAD_ON_ROUND
    return fmt.convention == "ieee" and fmt.dtype_name in names


def _nan_bits(bits, sign, fmt: Format, c: _bits.Carrier):
    """The carrier bits of ``fmt``'s NaN for a NaN (or NaN-valued) result, as ml_dtypes.

    IEEE formats keep the sign and give the canonical quiet NaN, except that numpy's
    float16 keeps the top payload bits; "fn" formats keep the sign; "fnuz" formats have
    one NaN, the pattern of -0, which widens to a *negative* quiet NaN (0xFFC00000).
    """
    u = c.uint
    qnan = u(c.qnan_bits)
    if fmt.convention == "fnuz":
        return jnp.full_like(bits, u(c.sign_mask) | qnan)
    if nan_payload_kept(fmt):
        low = c.mant - fmt.mantissa_bits  # payload bits that do not fit in fmt
        payload = (bits & u((1 << c.mant) - 1)) >> u(low) << u(low)
        payload = jnp.where(payload == 0, u(1 << low), payload)
        return sign | u(c.inf_bits) | payload
    return sign | qnan


def _directed_up(mode: RoundingMode, neg):
    """Whether a directed mode rounds the magnitude up (away from zero), per element."""
    up_pos, up_neg = mode.magnitude_up(False), mode.magnitude_up(True)
    if up_pos == up_neg:
        return jnp.full_like(neg, up_pos)
    return neg if up_neg else ~neg


def _overflows(mode: RoundingMode, neg):
    """Whether a result past max overflows (rather than stays max), per element."""
    ov_pos, ov_neg = mode.overflows(False), mode.overflows(True)
    if ov_pos == ov_neg:
        return ov_pos
    return neg if ov_neg else ~neg


#: The formats whose round to nearest (ties to even, overflow to inf, gradual underflow)
#: XLA's own float32 -> ``dtype`` -> float32 conversion computes bit for bit, NaNs
#: included except where :data:`QUIETS_SIGNALLING_NAN`: tested per value over millions
#: of bit patterns (subnormals, ties, overflow, inf, NaN payloads) in
#: ``tests/test_quantize_native.py``. On CPU it is one instruction pair for float16
#: (F16C) and a few for bfloat16, cheaper inside a fused loop than the general integer
#: rounding below. bfloat16 comes back to float32 by its bits, not a second conversion
#: (under jit XLA deletes an f32 -> bf16 -> f32 conversion pair). XLA's FP8 conversions
#: (e4m3fn, e5m2) are exact too (tested) but slower than the integer rounding on CPU,
#: so they are not used.
NATIVE_NEAREST: dict[str, jnp.dtype] = {
    "float16": jnp.dtype(jnp.float16),
    "bfloat16": jnp.dtype(jnp.bfloat16),
}
#: Conversions that quiet a signalling NaN (set the top payload bit, as x86's
#: ``vcvtps2ph`` does) where ml_dtypes, and so ``quantize``, keep the top payload bits as
#: they are: a guard puts fpsim's NaN back. A *quiet* NaN converts to the same bits
#: either way, and every NaN that float arithmetic produces is quiet (IEEE 754 section
#: 6.2), so :func:`quantize_result` skips the guard.
QUIETS_SIGNALLING_NAN = frozenset({"float16"})


def native_dtype(
    fmt: Format, rounding: str, saturate: bool = False, subnormals: bool = True,
    dtype=jnp.float32,
) -> jnp.dtype | None:  # fmt: skip
    """The narrow dtype whose conversion is ``quantize(x, fmt, rounding, ...)`` on
    float32 ``x`` (NaN payloads aside), or None where only the integer rounding is."""
    if rounding != "nearest" or saturate or not subnormals or dtype != jnp.float32:
        return None
    return NATIVE_NEAREST.get(fmt.dtype_name)


def _round_native(x, fmt: Format, narrow: jnp.dtype, quiet_nans: bool = False):
    """Round to nearest by XLA's conversion; NaN inputs get fpsim's NaN bits (a guard
    for signalling NaNs, unless ``quiet_nans`` promises there are none)."""
    if narrow == jnp.bfloat16:
        # widen by moving the bits, not by a second conversion: under jit XLA's CPU
        # pipeline (SimplifyFPConversions, with xla_allow_excess_precision on by
        # default) deletes an f32 -> bf16 -> f32 conversion pair, and a reduction fed
        # by it (``max(quantize(x))``) would then see the unrounded x
        b = lax.bitcast_convert_type(x.astype(narrow), jnp.uint16).astype(jnp.uint32)
        y = lax.bitcast_convert_type(b << 16, jnp.float32)
    else:
        y = x.astype(narrow).astype(x.dtype)
    if quiet_nans or fmt.dtype_name not in QUIETS_SIGNALLING_NAN:
        return y
    c = _bits.carrier_of(x.dtype)
    bits = c.to_bits(x)
    nan = c.from_bits(_nan_bits(bits, bits & c.uint(c.sign_mask), fmt, c))
    is_nan = (bits & c.uint(c.abs_mask)) > c.uint(c.inf_bits)
    return jnp.where(is_nan, nan, y)


def _round_core(x, rand, fmt: Format, rounding: str, saturate: bool, subnormals: bool,
                random_bits: int | None, quiet_nans: bool = False):  # fmt: skip
    narrow = native_dtype(fmt, rounding, saturate, subnormals, x.dtype)
    if narrow is not None:
        return _round_native(x, fmt, narrow, quiet_nans)
    return _round_bits(x, rand, fmt, rounding, saturate, subnormals, random_bits)


def _round_bits(x, rand, fmt: Format, rounding: str, saturate: bool, subnormals: bool,
                random_bits: int | None):  # fmt: skip
    """The integer rounding on the carrier's bits, every format and mode (steps 1-5)."""
    mode = get_mode(rounding)
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
    if mode.step == "nearest":  # add just under half an ulp plus the kept lsb: ties to even
        # the last kept bit; at shift == P it is the implicit 1 (normals), not E's lsb
        lsb = jnp.where(shift == u(P), (big_e > 0).astype(u), (a >> shift) & one)
        on_grid = (a + (((mask >> one) + lsb) & mask)) & ~mask
    elif mode.step == "random":  # add `shift` random bits: carries with P = rem/2**shift
        if random_bits is None:
            r = rand.astype(u) >> (u(W) - shift)
        else:
            k = u(random_bits)
            rk = rand.astype(u)
            r = jnp.where(shift >= k, rk << (shift - k), rk >> (k - shift))
        on_grid = (a + (r & mask)) & ~mask
    else:
        up = _directed_up(mode, neg) & ((a & mask) != 0)
        on_grid = (a & ~mask) + jnp.where(up, one << shift, u(0))
    # Below the smallest subnormal's binade (|x| < min_subnormal, shift > P) the only
    # candidates are 0 and min_subnormal.
    min_sub = u(c.bits_of(fmt.min_subnormal))
    if mode.step == "nearest":  # up past half of min_subnormal (the tie goes to even 0)
        half_min_sub = fmt.min_subnormal / 2
        up = a > u(c.bits_of(half_min_sub)) if half_min_sub >= c.min_subnormal else a > 0
    elif mode.step == "random":  # P(up) = |x| / min_sub = sig / 2**shift_true
        sig = (a & u((1 << P) - 1)) | jnp.where(big_e > 0, u(1 << P), u(0))
        lshift = jnp.clip(W - shift_true, 0, W - 1).astype(u)
        rshift = jnp.clip(shift_true - W, 0, W - 1).astype(u)
        threshold = jnp.where(shift_true <= W, sig << lshift, sig >> rshift)
        if random_bits is not None:
            threshold = threshold >> u(W - random_bits)
        up = rand.astype(u) < threshold
    else:
        up = _directed_up(mode, neg) & (a != 0)
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
    over = jnp.where(_overflows(mode, neg), overflow_value, max_bits)
    mag = jnp.where(mag > max_bits, over, mag)
    mag = jnp.where(is_inf, overflow_value, mag)
    if not subnormals:
        mag = jnp.where(mag < u(c.bits_of(fmt.min_normal)), u(0), mag)
    out = sign | mag
    if fmt.convention == "fnuz":  # no negative zero: its pattern is the NaN
        out = jnp.where(mag == 0, u(0), out)
    if fmt.has_nan:  # NaN inputs, and overflow to NaN: the format's NaN, as ml_dtypes
        out = jnp.where(is_nan | (mag > u(c.inf_bits)), _nan_bits(bits, sign, fmt, c), out)
    else:  # ml_dtypes turns NaN into a zero whose sign is the NaN's sign flipped
        out = jnp.where(is_nan, sign ^ u(c.sign_mask), out)
    return c.from_bits(out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _quantize_ste(x, rand, fmt, rounding, saturate, subnormals, random_bits,
                  quiet_nans=False):  # fmt: skip
    opts = (saturate, subnormals, random_bits, quiet_nans)
    return _round_core(x, rand, fmt, rounding, *opts)


@_quantize_ste.defjvp
def _quantize_ste_jvp(fmt, rounding, saturate, subnormals, random_bits, quiet_nans,
                      primals, tangents):  # fmt: skip
    x, rand = primals
    out = _quantize_ste(x, rand, fmt, rounding, saturate, subnormals, random_bits,
                        quiet_nans)  # fmt: skip
    return out, tangents[0]  # straight-through: d quantize(x) / dx := 1


@functools.lru_cache(maxsize=512)
def _rounder(fmt: Format, rounding: str, saturate: bool, subnormals: bool,
             random_bits: int | None, rng: str = "threefry",
             quiet_nans: bool = False):  # fmt: skip
    """The jitted rounding for one (format, mode, options): built once, then reused.

    Deterministic modes take only ``x``; stochastic rounding takes ``(x, rand)`` with
    threefry, and ``(x, key_data)`` with ``rng="hash"``: the hash of each element's
    index is then computed inside the same fused loop as the rounding, so the random
    words never go through memory. Caching the callable keeps an eager call down to
    one jit dispatch.
    """
    static = (fmt, rounding, saturate, subnormals, random_bits)
    if get_mode(rounding).deterministic:
        no_rand = np.zeros((), np.uint8)
        return jax.jit(lambda x: _quantize_ste(x, no_rand, *static, quiet_nans))
    if rng == "hash":

        def hashed(x, kd):
            width = _bits.carrier_of(x.dtype).width
            rand = _hashrng.hash_words(kd, x.shape, width, random_bits)
            return _quantize_ste(x, rand, *static)

        return jax.jit(hashed)
    return jax.jit(lambda x, rand: _quantize_ste(x, rand, *static))


@jax.jit
def _pick(lo, hi, threshold, rand):
    return jnp.where(rand.astype(jnp.uint32) < threshold, hi, lo)


def _stochastic_host_f64(host: np.ndarray, fmt: Format, key, saturate: bool,
                         subnormals: bool, random_bits: int | None,
                         rng: str = "threefry"):  # fmt: skip
    """Stochastic rounding of host float64 data (x64 off): exact, to ``2**-k``.

    The two candidates ``lo <= |x| < hi`` and the probability ``p = (|x| - lo) / (hi -
    lo)`` are computed exactly in float64 on the host; the device rounds up when ``k``
    random bits (k = ``random_bits``, default 32) fall below ``floor(p * 2**k)``.
    """
    k = 32 if random_bits is None else random_bits
    finite = np.isfinite(host)
    xf = np.where(finite, host, 0.0)
    n, frac, quantum = _host_grid(xf, fmt)
    with np.errstate(over="ignore", invalid="ignore"):
        lo = np.where(finite, np.copysign(n * quantum, xf), host).astype(np.float32)
        hi_mag = (n + 1) * quantum
        hi_mag = np.where(hi_mag > fmt.max, np.inf, hi_mag)  # overflow goes away
        hi = np.where(finite, np.copysign(hi_mag, xf), host).astype(np.float32)
    threshold = np.floor(np.ldexp(frac, k)).astype(np.uint64).astype(np.uint32)
    rand = _random_words(key, host.shape, _bits.F32, random_bits, rng)
    picked = _pick(jnp.asarray(lo), jnp.asarray(hi), jnp.asarray(threshold), rand)
    return _rounder(fmt, "nearest", saturate, subnormals, None)(picked)


def quantize(
    x: jax.typing.ArrayLike,
    fmt: FormatLike,
    rounding: Rounding = "nearest",
    *,
    key: jax.Array | None = None,
    saturate: bool = False,
    subnormals: bool = True,
    random_bits: int | None = None,
    rng: str = "threefry",
) -> jax.Array:
    """Round ``x`` to the values representable in ``fmt`` (fake quantization).

    The result has ``x``'s shape and is float32 (float64 for float64 input under x64),
    but every element is exactly a value of ``fmt``: this is how a simulator computes
    "in FP8" on hardware that has no FP8.

    One rounding, of the value ``quantize`` receives. A Python float or a numpy
    float64 array (x64 off) is rounded to ``fmt`` once, exactly, from its float64
    value. But ``jax.jit`` (and ``jnp.asarray``) convert float64 arguments to float32
    *before* ``quantize`` sees them, with x64 off: inside a jitted function the value is
    rounded twice (float64 -> float32 -> fmt), which differs for values just off a tie
    (``1 + 2**-11 + 2**-40`` to fp16: 1.0009765625 eagerly, 1.0 under jit). Pass
    float32 data, or enable x64, to get the same answer everywhere.

    NaN keeps its sign, and its bits are ml_dtypes' ``x.astype(T).astype(float32)``
    exactly: the canonical quiet NaN (fp16 keeps the top 10 payload bits); the single
    NaN of "fnuz" formats is 0xFFC00000; formats without NaN give a zero.

    Args:
      x: floating-point array or scalar. Integer, boolean and complex input raise.
      fmt: a :class:`~fpsim.Format` or a name such as ``"e4m3"`` or ``"bfloat16"``.
      rounding: ``"nearest"`` (ties to even, the IEEE default), ``"toward_zero"``
        (truncation), ``"up"`` (toward +inf), ``"down"`` (toward -inf) or
        ``"stochastic"``: round up with probability ``(x - lo) / (hi - lo)``, where
        ``lo <= x <= hi`` are the neighbouring values, so the *expected* result is x.
        The modes are described in one table, :data:`fpsim._modes.MODES`.
      key: a JAX random key (or raw key data, or an int seed), required by (and only
        used by) stochastic rounding.
      saturate: overflow and +-inf go to +-max instead of inf or NaN (NaN stays NaN).
      subnormals: if False, results that are subnormal in ``fmt`` flush to zero (with
        their sign), as hardware with flush-to-zero does.
      random_bits: stochastic rounding with a limited number of random bits, as
        hardware does: the dropped bits are truncated to ``random_bits`` bits before
        being compared with as many random bits, so probabilities are multiples of
        ``2**-random_bits`` (biased by at most that much). Default: exact for float32
        input; float64 host input is compared with 32 random bits (to 2**-32).
      rng: where stochastic rounding's random bits come from. ``"threefry"`` (the
        default): ``jax.random.bits(key, x.shape)``, JAX's own stream. ``"hash"``: a
        counter-based hash of the key's data and each element's index, computed in the
        rounding's own loop (:mod:`fpsim._hashrng`): several times faster, a different
        (statistically tested) stream, the same number of random bits.

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
    mode = get_mode(rounding)
    if fmt.convention == "fnu":  # E8M0, the exponent-only scale type: its own rules
        return _e8m0.quantize(as_float_array(x), fmt, rounding, saturate=saturate)
    x64 = jax.config.jax_enable_x64
    if random_bits is not None:
        wide = x64 and (isinstance(x, float) or getattr(x, "dtype", None) == np.float64)
        width = 64 if wide else 32
        if not (isinstance(random_bits, int) and 1 <= random_bits <= width):
            raise ValueError(
                f"random_bits must be an int in 1..{width}, got {random_bits!r}"
            )
    _hashrng.check_rng(rng)
    key = _keys.canonical_key(key) if mode.needs_key else None
    if not x64 and not isinstance(x, jax.Array):  # host data: float64 is rounded there
        if isinstance(x, int) and not isinstance(x, bool):
            x = float(x)
        host = np.asarray(x)
        if host.dtype == np.float64:  # round once, exactly, from the float64 value
            if key is not None:
                opts = (saturate, subnormals, random_bits, rng)
                return _stochastic_host_f64(host, fmt, key, *opts)
            x = jnp.asarray(_host_round(host, fmt, mode, overflow=True))
    x = as_float_array(x, fmt, rounding)
    if key is None:
        return _rounder(fmt, rounding, saturate, subnormals, random_bits)(x)
    if rng == "hash":
        kd = _keys.key_data(key)
        return _rounder(fmt, rounding, saturate, subnormals, random_bits, rng)(x, kd)
    rand = _random_words(key, x.shape, _bits.carrier_of(x.dtype), random_bits)
    return _rounder(fmt, rounding, saturate, subnormals, random_bits)(x, rand)


def quantize_result(x: jax.Array, fmt: Format, rounding: str = "nearest", *,
                    saturate: bool = False) -> jax.Array:  # fmt: skip
    """``quantize(x, fmt, rounding, saturate=saturate)`` for a float32 ``x`` that float
    arithmetic computed (a sum, a product): the same bits, a little cheaper.

    A NaN such an ``x`` holds is quiet (IEEE 754 section 6.2: an operation on NaNs
    delivers a quiet NaN), and only a signalling NaN needs the guard that keeps
    ``quantize``'s NaN bits on the float16 fast path (:data:`QUIETS_SIGNALLING_NAN`).
    Deterministic modes; anything else is :func:`quantize`.
    """
    fmt = get_format(fmt)
    if not get_mode(rounding).deterministic or fmt.convention == "fnu":
        return quantize(x, fmt, rounding, saturate=saturate)
    x = as_float_array(x, fmt, rounding)
    return _rounder(fmt, rounding, saturate, True, None, quiet_nans=True)(x)


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

    At the top end there is no such value. ``next_up(fmt.max)`` (and anything above
    it) is then what rounding up overflows to: +inf for IEEE formats (``next_up(65504,
    "fp16")`` is inf), NaN for the FP8 "fn"/"fnuz" formats that have no inf
    (``next_up(448, "e4m3")`` is NaN), and ``max`` itself for formats with neither
    (``next_up(480, "e4m3_sat")`` is 480: it saturates, so the result is *not* greater
    than ``x`` there). NaN gives NaN; -inf gives ``-max``.
    """
    fmt = get_format(fmt)
    # host float64 data goes to the grid point at or below x first (exact), then one up
    return quantize(_carrier_step_up(as_float_array(x, fmt, "down")), fmt, "up")


def next_down(x: jax.typing.ArrayLike, fmt: FormatLike) -> jax.Array:
    """The largest value of ``fmt`` strictly less than ``x`` (``-next_up(-x)``).

    The mirror of :func:`next_up`: below ``-fmt.max`` it is -inf (IEEE), NaN ("fn",
    "fnuz") or ``-max`` itself (formats without special values: ``next_down(-480,
    "e4m3_sat")`` is -480). ``next_down(min_subnormal)`` is +0, also in the "fnuz"
    formats, which have no -0.
    """
    fmt = get_format(fmt)
    out = -next_up(-as_float_array(x, fmt, "up"), fmt)
    if fmt.convention == "fnuz":  # -(+0) is -0, a pattern fnuz formats do not have
        c = _bits.carrier_of(out.dtype)
        b = c.to_bits(out)
        out = c.from_bits(jnp.where(b == c.uint(c.sign_mask), c.uint(0), b))
    return out


@functools.partial(jax.jit, static_argnums=(2,))
def _ulp(q, x, fmt: Format):
    c = _bits.carrier_of(q.dtype)
    u = c.uint
    a = c.to_bits(q) & u(c.abs_mask)
    exponent = jnp.maximum((a >> c.mant).astype(jnp.int32) - c.bias, fmt.emin)
    exponent = jnp.minimum(exponent, fmt.emax) - fmt.mantissa_bits  # log2 of the spacing
    normal = (exponent + c.bias).astype(u) << c.mant
    tiny = u(1) << jnp.maximum(exponent + c.bias + c.mant - 1, 0).astype(u)
    out = c.from_bits(jnp.where(exponent >= 1 - c.bias, normal, tiny))
    special = (c.to_bits(x) & u(c.abs_mask)) >= u(c.inf_bits)  # of the input: inf, NaN
    return jnp.where(special, jnp.nan, out)


def ulp(x: jax.typing.ArrayLike, fmt: FormatLike) -> jax.Array:
    """The unit in the last place: the spacing of ``fmt``'s grid at ``|x|``.

    For ``2**e <= |x| < 2**(e+1)`` it is ``2**(e - mantissa_bits)``; in the subnormal
    range it stays at ``fmt.min_subnormal``; past ``fmt.max`` it is the spacing of the
    top binade. NaN for an infinite or NaN ``x`` (in every format, also those that
    have no inf or NaN). Rounding to nearest errs by at most ulp/2.

    Example:
      >>> import fpsim
      >>> float(fpsim.ulp(1.0, "fp16")), float(fpsim.ulp(2048.0, "fp16"))
      (0.0009765625, 2.0)
    """
    fmt = get_format(fmt)
    x = as_float_array(x, fmt)
    return _ulp(quantize(x, fmt, "toward_zero", saturate=True), x, fmt)
