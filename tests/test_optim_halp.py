"""HALP (bit centering), SVRG and low-precision SGD."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import fpsim

KEY = jax.random.key(0)


def test_headline_lp_sgd_stalls_halp_converges_like_svrg():
    r = fpsim.showcase.run_halp_least_squares(epochs=15)
    halp, svrg, lp = r["halp"], r["svrg"], r["lp_sgd"]
    assert lp[-1] > 0.1 and min(lp[5:]) > 0.1  # stalled at the lattice's noise floor
    assert svrg[-1] < 1e-3
    assert halp[-1] < 1e-2 and halp[-1] < lp[-1] / 50
    assert halp[15] < halp[5] / 100  # linear convergence: a factor 100 in 10 epochs


def test_halp_with_an_fp8_offset_converges_too():
    r = fpsim.showcase.run_halp_least_squares(epochs=15, offset_fmt="e4m3")
    assert r["halp"][-1] < 1e-2 and r["halp"][-1] < r["lp_sgd"][-1] / 50


def _one_step(opt, w, g, gc, f):
    state = opt.init(w)
    u, state = opt.update(g, state, w, center_grads=gc, full_grad=f)
    return u, state


def test_halp_scale_and_lattice_follow_the_reference_algorithm():
    w = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[3.0]])}
    g = {"a": jnp.array([0.3, 0.2, -0.1]), "b": jnp.array([[1.0]])}
    gc = {"a": jnp.array([0.1, 0.0, 0.4]), "b": jnp.array([[0.5]])}
    f = {"a": jnp.array([1.0, -2.0, 2.0]), "b": jnp.array([[-4.0]])}
    lr, mu, bits = 0.5, 4.0, 8
    opt = fpsim.optim.halp(lr, 10, bits=bits, mu=mu, key=KEY)
    u, state = _one_step(opt, w, g, gc, f)
    for k in ("a", "b"):
        s = np.linalg.norm(np.asarray(f[k], np.float64)) / (mu * 127)
        assert float(state.scale[k]) == pytest.approx(s, rel=1e-6)
        target = -lr * (np.asarray(g[k]) - np.asarray(gc[k]) + np.asarray(f[k])) / s
        codes = np.asarray(state.offset[k])
        assert codes.dtype == np.int32
        lo = np.clip(np.floor(target), -128, 127)
        hi = np.clip(np.floor(target) + 1, -128, 127)
        assert np.all((codes == lo) | (codes == hi))  # stochastic rounding, clamped
        np.testing.assert_allclose(
            np.asarray(w[k]) + np.asarray(u[k]),
            np.asarray(w[k]) + codes * np.float32(state.scale[k]),
            rtol=1e-6,
        )


def test_halp_offset_saturates_at_the_lattice_ends():
    w = jnp.zeros(2)
    f = jnp.array([1.0, -1.0])
    opt = fpsim.optim.halp(1e6, 10, bits=4, mu=1.0, key=KEY)
    _, state = _one_step(opt, w, jnp.zeros(2), jnp.zeros(2), f)
    np.testing.assert_array_equal(state.offset, [-8, 7])


def test_halp_recenters_after_each_epoch():
    opt = fpsim.optim.halp(0.1, 3, bits=8, key=KEY)
    w = jnp.array([1.0, 2.0])
    state = opt.init(w)
    f = jnp.array([0.5, -0.25])
    for _ in range(3):
        u, state = opt.update(w - 1.5, state, w, center_grads=f, full_grad=f)
        w = optax.apply_updates(w, u)
    assert int(state.count) == 3
    np.testing.assert_array_equal(state.offset, [0, 0])
    np.testing.assert_array_equal(fpsim.optim.svrg_center(state), w)
    np.testing.assert_array_equal(fpsim.optim.halp_params(state), w)


def test_halp_float_offset_lies_on_the_format_grid():
    w = jnp.array([1.0, 2.0, 3.0])
    opt = fpsim.optim.halp(0.3, 10, key=KEY, offset_fmt="e4m3")
    _, state = _one_step(opt, w, w * 0.3, w * 0.1, jnp.array([1.0, -2.0, 0.7]))
    v = np.asarray(state.offset, np.float32)
    assert np.any(v != 0)
    np.testing.assert_array_equal(v.astype(ml_dtypes.float8_e4m3fn).astype(np.float32), v)


def test_svrg_step_and_center():
    opt = fpsim.optim.svrg(0.25, 2)
    w = jnp.array([1.0, -1.0])
    g, gc, f = jnp.array([0.5, 1.0]), jnp.array([0.25, 2.0]), jnp.array([1.0, 1.0])
    u, state = _one_step(opt, w, g, gc, f)
    np.testing.assert_array_equal(u, -0.25 * np.array([1.25, 0.0], np.float32))
    np.testing.assert_array_equal(state.center, w)  # not yet the end of the epoch
    u2, state = opt.update(g, state, w + u, center_grads=gc, full_grad=f)
    np.testing.assert_array_equal(state.center, optax.apply_updates(w + u, u2))


def test_lp_sgd_keeps_weights_on_its_lattice():
    opt = fpsim.optim.lp_sgd(0.1, scale=0.25, bits=8, key=KEY)
    w = jnp.array([0.5, -1.0, 0.75])
    state = opt.init(w)
    for _ in range(5):
        u, state = opt.update(jnp.array([0.3, -0.7, 0.05]), state, w)
        w = optax.apply_updates(w, u)
        np.testing.assert_array_equal(w / 0.25, np.round(np.asarray(w) / 0.25))


def test_svrg_epoch_runs_a_plain_optax_optimizer_and_checkpoints():
    x = jnp.arange(6.0).reshape(3, 2)
    y = jnp.array([1.0, 0.0, -1.0])

    def grad_fn(w, i):
        return 2.0 * x[i] * (x[i] @ w - y[i])

    def full(w):
        return 2.0 * x.T @ (x @ w - y) / 3

    opt = fpsim.optim.halp(0.01, 4, key=KEY)
    w = jnp.zeros(2)
    batches = jnp.array([0, 1, 2, 0])
    w1, s1 = fpsim.optim.svrg_epoch(opt, w, opt.init(w), grad_fn, full, batches)
    leaves, treedef = jax.tree_util.tree_flatten(s1)
    s1r = jax.tree_util.tree_unflatten(treedef, [np.array(v) for v in leaves])
    a = fpsim.optim.svrg_epoch(opt, w1, s1, grad_fn, full, batches)
    b = fpsim.optim.svrg_epoch(opt, w1, s1r, grad_fn, full, batches)
    for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(p, q)
    w2, _ = fpsim.optim.svrg_epoch(optax.sgd(0.01), w, optax.sgd(0.01).init(w), grad_fn,
                                   full, batches)  # fmt: skip
    assert w2.shape == (2,)


def test_errors():
    with pytest.raises(ValueError, match="bits"):
        fpsim.optim.halp(0.1, 10, bits=1, key=KEY)
    with pytest.raises(ValueError, match="epoch_length"):
        fpsim.optim.svrg(0.1, 0)
    with pytest.raises(ValueError, match="key"):
        fpsim.optim.halp(0.1, 10, key=None)
    opt = fpsim.optim.halp(0.1, 10, key=KEY)
    with pytest.raises(ValueError, match="center_grads"):
        opt.update(jnp.ones(2), opt.init(jnp.ones(2)), jnp.ones(2))
