"""fpsim.comm: low-precision all-reduce, checked against an independent reference.

The reference below simulates each reduction order on the host, one addition at a
time: round-to-nearest additions are the *exact* sum (Fractions) rounded by the exact
reference rounder of conftest; stochastic additions are the float32 sum (exact for the
data used) rounded by ``fpsim.quantize`` with the per-addition key fpsim.comm documents
(``derive(key, tag, ...)``: 0 sequential, 20 pairwise, 30 native, 40 ring); the wire
and the final division use ml_dtypes. The collectives run on 4 simulated CPU devices in
a child process (tests/_multidevice_check.py), so the rest of the suite keeps one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import _multidevice_check as child
import jax
import numpy as np
import pytest
from conftest import assert_bits_equal, ml_round, ref_round

import fpsim
from fpsim.comm import DIVIDE_CHOICES, ORDERS, lp_all_reduce, lp_reduce, wire_counts
from fpsim.nn import data_parallel_grads

F32 = np.float32


# --------------------------------------------------------------------------------------
# The independent reference
# --------------------------------------------------------------------------------------
def ref_add(a, b, fmt, rounding, key):
    a, b = np.asarray(a, F32), np.asarray(b, F32)
    if rounding == "nearest":
        out = []
        for u, v in zip(a.flat, b.flat, strict=True):
            exact = Fraction(float(u)) + Fraction(float(v))
            if exact == 0:  # IEEE 754: +0, unless both addends are -0
                out.append(-0.0 if np.signbit(u) and np.signbit(v) else 0.0)
            else:
                out.append(ref_round(exact, fmt))
        return np.array(out, F32).reshape(a.shape)
    return np.asarray(fpsim.quantize(a + b, fmt, "stochastic", key=key))


def fold(key, *data):
    for d in data:
        key = jax.random.fold_in(key, d)
    return key


SEQ, PAIR, NATIVE, RING = 0, 20, 30, 40


def ref_reduce(xs, fmt, order, rounding="nearest", key=None, mean=False, divide="after",
               wire=None):  # fmt: skip
    fmt = fpsim.get_format(fmt)
    wire = fmt if wire is None else fpsim.get_format(wire)
    xs = np.asarray(xs, F32)
    n, shape = xs.shape[0], xs.shape[1:]
    c = ml_round(xs / F32(n) if (mean and divide == "before") else xs, wire)
    if order == "sequential":
        acc = c[0]
        for s in range(1, n):
            acc = ref_add(
                acc, c[s], fmt, rounding, fold(key, SEQ, s) if key is not None else None
            )
    elif order == "ring":
        size = int(np.prod(shape))
        length = -(-size // n)
        pieces = np.zeros((n, n * length), F32)
        pieces[:, :size] = c.reshape(n, size)
        pieces = pieces.reshape(n, n, length)  # device, chunk, element
        chunks = []
        for k in range(n):
            acc = pieces[(k + 1) % n, k]
            for s in range(1, n):
                k_s = fold(key, RING, s, k) if key is not None else None
                acc = ref_add(acc, pieces[(k + 1 + s) % n, k], fmt, rounding, k_s)
            chunks.append(acc)
        acc = np.concatenate(chunks)[:size].reshape(shape)
    elif order == "pairwise":  # one key per level, for all its pairs at once
        terms, level = list(c), 0
        while len(terms) > 1:
            half = len(terms) // 2
            k = fold(key, PAIR, level) if key is not None else None
            left, right = terms[0 : 2 * half : 2], terms[1 : 2 * half : 2]
            pairs = ref_add(np.stack(left), np.stack(right), fmt, rounding, k)
            terms = list(pairs) + terms[2 * half :]
            level += 1
        acc = terms[0]
    else:  # native: a float32 buffer (exact for the data used), rounded once
        acc = c[0]
        for s in range(1, n):
            acc = (acc + c[s]).astype(F32)
        if rounding == "nearest":
            acc = ml_round(acc, fmt)
        else:
            acc = np.asarray(fpsim.quantize(acc, fmt, "stochastic", key=fold(key, NATIVE)))
    if mean and divide == "after":
        acc = ml_round(acc / F32(n), fmt)
    return np.asarray(acc, F32)


def underflow_ref(g: np.ndarray, wire, divide: str) -> int:
    """Nonzero values sent (as g / n if divide="before") that become zero (ml_dtypes)."""
    sent = ml_round(g / F32(g.shape[0]) if divide == "before" else g, wire)
    return int(((g != 0) & (sent == 0)).sum())


# --------------------------------------------------------------------------------------
# Single device: lp_reduce, also for "virtual" device counts
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["sequential", "ring", "pairwise", "native"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_lp_reduce_matches_reference(order, rounding):
    xs = child.per_device_data()[:, :2]  # 4 devices x (2, 5): 10 elements, ring pads
    key = jax.random.key(3) if rounding == "stochastic" else None
    got = lp_reduce(xs, "fp16", order=order, rounding=rounding, key=key)
    assert_bits_equal(got, ref_reduce(xs, "fp16", order, rounding, key))


@pytest.mark.parametrize(("n", "order"), [(3, "ring"), (5, "pairwise"), (5, "ring")])
def test_lp_reduce_odd_device_counts(n, order):
    rng = np.random.default_rng(n)
    xs = (rng.normal(size=(n, 7)) * 2.0 ** rng.integers(-8, 8, size=(n, 7))).astype(F32)
    for mean, divide in [(False, "after"), (True, "before"), (True, "after")]:
        got = lp_reduce(
            xs, "e4m3", order=order, mean=mean, divide=divide, wire_format="bf16"
        )
        want = ref_reduce(xs, "e4m3", order, mean=mean, divide=divide, wire="bf16")
        assert_bits_equal(got, want)


def test_order_matters_and_axis():
    """Four FP16 values whose sum depends on the order; axis= picks the device axis."""
    xs = np.array([2048.0, 1.0, 1.0, -2048.0], F32)[:, None]
    seq = float(lp_reduce(xs, "fp16", order="sequential")[0])
    tree = float(lp_reduce(xs, "fp16", order="pairwise")[0])
    wide = float(lp_reduce(xs, "fp16", order="native")[0])
    # sequential: 2048+1 -> 2048 (tie to even), +1 -> 2048, -2048 -> 0
    # tree: (2048+1) -> 2048, (1-2048) -> -2047, sum 1; float32: exact 2
    assert (seq, tree, wide) == (0.0, 1.0, 2.0)
    assert_bits_equal(lp_reduce(xs.T, "fp16", axis=1, order="pairwise"), [1.0])


def test_single_device_is_the_wire_value():
    x = np.array([[1.0 + 2.0**-12, 3e-8]], F32)
    assert_bits_equal(lp_reduce(x, "fp16"), ml_round(x[0], fpsim.FP16))


@pytest.mark.parametrize("order", ["ring", "pairwise"])
def test_stochastic_reduction_is_unbiased(order):
    """Device 0 holds 1.0, seven more hold 2**-13: an eighth of FP16's ulp at 1. Round to
    nearest drops every one of them (swamping); stochastic rounding keeps them on
    average, so the mean over 4096 elements is close to the exact 1 + 7 * 2**-13."""
    xs = np.full((8, 4096), 2.0**-13, F32)
    xs[0] = 1.0
    near = np.asarray(lp_reduce(xs, "fp16", order="sequential"))
    assert (near == 1.0).all()
    key = jax.random.key(0)
    sr = np.asarray(lp_reduce(xs, "fp16", order=order, rounding="stochastic", key=key))
    assert_bits_equal(sr, ref_reduce(xs, "fp16", order, "stochastic", key))
    exact = 1.0 + 7 * 2.0**-13
    assert abs(sr.mean() - exact) < 4 * sr.std() / np.sqrt(sr.size)
    assert abs(near.mean() - exact) > 10 * sr.std() / np.sqrt(sr.size)


@pytest.mark.parametrize("n", [2, 8, 64])
def test_divide_before_underflows_more_with_more_devices(n):
    g = child.tiny_gradients(n)
    before = wire_counts(g, "fp16", divide="before")
    after = wire_counts(g, "fp16", divide="after")
    assert int(before.underflow) == underflow_ref(g, fpsim.FP16, "before")
    assert int(after.underflow) == underflow_ref(g, fpsim.FP16, "after")
    assert int(before.underflow) > int(after.underflow)
    # the reduced means: lost contributions show up in the results
    exact = g.astype(np.float64).mean(axis=0)
    err = {}
    for divide in DIVIDE_CHOICES:
        got = lp_reduce(g, "fp16", mean=True, divide=divide)
        if n <= 8:  # the Fraction reference is slow for many virtual devices
            assert_bits_equal(got, ref_reduce(g, "fp16", "ring", mean=True, divide=divide))
        err[divide] = np.abs(np.asarray(got, np.float64) - exact).sum()
    assert err["before"] > err["after"]


def test_divide_before_underflow_grows():
    """The same 256 gradients on every device: the share lost grows with n (before) and
    stays put (after)."""
    base = child.tiny_gradients(1)
    before, after = [], []
    for n in (1, 2, 4, 8, 16, 32, 64):
        g = np.repeat(base, n, axis=0)
        before.append(int(wire_counts(g, "fp16", divide="before").underflow) // n)
        after.append(int(wire_counts(g, "fp16", divide="after").underflow) // n)
    # |g| / n underflows iff |g| <= 2**-25 * n (ties to even): count it directly
    want = [int((np.abs(base) <= 2.0**-25 * n).sum()) for n in (1, 2, 4, 8, 16, 32, 64)]
    assert before == want
    assert after == [want[0]] * 7
    assert all(b < c for b, c in zip(before[:-1], before[1:], strict=True))


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------
def test_bad_input_errors():
    x = np.ones((2, 3), F32)
    with pytest.raises(ValueError, match="valid: " + ", ".join(ORDERS)):
        lp_reduce(x, "fp16", order="butterfly")
    for old, new in [("tree", "pairwise"), ("fp32_then_round", "native")]:
        with pytest.raises(ValueError, match=f"now called '{new}'"):
            lp_reduce(x, "fp16", order=old)
    with pytest.raises(ValueError, match="valid: 'after'"):
        lp_reduce(x, "fp16", mean=True, divide="during")
    with pytest.raises(ValueError, match="needs key"):
        lp_reduce(x, "fp16", rounding="stochastic")
    with pytest.raises(ValueError, match="unknown rounding mode"):
        lp_reduce(x, "fp16", rounding="odd")
    with pytest.raises(ValueError, match="at least one device"):
        lp_reduce(np.ones((0, 3), F32), "fp16")
    with pytest.raises(ValueError, match="valid"):
        wire_counts(x, "fp16", divide="never")
    with pytest.raises(ValueError):
        lp_reduce(x, "fp17")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="not a mesh axis"):
        data_parallel_grads(lambda p, b: 0.0, mesh, "fp16", axis_name="model")
    grads_fn = data_parallel_grads(child.mlp_loss, mesh, "fp16", rounding="stochastic")
    params, batch = child.mlp_problem()
    with pytest.raises(ValueError, match="needs step_grads"):
        grads_fn(params, batch)


def test_one_device_collective_and_data_parallel():
    """On this process's single device the collective is the wire value / the mean."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    x = child.per_device_data()[:1]
    f = jax.shard_map(lambda g: lp_all_reduce(g[0], "data", "fp16", mean=True),
                      mesh=mesh, in_specs=jax.sharding.PartitionSpec("data"),
                      out_specs=jax.sharding.PartitionSpec())  # fmt: skip
    assert_bits_equal(f(x), ml_round(x[0], fpsim.FP16))


# --------------------------------------------------------------------------------------
# 4 simulated devices, in a child process
# --------------------------------------------------------------------------------------
def _run_child(out: Path) -> None:
    script = Path(__file__).with_name("_multidevice_check.py")
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    tmp = out.with_suffix(".part.npz")
    proc = subprocess.run([sys.executable, str(script), str(tmp)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        out.with_suffix(".err").write_text(proc.stderr[-4000:])
    else:
        tmp.rename(out)


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> dict[str, np.ndarray]:
    """The child's results, computed once per test session even under pytest-xdist
    (the workers share the base temporary directory's parent; the first one to take
    the lock runs the child, the others wait for its file)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    out, err = root / "comm_multi.npz", root / "comm_multi.err"
    try:
        os.close(os.open(root / "comm_multi.lock", os.O_CREAT | os.O_EXCL))
        _run_child(out)
    except FileExistsError:
        deadline = time.monotonic() + 600
        while not (out.exists() or err.exists()) and time.monotonic() < deadline:
            time.sleep(0.2)
    if err.exists():
        pytest.fail("the 4-device child process failed:\n" + err.read_text())
    with np.load(out) as data:
        return dict(data)


@pytest.mark.parametrize("case", child.CASES, ids=[c[0] for c in child.CASES])
def test_all_reduce_on_4_devices(multi, case):
    name, fmt, order, rounding, mean, divide, wire = case
    got = multi[name]
    assert got.shape[0] == 4
    for d in range(1, 4):  # every device holds the same result
        assert_bits_equal(got[d], got[0])
    key = jax.random.key(child.SR_SEED) if rounding == "stochastic" else None
    xs = child.per_device_data()
    want = ref_reduce(xs, fmt, order, rounding, key, mean, divide, wire)
    assert_bits_equal(got[0], want)
    # and the single-device twin agrees
    twin = lp_reduce(xs, fmt, order=order, rounding=rounding, key=key, mean=mean,
                     divide=divide, wire_format=wire)  # fmt: skip
    assert_bits_equal(twin, want)


@pytest.mark.parametrize("n", [2, 4])
def test_divide_before_after_on_devices(multi, n):
    g = child.tiny_gradients(n)
    exact = g.astype(np.float64).mean(axis=0)
    err = {}
    for divide in DIVIDE_CHOICES:
        got = multi[f"mean_{divide}_{n}"]
        assert_bits_equal(got, ref_reduce(g, "fp16", "ring", mean=True, divide=divide))
        err[divide] = np.abs(got.astype(np.float64) - exact).sum()
    assert err["before"] > err["after"]
    for divide in DIVIDE_CHOICES:
        counts = wire_counts(g, "fp16", divide=divide)
        assert int(counts.underflow) == underflow_ref(g, fpsim.FP16, divide)


def test_data_parallel_sgd_step_matches_single_device(multi):
    """One SGD step on 4 devices == the same step computed shard by shard on one."""
    params, batch = child.mlp_problem()
    n = 4
    grad = jax.jit(jax.grad(child.mlp_loss))

    def shard(d):
        return {k: v[d * 4 : (d + 1) * 4] for k, v in batch.items()}

    shards = [grad(params, shard(d)) for d in range(n)]
    for name, p in params.items():
        stack = np.stack([np.asarray(s[name]) for s in shards])
        g = ref_reduce(stack, "fp16", "ring", mean=True, divide="after")
        assert_bits_equal(multi[f"dp_grads_{name}"], g)
        want = (p + F32(-child.LR) * g).astype(F32)  # lr = 1/8: the product is exact
        assert_bits_equal(multi[f"dp_params_{name}"], want)
    losses = [float(child.mlp_loss(params, shard(d))) for d in range(n)]
    np.testing.assert_allclose(float(multi["dp_loss"]), np.mean(losses), rtol=1e-6)


def test_data_parallel_under_fpsim_nn_policy(multi):
    """A Linen MLP under fpsim.nn's fp16_mixed policy: 4 devices == one, shard by shard."""
    loss_fn, params, batch = child.policy_problem()
    grad = jax.jit(jax.grad(loss_fn))
    shards = [grad(params, {k: v[d * 4 : (d + 1) * 4] for k, v in batch.items()})
              for d in range(4)]  # fmt: skip
    per_leaf = zip(*(jax.tree_util.tree_leaves(s) for s in shards), strict=True)
    for i, leaves in enumerate(per_leaf):
        want = ref_reduce(np.stack(leaves), "bf16", "pairwise", mean=True)
        assert_bits_equal(multi[f"policy_grads_{i}"], want)


def test_directed_rounding_in_the_reduction_is_exact():
    # 2048 + 2^-24: rounding "up" to FP16 must give 2050; a float32 sum rounded again
    # lands on 2048 (float32 rounds the tiny addend away before the directed rounding)
    xs = np.asarray([[2048.0], [2.0**-24]], np.float32)
    for order in ("sequential", "pairwise", "ring", "chunked", "kahan"):
        assert float(lp_reduce(xs, "fp16", order=order, rounding="up")[0]) == 2050.0
        assert (
            float(lp_reduce(-xs, "fp16", order=order, rounding="toward_zero")[0]) == -2048
        )
    with pytest.raises(ValueError, match="cannot be simulated exactly"):
        lp_reduce(xs, "fp32", order="sequential", rounding="down")


def test_stochastic_rounding_of_the_exact_sum():
    """1 + 2**-30 in a 21-bit accumulator rounds up with probability 2**-9 (the exact
    remainder over the spacing), not the 0.25 of rounding float32's 1 + 2**-30 (= 1 +
    2**-23 after round-to-odd): lp_reduce and lp_all_reduce (4 devices) alike."""
    e8m21 = fpsim.Format("e8m21", 8, 21)
    n = child.SR_EXACT_N
    xs = np.zeros((2, n), F32)
    xs[0], xs[1] = 1.0, 2.0**-30
    for order in ("sequential", "pairwise", "ring"):
        got = np.asarray(lp_reduce(xs, e8m21, order=order, rounding="stochastic",
                                   key=jax.random.key(5)))  # fmt: skip
        assert set(np.unique(got)) <= {1.0, 1.0 + 2.0**-21}
        ups, want = int((got > 1).sum()), n * 2.0**-9
        assert abs(ups - want) < 5 * np.sqrt(want), (order, ups)


def test_stochastic_rounding_of_the_exact_sum_on_devices(multi):
    got = multi["sr_exact_e8m21"]
    assert set(np.unique(got)) <= {1.0, 1.0 + 2.0**-21}
    ups, want = int((got > 1).sum()), child.SR_EXACT_N * 2.0**-9
    assert abs(ups - want) < 5 * np.sqrt(want), ups


def test_float64_input_under_x64():
    """Float64 contributions are reduced in float64 (the carrier), every order."""
    rng = np.random.default_rng(4)
    xs = rng.normal(size=(4, 5)) / 3
    with jax.enable_x64(True):
        for order in ("sequential", "pairwise", "ring", "native", "kahan"):
            got = lp_reduce(jax.numpy.asarray(xs), "fp16", order=order)
            assert got.shape == (5,) and got.dtype == np.float64
            # float64 -> FP16 wire (one rounding), then exact sums: float32 agrees
            wire = np.asarray(fpsim.quantize(jax.numpy.asarray(xs), "fp16"), F32)
            want = lp_reduce(wire, "fp16", order=order)
            if order != "native":
                assert_bits_equal(np.asarray(got, F32), want)


def test_data_parallel_checks_batch_leaves():
    """Leaves are checked as jax.vmap checks mapped arguments (issue 11, item 12)."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    params, batch = child.mlp_problem()
    grads_fn = data_parallel_grads(child.mlp_loss, mesh, "fp16")
    bad = dict(batch, y=batch["y"][:4])  # x has 16 rows, y 4
    with pytest.raises(ValueError, match=r"different leading .*batch\['x'\]: 16.*: 4"):
        grads_fn(params, bad)
    with pytest.raises(ValueError, match=r"batch\['w'\] is a scalar"):
        grads_fn(params, dict(batch, w=2.0))
    with pytest.raises(ValueError, match=r"batch\['w'\]\[0\] is a scalar"):
        grads_fn(params, dict(batch, w=[1.0, 2.0]))
    with pytest.raises(TypeError, match="str"):
        grads_fn(params, dict(batch, w="abc"))
    loss, _ = grads_fn(params, batch)
    assert np.isfinite(float(loss))
