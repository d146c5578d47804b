"""``fpsim explain`` for block formats and E8M0: the exact reference
(:mod:`fpsim.blocks._reference`) bit for bit against quantize_blocks and encode_blocks."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import fpsim
from fpsim import reference as ref
from fpsim.blocks import _reference as R
from fpsim.blocks import encode_blocks, get_block_format, quantize_blocks
from fpsim.cli import main
from fpsim.formats import E8M0

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "blocks"
MX_NAMES = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8")


def _modes(name):
    return ("floor", "ceil", "even") + (() if name == "mxint8" else ("rceil",))


def _reference(x: np.ndarray, name: str, mode: str | None):
    """Values, element codes, scale codes (and NVFP4's tensor scale) by the reference;
    blocks along the last axis, the whole array one NVFP4 tensor."""
    b = get_block_format(name)
    x = np.asarray(x, np.float32)
    rows = x.reshape(-1, b.block_size)
    if b.tensor_scale:
        t = R.nvfp4_tensor([ref.num(float(v)) for v in x.reshape(-1)])
    vals, codes, scales = [], [], []
    for r in rows:
        xs = [ref.num(float(v)) for v in r]
        if b.tensor_scale:
            bs, _, _, els = R.nvfp4_block(xs, t)
            scales.append(ref.code_of(bs, R.E4M3))
        else:
            code, els = R.mx_block(xs, b, mode or b.scale_mode)
            scales.append(code)
        vals += [ref.to_float(e.value) for e in els]
        codes += [e.code for e in els]
    ts = ref.to_float(t.tensor_scale) if b.tensor_scale else None
    return (
        np.array(vals, np.float32).reshape(x.shape),
        np.array(codes, np.uint8).reshape(x.shape),
        np.array(scales, np.uint8),
        ts,
    )


def _rows(out: str) -> list[list[str]]:
    """The table rows of an explanation (after each ``#`` header line), split."""
    rows, on = [], False
    for ln in out.splitlines():
        on = (on and bool(ln.strip())) or ln.lstrip().startswith("#")
        if on and not ln.lstrip().startswith("#"):
            rows.append(ln.split())
    return rows


def _same(a, b) -> bool:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return bool(
        np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b)))
    )


def _check(x, name, mode=None):
    kw = {} if mode is None else {"scale_mode": mode}
    vals, codes, scales, ts = _reference(x, name, mode)
    enc = encode_blocks(x, name, **kw)
    assert _same(vals, quantize_blocks(x, name, **kw)), (name, mode)
    assert np.array_equal(codes, np.asarray(enc.elements)), (name, mode)
    assert np.array_equal(scales, np.asarray(enc.scales).reshape(-1)), (name, mode)
    if ts is not None:
        assert _same(ts, enc.tensor_scale)


@pytest.mark.parametrize("name", MX_NAMES)
def test_reference_on_the_golden_fixtures_mx(name):
    x = np.load(FIXTURES / "mx.npz")[f"{name}/x"]
    for mode in _modes(name):
        _check(x, name, mode)


def test_reference_on_the_golden_fixtures_nvfp4():
    nv = np.load(FIXTURES / "nvfp4.npz")
    cases = sorted({k.split("/")[0] for k in nv.files if k.endswith("/x")})
    assert len(cases) >= 7
    for case in cases:
        _check(nv[f"{case}/x"], "nvfp4")


def _random_blocks(rng, n, size, kind):
    if kind == "bits":  # every float32 class: NaN, inf, subnormals
        return (
            rng.integers(0, 2**32, (n, size), dtype=np.uint64)
            .astype(np.uint32)
            .view(np.float32)
        )
    if kind == "tiny":  # amax near 2**-127 and below: E8M0's bottom, NVFP4's 1/ts = inf
        e = rng.integers(-149, -110, (n, 1))
        return (rng.uniform(-1, 1, (n, size)) * np.exp2(e)).astype(np.float32)
    x = rng.standard_normal((n, size))  # "special": normal values with inf/NaN/0 mixed in
    x = (x * np.exp2(rng.integers(-130, 128, (n, 1)))).astype(np.float32)
    m = rng.random((n, size)) < 0.05
    specials = np.array([np.inf, -np.inf, np.nan, 0, -0.0, 3.4e38, 1e-45], np.float32)
    x[m] = rng.choice(specials, m.sum())
    return x


@pytest.mark.parametrize("kind", ["bits", "tiny", "special"])
@pytest.mark.parametrize("name", [*MX_NAMES, "nvfp4"])
def test_reference_on_random_blocks(name, kind):
    rng = np.random.default_rng(len(name) * 7 + len(kind))
    b = get_block_format(name)
    with np.errstate(all="ignore"):
        x = _random_blocks(rng, 12, b.block_size, kind)
    if b.tensor_scale:
        for i in range(len(x)):  # each block its own tensor, then all of them as one
            _check(x[i : i + 1], name)
        _check(x, name)
    else:
        for mode in _modes(name):
            _check(x, name, mode)


def test_957_saturates_to_896_in_mxfp8(capsys):
    assert main(["explain", "0.1", "3", "-7", "957", "--format", "mxfp8"]) == 0
    out = capsys.readouterr().out
    assert "E8M0 code 128 (0x80, bits 10000000)" in out and "E = 9: 2^(9 - 8) = 2^1" in out
    row = " ".join(_rows(out)[3])
    assert row.split()[1:7] == ["957", "478.5", "0x7e", "0", "1111", "110"]
    assert row.split()[7:9] == ["448", "896"] and "saturated" in row
    q = np.asarray(quantize_blocks(np.r_[0.1, 3, -7, 957, np.zeros(28)], "mxfp8"))
    assert q[:4].tolist() == [np.float32(0.1015625), 3.0, -7.0, 896.0]
    assert "0.1015625" in out and "0.1 -> ≈0.10000000149011612" in out


@pytest.mark.parametrize("mode", ["floor", "ceil", "even", "rceil"])
def test_cli_values_match_quantize_blocks(capsys, mode):
    vals = ["1e-39", "-2.5", "7", "0.3", "1e-3"]
    assert main(["explain", *vals, "-f", "mxfp6_e2m3", "--scale-mode", mode]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    x = np.zeros(32, np.float32)
    x[:5] = [float(v) for v in vals]
    enc = encode_blocks(x, "mxfp6_e2m3", scale_mode=mode)
    assert [int(r[3], 16) for r in rows] == np.asarray(enc.elements)[:5].tolist()
    assert f"E8M0 code {int(enc.scales[0])} " in out


def test_nvfp4_shows_both_scales(capsys):
    assert main(["explain", "1", "-3", "0.2", "100", "-f", "nvfp4"]) == 0
    out = capsys.readouterr().out
    enc = encode_blocks(np.r_[1, -3, 0.2, 100, np.zeros(12)].astype(np.float32), "nvfp4")
    ts = R.f32(ref.num(float(enc.tensor_scale)))
    assert "tensor scale   amax / (448 × 6) = " in out and "reciprocal" in out
    code = int(enc.scales[0])
    assert f"(code 0x{code:02x}" in out
    rows = _rows(out)
    assert [int(r[3], 16) for r in rows] == np.asarray(enc.elements)[:4].tolist()
    assert ts.finite


@pytest.mark.parametrize("mode", ["nearest", "up", "down", "toward_zero"])
def test_e8m0_code_matches_encode(mode):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2**32, 3000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = [
        0.3,
        1.5,
        1.4999999,
        2.0**-127,
        1.5 * 2.0**-127,
        1.25 * 2.0**-127,
        1e-45,
        2.0**-126,
        1.5 * 2.0**127,
        3e38,
        np.inf,
        -np.inf,
        np.nan,
        0.0,
        -1.0,
    ]
    x = np.r_[x, np.array(edges, np.float32)]
    want = np.asarray(fpsim.encode(x, E8M0, mode)).tolist()
    got = [R.e8m0_code(ref.num(float(v)), mode) for v in x]
    assert got == want
    sat = np.asarray(fpsim.encode(x, E8M0, saturate=True)).tolist()
    assert [R.e8m0_code(ref.num(float(v)), saturate=True) for v in x] == sat


def test_explain_e8m0(capsys):
    assert main(["explain", "0.3", "--format", "e8m0"]) == 0
    out = capsys.readouterr().out
    assert "bits       01111101   (0x7d)" in out and "stored     2^-2 = 0.25" in out
    assert "up             2^-1 = 0.5  (0x7e)" in out
    assert main(["explain", "0x7f", "--format", "e8m0"]) == 0
    assert "stored     2^0 = 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["0x3c", "-f", "mxfp8"], "not bit patterns"),
        (["1", "-f", "fp8_block_1x128"], "float32 scales"),
        (["1", "-f", "nvfp4_16x16"], "2-D tiles"),
        (["1", "-f", "nvfp4", "--scale-mode", "ceil"], "E8M0 (MX) formats only"),
        (["1", "-f", "mxint8", "--scale-mode", "rceil"], "not MXINT8"),
        (["1", "-f", "fp16", "--scale-mode", "ceil"], "for block formats"),
        (["1", "2", "--all"], "one VALUE"),
        (["1", "-f", "mxfp9"], "unknown format 'mxfp9'; valid names: bf16"),
        (["1", "-f", "mxfp8", "--scale-mode", "up"], "invalid choice"),
    ],
)
def test_block_explain_errors(capsys, argv, message):
    code, (_, err) = main(["explain", *argv]), capsys.readouterr()
    assert code == 2 and message in err and "Traceback" not in err


def test_formats_table_bits_per_element(capsys):
    assert main(["formats"]) == 0
    rows = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines() if ln}
    bits = {n: rows[n][5] for n in ("mxfp8_e4m3", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4")}
    assert bits == {"mxfp8_e4m3": "8.25", "mxfp6_e3m2": "6.25", "mxfp4": "4.25",
                    "mxint8": "8.25", "nvfp4": "4.5"}  # fmt: skip
