"""``quantize_blocks``, ``encode_blocks``, ``decode_blocks``: the public entry points.

Blocks are consecutive runs of ``block_size`` elements along ``axis``, or tiles of
``block_shape`` over a pair of axes, or the whole tensor (``per_tensor``). The axis
lengths must be multiples of the block's (as torchao requires): a trailing partial block
is a clear error, not silently padded; pad with zeros yourself (zeros never change a
block's amax) if that is what you mean. For float32-scale formats ``BlockCodes.scales``
holds the float32 scales themselves.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fpsim._keys import canonical_key
from fpsim.blocks import _fp32scale, _mx, _nvfp4
from fpsim.blocks._format import BlockFormat, check_scale_mode, get_block_format
from fpsim.formats import FP32
from fpsim.rounding import as_float_array, check_rounding


class BlockCodes(NamedTuple):
    """A block-scaled tensor as stored: element codes, scale codes, tensor scale.

    Attributes:
      elements: uint8 codes, ``x``'s shape (ml_dtypes' code of each element; MXINT8:
        the two's-complement byte).
      scales: uint8 scale codes (E8M0 or E4M3), ``x``'s shape with the axis length
        divided by the block size.
      tensor_scale: float32 scalar (NVFP4), else None.
    """

    elements: jax.Array
    scales: jax.Array
    tensor_scale: jax.Array | None


def _resolve(bfmt, scale_mode):
    bfmt = get_block_format(bfmt)
    if scale_mode is None:
        return bfmt, bfmt.scale_mode
    check_scale_mode(scale_mode, bfmt.scale)
    if bfmt.tensor_scale:
        raise ValueError(
            f"{bfmt.name} chooses its E4M3 block scales by rounding to nearest; "
            "scale_mode applies to E8M0 (MX) formats only"
        )
    if scale_mode == "rceil" and bfmt.element == "int8":
        raise ValueError("scale_mode 'rceil' is defined for float elements, not MXINT8")
    return bfmt, scale_mode


def _axes(ndim: int, bfmt: BlockFormat, axis) -> tuple[int, ...]:
    """The axes blocks run along, normalised: one, two (tiles) or all (per tensor)."""
    if bfmt.per_tensor:
        return tuple(range(ndim))
    want = 2 if bfmt.block_shape is not None else 1
    if want == 2 and axis == -1:
        axis = (-2, -1)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if len(axes) != want or not all(isinstance(a, int) for a in axes):
        raise ValueError(
            f"{bfmt.name} needs {'a pair of axes' if want == 2 else 'one axis'}, "
            f"got {axis!r}"
        )
    norm = tuple(a + ndim if a < 0 else a for a in axes)
    if not all(0 <= a < ndim for a in norm) or len(set(norm)) != len(norm):
        raise ValueError(f"axis {axis} is out of range for an array of {ndim} dims")
    return norm


def _block_dims(bfmt: BlockFormat) -> tuple[int, ...]:
    return bfmt.block_shape if bfmt.block_shape is not None else (bfmt.block_size,)


def _check_lengths(shape, bfmt: BlockFormat, axes, what: str = "axis") -> None:
    if bfmt.per_tensor:
        return
    for a, b in zip(axes, _block_dims(bfmt), strict=True):
        n = shape[a]
        if n < b or n % b:
            raise ValueError(
                f"{what} {a} has length {n}, not a multiple of {bfmt.name}'s block size "
                f"{b} (a trailing partial block is not allowed; pad with zeros)"
            )


def _prepare(x, bfmt: BlockFormat, rounding: str, axis):
    check_rounding(rounding)
    if hasattr(x, "dtype") and not jnp.issubdtype(jnp.dtype(x.dtype), jnp.floating):
        raise TypeError(
            f"quantize_blocks takes floating-point input, got dtype {x.dtype}; "
            "cast integers with .astype(float32)"
        )
    x = as_float_array(x).astype(jnp.float32)
    if x.ndim == 0:
        raise ValueError("block quantization needs at least one axis; got a scalar")
    if bfmt.scale == FP32 and rounding not in _fp32scale.ROUNDINGS:
        raise ValueError(
            f"{bfmt.name}: rounding {rounding!r} is not offered with float32 scales; "
            f"valid: {', '.join(_fp32scale.ROUNDINGS)}"
        )
    axes = _axes(x.ndim, bfmt, axis)
    _check_lengths(x.shape, bfmt, axes)
    return x, axes


def _to_blocks(x, axes, bfmt: BlockFormat):
    """``(..., n_blocks..., block_size)``: the blocked axes last, one block per row."""
    if bfmt.per_tensor:
        return x.reshape(-1)
    k = len(axes)
    xm = jnp.moveaxis(x, axes, tuple(range(-k, 0)))
    lead = xm.shape[:-k]
    if k == 1:
        b = bfmt.block_size
        return xm.reshape(*lead, xm.shape[-1] // b, b)
    (r, c), (n0, n1) = bfmt.block_shape, xm.shape[-2:]
    xt = xm.reshape(*lead, n0 // r, r, n1 // c, c)
    return jnp.swapaxes(xt, -3, -2).reshape(*lead, n0 // r, n1 // c, r * c)


def _from_blocks(xb, axes, bfmt: BlockFormat, shape):
    if bfmt.per_tensor:
        return xb.reshape(shape)
    k = len(axes)
    if k == 1:
        xm = xb.reshape(*xb.shape[:-2], -1)
    else:
        (r, c), (m0, m1) = bfmt.block_shape, xb.shape[-3:-1]
        xt = xb.reshape(*xb.shape[:-3], m0, m1, r, c)
        xm = jnp.swapaxes(xt, -3, -2).reshape(*xb.shape[:-3], m0 * r, m1 * c)
    return jnp.moveaxis(xm, tuple(range(-k, 0)), axes)


def _scales_out(sc, axes, bfmt: BlockFormat):
    """Per-block array ``(..., n_blocks...)`` -> the scales' layout (x's axes)."""
    if bfmt.per_tensor:
        return sc.reshape(())
    k = len(axes)
    return jnp.moveaxis(sc, tuple(range(-k, 0)), axes)


def _scales_in(sc, axes, bfmt: BlockFormat):
    if bfmt.per_tensor:
        return sc.reshape(())
    k = len(axes)
    return jnp.moveaxis(sc, axes, tuple(range(-k, 0)))


def parts(xb, key, bfmt: BlockFormat, mode, rounding, random_bits):
    """One quantization of blocks laid out along the last axis, in its three parts.

    Returns ``(elements, values, scales, tensor_scale)``: the elements on their own
    grid (float32), the values they represent (``element * scale``, float32), the
    block scales as stored (E8M0 codes as int32; NVFP4's E4M3 block scales as float32
    values; float32 scales) and NVFP4's float32 tensor scale (else None).
    :func:`quantize_blocks` keeps the values, :func:`encode_blocks` encodes the
    elements and scales, :func:`fpsim.blocks.quantize_with_summary` counts what the
    elements lost (XLA drops what a caller does not use).
    """
    if bfmt.scale == FP32:
        s = _fp32scale.scales(xb, bfmt, mode)
        q = _fp32scale.elements(xb, s, bfmt, mode, rounding, key, random_bits)
        return q, _fp32scale.dequantize(q, s, mode), s, None
    if bfmt.tensor_scale:
        ts, bs, safe_ts = _nvfp4.scales(xb)
        q = _nvfp4.elements(xb, ts, bs, safe_ts, rounding, key, random_bits)
        return q, _nvfp4.dequantize(q, ts, bs), bs, ts
    code = _mx.scale_codes(xb, bfmt, mode)
    q = _mx.elements(xb, code, bfmt, mode, rounding, key, random_bits)
    return q, _mx.apply_scale(q, code), code, None


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _quantize(x, key, bfmt, mode, rounding, random_bits, ax):
    _, out, _, _ = parts(_to_blocks(x, ax, bfmt), key, bfmt, mode, rounding, random_bits)
    return _from_blocks(out, ax, bfmt, x.shape)


def checked(x, bfmt, axis, scale_mode, rounding, key, random_bits):
    """The arguments of :func:`quantize_blocks`, validated: ``(x as float32, format,
    scale mode, blocked axes, key or None)``."""
    bfmt, mode = _resolve(bfmt, scale_mode)
    x, ax = _prepare(x, bfmt, rounding, axis)
    if rounding == "stochastic":
        key = canonical_key(key, what="quantize_blocks(..., rounding='stochastic')")
    else:
        key = None
    if random_bits is not None and not (
        isinstance(random_bits, int) and 1 <= random_bits <= 32
    ):
        raise ValueError(f"random_bits must be an int in 1..32, got {random_bits!r}")
    return x, bfmt, mode, ax, key


def quantize_blocks(
    x: jax.typing.ArrayLike,
    bfmt: BlockFormat | str,
    *,
    axis: int | tuple[int, int] = -1,
    scale_mode: str | None = None,
    rounding: str = "nearest",
    key: jax.Array | None = None,
    random_bits: int | None = None,
) -> jax.Array:
    """Round ``x`` to a block-scaled format: the values it represents, as float32.

    Each run of ``block_size`` consecutive elements along ``axis`` shares one scale,
    chosen from the block's largest magnitude (see :mod:`fpsim.blocks` for the scale
    modes); each element is ``x / scale`` rounded to the element format and saturated
    at its max. The result is ``element * scale`` for every element, bit for bit as
    :func:`decode_blocks` of :func:`encode_blocks` gives it.

    Args:
      x: floating-point array; the axis length must be a multiple of the block size.
      bfmt: a :class:`BlockFormat` or a name (``"mxfp8"``, ``"mxfp4"``, ``"nvfp4"``...).
      axis: the axis along which blocks run; for 2-D tiles (``bfmt.block_shape``) a
        pair of axes, by default the last two; ignored for per-tensor formats.
      scale_mode: ``"floor"``, ``"ceil"``, ``"even"`` or ``"rceil"``; overrides
        ``bfmt.scale_mode`` (MX formats only).
      rounding: how elements round: ``"nearest"`` (ties to even), the directed modes,
        or ``"stochastic"`` (needs ``key``; ``random_bits=8`` draws 8 bits per element
        as NVFP4 hardware does).
      key: a JAX random key for stochastic rounding.
      random_bits: see :func:`fpsim.quantize`.

    Example:
      >>> import numpy as np
      >>> from fpsim.blocks import quantize_blocks
      >>> x = np.full(32, 957.0, np.float32)  # saturates: 957 / 2 > 448
      >>> float(quantize_blocks(x, "mxfp8")[0])
      896.0
    """
    x, bfmt, mode, ax, key = checked(x, bfmt, axis, scale_mode, rounding, key, random_bits)
    return _quantize(x, key, bfmt, mode, rounding, random_bits, ax)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _encode(x, bfmt, mode, ax):
    xb = _to_blocks(x, ax, bfmt)
    q, _, scales, ts = parts(xb, None, bfmt, mode, "nearest", None)
    if bfmt.scale == FP32:
        elements = _fp32scale.element_codes(q, bfmt)
    elif bfmt.tensor_scale:
        elements, scales = _nvfp4.element_codes(q), _nvfp4.scale_codes(scales)
    else:
        elements, scales = _mx.element_codes(q, bfmt), scales.astype(jnp.uint8)
    scales = _scales_out(scales, ax, bfmt)
    return BlockCodes(_from_blocks(elements, ax, bfmt, x.shape), scales, ts)


def encode_blocks(
    x: jax.typing.ArrayLike,
    bfmt: BlockFormat | str,
    *,
    axis: int | tuple[int, int] = -1,
    scale_mode: str | None = None,
) -> BlockCodes:
    """The stored form of ``x`` in a block format: :class:`BlockCodes`.

    Elements round to nearest even (as :func:`quantize_blocks` with its defaults).

    Example:
      >>> import numpy as np
      >>> from fpsim.blocks import encode_blocks
      >>> codes = encode_blocks(np.linspace(-1, 1, 32, dtype=np.float32), "mxfp4")
      >>> int(codes.scales[0]), hex(int(codes.elements[-1]))  # 2**-2 * 4.0 (code 0x6)
      (125, '0x6')
    """
    bfmt, mode = _resolve(bfmt, scale_mode)
    x, ax = _prepare(x, bfmt, "nearest", axis)
    return _encode(x, bfmt, mode, ax)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _decode(elements, scales, ts, bfmt, ax):
    eb = _to_blocks(elements, ax, bfmt)
    sc = _scales_in(scales, ax, bfmt)
    if bfmt.scale == FP32:
        out = _fp32scale.dequantize(_fp32scale.element_values(eb, bfmt), sc, "amax")
    elif bfmt.tensor_scale:
        q = _nvfp4.element_values(eb)
        out = _nvfp4.dequantize(q, ts, _nvfp4.scale_values(sc))
    else:
        q = _mx.element_values(eb, bfmt)
        out = _mx.apply_scale(q, sc.astype(jnp.int32))
    return _from_blocks(out, ax, bfmt, elements.shape)


def decode_blocks(
    codes: BlockCodes, bfmt: BlockFormat | str, *, axis: int | tuple[int, int] = -1
) -> jax.Array:
    """float32 values of a :class:`BlockCodes`: ``decode_blocks(encode_blocks(x)) ==
    quantize_blocks(x)``.

    Raises:
      ValueError: if the shapes of elements and scales do not fit ``bfmt`` and ``axis``,
        or NVFP4 codes come without a tensor scale.
    """
    bfmt = get_block_format(bfmt)
    elements, scales, ts = codes
    elements, scales = jnp.asarray(elements), jnp.asarray(scales)
    fp32 = bfmt.scale == FP32
    for name, arr in (("elements", elements), ("scales", scales)):
        if not (jnp.issubdtype(arr.dtype, jnp.integer) or (fp32 and name == "scales")):
            raise TypeError(f"{name} must be integer codes, got dtype {arr.dtype}")
    ax = _axes(elements.ndim, bfmt, axis)
    _check_lengths(elements.shape, bfmt, ax, what="elements' axis")
    want = list(elements.shape)
    if bfmt.per_tensor:
        want = []
    else:
        for a, b in zip(ax, _block_dims(bfmt), strict=True):
            want[a] //= b
    if tuple(scales.shape) != tuple(want):
        raise ValueError(f"scales have shape {scales.shape}, expected {tuple(want)}")
    if bfmt.tensor_scale:
        if ts is None:
            raise ValueError(f"{bfmt.name} codes need a tensor_scale, got None")
        ts = jnp.asarray(ts, jnp.float32)
    else:
        ts = None
    scales = scales.astype(jnp.float32 if fp32 else jnp.uint8)
    return _decode(elements.astype(jnp.uint8), scales, ts, bfmt, ax)
