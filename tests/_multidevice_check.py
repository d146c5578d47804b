"""Child process of tests/test_comm.py: the collectives on 4 simulated CPU devices.

Run as ``python tests/_multidevice_check.py OUT.npz``. XLA_FLAGS must be set before jax
is imported (the parent passes ``--xla_force_host_platform_device_count=4``), which is
why this runs in its own process: every other test keeps one device. It only computes
and saves; the parent checks every result against an independent single-device
reference. The parent also imports it for the shared problem definitions.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # as a child process only: importing it leaves jax alone
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import fpsim  # noqa: E402
from fpsim.comm import lp_all_reduce  # noqa: E402
from fpsim.nn import data_parallel_grads  # noqa: E402

#: (name, fmt, order, rounding, mean, divide, wire_format): the collective cases.
CASES = [
    ("ring_nearest_sum", "fp16", "ring", "nearest", False, "after", None),
    ("ring_sr_mean", "fp16", "ring", "stochastic", True, "after", None),
    ("tree_nearest_before", "fp16", "pairwise", "nearest", True, "before", None),
    ("tree_sr_sum", "bf16", "pairwise", "stochastic", False, "after", None),
    ("seq_nearest_wire", "e5m2", "sequential", "nearest", True, "after", "fp16"),
    ("seq_sr_sum", "fp16", "sequential", "stochastic", False, "after", None),
    ("fp32_nearest_mean", "fp16", "native", "nearest", True, "after", None),
]
SR_SEED = 7
SR_EXACT_N = 1 << 16
LR = 0.125


def per_device_data() -> np.ndarray:
    """4 devices x (3, 5) values spread over many binades, so the order matters."""
    rng = np.random.default_rng(0)
    mag = 2.0 ** rng.uniform(-6, 6, size=(4, 3, 5))
    return (rng.choice([-1.0, 1.0], size=mag.shape) * mag).astype(np.float32)


def tiny_gradients(n: int) -> np.ndarray:
    """n devices x 256 gradients log-uniform in [2**-28, 2**-14]: around FP16's
    subnormals (2**-24 .. 2**-14); those below 2**-25 underflow even undivided."""
    rng = np.random.default_rng(1)
    mag = 2.0 ** rng.uniform(-28, -14, size=(n, 256))
    return (rng.choice([-1.0, 1.0], size=mag.shape) * mag).astype(np.float32)


def mlp_problem():
    rng = np.random.default_rng(2)
    params = {
        "w1": rng.normal(size=(4, 8)).astype(np.float32) * 0.5,
        "b1": np.zeros(8, np.float32),
        "w2": rng.normal(size=(8, 1)).astype(np.float32) * 0.5,
        "b2": np.zeros(1, np.float32),
    }
    x = rng.normal(size=(16, 4)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    return params, {"x": x, "y": y}


def mlp_loss(params, batch):
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    out = h @ params["w2"] + params["b2"]
    return jnp.mean((out - batch["y"]) ** 2)


def policy_problem():
    """A Linen MLP run under fpsim.nn's "fp16_mixed" policy: (loss_fn, params, batch)."""
    import flax.linen as nn

    import fpsim.nn

    model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(1)])
    _, batch = mlp_problem()
    params = model.init(jax.random.key(0), batch["x"][:1])["params"]

    def loss_fn(params, batch):
        out = fpsim.nn.apply(lambda p, x: model.apply({"params": p}, x), "fp16_mixed",
                             params, batch["x"])  # fmt: skip
        return jnp.mean((out - batch["y"]) ** 2)

    return loss_fn, params, batch


def main(path: str) -> None:
    devices = jax.devices()
    assert len(devices) == 4, devices
    mesh = Mesh(np.array(devices), ("data",))
    key = jax.random.key(SR_SEED)
    results: dict[str, np.ndarray] = {}

    x = per_device_data()
    for name, fmt, order, rounding, mean, divide, wire in CASES:
        opts = dict(
            order=order, rounding=rounding, mean=mean, divide=divide, wire_format=wire
        )
        f = jax.jit(
            jax.shard_map(
                lambda g, k, fmt=fmt, opts=opts: lp_all_reduce(g[0], "data", fmt, key=k,
                                                               **opts)[None],
                mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data"),
            )
        )  # fmt: skip
        # out_specs=P("data") keeps every device's copy: all four must agree
        results[name] = np.asarray(f(x, key))

    # exact stochastic rounding in the collective: device 0 sends 1, device 1 2**-30,
    # in a 21-bit accumulator: P(1 + 2**-30 rounds up) = 2**-30 / 2**-21 = 2**-9
    e8m21 = fpsim.Format("e8m21", 8, 21)
    g = np.zeros((4, SR_EXACT_N), np.float32)
    g[0], g[1] = 1.0, 2.0**-30
    f = jax.jit(
        jax.shard_map(
            lambda v, k: lp_all_reduce(v[0], "data", e8m21, order="sequential",
                                       rounding="stochastic", key=k),
            mesh=mesh, in_specs=(P("data"), P()), out_specs=P(),
        )
    )  # fmt: skip
    results["sr_exact_e8m21"] = np.asarray(f(g, key))

    # divide before vs after on 2 and 4 real devices
    for n in (2, 4):
        sub = Mesh(np.array(devices[:n]), ("data",))
        g = tiny_gradients(n)
        for divide in ("before", "after"):
            f = jax.jit(
                jax.shard_map(
                    lambda v, divide=divide: lp_all_reduce(v[0], "data", "fp16",
                                                           mean=True, divide=divide),
                    mesh=sub, in_specs=P("data"), out_specs=P(),
                )
            )  # fmt: skip
            results[f"mean_{divide}_{n}"] = np.asarray(f(g))

    # one data-parallel SGD step of an MLP, gradients all-reduced in FP16 (ring)
    params, batch = mlp_problem()
    grads_fn = data_parallel_grads(mlp_loss, mesh, "fp16", order="ring")
    loss, grads = grads_fn(params, batch)
    tx = optax.sgd(LR)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    results["dp_loss"] = np.asarray(loss)
    for k, v in new.items():
        results[f"dp_params_{k}"] = np.asarray(v)
    for k, v in grads.items():
        results[f"dp_grads_{k}"] = np.asarray(v)

    # the same under a precision policy of fpsim.nn, reduced in BF16 (tree order)
    loss_fn, params, batch = policy_problem()
    _, grads = data_parallel_grads(loss_fn, mesh, "bf16", order="pairwise")(params, batch)
    for i, leaf in enumerate(jax.tree_util.tree_leaves(grads)):
        results[f"policy_grads_{i}"] = np.asarray(leaf)
    np.savez(path, **results)


if __name__ == "__main__":
    main(sys.argv[1])
