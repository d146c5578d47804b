"""Shared test helpers: format lists, bitwise comparison, the exact reference rounder."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fpsim
from fpsim.reference import round_value

#: Formats that ml_dtypes (or numpy) has a type for: the bit-exact oracle.
ML_FORMATS = [f for f in fpsim.FORMATS if f.dtype_name is not None and f is not fpsim.FP32]
#: Every predefined format.
ALL_FORMATS = list(fpsim.FORMATS)


def np_dtype(fmt: fpsim.Format):
    name = fmt.dtype_name
    return np.dtype(name) if name in ("float16", "float32") else getattr(ml_dtypes, name)


def ml_round(x: np.ndarray, fmt: fpsim.Format) -> np.ndarray:
    """The oracle: x.astype(T).astype(float32)."""
    with np.errstate(all="ignore"):
        return np.asarray(x, np.float32).astype(np_dtype(fmt)).astype(np.float32)


def assert_bits_equal(got, want) -> None:
    """Equal bit for bit (so -0 != +0); any NaN equals any NaN."""
    got = np.asarray(got, np.float32)
    want = np.asarray(want, np.float32)
    assert got.shape == want.shape
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    if not same.all():
        idx = np.flatnonzero(~same)[:8]
        raise AssertionError(
            f"{(~same).sum()} of {same.size} differ; first: got {got.ravel()[idx]} "
            f"want {want.ravel()[idx]}"
        )


def f32_bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32)


def from_bits(bits) -> np.ndarray:
    return np.asarray(bits, np.uint32).view(np.float32)


def neighbour_points(fmt: fpsim.Format) -> np.ndarray:
    """Every value of fmt, every midpoint between neighbours and one float32 ulp either
    side of each midpoint, both signs, plus the values beyond max (the overflow
    boundary) and around half the smallest subnormal."""
    v = fpsim.all_values(fmt).astype(np.float64)
    v = v[v >= 0]
    top = fmt.max + fmt.max * fmt.eps / 2  # the virtual next value's midpoint
    mids = np.concatenate([(v[:-1] + v[1:]) / 2, [top, fmt.max * (1 + fmt.eps)]])
    with np.errstate(over="ignore"):
        mids32 = mids.astype(np.float32)
    pts = [v.astype(np.float32), mids32]
    pts += [np.nextafter(mids32, np.float32(np.inf)), np.nextafter(mids32, np.float32(0))]
    pts = np.concatenate(pts)
    return np.concatenate([pts, -pts])


#: The exact reference rounding (Fractions, the one oracle): ``fpsim.reference``.
ref_round = round_value


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def ax():
    """A fresh matplotlib Axes (Agg, no pyplot state) for the plotting tests."""
    from matplotlib.figure import Figure

    fig = Figure()
    yield fig.add_subplot()
    fig.clear()


# the fixture generators import torch, torchao and gfloat, which are not dependencies:
# they are scripts, not tests (collected only because --doctest-modules reads every module)
collect_ignore_glob = ["fixtures/*"]
