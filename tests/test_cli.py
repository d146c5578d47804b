"""The fpsim command: real values in the output, exit codes, and the exact arithmetic."""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import fpsim
from fpsim.cli import main
from fpsim.cli._explain import ref

Num, code_of, decimal = ref.Num, ref.code_of, ref.decimal
decode_exact, round_exact = ref.decode_exact, ref.round_exact

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
    assert "stored     -0 " in out and "(0x8)" in out  # FP4 has no NaN: as fpsim.encode


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
        (["explain", "0.1", "0.2"], "fp16 is an element format: give one VALUE"),
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
    assert "65504" in rows["fp16"] and "2^-24" in rows["fp16"]
    assert "448" in rows["e4m3"] and "NaN, no inf" in rows["e4m3"]
    assert max(len(line) for line in out.splitlines()) <= 80
    code, out, _ = run(capsys, "formats", "--wide")
    rows = {line.split()[0]: line for line in out.splitlines() if line[:1].isalnum()}
    assert "float16" in rows["fp16"] and "float4_e2m1fn" in rows["e2m1"]
    assert "NaN only" in rows["e4m3"]


def test_demo_hook(capsys, monkeypatch):
    from fpsim.showcase import mlp_demo

    seen = {}
    monkeypatch.setattr(mlp_demo, "run", lambda **kw: seen.update(kw) or 0)
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


# --- issue 12: the CLI's answers, checked one by one -----------------------------------
def _field(out, name):
    return next(ln for ln in out.splitlines() if ln.strip().startswith(name))


@pytest.mark.parametrize("pattern", ["0x7c01", "0x7e01", "0xfc01", "0x7fff"])
def test_explain_shows_the_nan_pattern_asked_about(capsys, pattern):
    code, out, _ = run(capsys, "explain", pattern, "-f", "fp16")
    assert code == 0 and f"({pattern})" in _field(out, "bits")
    assert f"{int(pattern, 16) & 0x3FF:010b}" in _field(out, "bits")
    assert "stored     NaN" in out


@pytest.mark.parametrize("fmt", [f.name for f in fpsim.FORMATS])
def test_explain_nan_agrees_with_encode(capsys, fmt):
    f = fpsim.get_format(fmt)
    for text, x in (("nan", np.float32("nan")), ("-nan", -np.float32("nan"))):
        _, out, _ = run(capsys, "explain", text, "-f", fmt)
        want = int(fpsim.encode(x, f))
        assert f"(0x{want:0{(f.bits + 3) // 4}x})" in _field(out, "bits"), (text, out)


@pytest.mark.parametrize(
    ("argv", "lo", "hi"),
    [
        (["0xff", "-f", "e4m3_sat"], "none (most negative finite)", "-448"),
        (["0x7e", "-f", "e4m3"], "416", "none (largest finite)"),
        (["65504", "-f", "fp16"], "65472", "none (largest finite)"),
        (["0", "-f", "e2m1"], "-0.5", "0.5"),
    ],
)
def test_neighbours_at_the_ends_of_the_range(capsys, argv, lo, hi):
    _, out, _ = run(capsys, "explain", *argv)
    assert f"neighbours {lo}  <  stored  <  {hi}" in out


@pytest.mark.parametrize("fmt", ["", "fp99", " "])
def test_empty_or_unknown_format_is_an_error(capsys, fmt):
    code, out, err = run(capsys, "explain", "0.1", "--format", fmt)
    assert code == 2 and not out and "unknown format" in err


def test_double_rounding_is_shown_and_matches_quantize(capsys):
    # just above the tie 1 + 2^-11 between fp16's 1 and 1 + 2^-10; as a float64 the
    # literal becomes the tie itself, which rounds to even: 1
    literal = "1.00048828125000000000001"
    _, out, _ = run(capsys, "explain", literal, "-f", "fp16")
    assert "stored     1.0009765625" in out and "(0x3c01)" in _field(out, "bits")
    assert "double rounding" in out and "gives 1 (0x3c00)" in out
    assert float(fpsim.quantize(float(literal), "fp16")) == 1.0  # what the line says
    for agree in ("0.1", "1.000488281250931322574615478515625"):
        _, out, _ = run(capsys, "explain", agree, "-f", "fp16")
        assert "double rounding" not in out  # one answer when both paths agree
        assert float(fpsim.quantize(float(agree), "fp16")) == float(
            _field(out, "stored").split()[1]
        )


def _timed(capsys, *argv):
    import time

    t0 = time.perf_counter()
    code, out, err = run(capsys, *argv)
    return code, out, err, time.perf_counter() - t0


@pytest.mark.parametrize(
    ("value", "cls", "stored"),
    [
        ("1" * 5000, "overflow", "+inf"),
        ("1e999999999", "overflow", "+inf"),
        ("-1e999999999", "overflow", "-inf"),
        ("1e-999999999", "underflow", "0"),
        ("1" + "0" * 400 + "/3", "overflow", "+inf"),
    ],
)
def test_huge_and_tiny_inputs_answer_at_once(capsys, value, cls, stored):
    code, out, err, seconds = _timed(capsys, "explain", value, "-f", "fp16")
    assert code == 0 and not err and seconds < 0.5, seconds
    assert _field(out, "class").split()[1].rstrip(":") == cls
    assert _field(out, "stored").split()[1] == stored
    assert "+inf" not in _field(out, "input")  # a finite input, however large


def test_a_tiny_fraction_is_not_shown_as_zero(capsys):
    _, out, _ = run(capsys, "explain", "1/3" + "0" * 400, "-f", "fp16")
    assert _field(out, "input").split()[1] == "≈3.3333333333333333e-401"
    assert "relative -1" in out


def test_tiny_input_error_and_probability(capsys):
    _, out, _ = run(capsys, "explain", "1e-999999999", "-f", "fp16")
    assert "absolute (stored - input) -1e-999999999" in out and "relative -1" in out
    assert "with probability ≈1.68e-999999992" in out  # 1e-999999999 / 2^-24


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--seed", "9" * 23], "argument --seed: must be an integer from 0"),
        (["demo", "--seed", "-1"], "argument --seed: must be an integer from 0"),
        (["demo", "--steps", "0"], "argument --steps: must be a positive integer"),
        (["explain", "0.1", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors_name_the_option(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith(f"usage: fpsim {argv[0]} ")  # the command's usage


def test_demo_outdir_is_checked_before_training(tmp_path, capsys, monkeypatch):
    from fpsim.showcase import mlp_demo

    monkeypatch.setattr(mlp_demo, "run_experiment", lambda *a, **k: 1 / 0)
    afile = tmp_path / "a_file"
    afile.write_text("x")
    code, _, err = run(capsys, "demo", "--outdir", str(afile))
    assert code == 2 and "is not a directory" in err and len(err.splitlines()) == 1
    import os

    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, _, err = run(capsys, "demo", "--outdir", str(locked / "sub"))
        assert code == 2 and "cannot write" in err


def _cli(*argv, **kw):
    code = "import sys; from fpsim.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], **kw)


def test_closed_pipe_exits_quietly():
    p = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from fpsim.cli import main; sys.exit(main(sys.argv[1:]))",
         "explain", "0.1", "--all", "--wide"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    p.stdout.close()  # the reader goes away at once, as `| head -0` does
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0 and b"Traceback" not in err and not err


def test_full_disk_is_one_line_exit_2():
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        out = _cli("formats", stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "fpsim formats: error: cannot write" in out.stderr


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"fpsim {fpsim.__version__}"


def test_demo_help_gives_each_default(capsys):
    code, out, _ = run(capsys, "demo", "--help")
    text = " ".join(out.split())
    assert code == 0
    for option, default in (("--steps", "600"), ("--seed", "0"), ("--outdir", "fpsim-demo"),
                            ("--fast", "off")):  # fmt: skip
        assert option in text and f"(default {default}" in text


def test_explain_all_fits_80_columns_and_is_exact(capsys):
    for value in ("0.1", "1e-8", "-3e-45", "65519", "0x3c00", "1e999999999"):
        _, out, _ = run(capsys, "explain", value, "--all")
        assert max(len(line) for line in out.splitlines()) <= 80, value
    _, out, _ = run(capsys, "explain", "1e-8", "--all")
    fp32 = _field(out, "fp32").split()
    stored = fp32[3]  # exact: m×2^e for a long decimal
    m, e = stored.split("×2^")
    assert Fraction(int(m)) * Fraction(2) ** int(e) == Fraction(float(np.float32(1e-8)))
    _, out, _ = run(capsys, "explain", "0.1", "--all", "--wide")
    assert "0 01111011 10011001100110011001101" in _field(out, "fp32")


def test_progress_lines_without_a_terminal(monkeypatch, capsys):
    from fpsim.showcase import mlp_demo

    calls = iter(range(100))
    monkeypatch.setattr(
        mlp_demo, "_train_one",
        lambda name, *a: mlp_demo.RunResult(name, *[np.zeros(1)] * 4, {}, None,
                                            next(calls) / 100, 0.0),
    )  # fmt: skip
    mlp_demo.run_experiment.cache_clear()
    mlp_demo.run_experiment(3, 123)
    out = capsys.readouterr().out
    assert [ln.split(":")[0].strip() for ln in out.splitlines()] == [
        f"run {i}/5" for i in range(1, 6)
    ]
    mlp_demo.run_experiment.cache_clear()
