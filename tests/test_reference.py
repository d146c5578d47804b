"""fpsim.reference: the exact (Fraction) rounding the CLI shows and the tests trust."""

import subprocess
import sys
from fractions import Fraction

import jax
import numpy as np
import pytest

import fpsim
from fpsim import reference
from fpsim.reference import Num, num, round_exact, round_value, stochastic_exact


def test_formats_and_reference_import_neither_jax_nor_numpy():
    # the exact layer (what `fpsim explain` runs on) is plain Python; fpsim/__init__ is lazy
    code = (
        "import sys, fpsim.formats, fpsim.reference; "
        "print(any(m in sys.modules for m in ('jax', 'numpy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_round_value_examples():
    assert round_value(Fraction(1, 10), fpsim.FP16) == 0.0999755859375
    up = round_value(Fraction(1, 10), fpsim.FP16, "up")
    assert up == 0.0999755859375 + 2.0**-14
    assert round_value(-1e6, fpsim.E4M3) != round_value(-1e6, fpsim.E4M3)  # NaN
    assert round_value(-1e6, fpsim.E4M3, "up") == -448.0
    assert round_value(float("nan"), fpsim.E2M1) == 0.0
    assert np.signbit(round_value(float("nan"), fpsim.E2M1))  # ml_dtypes flips the sign
    assert not np.signbit(round_value(-1e-9, fpsim.E4M3FNUZ))  # fnuz has no -0


def test_stochastic_candidates_and_exact_probability():
    lo, hi, p = stochastic_exact(num(Fraction(1, 3)), fpsim.FP16)
    assert (float(lo.mag), float(hi.mag), p) == (
        0.333251953125,
        0.33349609375,
        Fraction(1, 3),
    )
    lo, hi, p = stochastic_exact(num(1 + 2.0**-30), fpsim.Format("e8m21", 8, 21))
    assert (lo.mag, hi.mag, p) == (1, 1 + Fraction(1, 2**21), Fraction(1, 2**9))
    lo, hi, p = stochastic_exact(num(464.0), fpsim.E4M3)  # hi overflows to NaN
    assert lo == Num(False, Fraction(448)) and hi.mag == "nan" and p == Fraction(1, 2)
    with pytest.raises(ValueError, match="stochastic_exact"):
        round_exact(num(1.0), fpsim.FP16, "stochastic")


def test_stochastic_frequencies_match_the_exact_probability():
    x = np.float32(1 / 3)
    lo, hi, p = stochastic_exact(num(float(x)), fpsim.E4M3)
    n = 20000
    got = np.asarray(
        fpsim.quantize(np.full(n, x), fpsim.E4M3, "stochastic", key=jax.random.key(5))
    )
    assert set(np.unique(got).tolist()) == {float(lo.mag), float(hi.mag)}
    ups = int(np.sum(got == float(hi.mag)))
    assert abs(ups - n * float(p)) < 5 * np.sqrt(n * float(p) * (1 - float(p)))


def test_public_names_kept_for_the_cli():
    for name in ("Num", "round_exact", "neighbours", "ulp_exact", "fields", "code_of",
                 "decode_exact", "classify", "decimal", "short", "brief"):  # fmt: skip
        assert callable(getattr(reference, name))
