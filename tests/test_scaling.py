"""fpsim.scaling: exact scale arithmetic, loss-scaling rules as values, FP8 scale rules.

References: Python float (C++ double) arithmetic for PyTorch's ``float * double``, and
numpy (which keeps subnormals) for float32 products and quotients.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fpsim
from fpsim import scaling
from fpsim.scaling import _exact


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def run(opt, seq, g=1.0):
    """Feed gradients (inf where seq is 1, else g); return (scales, last updates, state)."""
    params = {"w": jnp.ones(1)}
    state = opt.init(params)
    update = jax.jit(opt.update)
    scales, u = [], None
    for bad in seq:
        u, state = update({"w": jnp.array([jnp.inf if bad else g])}, state, params)
        scales.append(float(state.scale))
    return scales, u, state


# ---- exact arithmetic ------------------------------------------------------------------
RNG = np.random.default_rng(0)
X = (RNG.standard_normal(20000) * 2.0 ** RNG.integers(-150, 128, 20000)).astype(np.float32)
Y = (RNG.standard_normal(20000) * 2.0 ** RNG.integers(-60, 60, 20000)).astype(np.float32)


@pytest.mark.parametrize("factor", [0.3, 0.5, 2.0, 3.0, 1.7, 1e-3])
def test_mul_is_float_times_double_as_cpp(factor):
    with np.errstate(over="ignore"):
        want = np.array([np.float32(float(v) * factor) for v in X])
    assert (bits(jax.jit(lambda a: _exact.mul(a, factor))(X)) == bits(want)).all()


def test_pytorch_backoff_by_03_rounds_the_double_product_once():
    got = _exact.mul(jnp.float32(53084.164), 0.3)
    assert float(got) == float(np.float32(float(np.float32(53084.164)) * 0.3))
    assert float(got) == float(np.float32(15925.249))  # not float32(0.3) first: 15925.25


def test_div_mul_reciprocal_keep_subnormals():
    with np.errstate(over="ignore", divide="ignore"):
        assert (bits(jax.jit(_exact.div)(X, Y)) == bits(X.astype(np.float64) / Y)).all()
        assert (bits(jax.jit(_exact.mul_f32)(X, Y)) == bits(X * Y)).all()
        want = (1 / X.astype(np.float64)).astype(np.float32)
        assert (bits(jax.jit(_exact.reciprocal)(X)) == bits(want)).all()


# ---- issue 11: PyTorch at the extremes ---------------------------------------------------
@pytest.mark.parametrize("variant", fpsim.optim.LOSS_SCALING_VARIANTS)
def test_unscale_at_2_127_keeps_the_subnormal(variant):
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.identity(), variant=variant, init_scale=2.0**127, growth_interval=1
    )
    _, u, state = run(opt, [0], g=3.0)
    assert float(u["w"][0]) == 3 * 2.0**-127  # XLA's flush gave 0.0
    assert bool(state.last_finite)


def test_backoff_03_and_growth_3_follow_pytorch():
    from test_optim_loss_scaling import ref_pytorch

    seq = [1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    init = float(np.float32(53084.164))
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.identity(), init_scale=init, growth_factor=3.0, backoff_factor=0.3,
        growth_interval=2,
    )  # fmt: skip
    got, _, _ = run(opt, seq)
    assert got == ref_pytorch(seq, init, growth=3.0, backoff=0.3, interval=2)
    assert got[0] == float(np.float32(15925.249))


@pytest.mark.parametrize("variant", ["pytorch", "keras"])
def test_143_backoffs_hold_the_subnormal_then_zero_is_stuck(variant):
    from test_optim_loss_scaling import ref_pytorch

    init = 2.0**16
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.identity(), variant=variant, init_scale=init
    )
    got, _, state = run(opt, [1] * 170)
    assert got[142] == 2.0**-127  # XLA flushed to 0.0 here
    assert got == ref_pytorch([1] * 170, init)
    assert got[-1] == 0.0 and bool(state.stuck)


def test_keras_growth_to_inf_is_stuck():
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.identity(), variant="keras", init_scale=2.0**127, growth_interval=1
    )
    got, _, state = run(opt, [0, 0])
    assert got == [math.inf, math.inf] and bool(state.stuck)
    ok = fpsim.optim.dynamic_loss_scaling(optax.identity(), init_scale=2.0**127)
    assert not bool(run(ok, [0, 0])[2].stuck)


# ---- issue 11 item 13: argument validation ----------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"min_scale": "foo"}, ValueError, "min_scale"),
        ({"min_scale": [1.0]}, TypeError, "min_scale"),
        ({"init_scale": math.inf}, ValueError, "init_scale"),
        ({"init_scale": 1e300}, ValueError, "overflows float32"),
        ({"init_scale": 1e-50}, ValueError, "underflows"),
        ({"init_scale": True}, TypeError, "init_scale"),
        ({"growth_factor": "2"}, TypeError, "growth_factor"),
        ({"variant": "torch"}, ValueError, "pytorch"),
    ],
)
def test_dynamic_arguments_are_validated(kwargs, err, match):
    with pytest.raises(err, match=match):
        fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), **kwargs)


@pytest.mark.parametrize("scale", [2.0**200, math.inf, math.nan, 0.0, -1.0])
def test_static_scale_is_validated(scale):
    with pytest.raises(ValueError, match="scale"):
        fpsim.optim.static_loss_scaling(optax.sgd(0.1), scale)


def test_largest_float32_scale_is_accepted():
    fpsim.optim.static_loss_scaling(optax.sgd(0.1), 2.0**127)
    fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), init_scale=2.0**127)


# ---- rules are values -----------------------------------------------------------------
def test_a_rule_value_equals_its_variant_name():
    seq = [0, 0, 0, 1, 0, 0, 0, 0]
    rule = scaling.FLAX.replace(growth_interval=3, init_scale=8.0)
    by_rule = fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), rule=rule)
    by_name = fpsim.optim.dynamic_loss_scaling(
        optax.sgd(0.1), variant="flax", init_scale=8.0, growth_interval=3
    )
    assert run(by_rule, seq)[0] == run(by_name, seq)[0]
    with pytest.raises(ValueError, match="not both"):
        fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), variant="flax", rule=rule)


def test_rule_init_adjust_unscale_without_optax():
    rule = scaling.PYTORCH.replace(growth_interval=2, init_scale=4.0)
    state = rule.init()
    for finite in (True, True, False):
        state = rule.adjust(state, finite)
    assert float(state.scale) == 4.0 and int(state.growth_tracker) == 0
    g = rule.unscale({"a": jnp.float32(6.0)}, state.scale)
    assert float(g["a"]) == 1.5
    assert hash(rule) == hash(scaling.PYTORCH.replace(growth_interval=2, init_scale=4.0))


def test_bad_rule_fields():
    with pytest.raises(ValueError, match="overflow"):
        scaling.DynamicLossScaling(overflow="clip")
    with pytest.raises(ValueError, match="growth_interval"):
        scaling.DynamicLossScaling(growth_interval=2.0)


# ---- per-tensor rules ------------------------------------------------------------------
def test_current_scaling_follows_transformer_engine():
    e4m3 = fpsim.E4M3
    x = jnp.array([0.5, -3.0])
    assert float(scaling.CurrentScaling().scale(x, e4m3)) == float(np.float32(448 / 3))
    assert float(scaling.CurrentScaling(power_of_two=True).scale(x, e4m3)) == 128.0
    assert float(scaling.CurrentScaling(margin=1).scale(x, e4m3)) == float(
        np.float32(np.float32(448 / 3) / 2)
    )
    assert float(scaling.CurrentScaling().scale(jnp.zeros(2), e4m3)) == 1.0
    assert float(scaling.CurrentScaling().scale(jnp.array([jnp.inf]), e4m3)) == 1.0
    tiny = jnp.array([2.0**-120])  # 448 / amax overflows float32: float32 max, as TE
    assert float(scaling.CurrentScaling().scale(tiny, e4m3)) == float(
        np.finfo(np.float32).max
    )


def test_delayed_scaling_rule():
    rule = scaling.DelayedScaling(history_len=3, margin=1)
    st = rule.init()
    assert float(rule.scale(st, fpsim.E4M3)) == 1.0  # empty history keeps scale 1
    st = rule.update(st, jnp.array([2.0, -7.0]), rule.scale(st, fpsim.E4M3))
    assert st.amax_history.tolist() == [7.0, 0.0, 0.0]
    assert float(rule.scale(st, fpsim.E4M3)) == float(np.float32(448 / 7 / 2))
    nan = rule.update(st, jnp.array([jnp.nan]), jnp.float32(1.0))
    assert float(rule.scale(nan, fpsim.E4M3)) == 1.0  # non-finite amax: previous scale


def test_saturating_cast_does_not_turn_inf_into_max():
    x = jnp.array([1e6, jnp.inf, -jnp.inf, jnp.nan])
    y = scaling.quantize_scaled(x, fpsim.E4M3, None, "nearest", None, True)
    assert float(y[0]) == 448.0
    assert np.isnan(np.asarray(y[1:])).all()  # E4M3 has no inf: NaN, as without saturation
    y = scaling.quantize_scaled(x, fpsim.E5M2, None, "nearest", None, True)
    assert float(y[0]) == 57344.0 and np.asarray(y[1:3]).tolist() == [math.inf, -math.inf]
