"""Recipes as policies, and what their GEMMs' quantization lost, per layer and step.

The crafted tensors put one outlier in every block, at a known position, so that the
fraction of elements flushed to zero by the block's scale, the fraction saturated and
the histogram of scale exponents are known exactly; they are checked through a real
training step (every GEMM operand, along its own axis) and through
``fpsim.blocks.quantize_with_summary``, which agrees with ``block_stats``."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import fpsim
from fpsim.blocks import (
    EXPONENTS,
    block_stats,
    quantize_blocks,
    quantize_with_summary,
    random_hadamard,
)
from fpsim.nn import RECIPE_NAMES, RecipeStats, get_policy, get_recipe


def _mxfp4_pattern(m: int, n: int, row_binades: bool = False) -> np.ndarray:
    """Along either axis every aligned run of 32 holds one 7.0 (MXFP4's floor rule:
    scale 2**0, 7 > 6 saturates to 6), ten 0.2 (below half of E2M1's smallest step
    0.5: flushed) and 21 0.3 (rounds to 0.5). ``row_binades``: row i times 2**(i % 4),
    so that blocks along a row have scale exponents 0, 1, 2, 3."""
    i, j = np.indices((m, n))
    d = (i - j) % 32
    v = np.where(d == 0, 7.0, np.where(d <= 10, 0.2, 0.3))
    if row_binades:
        v = v * 2.0 ** (i % 4)
    return v.astype(np.float32)


def _nvfp4_pattern(m: int, n: int) -> np.ndarray:
    """Blocks of 16 along either axis, one outlier each: 5.25 in columns 0-15 (tensor
    scale 5.25 / 2688 = 2**-9, block scale 448: the outlier decodes to 5.25 exactly)
    and 4.96875 in columns 16-31 (block scale 4.96875 / 6 * 512 = 424, rounded to E4M3
    416: the element 4.96875 * 512 / 416 > 6 is clipped, 6 * 416 / 512 = 4.875:
    saturated); five 0.125 (flushed) and ten 0.5 (kept) per block."""
    i, j = np.indices((m, n))
    d = (i - j) % 16
    outlier = np.where((j // 16) % 2 == 0, 5.25, 4.96875)
    return np.where(d == 0, outlier, np.where(d <= 5, 0.125, 0.5)).astype(np.float32)


def _hist(counts) -> dict[int, int]:
    counts = np.asarray(counts)
    return {EXPONENTS[i]: int(counts[i]) for i in np.flatnonzero(counts)}


def _check(s, underflow, saturated, nonzero, hist):
    assert float(s.underflow) == underflow
    assert float(s.saturated) == saturated
    assert int(s.nonzero) == nonzero
    assert _hist(s.exponent_counts) == hist


# --------------------------------------------------------------------------------------
# the lower level: one tensor


def test_summary_of_crafted_mxfp4_blocks_is_known_exactly():
    x = _mxfp4_pattern(64, 64, row_binades=True)
    q, s = quantize_with_summary(x, "mxfp4", axis=1)
    np.testing.assert_array_equal(q, quantize_blocks(x, "mxfp4", axis=1))
    # 128 blocks of 32: ten of 32 flushed, one saturated, in every block
    _check(s, 10 / 32, 1 / 32, 4096, {0: 32, 1: 32, 2: 32, 3: 32})
    assert s.exponent_counts.dtype == jnp.int32 and s.nonzero.dtype == jnp.int32


def test_summary_of_crafted_nvfp4_blocks_is_known_exactly():
    x = _nvfp4_pattern(32, 32)
    for axis in (0, 1):
        q, s = quantize_with_summary(x, "nvfp4", axis=axis)
        assert sorted(set(np.abs(np.asarray(q)).ravel().tolist())) == [
            0.0, 0.40625, 0.4375, 4.875, 5.25,
        ]  # fmt: skip
        # 64 blocks of 16: five flushed each, one saturated in each of the 32 blocks
        # whose scale rounded down (448 and 416 both lie in E4M3's binade 2**8)
        _check(s, 5 / 16, 1 / 32, 1024, {8: 64})


@pytest.mark.parametrize("fmt", ["mxfp8", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp4",
                                 "mxint8", "nvfp4", "nvfp4_16x16", "fp8_block_1x128",
                                 "fp8_block_128x128", "fp8_tensor"])  # fmt: skip
def test_summary_counts_what_block_stats_counts_per_block(fmt):
    bfmt = fpsim.blocks.get_block_format(fmt)
    k1, k2 = jax.random.split(jax.random.key(0))
    # heavy tails and exact zeros: some blocks flush, some saturate
    x = jax.random.normal(k1, (128, 256)) * jnp.exp(3 * jax.random.normal(k2, (128, 256)))
    x = x.at[::7].set(0.0).at[3, 5].set(957.0)
    axis = (0, 1) if bfmt.block_shape else 1
    q, s = quantize_with_summary(x, bfmt, axis=axis)
    np.testing.assert_array_equal(q, quantize_blocks(x, bfmt, axis=axis))
    bs = block_stats(x, bfmt, axis=axis)
    size = x.size if bfmt.per_tensor else bfmt.block_size
    nonzero = int(jnp.sum(x != 0))
    assert int(s.nonzero) == nonzero
    flushed = round(float(jnp.sum(bs.underflow)) * size)
    saturated = round(float(jnp.sum(bs.saturated)) * size)
    assert round(float(s.underflow) * nonzero) == flushed
    assert round(float(s.saturated) * nonzero) == saturated
    np.testing.assert_array_equal(s.exponent_counts, bs.exponent_counts)
    if fmt in ("mxfp4", "nvfp4"):
        assert flushed > 0
    if fmt == "mxfp8":
        assert saturated > 0  # 957 in a block of smaller values (floor rule)


# --------------------------------------------------------------------------------------
# recipes as policies


def _linear_loss(c):
    """A loss linear in the logits: the output gradient is ``c`` exactly."""
    return lambda logits, _: jnp.sum(logits * c)


def _step(policy, x, w, c, **kw):
    model = nn.Dense(w.shape[1], use_bias=False)
    ts = fpsim.nn.make_train_step(model, policy, optax.sgd(1.0), loss_fn=_linear_loss(c),
                                  **kw)  # fmt: skip
    state = ts.init(jax.random.key(0), x)
    state = state._replace(params={"kernel": jnp.asarray(w)})
    y = jnp.zeros(x.shape[0], jnp.int32)
    return ts, state, ts.step(state, (x, y))


def test_train_step_reports_every_gemm_operand_of_mxfp4_exactly():
    """x (64 x 64), W (64 x 32), g = c (64 x 32), each crafted so that its blocks along
    the axis each GEMM contracts hold one outlier: fprop blocks x and W along K,
    dgrad g and W along N, wgrad x and g along M (the tokens)."""
    x = _mxfp4_pattern(64, 64, row_binades=True)
    w = _mxfp4_pattern(64, 32) * np.float32(2.0**-3)
    c = _mxfp4_pattern(64, 32)
    _, _, (new, m) = _step("mxfp4_naive", x, w, c, watch=False, recipe_stats=True)
    st = m["recipe"]["Dense"]  # a bare Dense has no path: its class name
    assert isinstance(st, RecipeStats) and list(m["recipe"]) == ["Dense"]
    _check(st.fprop_x, 10 / 32, 1 / 32, 4096, {0: 32, 1: 32, 2: 32, 3: 32})
    _check(st.fprop_w, 10 / 32, 1 / 32, 2048, {-3: 64})  # 32 columns x 2 blocks
    _check(st.dgrad_w, 10 / 32, 1 / 32, 2048, {-3: 64})  # 64 rows x 1 block
    _check(st.dgrad_g, 10 / 32, 1 / 32, 2048, {0: 64})
    _check(st.wgrad_g, 10 / 32, 1 / 32, 2048, {0: 64})
    # x along M mixes the rows' binades: as block_stats counts it
    bs = block_stats(x, "mxfp4", axis=0)
    assert float(st.wgrad_x.underflow) * 4096 == float(jnp.sum(bs.underflow)) * 32
    assert float(st.wgrad_x.saturated) * 4096 == float(jnp.sum(bs.saturated)) * 32
    np.testing.assert_array_equal(st.wgrad_x.exponent_counts, bs.exponent_counts)
    assert float(st.wgrad_x.underflow) == 14 / 32  # not what x lost along K
    # the statistics leave the step's numbers alone
    _, _, (new2, _) = _step("mxfp4_naive", x, w, c, watch=False, recipe_stats=False)
    np.testing.assert_array_equal(new.params["kernel"], new2.params["kernel"])


def test_train_step_reports_nvfp4_exactly_and_counts_wgrad_after_the_hadamard():
    x = _nvfp4_pattern(32, 32)
    c = jax.random.normal(jax.random.key(1), (32, 16)) * 1e-2
    w = jax.random.normal(jax.random.key(2), (32, 16)) * 0.1
    for name in ("nvfp4", "nvfp4_no_rht"):
        _, _, (_, m) = _step(name, x, w, c)  # watch=True: recipe statistics follow it
        st = m["recipe"]["Dense"]
        _check(st.fprop_x, 5 / 16, 1 / 32, 1024, {8: 64})
        r = get_recipe(name)
        # W in 16x16 tiles, the same for the forward and the input-gradient GEMM
        _, sw = quantize_with_summary(w, r.weight, axis=(0, 1))
        for got in (st.fprop_w, st.dgrad_w):
            _check(got, float(sw.underflow), float(sw.saturated), 512,
                   _hist(sw.exponent_counts))  # fmt: skip
        # the weight-gradient GEMM blocks x along the tokens, after the transform
        xw = random_hadamard(x, r.rht_seed, axis=0, block=16) if r.rht else x
        _, sx = quantize_with_summary(xw, r.activation, axis=0)
        _check(st.wgrad_x, float(sx.underflow), float(sx.saturated), int(sx.nonzero),
               _hist(sx.exponent_counts))  # fmt: skip
        if not r.rht:  # the pattern is the same along M
            _check(st.wgrad_x, 5 / 16, 1 / 32, 1024, {8: 64})
        # stochastically rounded g: one block (scale) per row along N, 2 along M
        assert int(st.dgrad_g.exponent_counts.sum()) == 32
        assert int(st.wgrad_g.exponent_counts.sum()) == 32
        assert int(st.dgrad_g.nonzero) == 512
        assert 0.0 <= float(st.dgrad_g.underflow) < 1.0


def test_stochastic_rounding_draws_fresh_bits_every_step():
    x = jax.random.normal(jax.random.key(0), (32, 32))
    c = jax.random.normal(jax.random.key(1), (32, 16)) * 1e-2
    w = jax.random.normal(jax.random.key(2), (32, 16)) * 0.1
    ts, state, (new, _) = _step("nvfp4", x, w, c)
    y = jnp.zeros(32, jnp.int32)
    again, _ = ts.step(state, (x, y))
    later, _ = ts.step(state._replace(step=state.step + 1), (x, y))
    np.testing.assert_array_equal(new.params["kernel"], again.params["kernel"])
    assert not np.array_equal(new.params["kernel"], later.params["kernel"])
    # nearest rounding does not depend on the step
    ts, state, (new, _) = _step("nvfp4_no_sr", x, w, c)
    later, _ = ts.step(state._replace(step=state.step + 1), (x, y))
    np.testing.assert_array_equal(new.params["kernel"], later.params["kernel"])


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_recipe_is_a_policy_for_apply_and_the_train_step(name):
    """``apply(fn, name, ...)`` is the recipe's forward (as ``recipe_scope`` runs it);
    ``make_train_step(model, name, ...)`` steps and reports all six operands."""
    x = jax.random.normal(jax.random.key(0), (128, 128))
    model = nn.Dense(128)
    params = model.init(jax.random.key(1), x)
    fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    y = fpsim.nn.apply(fn, name, params["params"], x)
    with fpsim.nn.recipe_scope(name, key=0):
        want = model.apply(params, x)
    np.testing.assert_array_equal(y, want)
    assert not np.array_equal(y, model.apply(params, x))
    ts = fpsim.nn.make_train_step(model, name, optax.sgd(0.1), watch=False,
                                  recipe_stats=True)  # fmt: skip
    state, m = ts.step(ts.init(jax.random.key(1), x), (x, jnp.arange(128) % 128))
    assert bool(m["finite"])
    st = m["recipe"]["Dense"]
    for field, s in st._asdict().items():
        assert s.exponent_counts.shape == (255,), field
        assert int(s.exponent_counts.sum()) >= 1, field
        assert 0.0 <= float(s.underflow) <= 1.0 and 0.0 <= float(s.saturated) <= 1.0


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(128, name="hidden")(x))
        h = nn.LayerNorm()(h)
        return nn.Dense(10, name="head")(h)


def _teacher():
    kx, kt = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (128, 64))
    return x, jnp.argmax(x @ jax.random.normal(kt, (64, 10)), -1)


@pytest.mark.parametrize("name", ["mxfp8", "nvfp4"])
def test_a_recipe_preset_trains_a_small_model_end_to_end(name):
    x, y = _teacher()
    policy = get_policy(name).with_overrides(("head", "float32"))
    ts = fpsim.nn.make_train_step(_MLP(), policy, optax.adam(1e-2), watch=False)
    state = ts.init(jax.random.key(1), x)
    losses = []
    for _ in range(30):
        state, m = ts.step(state, (x, y))
        losses.append(float(m["loss"]))
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.4 * losses[0], losses
    assert "recipe" not in m  # no statistics unless asked (watch=False)


def test_overrides_keep_layers_out_and_the_error_says_how():
    x, y = _teacher()
    ts = fpsim.nn.make_train_step(_MLP(), "mxfp8", optax.sgd(0.1))
    state = ts.init(jax.random.key(0), x)  # init runs the model outside the policy
    with pytest.raises(ValueError, match=r"'head'.*length 10.*with_overrides\(\('head'"):
        ts.step(state, (x, y))
    policy = get_policy("mxfp8").with_overrides(("head", "float32"))
    ts = fpsim.nn.make_train_step(_MLP(), policy, optax.sgd(0.1))
    _, m = ts.step(ts.init(jax.random.key(0), x), (x, y))
    assert list(m["recipe"]) == ["hidden"]  # not the head, not the LayerNorm
    assert set(m["layers"]) == {"hidden", "LayerNorm_0", "head"}


def test_a_recipe_combines_with_element_casts():
    """bf16 layer boundaries around MXFP8 GEMMs: the layer reads its input in bf16,
    then the recipe quantizes it; the output is written in bf16."""
    x = jax.random.normal(jax.random.key(0), (32, 64))
    model = nn.Dense(32, use_bias=False)
    params = model.init(jax.random.key(1), x)["params"]
    fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    pol = get_policy("bf16_mixed").replace(name="mxfp8_bf16", recipe="mxfp8")
    y = fpsim.nn.apply(fn, pol, params, x)
    r = get_recipe("mxfp8")
    xb, wb = fpsim.quantize(x, "bf16"), fpsim.quantize(params["kernel"], "bf16")
    mode = r.scale_mode
    want = quantize_blocks(xb, r.activation, axis=1, scale_mode=mode) @ quantize_blocks(
        wb, r.weight, axis=0, scale_mode=mode
    )
    np.testing.assert_allclose(y, fpsim.quantize(want, "bf16"), rtol=0, atol=0)


def test_nnx_linear_layers_take_the_recipe():
    x = jax.random.normal(jax.random.key(0), (32, 64))
    layer = nnx.Linear(64, 32, use_bias=False, rngs=nnx.Rngs(0))
    ts = fpsim.nn.make_train_step(layer, "mxfp8", optax.sgd(0.1), watch=False,
                                  recipe_stats=True)  # fmt: skip
    state = ts.init(jax.random.key(0), x)
    y = fpsim.nn.apply(ts.apply_fn, "mxfp8", state.params, x)
    r = get_recipe("mxfp8")
    w = state.params["kernel"]
    want = quantize_blocks(x, r.activation, axis=1, scale_mode="rceil") @ (
        quantize_blocks(w, r.weight, axis=0, scale_mode="rceil")
    )
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    _, m = ts.step(state, (x, jnp.zeros(32, jnp.int32)))
    assert list(m["recipe"]) == ["Linear"]
    assert int(m["recipe"]["Linear"].fprop_x.nonzero) == 32 * 64


def test_bad_names_list_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown precision policy 'mxfp9'.*nvfp4_no_rht"):
        get_policy("mxfp9")
    with pytest.raises(ValueError, match=r"unknown recipe 'fp4'.*mxfp4_naive"):
        fpsim.nn.Policy(recipe="fp4")
    with pytest.raises(TypeError, match="recipe name or Recipe"):
        fpsim.nn.Policy(recipe=3)


def test_a_stochastic_recipe_needs_a_key_only_for_its_backward_pass():
    x = jax.random.normal(jax.random.key(0), (32, 32))
    model = nn.Dense(16, use_bias=False)
    params = model.init(jax.random.key(1), x)["params"]
    fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    y = fpsim.nn.apply(fn, "nvfp4", params, x)  # forward: nearest, no key
    assert y.shape == (32, 16)
    with pytest.raises(ValueError, match="needs a random key"):
        jax.grad(lambda p: jnp.sum(fpsim.nn.apply(fn, "nvfp4", p, x)))(params)
    k = jax.random.key(3)
    g = jax.grad(lambda p: jnp.sum(fpsim.nn.apply(fn, "nvfp4", p, x, key=k)))(params)
    assert np.isfinite(g["kernel"]).all()


def test_policy_recipe_field_prints_and_hashes():
    pol = get_policy("nvfp4")
    assert pol.recipe is get_recipe("nvfp4") and not pol.is_float32
    assert "recipe='nvfp4'" in repr(pol)
    assert hash(pol) == hash(pol.replace())
    assert pol.has_recipe and not get_policy("float32").has_recipe
    assert get_policy("float32").with_overrides(("enc/*", pol)).has_recipe
    # the element presets are unchanged
    assert all(get_policy(n).recipe is None for n in ("fp16_mixed", "fp8_hybrid"))
