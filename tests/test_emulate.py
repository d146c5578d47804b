"""emulate(fn, policy): correct rounding of basic ops, control flow, Flax, the report."""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _numerics_ref import grid_values, rnd, seq_sum

import fpsim

OPS = {
    "add": (lambda a, b: a + b, lambda a, b: a + b),
    "sub": (lambda a, b: a - b, lambda a, b: a - b),
    "mul": (lambda a, b: a * b, lambda a, b: a * b),
    "div": (lambda a, b: a / b, lambda a, b: a / b),
}
FORMATS = [fpsim.FP16, fpsim.BF16, fpsim.E4M3, fpsim.E5M2]


def _same(got: float, want: float) -> bool:
    return (math.isnan(got) and math.isnan(want)) or got == want


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("op", list(OPS))
def test_basic_ops_correctly_rounded(fmt, op):
    """float32 compute + one rounding == exact rational result rounded once (2p+2 <= 24).

    Operands cover every binade of the format, so results include subnormals, overflow
    and (for BF16) float32 subnormals, which XLA on CPU flushes to zero: the boundary.
    """
    jop, exact = OPS[op]
    a, b = grid_values(fmt, 400, 1), grid_values(fmt, 400, 2)
    b = np.where(b == 0, np.float32(1), b) if op == "div" else b
    got = np.asarray(jax.jit(fpsim.emulate(jop, compute=fmt))(a, b))
    flushed = 0
    for x, y, g in zip(a, b, got, strict=True):
        if fmt is fpsim.BF16:  # XLA on CPU: float32 subnormal inputs and results are 0
            x, y = (v if abs(v) >= 2.0**-126 else np.float32(0) for v in (x, y))
            if op == "div" and y == 0:
                continue
        want = rnd(exact(Fraction(float(x)), Fraction(float(y))), fmt)
        if fmt is fpsim.BF16 and 0 < abs(want) < 2.0**-126:
            want, flushed = 0.0, flushed + 1
        assert _same(float(g), want), (float(x), op, float(y), float(g), want)
    if fmt is fpsim.BF16 and op == "mul":
        assert flushed > 0  # the boundary is really exercised


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_sqrt_correctly_rounded(fmt):
    a = np.abs(grid_values(fmt, 400, 3, min_abs=2.0**-100))
    got = np.asarray(fpsim.emulate(jnp.sqrt, compute=fmt)(a))
    for x, g in zip(a, got, strict=True):
        # float64 sqrt is correctly rounded; 53 >= 2p + 2, so rounding it again is too
        assert float(g) == rnd(math.sqrt(float(x)), fmt)


def test_bf16_operands_below_float32_normal_are_flushed():
    tiny = np.float32(2.0**-130)  # a BF16 subnormal (and float32 subnormal)
    got = fpsim.emulate(lambda a, b: a + b, compute="bf16")(tiny, np.float32(0.0))
    assert float(got) == 0.0  # exact answer 2**-130: documented limitation on CPU


def test_fp32_policy_is_identity_through_control_flow():
    def f(x, w):
        y = jax.jit(lambda a: jnp.tanh(a @ w))(x)
        y = jax.nn.relu(y)
        c = jax.lax.scan(lambda c, xi: (c * 0.5 + xi.sum(), c), 0.0, y)
        d = jax.lax.while_loop(
            lambda s: s[0] < 3, lambda s: (s[0] + 1, s[1] * 1.5), (0, c[0])
        )
        e = jax.lax.cond(d[1] > 0, lambda a: a * 2, lambda a: a - 1, d[1])
        return e + jax.nn.logsumexp(y), c[1]

    x = jax.random.normal(jax.random.key(0), (4, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3))
    em = fpsim.emulate(f, compute="fp32")
    for got, want in zip(jax.jit(em)(x, w), jax.jit(f)(x, w), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert {"scan", "while", "cond", "jit", "custom_jvp_call"} <= {
        p for p, _ in em.report.counts
    }


def test_scan_rounds_every_step():
    x = jnp.ones(3000)
    f = fpsim.emulate(lambda v: jax.lax.scan(lambda c, t: (c + t, None), 0.0, v)[0], "fp16")
    assert float(jax.jit(f)(x)) == 2048.0  # the FP16 accumulator stalls inside scan too
    data = np.random.default_rng(0).uniform(-3, 3, 50).astype(np.float32)
    data = np.asarray(fpsim.quantize(data, "fp16"))
    assert float(f(data)) == float(seq_sum(data.tolist(), fpsim.FP16))


def test_reduce_sum_and_dot_follow_accumulation():
    pol = fpsim.EmulationPolicy(
        compute="fp16", accumulation=fpsim.Accumulation(accum="fp16", order="sequential")
    )
    assert float(fpsim.emulate(jnp.sum, pol)(jnp.ones(3000))) == 2048.0
    a = jnp.ones((2, 3000))
    assert float(fpsim.emulate(lambda a: a @ a.T, pol)(a)[0, 1]) == 2048.0
    # the default keeps float32 accumulation (XLA's dot), then rounds the result
    assert float(fpsim.emulate(lambda a: a @ a.T, compute="fp16")(a)[0, 1]) == 3000.0


def test_grad_composes_and_overrides():
    def loss(w, x):
        return jnp.mean(jnp.exp(jnp.tanh(x @ w)))

    x = jax.random.normal(jax.random.key(0), (8, 5))
    w = jax.random.normal(jax.random.key(1), (5, 3))
    em = fpsim.emulate(jax.grad(loss), fpsim.EmulationPolicy.autocast("bf16"))
    g = jax.jit(em)(w, x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(loss)(w, x)), rtol=0.1,
                               atol=1e-2)  # fmt: skip
    assert ("exp", "float32") in em.report.counts
    assert ("tanh", "bf16") in em.report.counts
    assert set(np.asarray(g).ravel()) <= set(np.asarray(fpsim.quantize(g, "bf16")).ravel())
    gg = jax.grad(fpsim.emulate(loss, compute="fp16"))(w, x)  # straight-through
    assert np.all(np.isfinite(np.asarray(gg)))


def test_unknown_primitive_is_reported():
    em = fpsim.emulate(lambda x: jax.lax.top_k(x * 1.1, 2)[0], compute="fp16")
    out = em(jnp.array([1.0, 3.0, 2.0]))
    assert em.report.unknown == ["top_k"]
    assert "top_k" in str(em.report)
    assert float(out[0]) == float(fpsim.quantize(3.0 * 1.1, "fp16"))


def test_flax_model_apply():
    nn = pytest.importorskip("flax.linen")

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(8)(x)))

    model = MLP()
    x = jax.random.normal(jax.random.key(0), (4, 5))
    params = model.init(jax.random.key(1), x)
    em = fpsim.emulate(model.apply, compute="fp16")
    y = jax.jit(em)(params, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(model.apply(params, x)), atol=2e-2)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(fpsim.quantize(y, "fp16")))


def test_policy_validation():
    with pytest.raises(ValueError, match="valid"):
        fpsim.EmulationPolicy(compute="fp17")
    for mode in ("stochastic", "up", "toward_zero"):  # double rounding would be wrong
        with pytest.raises(ValueError, match="nearest' only"):
            fpsim.EmulationPolicy(rounding=mode)
    with pytest.raises(ValueError, match="order"):
        fpsim.Accumulation(order="backwards")
    with pytest.raises(TypeError):
        fpsim.emulate(jnp.sin, 3)
    assert hash(fpsim.EmulationPolicy(overrides={"exp": None}))
