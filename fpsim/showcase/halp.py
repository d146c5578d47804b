"""HALP vs SVRG vs (LP-)SGD on least squares: the comparison lesson 10 draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fpsim.optim._epoch import svrg_epoch
from fpsim.optim._halp import halp, lp_sgd, svrg


def _least_squares_data(key, n, d, noise):
    """Like sklearn's make_regression(n, d) with every feature informative:
    X ~ N(0, 1), coefficients ~ 100 * U(0, 1), y = X w + noise * N(0, 1)."""
    kx, kw, kn = jax.random.split(key, 3)
    x = np.asarray(jax.random.normal(kx, (n, d)), np.float64)
    w_true = 100.0 * np.asarray(jax.random.uniform(kw, (d,)), np.float64)
    y = x @ w_true + noise * np.asarray(jax.random.normal(kn, (n,)), np.float64)
    w_opt = np.linalg.lstsq(x, y, rcond=None)[0]
    return x.astype(np.float32), y.astype(np.float32), w_opt


def run_halp_least_squares(
    *,
    n: int = 100,
    d: int = 5,
    epochs: int = 20,
    epoch_length: int | None = None,
    learning_rate: float = 0.01,
    bits: int = 8,
    mu: float = 4.0,
    lp_scale: float | None = None,
    offset_fmt=None,
    noise: float = 0.0,
    key: jax.Array | None = None,
) -> dict[str, np.ndarray]:
    """HALP vs SVRG vs low-precision SGD vs SGD on least squares; distance curves.

    The reference example of De Sa et al. (torchhalp ``examples/regression``): ``n``
    samples, ``d`` features, MSE loss ``mean((x.w - y)**2)``, batch size 1, weights
    starting at 0, ``mu=4``, ``b=8``. Low-precision SGD gets the fixed lattice spacing
    ``lp_scale`` (default: just wide enough for the optimum, an oracle choice that
    favours it). Each epoch is ``epoch_length`` steps (default ``2 n``, the reference's
    T=200) with samples drawn uniformly with replacement, the same draws for all.

    Args:
      n: number of samples.
      d: number of features.
      epochs: number of epochs.
      epoch_length: steps per epoch (and HALP/SVRG re-centring period).
      learning_rate: step size for all methods.
      bits: bits of the low-precision offset (HALP) and weights (LP-SGD).
      mu: HALP's scale parameter.
      lp_scale: LP-SGD's lattice spacing.
      offset_fmt: a float format for HALP's offset instead of the fixed-point lattice.
      noise: standard deviation of noise added to the targets (0, as in the reference
        example; with noise, plain SGD also stalls at a noise floor).
      key: PRNG key (data, sampling and rounding); default ``jax.random.key(0)``.

    Returns:
      A dict with ``"sgd"``, ``"lp_sgd"``, ``"svrg"``, ``"halp"``: numpy arrays of the
      Euclidean distance ``||w - w*||`` at the start and after every epoch
      (``epochs + 1`` values), and ``"w_opt"``, the float64 least-squares optimum.
    """
    key = jax.random.key(0) if key is None else key
    epoch_length = 2 * n if epoch_length is None else epoch_length
    kdata, ksample, khalp, klp = jax.random.split(key, 4)
    x, y, w_opt = _least_squares_data(kdata, n, d, noise)
    x, y = jnp.asarray(x), jnp.asarray(y)
    if lp_scale is None:
        lp_scale = float(np.max(np.abs(w_opt))) * 1.25 / (2 ** (bits - 1) - 1)

    def grad_fn(w, i):
        return 2.0 * x[i] * (x[i] @ w - y[i])

    def full_grad_fn(w):
        return 2.0 * x.T @ (x @ w - y) / n

    optimizers = {
        "sgd": optax.sgd(learning_rate),
        "lp_sgd": lp_sgd(learning_rate, scale=lp_scale, bits=bits, key=klp),
        "svrg": svrg(learning_rate, epoch_length),
        "halp": halp(
            learning_rate, epoch_length, bits=bits, mu=mu, key=khalp, offset_fmt=offset_fmt
        ),  # fmt: skip
    }
    samples = jax.random.randint(ksample, (epochs, epoch_length), 0, n)
    curves = {}
    for name, opt in optimizers.items():
        run = jax.jit(
            lambda p, s, b, opt=opt: svrg_epoch(opt, p, s, grad_fn, full_grad_fn, b)
        )
        w = jnp.zeros((d,), jnp.float32)
        state = opt.init(w)
        dist = [float(np.linalg.norm(np.asarray(w, np.float64) - w_opt))]
        for e in range(epochs):
            w, state = run(w, state, samples[e])
            dist.append(float(np.linalg.norm(np.asarray(w, np.float64) - w_opt)))
        curves[name] = np.asarray(dist)
    curves["w_opt"] = w_opt
    return curves


__all__ = ["run_halp_least_squares"]
