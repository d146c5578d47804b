"""The flagship demo end to end, at a tiny size (the full run is `fpsim demo`)."""

import numpy as np

from fpsim.cli import main
from fpsim.showcase import mlp_demo as demo


def test_demo_runs_and_writes_figures(tmp_path, capsys):
    assert main(["demo", "--steps", "6", "--outdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in (
        "float32",
        "fp16 (no loss scaling)",
        "fp16 + loss scaling",
        "bf16",
        "fp8 hybrid",
    ):
        assert name in out
    for name in demo.figures(demo.run_experiment(6, 0)):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_demo_records_what_the_table_says():
    results = {r.name: r for r in demo.run_experiment(6, 0)}  # cached from the test above
    scaled = results["fp16 + loss scaling"]
    assert scaled.loss_scale[0] == 2.0**16  # PyTorch GradScaler's init_scale
    assert (results["float32"].grad_underflow == 0).all()  # nothing underflows float32
    for r in results.values():
        assert r.loss.shape == (6,) and np.isfinite(r.loss).all()
        assert 0.0 <= r.test_accuracy <= 1.0
    assert demo.run(steps=0) == 2


def test_demo_data_split_is_deterministic():
    (xa, ya), (ta, _) = demo.load_digits_split(0)
    (xb, yb), _ = demo.load_digits_split(0)
    assert xa.shape == (1500, 64) and ta.shape == (297, 64)
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert xa.min() == 0.0 and xa.max() == 1.0
