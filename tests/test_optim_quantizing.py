"""Low-precision gradients, optimizer state and parameters; stagnation and its repair."""

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import fpsim

BF16 = ml_dtypes.bfloat16


def on_grid(x, dtype=BF16):
    x = np.asarray(x, np.float32)
    return np.array_equal(x.astype(dtype).astype(np.float32), x)


def test_quantize_updates_rounds_and_counts():
    g = {"a": jnp.array([1e-9, 1e5, 1.0 + 2**-12, 0.0]), "b": jnp.array([-7e4, 3.0])}
    opt = fpsim.optim.quantize_updates("fp16")
    q, state = jax.jit(opt.update)(g, opt.init(g))
    with np.errstate(over="ignore"):
        want = np.array([1e-9, 1e5, 1.0 + 2**-12, 0.0], np.float32).astype(np.float16)
    np.testing.assert_array_equal(q["a"], want.astype(np.float32))
    assert (int(state.underflow), int(state.overflow)) == (1, 2)
    _, state = opt.update(g, state)
    assert (int(state.total_underflow), int(state.total_overflow)) == (2, 4)


@pytest.mark.parametrize("rounding", ["nearest", "toward_zero"])
def test_quantize_updates_counts_flushed_subnormals_as_underflow(rounding):
    # 1e-6 and 3e-7 are FP16 subnormals: flushed with subnormals=False, they are lost too
    g = jnp.array([1e-6, 3e-7, 1.0, 1e-9, -1e-6, 0.0, jnp.inf])
    opt = fpsim.optim.quantize_updates("fp16", rounding, subnormals=False)
    q, state = jax.jit(opt.update)(g, opt.init(g))
    np.testing.assert_array_equal(q[:6], [0, 0, 1, 0, 0, 0])
    assert int(state.underflow) == 4
    assert int(state.overflow) == 0
    keep = fpsim.optim.quantize_updates("fp16", rounding)  # with subnormals: only 1e-9
    assert int(keep.update(g, keep.init(g))[1].underflow) == 1


def test_quantize_updates_stochastic_is_reproducible_and_counts():
    g = jnp.full((1000,), 1.0 + 2**-9)  # a quarter of the way from 1 to 1 + 2**-7 in bf16
    opt = fpsim.optim.quantize_updates("bf16", "stochastic", key=jax.random.key(3))
    s0 = opt.init(g)
    q1, s1 = opt.update(g, s0)
    q1b, _ = opt.update(g, s0)
    q2, _ = opt.update(g, s1)
    np.testing.assert_array_equal(q1, q1b)  # same state, same bits
    assert not np.array_equal(q1, q2)  # the key advances every step
    assert set(np.unique(np.asarray(q1)).tolist()) <= {1.0, 1.0 + 2**-7}
    assert 0.15 < float(np.mean(np.asarray(q1) > 1.0)) < 0.35
    tiny = fpsim.optim.quantize_updates("e4m3", "stochastic", key=jax.random.key(0))
    _, st = tiny.update(jnp.array([1e-6, 1e4, 1.0]), tiny.init(None))
    assert (int(st.underflow), int(st.overflow)) == (1, 1)
    with pytest.raises(ValueError, match="key"):
        fpsim.optim.quantize_updates("bf16", "stochastic")
    with pytest.raises(ValueError, match="nearest"):
        fpsim.optim.quantize_updates("bf16", "round_half_up")


def test_quantize_optimizer_state_keeps_adam_moments_on_grid():
    opt = fpsim.optim.quantize_optimizer_state(optax.adam(0.1), "bf16")
    params = jnp.array([0.3, -1.7, 2.2])
    state = opt.init(params)
    for i in range(4):
        u, state = opt.update(jnp.array([0.1, 1.3, -0.77]) * (i + 1), state, params)
        params = optax.apply_updates(params, u)
    adam = state.inner_state[0]
    assert on_grid(adam.mu) and on_grid(adam.nu)
    assert adam.count.dtype == jnp.int32 and int(adam.count) == 4


def test_params_land_exactly_on_the_grid():
    key = jax.random.key(0)
    params = {"w": fpsim.quantize(jax.random.normal(key, (64,)), "bf16"), "b": jnp.zeros(3)}
    for rounding in ("nearest", "stochastic"):
        opt = optax.chain(
            optax.adam(0.05), fpsim.optim.quantize_params("bf16", rounding, key=key)
        )
        p, state = params, opt.init(params)
        update = jax.jit(opt.update)
        for i in range(20):
            g = jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 1)) + 0.01, p)
            u, state = update(g, state, p)
            p = optax.apply_updates(p, u)
            assert on_grid(p["w"]) and on_grid(p["b"])
        assert int(state[1].inexact) == 0


def round_bf16_exact(v: float) -> float:
    """Nearest-even rounding of a float64 value to 8 significant bits (normal range)."""
    if v == 0:
        return v
    _, e = math.frexp(v)
    return round(v * 2.0 ** (8 - e)) * 2.0 ** (e - 8)  # exact scaling; round() ties to even


def test_apply_updates_rounds_the_exact_sum_once():
    p = jnp.array([1.0, 1.0, 256.0])
    u = jnp.array([2**-8 + 2**-30, 2**-8, -(2**-30)])
    got = fpsim.optim.apply_updates(p, u, "bf16")
    exact = np.asarray(p, np.float64) + np.asarray(u, np.float64)  # exact in float64
    want = np.array([round_bf16_exact(v) for v in exact], np.float32)
    np.testing.assert_array_equal(got, want)
    assert float(got[0]) == 1.0 + 2**-7  # fl32(p + u) would be the tie 1 + 2**-8 -> 1.0


def test_apply_updates_fp32_is_one_rounding():
    """1 + 2**-25 rounds to 1.0 in FP32 (issue 11, item 3: round-to-odd into float32
    itself gave 1 + 2**-23); directed and stochastic modes stay exact for 22 and 23
    mantissa bits where the carrier allows it."""
    assert float(fpsim.optim.apply_updates(1.0, 2.0**-25, "fp32")) == 1.0
    assert float(fpsim.optim.apply_updates(1.0, 3 * 2.0**-25, "fp32")) == 1.0 + 2**-23
    e8m22 = fpsim.Format("e8m22", 8, 22)
    assert float(fpsim.optim.apply_updates(1.0, 2.0**-40, e8m22, "up")) == 1.0 + 2**-22
    key = jax.random.key(0)
    n = 1 << 16
    got = fpsim.optim.apply_updates(jnp.ones(n), jnp.full(n, 2.0**-30), "fp32",
                                    "stochastic", key=key)  # fmt: skip
    ups, want = int((np.asarray(got) > 1).sum()), n * 2.0**-7  # 2**-30 / 2**-23
    assert abs(ups - want) < 5 * np.sqrt(want)


# ---- stagnation: minimise (p - 1.3)**2 / 2 from p = 1 with lr 1e-3 ----------------------
TARGET, LR, STEPS = 1.3, 1e-3, 3000


def train_scalar(tail):
    opt = optax.chain(optax.sgd(LR), tail)
    p = jnp.array([1.0])
    state = opt.init(p)

    def step(carry, _):
        p, s = carry
        u, s = opt.update(p - TARGET, s, p)
        return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (p, state), None, length=STEPS)
    return float(p[0])


def test_nearest_rounding_stagnates_completely():
    # every update is lr * 0.3 = 3e-4 < ulp(1)/2 = 2**-8 in bf16: p never moves
    assert train_scalar(fpsim.optim.quantize_params("bf16")) == 1.0


def test_stochastic_rounding_recovers():
    p = train_scalar(
        fpsim.optim.quantize_params("bf16", "stochastic", key=jax.random.key(7))
    )
    assert on_grid(p) and abs(p - TARGET) < 0.05  # float32 GD: 1.3 - 0.3 e**-3 = 1.285


def test_master_weights_recover_and_match_a_numpy_reference():
    p = train_scalar(fpsim.optim.quantize_params("bf16", master_weights=True))
    m = np.float32(1.0)  # reference: float32 master, gradient at the bf16 weights
    for _ in range(STEPS):
        w = np.float32(m).astype(BF16).astype(np.float32)
        m = np.float32(m + np.float32(-np.float32(LR) * np.float32(w - np.float32(TARGET))))
    assert p == float(np.float32(m).astype(BF16).astype(np.float32))
    gd = TARGET - 0.3 * (1 - LR) ** STEPS  # float32 gradient descent without rounding
    assert abs(p - gd) < 2**-7  # one bf16 ulp


def test_kahan_summation_recovers():
    p = train_scalar(fpsim.optim.kahan_params("bf16"))
    assert on_grid(p) and abs(p - TARGET) < 0.02


# ---- least squares with BF16 weights (Zamirai et al.) ---------------------------------
def least_squares(tail, steps=3000, lr=0.01):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(64, 4)).astype(np.float32)
    b = (a @ rng.uniform(0.5, 2, 4) + 0.1 * rng.normal(size=64)).astype(np.float32)
    x_opt = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)[0]
    a, b = jnp.asarray(a), jnp.asarray(b)
    opt = optax.chain(optax.sgd(lr), tail)

    def step(carry, _):
        x, s = carry
        u, s = opt.update(a.T @ (a @ x - b) / 64, s, x)
        return (optax.apply_updates(x, u), s), None

    x0 = jnp.zeros(4)
    (x, _), _ = jax.lax.scan(step, (x0, opt.init(x0)), None, length=steps)
    best = np.linalg.norm(x_opt.astype(np.float32).astype(BF16).astype(np.float64) - x_opt)
    assert on_grid(x)
    return np.linalg.norm(np.asarray(x, np.float64) - x_opt), best


def test_least_squares_bf16_nearest_stalls_sr_and_kahan_converge():
    nearest, best = least_squares(fpsim.optim.quantize_params("bf16"))
    sr, _ = least_squares(
        fpsim.optim.quantize_params("bf16", "stochastic", key=jax.random.key(1))
    )
    kahan, _ = least_squares(fpsim.optim.kahan_params("bf16"))
    assert nearest > 50 * best  # stalled far from the optimum (0.50 vs 0.0039)
    assert sr < 3 * best and kahan < 3 * best  # within a few bf16 ulps of it


def test_params_transforms_need_params():
    for opt in (fpsim.optim.quantize_params("bf16"), fpsim.optim.kahan_params("bf16")):
        with pytest.raises(ValueError, match="params"):
            opt.update(jnp.ones(2), opt.init(jnp.ones(2)))
