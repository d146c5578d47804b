"""The fpsim command: real values in the output, exit codes, and the exact arithmetic."""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import fpsim
from fpsim.cli import main
from fpsim.reference import Num, code_of, decimal, decode_exact, round_exact

MODES = ("nearest", "toward_zero", "up", "down")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_point_one_in_fp16(capsys):
    code, out, err = run(capsys, "explain", "0.1", "--format", "fp16")
    assert code == 0 and not err
    assert "0 01011 1001100110" in out and "0x2e66" in out
    assert "stored     0.0999755859375" in out
    assert "-0.0000244140625" in out  # the exact absolute error
    assert "in ulps -0.4" in out
    assert "0.09991455078125  <  stored  <  0.10003662109375" in out
    assert "up             0.10003662109375  (0x2e67)" in out


def test_explain_bit_pattern(capsys):
    code, out, _ = run(capsys, "explain", "0x3c00", "--format", "fp16")
    assert code == 0 and "stored     1   " in out
    code, out, _ = run(capsys, "explain", "0x7e", "-f", "e4m3")
    assert "stored     448" in out
    code, out, _ = run(capsys, "explain", "0x7f", "-f", "e4m3")
    assert "stored     NaN" in out


def test_explain_overflow_and_underflow(capsys):
    _, out, _ = run(capsys, "explain", "65520", "--format", "fp16")
    assert "overflow" in out and "stored     +inf" in out
    assert "toward_zero    65504" in out
    _, out, _ = run(capsys, "explain", "65519", "--format", "fp16")
    assert "stored     65504" in out
    _, out, _ = run(capsys, "explain", "1e-8", "--format", "fp16")
    assert "underflow" in out and "stored     0 " in out
    _, out, _ = run(capsys, "explain", "465", "--format", "e4m3")
    assert "stored     NaN" in out and "overflow" in out


def _stochastic_line(out):
    return next(ln for ln in out.splitlines() if ln.strip().startswith("stochastic"))


def _sr_overflow_frequency(value, fmt, n=20000):
    import jax
    import jax.numpy as jnp

    x = jnp.full((n,), value, jnp.float32)
    q = np.asarray(fpsim.quantize(x, fmt, "stochastic", key=jax.random.key(7)))
    return float(np.mean(~np.isfinite(q))), n


@pytest.mark.parametrize(
    "value, fmt, p_over",
    [
        ("450", "e4m3", Fraction(1, 16)),  # (450 - 448) / 32: the next value would be 480
        ("-450", "e4m3", Fraction(1, 16)),
        ("65520", "fp16", Fraction(1, 2)),  # 65504 or inf, 50/50
        ("470", "e4m3", Fraction(22, 32)),
        ("240.5", "e4m3fnuz", Fraction(1, 32)),
    ],
)
def test_explain_stochastic_overflow_probability(capsys, value, fmt, p_over):
    code, out, _ = run(capsys, "explain", value, "--format", fmt)
    line = _stochastic_line(out)
    assert code == 0 and "no choice" not in line, line
    mx = decimal(Fraction(fpsim.get_format(fmt).max))
    over = "+inf" if fmt == "fp16" else "NaN"
    assert f"{mx} with probability {decimal(1 - p_over)}" in line, line
    assert f"overflow to {over}" in line and f"probability {decimal(p_over)}" in line, line
    freq, n = _sr_overflow_frequency(float(Fraction(value)), fmt)
    sigma = float(np.sqrt(float(p_over * (1 - p_over)) / n))
    assert abs(freq - float(p_over)) < 5 * sigma, (freq, p_over)


@pytest.mark.parametrize(
    "value, fmt, stored",
    [
        ("480", "e4m3", "NaN"),  # at or past max + ulp(max): always overflows
        ("70000", "fp16", "+inf"),
        ("7", "e2m1", "6"),  # no inf or NaN: overflow clamps to max
        ("500", "e4m3_sat", "480"),
    ],
)
def test_explain_stochastic_without_a_choice(capsys, value, fmt, stored):
    _, out, _ = run(capsys, "explain", value, "--format", fmt)
    assert f"stochastic     {stored}  (no choice to make)" in _stochastic_line(out)
    freq, _ = _sr_overflow_frequency(float(value), fmt, n=2000)
    assert freq == (0.0 if stored[-1].isdigit() else 1.0)


def test_explain_malformed_bit_pattern(capsys):
    for bad in ("0x_", "0b__", "0x1__2"):
        code, _, err = run(capsys, "explain", bad, "--format", "fp16")
        assert code == 2, bad
        assert "malformed hex" in err or "malformed binary" in err, err
        assert bad in err and "int()" not in err and len(err.splitlines()) == 1


def test_explain_negative_and_special_values(capsys):
    _, out, _ = run(capsys, "explain", "-1e-8", "--format", "e4m3")
    assert "stored     -0 " in out
    _, out, _ = run(capsys, "explain", "-inf")
    assert "stored     -inf" in out and "0xfc00" in out
    _, out, _ = run(capsys, "explain", "nan", "-f", "e2m1")
    assert "stored     0 " in out  # FP4 has no NaN


def test_explain_all(capsys):
    code, out, _ = run(capsys, "explain", "0.1", "--all")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 + len(fpsim.FORMATS)
    fp32 = next(line for line in lines if line.startswith("fp32"))
    assert "0.100000001490116119384765625" in fp32 and "0x3dcccccd" in fp32
    _, out, _ = run(capsys, "explain", "0x3c00", "--all")
    assert "too wide" in out and "0.0078125" in out  # bf16's 0x3c00


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "abc"], "cannot read VALUE"),
        (["explain", "1", "--format", "fp99"], "unknown format"),
        (["explain", "0x1ff", "--format", "e4m3"], "does not fit"),
        (["explain", "1", "--all", "--format", "fp16"], "not allowed"),
        (["figures", "--outdir", "x", "--only", "nope.png"], "unknown figure"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code != 0 and message in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("fpsim")]) == 1


def test_formats_table(capsys):
    code, out, _ = run(capsys, "formats")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isalnum()}
    for fmt in fpsim.FORMATS:
        assert fmt.name in rows
    assert "65504" in rows["fp16"] and "2^-24" in rows["fp16"] and "float16" in rows["fp16"]
    assert "448" in rows["e4m3"] and "NaN only" in rows["e4m3"]
    assert "float4_e2m1fn" in rows["e2m1"]


def test_demo_hook(capsys, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("fpsim.demo") is None:
        code, _, err = run(capsys, "demo", "--fast")
        assert code == 1 and "not available" in err
    seen = {}
    fake = type(sys)("fpsim.demo")
    fake.run = lambda **kw: seen.update(kw) or 0
    monkeypatch.setitem(sys.modules, "fpsim.demo", fake)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert main(["demo", "--steps", "5", "--seed", "3", "--fast"]) == 0
    assert seen == {"steps": 5, "seed": 3, "outdir": None, "fast": True}


def test_figures_command(tmp_path, capsys):
    code, out, _ = run(
        capsys, "figures", "--outdir", str(tmp_path), "--only", "numberline_e4m3.png"
    )
    assert code == 0 and (tmp_path / "numberline_e4m3.png").exists()


def test_console_script_end_to_end():
    exe = Path(sys.executable).with_name("fpsim")
    out = subprocess.run([str(exe), "formats"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "e4m3" in out.stdout


# --- the exact arithmetic agrees with the JAX core, bit for bit -----------------------
def _float(v: Num) -> float:
    if v.mag == "nan":
        return np.nan
    mag = np.inf if v.mag == "inf" else float(v.mag)
    return -mag if v.neg else mag


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e4m3fnuz", "e2m1", "e3m4", "fp16"])
def test_exact_rounding_matches_quantize(name):
    fmt = fpsim.get_format(name)
    vals = fpsim.all_values(fmt).astype(np.float64)
    if vals.size > 600:
        vals = vals[:: vals.size // 500]
    mids = (vals[:-1] + vals[1:]) / 2
    xs = np.concatenate([vals, mids, mids * (1 + 2**-20), [fmt.max * 1.03, fmt.max * 2]])
    xs = np.concatenate([xs, -xs, [np.inf, -np.inf, 1e-30]]).astype(np.float32)
    for mode in MODES:
        want = np.asarray(fpsim.quantize(xs, fmt, mode))
        codes = np.asarray(fpsim.encode(xs, fmt, mode))
        for x, w, c in zip(xs.tolist(), want.tolist(), codes.tolist(), strict=True):
            neg = bool(np.signbit(x))
            num = Num(neg, abs(Fraction(x))) if np.isfinite(x) else Num(neg, "inf")
            got = round_exact(num, fmt, mode)[0]
            assert np.array_equal(_float(got), w, equal_nan=True), (x, mode)
            assert code_of(got, fmt) == c, (x, mode)


@pytest.mark.parametrize("name", ["e4m3", "e5m2fnuz", "e3m2", "e4m3_ieee"])
def test_exact_decode_matches_decode(name):
    fmt = fpsim.get_format(name)
    codes = np.arange(1 << fmt.bits)
    want = np.asarray(fpsim.decode(codes, fmt))
    for c, w in zip(codes.tolist(), want.tolist(), strict=True):
        got = decode_exact(c, fmt)
        assert np.array_equal(_float(got), w, equal_nan=True)
        assert np.signbit(_float(got)) == np.signbit(w) or np.isnan(w)
        if got.mag != "nan":
            assert code_of(got, fmt) == c


def test_decimal_is_exact():
    assert decimal(Fraction(2**-24)) == "5.9604644775390625e-8"
    assert decimal(Fraction(-3, 8)) == "-0.375"
    assert decimal(Fraction(65504)) == "65504"
    assert decimal(Fraction(1, 3)).startswith("≈")
