"""Recipes as GEMM-level quantization: each of a linear layer's three GEMMs quantizes its
operands along the dimension it contracts (checked against fpsim.blocks directly)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

import fpsim
from fpsim._keys import canonical_key, derive
from fpsim.blocks import quantize_blocks, random_hadamard
from fpsim.nn import get_recipe, recipe_dot_general, recipe_scope

M, K, N = 128, 128, 128  # multiples of every recipe's blocks (128x128 tiles included)
DIMS = (((1,), (0,)), ((), ()))
MAIN = ("fp8_current", "fp8_blockwise", "mxfp8", "nvfp4", "mxfp4_naive")


def _data(seed=0):
    kx, kw, kc = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (M, K)) * 3.0
    x = x.at[5, 7].set(200.0)  # an outlier: block scales differ from the tensor's
    w = jax.random.normal(kw, (K, N)) * 0.05
    c = jax.random.normal(kc, (M, N)) * 1e-3
    return x, w, c


def _q(x, bfmt, axis, recipe, rounding="nearest", key=None):
    mode = recipe.scale_mode if bfmt.scale == fpsim.formats.E8M0 else None
    if bfmt.block_shape is not None:
        axis = (0, 1)
    return quantize_blocks(x, bfmt, axis=axis, scale_mode=mode, rounding=rounding, key=key)


def _mm(a, b, dims):
    return lax.dot_general(a, b, dims, precision=lax.Precision.HIGHEST)


def _expected_grads(recipe, x, w, c, key=None):
    """dx = Q(g along N) Q(W along N)^T, dW = Q(x along M)^T Q(g along M), g = c."""
    k1 = k2 = None
    if key is not None:
        k1, k2 = derive(canonical_key(key), 1), derive(canonical_key(key), 2)
    gd = _q(c, recipe.grad, 1, recipe, recipe.grad_rounding, k1)
    wd = _q(w, recipe.weight, 1, recipe)
    dx = _mm(gd, wd, (((1,), (1,)), ((), ())))
    xw, gw = x, c
    if recipe.rht:
        xw = random_hadamard(x, recipe.rht_seed, axis=0)
        gw = random_hadamard(c, recipe.rht_seed, axis=0)
    xq = _q(xw, recipe.activation, 0, recipe)
    gq = _q(gw, recipe.grad, 0, recipe, recipe.grad_rounding, k2)
    dw = _mm(xq, gq, (((0,), (0,)), ((), ())))
    return dx, dw


def _grads(recipe, x, w, c, key=None):
    """(dx, dW) of sum(y * c), so the output gradient is c exactly; eager, so that the
    GEMMs are the same XLA dots as the expected ones (under jit XLA may order a
    float32 GEMM's sum differently: a last-bit difference, not a quantization one)."""
    dg = recipe_dot_general(recipe, key=key)
    return jax.grad(lambda x, w: jnp.sum(dg(x, w, DIMS) * c), (0, 1))(x, w)


@pytest.mark.parametrize("name", [*MAIN, "fp8_blockwise_pow2", "fp8_current_e4m3"])
def test_dense_forward_is_the_dot_of_quantized_operands(name):
    recipe = get_recipe(name)
    x, _, _ = _data()
    dense = nn.Dense(N, use_bias=False, dot_general=recipe_dot_general(recipe, key=0))
    params = dense.init(jax.random.key(1), x)
    w = params["params"]["kernel"]
    y = dense.apply(params, x)
    want = _mm(_q(x, recipe.activation, 1, recipe), _q(w, recipe.weight, 0, recipe), DIMS)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
    assert not np.array_equal(np.asarray(y), np.asarray(_mm(x, w, DIMS)))


def test_forward_flattens_leading_axes_as_tokens():
    recipe = get_recipe("mxfp8")
    x, w, _ = _data()
    y = recipe_dot_general(recipe)(x.reshape(4, 32, K), w, (((2,), (0,)), ((), ())))
    want = _mm(_q(x, recipe.activation, 1, recipe), _q(w, recipe.weight, 0, recipe), DIMS)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want).reshape(4, 32, N))


@pytest.mark.parametrize("name", [*MAIN, "nvfp4_no_sr", "nvfp4_1d_weights"])
def test_gradients_are_dots_of_operands_quantized_along_each_gemms_contraction(name):
    recipe = get_recipe(name)
    x, w, c = _data()
    key = 3 if recipe.needs_key else None
    dx, dw = _grads(recipe, x, w, c, key)
    want_dx, want_dw = _expected_grads(recipe, x, w, c, key)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(want_dx))
    np.testing.assert_array_equal(np.asarray(dw), np.asarray(want_dw))


@pytest.mark.parametrize("name", ["mxfp8", "fp8_blockwise", "mxfp4_naive"])
def test_wgrad_does_not_reuse_the_forward_quantization(name):
    """Quantizing x along K (its forward copy) and transposing is not the same: the
    weight-gradient GEMM needs x quantized along M (columnwise)."""
    recipe = get_recipe(name)
    x, w, c = _data()
    _, dw = _grads(recipe, x, w, c)
    x_rowwise = _q(x, recipe.activation, 1, recipe)
    wrong = _mm(x_rowwise, _q(c, recipe.grad, 0, recipe), (((0,), (0,)), ((), ())))
    assert not np.array_equal(np.asarray(dw), np.asarray(wrong))


def test_per_tensor_scaling_uses_e5m2_for_gradients():
    recipe = get_recipe("fp8_current")
    assert recipe.activation.element == fpsim.formats.E4M3
    assert recipe.grad.element == fpsim.formats.E5M2 and recipe.grad.per_tensor


def test_nvfp4_switches_change_what_they_should():
    x, w, c = _data()
    full = get_recipe("nvfp4")
    y = {}
    g = {}
    for r in (full, full.without_rht(), full.without_stochastic_rounding(),
              full.with_1d_weights()):  # fmt: skip
        dg = recipe_dot_general(r, key=5)
        y[r.name] = np.asarray(dg(x, w, DIMS))
        g[r.name] = [np.asarray(a) for a in _grads(r, x, w, c, 5)]
    # RHT: only the weight-gradient GEMM
    assert np.array_equal(y["nvfp4"], y["nvfp4_no_rht"])
    assert np.array_equal(g["nvfp4"][0], g["nvfp4_no_rht"][0])
    assert not np.array_equal(g["nvfp4"][1], g["nvfp4_no_rht"][1])
    # stochastic rounding: only gradients; without it, the key no longer matters
    assert np.array_equal(y["nvfp4"], y["nvfp4_no_sr"])
    assert not np.array_equal(g["nvfp4"][0], g["nvfp4_no_sr"][0])
    assert not np.array_equal(g["nvfp4"][0], _grads(full, x, w, c, 6)[0])
    no_sr = full.without_stochastic_rounding()
    np.testing.assert_array_equal(_grads(no_sr, x, w, c, 6)[0], g["nvfp4_no_sr"][0])
    # 1-D weights: the forward GEMM's weight operand (and so y) changes
    assert not np.array_equal(y["nvfp4"], y["nvfp4_1d_weights"])
    assert full.with_1d_weights().weight.block_shape is None


def test_stochastic_rounding_is_unbiased_on_average():
    """Mean over keys of NVFP4's stochastically rounded input gradient is closer to the
    product with the unrounded gradient than the nearest-rounded one is (the gradient's
    rounding error averages out; the weight's, rounded to nearest, stays)."""
    x, w, c = _data()
    r = get_recipe("nvfp4")
    exact = np.asarray(_mm(c, _q(w, r.weight, 1, r), (((1,), (1,)), ((), ()))))
    mean = np.mean([_grads(r, x, w, c, k)[0] for k in range(16)], axis=0)
    nearest = np.asarray(_grads(r.without_stochastic_rounding(), x, w, c)[0])
    err = lambda a: np.linalg.norm(a - exact) / np.linalg.norm(exact)  # noqa: E731
    assert err(mean) < 0.6 * err(nearest)


def test_bad_lengths_name_the_layer_and_fallback_float32():
    x = jnp.ones((64, 48))
    dense = nn.Dense(64, dot_general=recipe_dot_general("mxfp8", name="blocks/mlp_in"))
    with pytest.raises(ValueError, match=r"blocks/mlp_in.*fprop.*length 48.*32"):
        dense.init(jax.random.key(0), x)
    dg = recipe_dot_general("mxfp8", fallback="float32")
    w = jnp.full((48, 64), 0.1)
    np.testing.assert_array_equal(dg(x, w, DIMS), lax.dot_general(x, w, DIMS))
    with pytest.raises(ValueError, match="fallback"):
        recipe_dot_general("mxfp8", fallback="bf16")


def test_errors_are_clear():
    with pytest.raises(ValueError, match="needs a key"):
        recipe_dot_general("nvfp4")
    with pytest.raises(ValueError, match="unknown recipe 'fp4'.*mxfp8"):
        get_recipe("fp4")
    with pytest.raises(ValueError, match="batch"):
        recipe_dot_general("mxfp8")(
            jnp.ones((2, 32, 32)), jnp.ones((2, 32, 32)), (((2,), (1,)), ((0,), (0,)))
        )
    with pytest.raises(ValueError, match="2-D tiles are for weights"):
        get_recipe("nvfp4").replace(activation="nvfp4_16x16")


def test_recipe_scope_quantizes_dense_layers_and_skips_by_path():
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(128)(x))
            return nn.Dense(10, name="head")(h)

    x, _, _ = _data()
    model = MLP()
    params = model.init(jax.random.key(0), x)
    plain = model.apply(params, x)
    with pytest.raises(ValueError, match="'head'.*length 10"), recipe_scope("mxfp8"):
        model.apply(params, x)
    with recipe_scope("mxfp8", skip=("head",)):
        y = model.apply(params, x)
    p = params["params"]
    r = get_recipe("mxfp8")
    h = _mm(_q(x, r.activation, 1, r), _q(p["Dense_0"]["kernel"], r.weight, 0, r), DIMS)
    h = nn.relu(h + p["Dense_0"]["bias"])
    want = h @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    assert not np.allclose(y, plain, rtol=1e-4, atol=1e-4)


def _train(recipe_name: str, steps: int = 40) -> tuple[float, float]:
    """Full-batch Adam on a teacher's labels; returns (first loss, last loss)."""
    kx, kt, ki = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (128, 128))
    y = jnp.argmax(x @ jax.random.normal(kt, (128, 10)), -1)

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(128)(x))
            h = nn.relu(nn.Dense(128)(h))
            return nn.Dense(10, name="head")(h)  # the head stays in float32

    model = MLP()
    params = model.init(ki, x)
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, i):
        def loss_fn(p):
            with recipe_scope(
                recipe_name, key=derive(jax.random.key(1), i), skip=("head",)
            ):
                logits = model.apply(p, x)
            return fpsim.nn.cross_entropy(logits, y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = opt.init(params)
    losses = []
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, i)
        losses.append(float(loss))
    return losses[0], float(np.mean(losses[-5:]))


@pytest.mark.parametrize("name", MAIN)
def test_a_tiny_mlp_trains_under_each_recipe(name):
    first, last = _train(name)
    assert np.isfinite(last) and last < 0.5 * first, (first, last)


def test_make_train_step_runs_a_recipe_through_with_recipe():
    """fpsim.nn's training step takes a with_recipe model; its weight gradients are the
    recipe's (here, without stochastic rounding, recomputed directly), and stochastic
    rounding draws new bits for a new batch."""
    x, _, c = _data()
    c = c[:, :32]
    y = jnp.arange(M) % 32
    model = fpsim.nn.with_recipe(nn.Dense(32, use_bias=False), "mxfp8")
    # a loss linear in the logits, so that the output gradient is c exactly
    ts = fpsim.nn.make_train_step(
        model, "float32", optax.sgd(1.0), loss_fn=lambda logits, _: jnp.sum(logits * c)
    )
    state = ts.init(jax.random.key(0), x)
    new, metrics = ts.step(state, (x, y))
    w = state.params["kernel"]
    _, dw = _expected_grads(get_recipe("mxfp8"), x, w, c)
    # under jit XLA may order the float32 GEMM's sum differently: last bits only (a
    # quantization difference is ~2**-4 relative, as the float32 gradient shows)
    got = np.asarray(new.params["kernel"])
    np.testing.assert_allclose(got, np.asarray(w - dw), rtol=1e-5, atol=1e-8)
    assert not np.allclose(got, np.asarray(w - x.T @ c), rtol=1e-3, atol=1e-6)
    assert bool(metrics["finite"])

    sr = fpsim.nn.with_recipe(nn.Dense(32, use_bias=False), "nvfp4")
    g = jax.jit(jax.grad(lambda w, x: jnp.sum(sr.apply({"params": {"kernel": w}}, x) * c)))
    g1, g2 = g(w, x), g(w, x * 2.0)
    assert not np.array_equal(np.asarray(g1) * 2.0, np.asarray(g2))
    np.testing.assert_array_equal(np.asarray(g(w, x)), np.asarray(g1))


def test_several_contracting_axes_flatten_into_k():
    """nn.DenseGeneral(axis=(-2, -1)) (attention's output projection): K = heads *
    head_dim, quantized as one axis."""
    r = get_recipe("mxfp8")
    x, w, _ = _data()
    lhs = x.reshape(M, 4, 32)
    rhs = w.reshape(4, 32, N)
    y = recipe_dot_general(r)(lhs, rhs, (((1, 2), (0, 1)), ((), ())))
    want = _mm(_q(x, r.activation, 1, r), _q(w, r.weight, 0, r), DIMS)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want))
