"""Slow, obviously-correct references for the numerics tests: exact rationals."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

import fpsim
from fpsim.reference import round_value

#: Round an exact rational (or a float) to ``fmt``, nearest-even, with the format's
#: overflow rule: the one exact reference, ``fpsim.reference.round_value``.
rnd = round_value


def grid_values(fmt: fpsim.Format, n: int, seed: int, min_abs: float = 0.0) -> np.ndarray:
    """Random finite values of ``fmt`` (all binades, both signs), as float32.

    ``min_abs`` drops nonzero values below it (BF16's lowest binades are float32
    subnormals, which XLA on CPU flushes to zero in arithmetic: see test_emulate).
    """
    vals = np.asarray(fpsim.all_values(fmt), np.float32)
    vals = vals[np.isfinite(vals) & ((np.abs(vals) >= min_abs) | (vals == 0))]
    return np.random.default_rng(seed).choice(vals, n).astype(np.float32)


def seq_sum(terms, fmt, start=0.0):
    acc = Fraction(start)
    for t in terms:
        acc = Fraction(rnd(acc + Fraction(t), fmt))
    return acc


def pairwise_sum(terms, fmt):
    terms = [Fraction(t) for t in terms]
    while len(terms) > 1:
        nxt = [
            Fraction(rnd(terms[i] + terms[i + 1], fmt)) for i in range(0, len(terms) - 1, 2)
        ]
        terms = nxt + terms[len(nxt) * 2 :]
    return terms[0] if terms else Fraction(0)


def chunked_sum(terms, fmt, chunk):
    sums = [seq_sum(terms[i : i + chunk], fmt) for i in range(0, len(terms), chunk)]
    return seq_sum(sums, fmt)


def kahan_sum(terms, fmt):
    s = c = Fraction(0)
    for t in terms:
        y = Fraction(rnd(Fraction(t) - c, fmt))
        tt = Fraction(rnd(s + y, fmt))
        c = Fraction(rnd(Fraction(rnd(tt - s, fmt)) - y, fmt))
        s = tt
    return s


def ordered_sum(terms, fmt, order, chunk=4):
    if order == "sequential":
        return seq_sum(terms, fmt)
    if order == "pairwise":
        return pairwise_sum(terms, fmt)
    if order == "chunked":
        return chunked_sum(terms, fmt, chunk)
    return kahan_sum(terms, fmt)
