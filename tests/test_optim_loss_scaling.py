"""Loss scaling: each variant's scale trajectory against its own rules, skipping, state."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fpsim

F32_MAX = float(np.finfo(np.float32).max)


# ---- independent references, transcribed from each framework's update rule -----------
def ref_pytorch(seq, scale, growth=2.0, backoff=0.5, interval=3):
    """PyTorch _amp_update_scale: grows when tracker+1 == interval, unless it gives inf."""
    tracker, out = 0, []
    for found_inf in seq:
        if found_inf:
            scale, tracker = float(np.float32(scale * backoff)), 0
        else:
            successful = tracker + 1
            if successful == interval:
                new = np.float32(scale * growth)
                if np.isfinite(new):
                    scale = float(new)
                tracker = 0
            else:
                tracker = successful
        out.append(scale)
    return out


def ref_keras(seq, scale, interval=3):
    """Keras 3 LossScaleOptimizer: step_counter == steps - 1 -> double; else count."""
    counter, out = 0, []
    for found_inf in seq:
        if found_inf:
            counter, scale = 0, float(np.float32(scale / 2.0))
        elif counter == interval - 1:
            counter, scale = 0, float(np.float32(scale * 2.0))
        else:
            counter += 1
        out.append(scale)
    return out


def ref_flax(seq, scale, growth=2.0, backoff=0.5, interval=3, minimum=2.0**-126):
    """Flax DynamicScale: grow = fin_steps == interval, checked *before* counting."""
    fin_steps, out = 0, []
    for found_inf in seq:
        grow = fin_steps == interval
        if not found_inf:
            scale = min(scale * growth, F32_MAX) if grow else scale
        else:
            scale = max(scale * backoff, minimum)
        fin_steps = 0 if (grow or found_inf) else fin_steps + 1
        out.append(float(np.float32(scale)))
    return out


def ref_jmp(seq, scale, period=3, factor=2, minimum=1.0):
    """jmp DynamicLossScale.adjust: counter == period - 1 grows; backoff floor 1."""
    counter, out = 0, []
    for found_inf in seq:
        finite = not found_inf
        if finite:
            if counter == period - 1:
                grown = np.float32(scale * factor)
                scale = float(grown) if np.isfinite(grown) else scale
        else:
            scale = max(minimum, scale / factor)
        counter = ((counter + 1) % period) * int(finite)
        out.append(scale)
    return out


REFS = {"pytorch": ref_pytorch, "keras": ref_keras, "flax": ref_flax, "jmp": ref_jmp}
SEQ = [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]


def run_sequence(opt, seq, params=None):
    params = {"w": jnp.ones(3)} if params is None else params
    state = opt.init(params)
    update = jax.jit(opt.update)
    scales = []
    for bad in seq:
        g = {"w": jnp.array([1.0, jnp.inf if bad else 2.0, 3.0])}
        _, state = update(g, state, params)
        scales.append(float(state.scale))
    return scales, state


@pytest.mark.parametrize("variant", fpsim.optim.LOSS_SCALING_VARIANTS)
def test_trajectory_matches_each_frameworks_rules(variant):
    init = 8.0
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.sgd(0.1), variant=variant, init_scale=init, growth_interval=3
    )
    got, state = run_sequence(opt, SEQ)
    assert got == REFS[variant](SEQ, init)
    assert int(state.skipped) == sum(SEQ)


def test_flax_grows_one_step_later_than_pytorch():
    seq = [0, 0, 0, 0]
    pt = fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), init_scale=1.0, growth_interval=3)
    fx = fpsim.optim.dynamic_loss_scaling(
        optax.sgd(0.1), variant="flax", init_scale=1.0, growth_interval=3
    )
    assert run_sequence(pt, seq)[0] == [1.0, 1.0, 2.0, 2.0]
    assert run_sequence(fx, seq)[0] == [1.0, 1.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("variant", "want"),
    [
        ("pytorch", [2.0, 1.0, 0.5, 0.25]),  # no minimum
        ("keras", [2.0, 1.0, 0.5, 0.25]),
        ("jmp", [2.0, 1.0, 1.0, 1.0]),  # min_loss_scale = 1
    ],
)
def test_backoff_floor(variant, want):
    opt = fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), variant=variant, init_scale=4.0)
    assert run_sequence(opt, [1, 1, 1, 1])[0] == want


def test_flax_floor_is_float32_tiny():
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.sgd(0.1), variant="flax", init_scale=2.0**-125
    )
    assert run_sequence(opt, [1, 1, 1])[0] == [2.0**-126] * 3


@pytest.mark.parametrize(
    ("variant", "want"), [("pytorch", 2.0**127), ("jmp", 2.0**127), ("keras", math.inf),
                          ("flax", F32_MAX)]
)  # fmt: skip
def test_growth_at_the_top_of_float32(variant, want):
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.sgd(0.1), variant=variant, init_scale=2.0**127, growth_interval=1
    )
    got = run_sequence(opt, [0, 0])[0]
    assert got[-1] == want


def test_pytorch_defaults_grow_after_2000_finite_steps():
    opt = fpsim.optim.dynamic_loss_scaling(optax.sgd(0.0))
    params = jnp.ones(2)
    state = opt.init(params)
    assert float(state.scale) == 2.0**16

    @jax.jit
    def steps(state, n):
        def body(_, s):
            return opt.update(jnp.ones(2), s, params)[1]

        return jax.lax.fori_loop(0, n, body, state)

    s1999 = steps(state, 1999)
    assert float(s1999.scale) == 2.0**16 and int(s1999.growth_tracker) == 1999
    s2000 = steps(s1999, 1)
    assert float(s2000.scale) == 2.0**17 and int(s2000.growth_tracker) == 0
    keras = fpsim.optim.dynamic_loss_scaling(optax.sgd(0.0), variant="keras")
    assert float(keras.init(params).scale) == 2.0**15


def _bits(tree):
    return [np.asarray(x).view(np.uint32) for x in jax.tree.leaves(tree)]


def test_skipped_step_leaves_params_and_inner_state_bitwise_unchanged():
    opt = fpsim.optim.dynamic_loss_scaling(optax.adam(0.1), init_scale=4.0)
    params = {"a": jnp.array([-0.0, 0.0, 1.5]), "b": jnp.array([[2.0, -3.0]])}
    state = opt.init(params)
    good = {"a": jnp.array([1.0, 2.0, 3.0]), "b": jnp.array([[4.0, 5.0]])}
    for _ in range(3):
        updates, state = opt.update(good, state, params)
        params = optax.apply_updates(params, updates)
    params = {"a": params["a"].at[0].set(-0.0), "b": params["b"]}
    bad = {"a": jnp.array([1.0, jnp.nan, 3.0]), "b": jnp.array([[4.0, 5.0]])}
    updates, new_state = jax.jit(opt.update)(bad, state, params)
    new_params = optax.apply_updates(params, updates)
    assert all(
        (x == y).all() for x, y in zip(_bits(new_params), _bits(params), strict=True)
    )
    assert all(
        (x == y).all()
        for x, y in zip(_bits(new_state.inner_state), _bits(state.inner_state), strict=True)
    )
    assert int(new_state.skipped) == 1 and not bool(new_state.last_finite)
    assert float(new_state.nonfinite_fraction) == pytest.approx(1 / 5)
    assert float(new_state.scale) == 2.0


def test_unscaled_gradients_reach_the_inner_optimizer():
    opt = fpsim.optim.dynamic_loss_scaling(optax.sgd(1.0))
    g = jnp.array([0.5, -3.0, 1e-3])
    updates, _ = opt.update(g * 2.0**16, opt.init(g), g)
    np.testing.assert_array_equal(updates, -g)


def test_per_leaf_grad_scales_are_undone():
    opt = fpsim.optim.static_loss_scaling(optax.sgd(1.0), 8.0)
    true = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([3.0])}
    gs = {"a": 4.0, "b": 0.25}
    scaled = {"a": true["a"] * 8.0 * 4.0, "b": true["b"] * 8.0 * 0.25}
    updates, state = opt.update(scaled, opt.init(true), true, grad_scales=gs)
    np.testing.assert_array_equal(updates["a"], -true["a"])
    np.testing.assert_array_equal(updates["b"], -true["b"])
    with pytest.raises(ValueError, match="grad_scales"):
        opt.update(scaled, state, true, grad_scales={"a": 1.0})


def test_checkpoint_restore_continues_bitwise():
    opt = fpsim.optim.dynamic_loss_scaling(
        optax.adam(0.05), init_scale=16.0, growth_interval=2
    )
    params = jnp.array([1.0, -2.0, 0.5])
    seq = [0, 0, 1, 0, 0, 0, 1, 0, 0, 0]
    update = jax.jit(opt.update)

    def grads(i, p):
        g = 16.0 * (p - 0.3 * i)
        return g.at[1].set(jnp.inf) if seq[i] else g

    def train(p, s, steps):
        for i in steps:
            u, s = update(grads(i, p), s, p)
            p = optax.apply_updates(p, u)
        return p, s

    p_full, s_full = train(params, opt.init(params), range(10))
    p_half, s_half = train(params, opt.init(params), range(5))
    leaves, treedef = jax.tree_util.tree_flatten((p_half, s_half))
    restored = jax.tree_util.tree_unflatten(treedef, [np.array(x) for x in leaves])
    p_res, s_res = train(*restored, range(5, 10))
    assert all((a == b).all() for a, b in zip(_bits(p_res), _bits(p_full), strict=True))
    for a, b in zip(jax.tree.leaves(s_res), jax.tree.leaves(s_full), strict=True):
        np.testing.assert_array_equal(a, b)


def test_composes_with_chain_multisteps_inject_hyperparams_under_jit():
    params = jnp.array([1.0, 2.0])
    g = jnp.array([0.5, jnp.inf])
    chained = optax.chain(
        optax.clip_by_global_norm(1e9), fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1))
    )
    multi = optax.MultiSteps(fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1)), 2)
    injected = optax.inject_hyperparams(
        fpsim.optim.dynamic_loss_scaling, static_args=("variant",)
    )(optax.sgd(0.1), growth_interval=2, init_scale=4.0)
    for opt in (chained, multi, injected):
        state = opt.init(params)
        update = jax.jit(opt.update)
        for grads in (g, g, params, params, params, params):
            _, state = update(grads, state, params)
        assert fpsim.optim.loss_scaling_state(state).skipped >= 1
        assert float(fpsim.optim.current_loss_scale(state)) > 0
    # inject_hyperparams: 2 skips (4 -> 1), then 4 finite steps (1 -> 2 -> 4)
    assert float(fpsim.optim.current_loss_scale(state)) == 4.0
    assert float(fpsim.optim.scale_loss(3.0, state)) == 12.0


def test_saturation_detected_or_documented_as_missed():
    big = jnp.array([10.0, 0.5])  # scaled by 2**16: 655360 > FP16 max 65504
    params = jnp.zeros(2)
    for saturate, detect, skipped in [(False, True, 1), (True, True, 1), (True, False, 0)]:
        opt = fpsim.optim.dynamic_loss_scaling(
            optax.sgd(1.0), fmt="fp16", saturate=saturate, detect_saturation=detect
        )
        u, s = opt.update(big * 2.0**16, opt.init(params), params)
        assert int(s.skipped) == skipped
    np.testing.assert_array_equal(u, -jnp.array([65504.0 / 2**16, 0.5]))  # clipped


def test_underflow_fraction_shows_what_scaling_rescues():
    g = jnp.array([1e-9, 1e-3, 2e-9, 0.0])
    params = jnp.zeros(4)
    for scale, want in [(1.0, 2 / 3), (2.0**16, 0.0)]:  # 2 of the 3 nonzero entries
        opt = fpsim.optim.static_loss_scaling(optax.sgd(1.0), scale, fmt="fp16")
        _, s = opt.update(g * scale, opt.init(params), params)
        assert float(s.underflow_fraction) == pytest.approx(want)


@pytest.mark.parametrize(
    "g, want",
    [
        ([1e-9, 0.0, 0.0, 0.0], 1.0),  # the only nonzero entry is lost
        ([0.0, 0.0, 0.0, 0.0], 0.0),  # nothing nonzero: nothing lost
        ([1e-9, jnp.inf, 0.0, 1.0], 0.5),  # inf is neither nonzero-finite nor lost
    ],
)
def test_underflow_fraction_is_over_nonzero_finite_entries(g, want):
    # as documented, and as fpsim.nn.underflow_fraction: zeros do not dilute it
    params = jnp.zeros(4)
    opt = fpsim.optim.static_loss_scaling(optax.sgd(1.0), 1.0, fmt="fp16")
    _, s = jax.jit(opt.update)(jnp.array(g), opt.init(params), params)
    assert float(s.underflow_fraction) == want


def test_bad_input_errors():
    with pytest.raises(ValueError, match="pytorch"):
        fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), variant="apex")
    with pytest.raises(ValueError, match="growth_interval"):
        fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), growth_interval=0)
    with pytest.raises(ValueError, match="no LossScalingState"):
        fpsim.optim.current_loss_scale(optax.sgd(0.1).init(jnp.ones(1)))


@pytest.mark.parametrize(
    "name, value, valid",
    [
        ("growth_interval", 2.5, "an int >= 1"),
        ("growth_interval", True, "an int >= 1"),
        ("growth_interval", 0, "an int >= 1"),
        ("growth_interval", -3, "an int >= 1"),
        ("growth_factor", 1.0, "> 1"),
        ("growth_factor", 0.5, "> 1"),
        ("backoff_factor", 1.0, "0 < backoff_factor < 1"),
        ("backoff_factor", 2.0, "0 < backoff_factor < 1"),
        ("backoff_factor", 0.0, "0 < backoff_factor < 1"),
        ("backoff_factor", -0.5, "0 < backoff_factor < 1"),
    ],
)
def test_dynamic_loss_scaling_rejects_factors_that_break_the_rule(name, value, valid):
    # PyTorch's GradScaler: growth_factor > 1, 0 < backoff_factor < 1; a non-integer
    # (or bool) interval would never equal the integer step counter: no growth, ever
    with pytest.raises(ValueError) as err:
        fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), **{name: value})
    msg = str(err.value)
    assert name in msg and repr(value) in msg and valid in msg, msg


def test_dynamic_loss_scaling_accepts_valid_factors():
    for kw in ({"growth_interval": 1}, {"growth_factor": 1.5, "backoff_factor": 0.25}):
        fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), **kw)
    fpsim.optim.dynamic_loss_scaling(optax.sgd(0.1), growth_interval=np.int64(5))
