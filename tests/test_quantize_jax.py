"""quantize as a JAX citizen: jit, vmap, grad, shapes; and the inputs it accepts."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from conftest import assert_bits_equal, ml_round

import fpsim


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 3, 4, 5)])
def test_shapes_and_dtype(shape, rng):
    x = rng.normal(size=shape).astype(np.float32) * 100
    got = fpsim.quantize(x, fpsim.E5M2)
    assert got.shape == shape and got.dtype == jnp.float32
    assert_bits_equal(got, ml_round(x, fpsim.E5M2))


def test_jit_and_vmap_agree_with_eager(rng):
    x = rng.normal(size=(8, 64)).astype(np.float32)
    eager = fpsim.quantize(x, fpsim.E4M3)
    jitted = jax.jit(lambda v: fpsim.quantize(v, fpsim.E4M3))(x)
    vmapped = jax.vmap(lambda v: fpsim.quantize(v, "e4m3"))(x)
    assert_bits_equal(jitted, eager)
    assert_bits_equal(vmapped, eager)
    keys = jax.random.split(jax.random.key(0), 8)
    sr = jax.vmap(lambda v, k: fpsim.quantize(v, fpsim.E4M3, "stochastic", key=k))(x, keys)
    assert sr.shape == x.shape
    assert_bits_equal(sr[3], fpsim.quantize(x[3], fpsim.E4M3, "stochastic", key=keys[3]))


def test_grad_is_straight_through():
    f = lambda x: jnp.sum(fpsim.quantize(x, fpsim.E4M3) * jnp.arange(3.0))  # noqa: E731
    g = jax.grad(f)(jnp.float32([0.1, 500.0, -3.3]))
    assert np.asarray(g).tolist() == [0.0, 1.0, 2.0]
    g_sr = jax.grad(
        lambda x: jnp.sum(fpsim.quantize(x, "fp16", "stochastic", key=jax.random.key(0)))
    )(jnp.ones(4))
    assert np.asarray(g_sr).tolist() == [1.0] * 4
    jvp = jax.jvp(
        lambda x: fpsim.quantize(x, "bf16"), (jnp.float32(1.001),), (jnp.float32(2),)
    )
    assert float(jvp[1]) == 2.0


def test_no_recompilation_for_equal_formats():
    f = jax.jit(lambda x, fmt: fpsim.quantize(x, fmt), static_argnums=1)
    x = jnp.ones(4)
    f(x, fpsim.FP16)
    with jax.log_compiles(True):
        import logging

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("jax").addHandler(handler)
        try:
            f(x, fpsim.get_format("float16"))
        finally:
            logging.getLogger("jax").removeHandler(handler)
    assert not [r for r in records if "Compiling" in r.getMessage()]


def test_python_scalars_numpy_and_narrow_floats():
    assert float(fpsim.quantize(3, "e4m3")) == 3.0
    assert float(fpsim.quantize(0.1, "fp16")) == float(np.float16(0.1))
    assert fpsim.quantize([1.0, 2.5], "e2m1").tolist() == [1.0, 2.0]
    bf = jnp.asarray([2.0**-130, 1.5], jnp.bfloat16)  # a bfloat16 subnormal survives
    assert np.asarray(fpsim.quantize(bf, "bf16")).tolist() == [2.0**-130, 1.5]
    h = np.float16([6e-8, 1000.0])
    assert np.asarray(fpsim.quantize(h, "fp16")).tolist() == h.astype(np.float32).tolist()
    e = np.array([448.0], ml_dtypes.float8_e4m3fn)
    assert fpsim.quantize(e, "e5m2").tolist() == [448.0]


def test_float64_host_input_is_rounded_once():
    # 1 + 2^-11 is an fp16 tie; a hair above must round up. Rounding to float32 first
    # by nearest would land on the tie and round down (double rounding).
    x = 1 + 2**-11 + 2**-40
    assert float(fpsim.quantize(np.float64(x), "fp16")) == 1 + 2**-10
    assert float(fpsim.quantize(np.float64(x).astype(np.float32), "fp16")) == 1.0
    assert float(fpsim.quantize(x, "fp32")) == float(np.float32(x))


def test_float64_under_x64():
    with jax.enable_x64(True):
        x = jnp.asarray([1 + 2**-11 + 2**-40, 1e300, 2.0**-150, -0.0], jnp.float64)
        got = fpsim.quantize(x, "fp16")
        assert got.dtype == jnp.float64
        assert np.asarray(got).tolist()[:3] == [1 + 2**-10, np.inf, 0.0]
        f32 = fpsim.quantize(jnp.float64(1 + 2**-30), "fp32")
        assert float(f32) == 1.0 and f32.dtype == jnp.float64


@pytest.mark.parametrize(
    "bad, err",
    [
        (np.arange(3), "floating-point input"),
        (jnp.arange(3), "floating-point input"),
        (np.array([1 + 2j]), "floating-point input"),
        (True, "booleans"),
        (np.array([True]), "booleans"),
    ],
)
def test_bad_inputs_raise_clearly(bad, err):
    with pytest.raises(TypeError, match=err):
        fpsim.quantize(bad, "fp16")


def test_unknown_rounding_mode_lists_choices():
    with pytest.raises(
        ValueError, match="unknown rounding mode 'nearest_even'.*toward_zero"
    ):
        fpsim.quantize(1.0, "fp16", "nearest_even")


def test_float64_host_input_to_float32_in_every_mode():
    below, above = np.nextafter(np.float32(0.1), np.float32(0)), np.float32(0.1)
    assert float(np.float32(0.1)) > 0.1  # float32's nearest 0.1 lies above 0.1
    assert float(fpsim.quantize(0.1, "fp32", "toward_zero")) == float(below)
    assert float(fpsim.quantize(0.1, "fp32", "down")) == float(below)
    assert float(fpsim.quantize(0.1, "fp32", "up")) == float(above)
    assert float(fpsim.quantize(1 + 2**-30, "fp32", "up")) == 1 + 2**-23
    assert float(fpsim.quantize(-1e300, "fp32", "up")) == -np.finfo(np.float32).max
    e8m22 = fpsim.Format("e8m22", 8, 22)
    assert float(fpsim.quantize(1 + 2**-23 + 2**-40, e8m22, "up")) == 1 + 2**-22
    # stochastic rounding of float64 host data is exact too (it used to raise)
    sr = fpsim.quantize(np.full(4000, 0.1), "fp32", "stochastic", key=jax.random.key(0))
    assert set(np.unique(np.asarray(sr)).tolist()) == {float(below), float(above)}
    p_up = (0.1 - float(below)) / (float(above) - float(below))
    assert abs(np.mean(np.asarray(sr) == above) - p_up) < 4 * np.sqrt(p_up / 4000)
