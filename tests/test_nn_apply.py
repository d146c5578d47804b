"""fpsim.nn.apply / value_and_grad against independent references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fpsim


def bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(16)(x))
        return nn.Dense(3)(h)


class NMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(5, 16, rngs=rngs)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.relu(self.l1(x)))


X = jax.random.normal(jax.random.key(1), (8, 5))
Y = jnp.arange(8) % 3


def xent(logits):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), Y])


@pytest.fixture(scope="module")
def linen():
    model = MLP()
    params = model.init(jax.random.key(0), X)["params"]
    return model, params, lambda p, x: model.apply({"params": p}, x)


def test_float32_policy_is_bitwise_identity_linen(linen):
    _, params, fn = linen
    # Both sides jitted: XLA may order a dot's sums differently eagerly and under jit.
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: xent(fn(p, X))))(params)
    vg = jax.jit(fpsim.nn.value_and_grad(lambda p, x: xent(fn(p, x)), "float32"))
    loss, grads, _, report = vg(params, None, X)
    assert bits(loss) == bits(ref_loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))
    assert set(report.layers) == {"Dense_0", "Dense_1"}
    y = fpsim.nn.apply(fn, "float32", params, X)
    np.testing.assert_array_equal(bits(y), bits(fn(params, X)))


def test_float32_policy_is_bitwise_identity_nnx():
    model = NMLP(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(fpsim.nn.instrument(model), nnx.Param, ...)

    def fn(p, x):
        return nnx.merge(graphdef, p, rest)(x)

    ref_loss, ref_grads = jax.value_and_grad(lambda p: xent(model(X) * 0 + fn(p, X)))(
        params
    )
    loss, grads, _, report = fpsim.nn.value_and_grad(
        lambda p, x: xent(fn(p, x)), "float32"
    )(params, None, X)
    assert bits(loss) == bits(ref_loss)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_array_equal(bits(a), bits(b))
    assert set(report.layers) == {"l1", "l2"}
    assert type(model.l1) is nnx.Linear  # the original is untouched


def test_fp16_every_intercepted_activation_is_on_the_grid(linen):
    _, params, _ = linen
    model = MLP()

    def fn(p, x):
        return model.apply({"params": p}, x, capture_intermediates=True)

    _, inter = fpsim.nn.apply(fn, "fp16_mixed", params, X * 1e-3)
    leaves = jax.tree.leaves(inter)
    assert len(leaves) == 3
    for v in leaves:
        np.testing.assert_array_equal(bits(fpsim.quantize(v, "fp16")), bits(v))
    # and not all on the grid without the policy
    _, plain = fn(params, X * 1e-3)
    assert any((fpsim.quantize(v, "fp16") != v).any() for v in jax.tree.leaves(plain))


def test_nnx_layers_round_under_fp16():
    model = fpsim.nn.instrument(NMLP(nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    y = fpsim.nn.apply(
        lambda p, x: nnx.merge(graphdef, p, rest)(x), "fp16_mixed", params, X
    )
    np.testing.assert_array_equal(bits(fpsim.quantize(y, "fp16")), bits(y))


def test_grad_counts_match_value_counts_on_independent_cotangents(linen):
    """Per-layer counts equal fpsim.value_counts of cotangents computed by hand."""
    _, params, fn = linen
    pol = "fp16_mixed"
    x = X * 0.1
    vg = jax.jit(fpsim.nn.value_and_grad(lambda p, x: 3e-9 * xent(fn(p, x)), pol))
    _, _, _, report = vg(params, None, x)

    q = lambda v: fpsim.quantize(v, "fp16")  # noqa: E731
    w0, b0 = q(params["Dense_0"]["kernel"]), q(params["Dense_0"]["bias"])
    w1, b1 = q(params["Dense_1"]["kernel"]), q(params["Dense_1"]["bias"])
    h = q(q(x) @ w0 + b0)  # Dense_0 output, rounded
    logits = q(q(jax.nn.relu(h)) @ w1 + b1)
    g1 = jax.grad(lambda z: 3e-9 * xent(z))(logits)  # cotangent of Dense_1's output
    dx1 = q(q(g1) @ w1.T)  # Dense_1 writes its input gradient in fp16
    g0 = dx1 * (h > 0)  # through relu: cotangent of Dense_0's output
    for key, g in (("Dense_1", g1), ("Dense_0", g0)):
        got = report.layers[key].grads
        want = fpsim.value_counts(g, "fp16")
        assert [int(v) for v in got.counts] == [int(v) for v in want]
        np.testing.assert_array_equal(
            got.hist.counts, fpsim.log2_histogram(g, "fp16").counts
        )
        np.testing.assert_array_equal(
            got.hist_lp.counts, fpsim.log2_histogram(q(g), "fp16").counts
        )
    assert int(report.layers["Dense_1"].grads.counts.underflow) > 0  # tiny loss: some lost
    ins = report.layers["Dense_0"].inputs.counts
    assert [int(v) for v in ins] == [int(v) for v in fpsim.value_counts(x, "fp16")]


def test_delayed_scaling_state_follows_transformer_engine(linen):
    _, params, fn = linen
    pol = "fp8_hybrid"
    loss = lambda p, x: xent(fn(p, x))  # noqa: E731
    state = fpsim.nn.init_state(loss, pol, params, X)
    assert set(state["grads"]) == {"Dense_0", "Dense_1"}
    assert set(state["params"]) == {"Dense_0/kernel", "Dense_1/kernel"}  # not the biases
    vg = jax.jit(fpsim.nn.value_and_grad(loss, pol))
    _, _, s1, r1 = vg(params, state, X)
    # step 1: scale 1 (empty history); the history records this step's amax
    k0 = params["Dense_0"]["kernel"]
    np.testing.assert_array_equal(
        s1["params"]["Dense_0/kernel"].amax_history[0], jnp.abs(k0).max()
    )
    assert float(s1["params"]["Dense_0/kernel"].scale) == 1.0
    np.testing.assert_array_equal(
        s1["inputs"]["Dense_0"][0].amax_history[0], jnp.abs(X).max()
    )
    g1max = jnp.abs(r1.layers["Dense_1"].grads.hist.counts).sum()  # (sanity: recorded)
    assert int(g1max) > 0
    # step 2: scale = fmt.max / amax
    _, _, s2, r2 = vg(params, s1, X)
    want = fpsim.E4M3.max / jnp.abs(k0).max()
    np.testing.assert_allclose(s2["params"]["Dense_0/kernel"].scale, want, rtol=1e-7)
    gs = s2["grads"]["Dense_1"]
    np.testing.assert_allclose(
        gs.scale, fpsim.E5M2.max / s1["grads"]["Dense_1"].amax_history[0]
    )
    np.testing.assert_allclose(r2.layers["Dense_1"].grads.scale, gs.scale)


def test_delayed_scaling_forward_rounds_x_times_scale(linen):
    _, params, fn = linen
    pol = fpsim.nn.get_policy("fp8_hybrid")
    state = fpsim.nn.init_state(fn, pol, params, X)
    hist = jnp.zeros(16).at[3].set(2.0)
    st = fpsim.nn.ScaleState(jnp.float32(1.0), hist)
    state["inputs"]["Dense_0"] = (st,)
    model = MLP()

    def first(p, x):
        return model.apply({"params": p}, x, capture_intermediates=True)[1]

    inter = fpsim.nn.apply(first, pol, params, X, state=state)
    s = fpsim.E4M3.max / 2.0
    xq = fpsim.quantize(X * s, "e4m3", saturate=True) / s
    ks = fpsim.E4M3.max / jnp.abs(params["Dense_0"]["kernel"]).max()  # no history: scale 1
    kq = fpsim.quantize(params["Dense_0"]["kernel"], "e4m3", saturate=True)
    del ks
    want = xq @ kq + params["Dense_0"]["bias"]
    got = inter["intermediates"]["Dense_0"]["__call__"][0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_quantized_dot_general_forwards_kwargs():
    dg = fpsim.nn.quantized_dot_general("fp16", "fp16")
    layer = nnx.Linear(5, 2, rngs=nnx.Rngs(0), dot_general=dg)
    y = layer(X)  # nnx passes out_sharding=None
    kq = fpsim.quantize(layer.kernel[...], "fp16")
    np.testing.assert_allclose(
        y, fpsim.quantize(X, "fp16") @ kq + layer.bias[...], rtol=1e-6
    )
    layer2 = nnx.Linear(5, 2, rngs=nnx.Rngs(0), dot_general=dg,
                        preferred_element_type=jnp.float32)  # fmt: skip
    assert layer2(X).dtype == jnp.float32


def test_unknown_policy_in_apply(linen):
    _, params, fn = linen
    with pytest.raises(ValueError, match="presets"):
        fpsim.nn.apply(fn, "fp9", params, X)
