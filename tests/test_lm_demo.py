"""The language-model demo end to end, at a tiny size (the full run is `fpsim demo lm`)."""

import math

import numpy as np
import pytest

from fpsim.cli import build_parser, main
from fpsim.showcase import lm_demo as demo

TINY = demo.LMConfig(
    depth=1, width=32, heads=2, context=16, batch=32, steps=30, eval_windows=8
)  # 512 predictions per step: each logit's gradient is (p - onehot) / 512
RUNS = tuple(
    r for r in demo.RUNS if r.name in ("float32", "fp16 (no loss scaling)",
                                       "fp16 + loss scaling")
)  # fmt: skip


@pytest.fixture(scope="module")
def results():
    # the same call as demo.run's, so that run() below finds it in the cache
    return {r.name: r for r in demo.run_experiment(TINY, 0, RUNS)}


def test_corpus_is_committed_and_split():
    data = demo.corpus()
    text = demo.load_text()
    assert 200_000 < len(text) <= 400_000 and text.startswith("First Citizen:")
    assert data.vocab == len(set(text)) == 62
    assert len(data.train) + len(data.held_out) == len(text)
    assert data.chars[data.train[0]] == "F"
    # a context-free model of these characters: about 3.3 nats (perplexity ~27)
    assert 3.2 < demo.unigram_entropy(data.train) < 3.4


def test_windows_are_next_character_targets():
    codes = np.arange(100, dtype=np.int32)
    x, y = demo.windows(codes, np.array([0, 50]), 4)
    assert x.tolist() == [0, 1, 2, 3, 50, 51, 52, 53]
    assert y.tolist() == [1, 2, 3, 4, 51, 52, 53, 54]


def test_float32_learns_from_context(results):
    ref = results["float32"]
    entropy = demo.unigram_entropy(demo.corpus().train)
    assert ref.loss[0] > entropy  # starts near log(62) = 4.13
    assert demo.final_loss(ref) < entropy  # learned more than character frequencies
    assert ref.held_out_loss < math.log(demo.corpus().vocab)
    assert (ref.grads_lost == 0).all() and (ref.saturated_all == 0).all()


def test_loss_scaling_saves_the_gradients_fp16_flushes(results):
    pure = results["fp16 (no loss scaling)"]
    scaled = results["fp16 + loss scaling"]
    assert pure.grads_lost.mean() > 1e-4  # (p - onehot) / N underflows FP16
    assert (np.diff(pure.grads_lost) != 0).any()  # measured each step, not a constant
    assert scaled.grads_lost.mean() < 0.1 * pure.grads_lost.mean()
    assert scaled.loss_scale[0] == 2.0**16  # GradScaler's initial scale
    assert (pure.loss_scale == 1).all()
    # per layer, the same basis: some layer loses more than the whole network
    assert max(v.mean() for v in pure.flushed.values()) > pure.grads_lost.mean()


def test_table_and_figures(results, tmp_path):
    table = demo.summary_table(tuple(results.values()))
    for name in results:
        assert name in table
    assert "character frequencies alone" in table
    figs = demo.figures(tuple(results.values()))
    assert {"lm_training_curves.png", "lm_flushed_per_layer.png"} <= set(figs)
    from fpsim.plot import save

    for name, fig in figs.items():
        assert save(fig, tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_run_prints_table_and_writes_figures(results, tmp_path, capsys):
    # results are cached by run_experiment: this reuses the fixture's training
    assert demo.run(config=TINY, runs=RUNS, outdir=str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "held out" in out and "fp16 + loss scaling" in out
    assert (tmp_path / "lm_training_curves.png").exists()
    assert demo.run(steps=0) == 2


def test_cli_parses_demo_lm(monkeypatch):
    args = build_parser().parse_args(["demo", "lm", "--fast"])
    assert args.which == "lm" and args.fast and args.steps is None
    assert build_parser().parse_args(["demo"]).which == "mlp"
    seen = {}
    monkeypatch.setattr(demo, "run", lambda **kw: seen.update(kw) or 0)
    assert main(["demo", "lm", "--fast", "--seed", "2"]) == 0
    assert seen == {"steps": None, "seed": 2, "outdir": None, "fast": True}
    assert main(["demo", "transformer"]) == 2  # not a choice


def test_config_is_checked():
    with pytest.raises(ValueError, match="multiple of heads"):
        demo.LMConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="steps must be positive"):
        demo.LMConfig(steps=0)
