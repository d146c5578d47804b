import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import ML_FORMATS, np_dtype

import fpsim


@pytest.mark.parametrize("fmt", ML_FORMATS + [fpsim.FP32], ids=str)
def test_properties_match_ml_dtypes_finfo(fmt):
    fi = ml_dtypes.finfo(np_dtype(fmt))
    assert fmt.bits == fi.bits
    assert fmt.exponent_bits == fi.nexp
    assert fmt.mantissa_bits == fi.nmant
    assert fmt.max == float(fi.max)
    assert fmt.min_normal == float(fi.smallest_normal)
    assert fmt.min_subnormal == float(fi.smallest_subnormal)
    assert fmt.eps == float(fi.eps)
    assert fmt.has_inf == bool(np.isinf(np.array(np.inf, np.float32).astype(fi.dtype)))


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("fp32", fpsim.FP32), ("FP16", fpsim.FP16), ("bf16", fpsim.BF16),
        ("e4m3", fpsim.E4M3), ("E5M2", fpsim.E5M2), ("float32", fpsim.FP32),
        ("float16", fpsim.FP16), ("bfloat16", fpsim.BF16), ("float8_e4m3fn", fpsim.E4M3),
        ("float8_e5m2", fpsim.E5M2), ("float8_e4m3fnuz", fpsim.E4M3FNUZ),
        ("float8_e5m2fnuz", fpsim.E5M2FNUZ), ("float6_e2m3fn", fpsim.E2M3),
        ("float6_e3m2fn", fpsim.E3M2), ("float4_e2m1fn", fpsim.E2M1), ("tf32", fpsim.TF32),
        ("TF32", fpsim.TF32), ("float8_e4m3", fpsim.E4M3_IEEE), ("float8_e3m4", fpsim.E3M4),
    ],
)  # fmt: skip
def test_get_format_names(name, fmt):
    assert fpsim.get_format(name) is fmt
    assert fpsim.get_format(fmt) is fmt


def test_every_ml_dtypes_name_maps_to_its_semantics():
    for fmt in ML_FORMATS:
        assert fpsim.get_format(fmt.dtype_name) == fmt


def test_unknown_format_lists_valid_names():
    with pytest.raises(ValueError, match="unknown format 'fp12'.*valid names:.*e4m3"):
        fpsim.get_format("fp12")
    with pytest.raises(TypeError, match="format name"):
        fpsim.get_format(16)
    with pytest.raises(ValueError, match="unknown format"):
        fpsim.quantize(1.0, "float7")


def test_three_meanings_of_e4m3():
    assert (fpsim.E4M3.max, fpsim.E4M3_IEEE.max, fpsim.E4M3_SAT.max) == (448, 240, 480)
    assert not fpsim.E4M3.has_inf and fpsim.E4M3_IEEE.has_inf
    assert not fpsim.E4M3_SAT.has_nan


def test_tf32_layout():
    t = fpsim.TF32
    assert (t.bits, t.exponent_bits, t.mantissa_bits, t.bias) == (19, 8, 10, 127)
    assert t.max == (2 - 2**-10) * 2.0**127
    assert t.min_normal == 2.0**-126 and t.min_subnormal == 2.0**-136
    assert t.eps == 2.0**-10


def test_custom_e5m6():
    f = fpsim.Format("e5m6", exponent_bits=5, mantissa_bits=6)
    assert (f.bits, f.bias, f.max, f.eps) == (12, 15, (2 - 2**-6) * 2.0**15, 2.0**-6)
    assert f.min_subnormal == 2.0 ** (-14 - 6)
    assert float(fpsim.quantize(1 + 2**-7, f)) == 1.0  # tie to even
    assert float(fpsim.quantize(1 + 3 * 2**-7, f)) == 1 + 2**-5
    assert np.isinf(float(fpsim.quantize(1e6, f)))
    assert fpsim.encode(1.0, f).dtype == jnp.uint16
    assert int(fpsim.encode(1.0, f)) == 15 << 6


def test_num_values_counts_non_nan_codes():
    for fmt in [f for f in fpsim.FORMATS if f.bits <= 16]:
        codes = np.arange(1 << fmt.bits, dtype=np.uint32)
        assert fmt.num_values == int(
            np.isfinite(np.asarray(fpsim.decode(codes, fmt))).sum()
            + np.isinf(np.asarray(fpsim.decode(codes, fmt))).sum()
        )


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        (dict(exponent_bits=9, mantissa_bits=3), "exponent_bits"),
        (dict(exponent_bits=4, mantissa_bits=24), "mantissa_bits"),
        (dict(exponent_bits=4, mantissa_bits=3, convention="ocp"), "convention"),
        (dict(exponent_bits=8, mantissa_bits=3, bias=200), "float32"),
        (dict(exponent_bits=3, mantissa_bits=0), "NaN"),
    ],
)
def test_invalid_formats_are_rejected(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        fpsim.Format("bad", **kwargs)


def test_format_is_a_static_jit_argument():
    g = jax.jit(lambda x, fmt: fpsim.quantize(x, fmt), static_argnums=1)
    x = jnp.float32(1.1)
    a = g(x, fpsim.Format("e4m3", 4, 3, None, "fn"))
    b = g(x, fpsim.E4M3)  # equal and hashable: the cache is shared
    assert hash(fpsim.E4M3) == hash(fpsim.Format("e4m3", 4, 3, None, "fn"))
    assert float(a) == float(b) == 1.125
    with pytest.raises(dataclasses.FrozenInstanceError):
        fpsim.E4M3.mantissa_bits = 4


def test_derived_facts():
    assert fpsim.FP16.decimal_digits == pytest.approx(11 * math.log10(2))
    assert fpsim.FP16.dynamic_range == pytest.approx(math.log2(65504) + 24)  # 2^-24..65504
    assert fpsim.BF16.unit_roundoff == 2.0**-8


@pytest.mark.parametrize(
    "dtype, fmt",
    [
        (jnp.float16, fpsim.FP16), (jnp.bfloat16, fpsim.BF16), (jnp.float32, fpsim.FP32),
        (np.float32, fpsim.FP32), (np.dtype("float16"), fpsim.FP16),
        (jnp.dtype(jnp.bfloat16), fpsim.BF16), (ml_dtypes.float8_e5m2, fpsim.E5M2),
        (ml_dtypes.float8_e4m3fn, fpsim.E4M3), (ml_dtypes.float8_e4m3fnuz, fpsim.E4M3FNUZ),
        (np.dtype(ml_dtypes.float4_e2m1fn), fpsim.E2M1),
        (ml_dtypes.float8_e4m3, fpsim.E4M3_IEEE),
    ],
)  # fmt: skip
def test_get_format_accepts_dtypes(dtype, fmt):
    assert fpsim.get_format(dtype) is fmt  # before: TypeError
    assert float(fpsim.quantize(1 + 2**-9, dtype)) == float(fpsim.quantize(1 + 2**-9, fmt))


def test_dtypes_without_a_format_are_refused_clearly():
    for dtype in (np.float64, np.dtype("int8"), jnp.int32, float):
        with pytest.raises(
            ValueError, match="has no fpsim format; dtypes with one:.*bfloat16"
        ):
            fpsim.get_format(dtype)
    for bad in (None, True, 2.5, [1]):
        with pytest.raises(TypeError, match="expected a format name"):
            fpsim.get_format(bad)


@pytest.mark.parametrize("name", ["mxfp4", "mxfp6", "MXFP8", "nvfp4", "mxint8"])
def test_block_formats_are_not_element_formats(name):
    with pytest.raises(ValueError, match=r"block-scaled format.*fpsim.get_block_format\("):
        fpsim.get_format(name)
    assert name.lower() not in fpsim.format_names()
