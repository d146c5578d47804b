"""Layer-wise adaptive loss scaling: the simple rule and Zhao et al.'s (rule="zhao").

The "zhao" values are computed by hand from the rule as Zhao et al.'s Chainer code
(``ada_loss/chainer_impl/ada_loss_chainer.py``, ``get_loss_scale_by_approx_range`` and
``bound_loss_scale_by_heuristics``) states it, with ``u_min = 2**-24`` and
``u_max = 65504`` (FP16) and ``c = sqrt(2) * erfinv(1e-3) = 0.00125331446...``:

    sigma = sqrt(E[g^2] E[W^2] terms / 2),  low = max(u_min / (c sigma), 1),
    high = u_max / terms / (max|g| max|W|), alpha = 2**floor(log2(min(low, high, cap)))
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_nn_train import MLP, XB, YB

import fpsim
from fpsim.scaling import AdaptiveLossScaling, WeightStats, weight_stats

FP16 = fpsim.get_format("fp16")
C = 0.0012533144654324167  # sqrt(2) * erfinv(1e-3): P(|Z| < C) = 1e-3, Z ~ N(0, 1)
ZHAO = AdaptiveLossScaling(rule="zhao")


def test_the_underflow_constant():
    assert math.erf(C / math.sqrt(2)) == pytest.approx(1e-3, rel=1e-12)


def test_zhao_with_a_weight_hand_computed():
    # E[g^2] = 2**-40, E[W^2] = 1/4, terms 8: sigma = sqrt(2**-40 / 4 * 4) = 2**-20;
    # low = 2**-24 / (C * 2**-20) = 1 / (16 C) = 49.87; high = 65504 / 8 / 2**-21 (huge)
    g = jnp.array([[1.0, -1.0], [-1.0, 1.0]]) * 2.0**-20
    w = weight_stats(jnp.full((3, 8), -0.5), terms=8)
    assert (float(w.sq_mean), float(w.amax), w.terms) == (0.25, 0.5, 8)
    assert pytest.approx(49.87, abs=0.01) == 1 / (16 * C)
    assert float(ZHAO.scale(g, FP16, w)) == 32.0
    # four times the gradient: low = 12.47 -> 8; sixteen times the terms: 2 * 12.47
    assert float(ZHAO.scale(4 * g, FP16, w)) == 8.0
    assert float(ZHAO.scale(g, FP16, w._replace(terms=128))) == 8.0  # 49.87 / 4


def test_zhao_overflow_bound_hand_computed():
    # g = (1, 0, 0, 0): E[g^2] = 1/4, max 1; W: E[W^2] = 2**-60, max 1; terms 2.
    # sigma = sqrt(2**-2 * 2**-60 * 1) = 2**-31: low = 2**7 / C = 102129.2;
    # high = 65504 / 2 / 1 = 32752 binds: 2**14 (below the cap 2**20)
    g = jnp.array([1.0, 0.0, 0.0, 0.0])
    w = WeightStats(jnp.float32(2.0**-60), jnp.float32(1.0), 2)
    assert float(AdaptiveLossScaling(rule="zhao", max_log2=20).scale(g, FP16, w)) == 2**14
    # the default cap is Zhao et al.'s accum_upper_bound, 1024
    assert ZHAO.max_log2 == 10 and float(ZHAO.scale(g, FP16, w)) == 1024.0
    # a gradient that would overflow the product gets a scale below 1:
    # high = 32752 / (4096 * 64) = 0.1249 -> 2**-4
    w = WeightStats(jnp.float32(1.0), jnp.float32(64.0), 2)
    assert float(ZHAO.scale(jnp.array([4096.0, 1.0]), FP16, w)) == 2.0**-4


def test_zhao_without_a_weight_uses_the_gradients_std():
    # their branch for a bare gradient: sigma = std(g) (not the rms), high = u_max/max|g|.
    # g = (0, 3 * 2**-20): std = 1.5 * 2**-20 -> low = 1 / (16 * 1.5 C) = 33.2 -> 32
    # (the rms, 2.12 * 2**-20, would give 23.5 -> 16)
    g = jnp.array([0.0, 3.0]) * 2.0**-20
    assert float(ZHAO.scale(g, FP16)) == 32.0
    assert float(ZHAO.scale(g, FP16, None)) == 32.0
    # float32 gradients (fmt None): u_min = 2**-149, nothing to lift
    assert float(ZHAO.scale(g, None)) == 1.0


@pytest.mark.parametrize("rule", ["simple", "zhao"])
@pytest.mark.parametrize(
    "g", [jnp.zeros(4), jnp.array([1.0, jnp.inf]), jnp.array([jnp.nan, 1e-7])]
)
def test_nothing_to_scale_gives_one(rule, g):
    w = weight_stats(jnp.full((2, 2), 0.5), 2)
    assert float(AdaptiveLossScaling(rule=rule).scale(g, FP16, w)) == 1.0


def test_zhao_with_zero_weights_gives_one():
    # sigma = 0 (a zero-initialized layer): their code returns 1
    g = jnp.array([1e-6, -1e-6])
    assert float(ZHAO.scale(g, FP16, weight_stats(jnp.zeros((2, 2)), 2))) == 1.0


def test_simple_rule_unchanged():
    # 65504 / 2**8 / 1.0 = 255.9 -> 128; 2**-20 -> capped at 2**max_log2
    assert float(AdaptiveLossScaling().scale(jnp.array([1.0, -0.5]), FP16)) == 128.0
    s = AdaptiveLossScaling(max_log2=10).scale(jnp.array([2.0**-20]), FP16)
    assert float(s) == 1024.0
    assert AdaptiveLossScaling().max_log2 == 64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "zhao2019"}, "simple, zhao"),
        ({"rule": "zhao", "underflow_rate": 0.0}, "underflow_rate"),
        ({"rule": "zhao", "underflow_rate": 1.5}, "underflow_rate"),
        ({"max_log2": -1}, "max_log2"),
        ({"margin": 1.5}, "margin"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveLossScaling(**kwargs)


# ---- inside fpsim.nn: the kernel's statistics reach the backward rule ----------------
def _scale_of_one_layer(layer, x, kernel_terms):
    """The scale fpsim.nn gives ``layer``, and the one computed by hand from the
    layer's incoming gradient (known: the loss is sum(y * k)) and its FP16 kernel."""
    pol = fpsim.nn.get_policy("fp16_mixed").replace(adaptive=ZHAO)
    params = layer.init(jax.random.key(0), x)["params"]
    y = layer.apply({"params": params}, x)
    k = jax.random.normal(jax.random.key(1), y.shape) * 2.0**-22

    def loss(p, x):
        return jnp.sum(layer.apply({"params": p}, x) * k)

    report = fpsim.nn.value_and_grad(loss, pol, watch=False)(params, None, x)[3]
    got = float(report.grad_scales["kernel"])
    w16 = fpsim.quantize(params["kernel"], FP16)
    want = float(ZHAO.scale(k, FP16, weight_stats(w16, kernel_terms)))
    return got, want


@pytest.mark.parametrize(
    ("layer", "shape", "terms"),
    [
        (nn.Dense(24), (8, 16), 24),
        (nn.DenseGeneral((2, 8)), (8, 16), 16),  # attention's query kernel (16, 2, 8)
        (nn.DenseGeneral(4, axis=(-2, -1)), (8, 2, 8), 4),  # attention's out kernel
        (nn.Conv(4, (3, 3)), (2, 6, 6, 3), 36),  # 3 * 3 * 4
    ],
)
def test_the_layer_scale_uses_the_kernel_and_its_terms(layer, shape, terms):
    x = jax.random.normal(jax.random.key(2), shape)
    got, want = _scale_of_one_layer(layer, x, terms)
    assert got == want and got > 1
    # a wrong count of terms would have moved the scale (a test that can fail)
    _, wrong = _scale_of_one_layer(layer, x, terms * 16)
    assert wrong != want


def test_fp16_train_step_with_zhao_unscales_the_gradients():
    pol = fpsim.nn.get_policy("fp16_mixed").replace(adaptive=ZHAO)
    model = MLP(depth=2)
    params = model.init(jax.random.key(0), XB)["params"]
    tiny = 2.0**-20

    def loss(p, x):
        return fpsim.nn.cross_entropy(model.apply({"params": p}, x), YB) * tiny

    _, grads, _, report = jax.jit(fpsim.nn.value_and_grad(loss, pol, watch=True))(
        params, None, XB
    )
    scales = jax.tree.leaves(report.grad_scales)
    assert all(float(s) == 1024.0 for s in scales)  # tiny gradients: the cap binds
    assert float(fpsim.nn.underflow_fraction(report)) == 0.0
    _, ref = jax.value_and_grad(loss)(params, XB)
    for g, s, r in zip(jax.tree.leaves(grads), scales, jax.tree.leaves(ref), strict=True):
        assert bool(jnp.all(jnp.isfinite(g)))
        # FP16 tolerance: 2% (a few roundings at 11 bits), or a few steps of FP16's
        # subnormal spacing 2**-24 at the layer's scale (the rule lifts gradients out
        # of zero, not out of the subnormals)
        atol = max(2e-3 * float(jnp.abs(r).max()), 8 * 2.0**-24 / float(s))
        np.testing.assert_allclose(g / s, r, rtol=2e-2, atol=atol)
    # the same step without adaptive scaling loses gradients (the test can fail)
    plain = fpsim.nn.value_and_grad(loss, "fp16_mixed", watch=True)(params, None, XB)[3]
    assert float(fpsim.nn.underflow_fraction(plain)) > 0.05


def test_make_train_step_undoes_the_scales_for_any_optimizer():
    # plain optax.sgd: the step divides by grad_scales itself (optax's chains would
    # silently drop a grad_scales= argument and apply the scaled gradients)
    pol = fpsim.nn.get_policy("fp16_mixed").replace(adaptive=ZHAO)
    lr = 0.1
    ts = fpsim.nn.make_train_step(MLP(), pol, optax.sgd(lr), watch=False)
    state = ts.init(jax.random.key(0), XB)
    new, m = ts.step(state, (XB, YB))
    assert bool(m["finite"])
    ref = jax.grad(lambda p: fpsim.nn.cross_entropy(MLP().apply({"params": p}, XB), YB))(
        state.params
    )
    leaves = [jax.tree.leaves(t) for t in (state.params, new.params, ref)]
    for p0, p1, r in zip(*leaves, strict=True):
        np.testing.assert_allclose((p0 - p1) / lr, r, rtol=2e-2, atol=2e-3)
