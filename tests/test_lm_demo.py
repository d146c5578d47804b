"""The language-model demo end to end, at a tiny size (the full run is `fpsim demo lm`)."""

import math

import numpy as np
import pytest

import fpsim.nn
from fpsim.cli import build_parser, main
from fpsim.showcase import lm_demo as demo

TINY = demo.LMConfig(
    depth=1, width=32, heads=2, context=16, batch=32, steps=30, eval_windows=8
)  # 512 predictions per step: each logit's gradient is (p - onehot) / 512
RUNS = demo.select_runs("float32,fp16*,bf16,mxfp4_naive")  # MXFP4: the cheapest recipe


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


def test_recipe_run_quantizes_its_gemms(results):
    bf16, naive = results["bf16"], results["mxfp4_naive"]
    assert naive.recipe == "mxfp4_naive" and bf16.recipe is None
    assert naive.finite.all()
    # the same BF16 network with its GEMMs in MXFP4: the same start, a worse end
    assert naive.loss[0] != bf16.loss[0]  # the forward GEMMs round already at step 0
    assert demo.final_loss(naive) > demo.final_loss(bf16) + 0.005
    # the recipe GEMMs' statistics: every quantized layer, not the head (left out)
    assert "head" not in naive.flushed and "block0/mlp_in" in naive.flushed
    assert set(naive.flushed) == set(naive.saturated)
    # E2M1 in blocks of 32 with power-of-two scales flushes a real share of the
    # gradients (elements below half the block's smallest step), measured each step
    assert 0.01 < naive.grads_lost.mean() < 0.9 and (np.diff(naive.grads_lost) != 0).any()
    assert 0 < naive.saturated_all.mean() < 0.5
    pooled = naive.grads_lost
    assert (pooled <= np.max(list(naive.flushed.values()), axis=0) + 1e-12).all()
    assert (pooled >= np.min(list(naive.flushed.values()), axis=0) - 1e-12).all()
    # the scale histogram: one count per block of 32. Per step, fprop_x and wgrad_x
    # hold tokens x K elements each, and the K of query, key, value, out, mlp_in and
    # mlp_out sum to 9 * width (the N of dgrad_g and wgrad_g too)
    counts = naive.block_scales
    assert set(counts) == {"activations", "weights", "gradients"}
    per_step = 2 * TINY.batch * TINY.context * 9 * TINY.width // 32
    assert counts["activations"].sum() == counts["gradients"].sum() == per_step * TINY.steps
    assert demo.scale_exponents(naive)["gradients"] is counts["gradients"]


def test_recipe_summary_pools_by_nonzero_counts():
    import jax.numpy as jnp

    from fpsim.blocks import BlockSummary
    from fpsim.nn import RecipeStats

    def bs(under, sat, n, e):
        c = jnp.zeros(255, jnp.int32).at[e + 127].set(1)
        return BlockSummary(jnp.float32(under), jnp.float32(sat), jnp.int32(n), c)

    # fprop_x, fprop_w, dgrad_g, dgrad_w, wgrad_x, wgrad_g
    a = RecipeStats(bs(0.0, 0.0, 10, 0), bs(0.0, 0.5, 2, 1), bs(0.5, 0.0, 10, -3),
                    bs(0.0, 0.0, 2, 1), bs(0.0, 0.0, 10, 0),
                    bs(0.25, 0.0, 30, -4))  # fmt: skip
    b = a._replace(dgrad_g=bs(1.0, 0.0, 0, -127), wgrad_g=bs(0.0, 0.25, 40, -5))
    out = demo.step_summary(
        {"loss": 1.0, "loss_scale": 1.0, "finite": True, "grad_underflow": jnp.nan,
         "recipe": {"x": a, "y": b}}
    )  # fmt: skip
    # x: (0.5 * 10 + 0.25 * 30) / 40; y: 0 / 40; pooled: 12.5 / 80
    assert float(out["flushed"]["x"]) == 12.5 / 40 and float(out["flushed"]["y"]) == 0
    assert float(out["grad_underflow"]) == 12.5 / 80
    # clipped: x 0.5 * 2 of 64 nonzero; y 1 + 0.25 * 40 of 64
    assert float(out["saturated"]["y"]) == 11 / 64
    assert float(out["saturated_all"]) == 12 / 128
    assert int(out["block_scales"]["gradients"][-5 + 127]) == 1
    assert int(out["block_scales"]["weights"][1 + 127]) == 4


def test_run_policies():
    zhao = demo.run_policy(next(r for r in demo.RUNS if "zhao" in r.name))
    assert zhao.adaptive.rule == "zhao" and zhao.grad.name == "fp16"
    nvfp4 = demo.run_policy(demo.select_runs("nvfp4")[0])
    assert nvfp4.recipe.name == "nvfp4" and nvfp4.name == "nvfp4"
    assert nvfp4.for_module("head", "Dense").recipe is None
    assert nvfp4.for_module("block0/mlp_in", "Dense").recipe.name == "nvfp4"
    assert (
        nvfp4.for_module("head", "Dense").compute
        == fpsim.nn.get_policy("bf16_mixed").compute
    )


def test_every_recipe_fits_the_sizes():
    from fpsim.nn._recipes import _lengths

    for config in (demo.DEFAULT, demo.FAST):
        w, tokens = config.width, config.batch * config.context
        shapes = [(tokens, w, w), (tokens, w, 4 * w), (tokens, 4 * w, w)]
        shapes += [(config.eval_windows * config.context, k, n) for _, k, n in shapes]
        for spec in demo.ALL_RUNS:
            if spec.recipe is not None:
                recipe = fpsim.nn.get_recipe(spec.recipe)
                assert spec.name == recipe.name  # the row is the recipe's name
                for m, k, n in shapes:
                    assert _lengths(recipe, m, k, n) == [], (spec.name, config, m, k, n)


def test_select_runs():
    names = [r.name for r in demo.select_runs("FLOAT32, nvfp4*")]
    assert names == ["float32", "nvfp4", "nvfp4_no_rht", "nvfp4_no_sr", "nvfp4_1d_weights"]
    assert demo.select_runs(("fp8*",)) == tuple(r for r in demo.RUNS if "fp8" in r.name[:3])
    assert set(demo.FAST_RUNS) < set(demo.RUNS)
    assert not set(demo.ABLATIONS) & set(demo.RUNS)  # reachable by name only
    assert len({r.name for r in demo.RUNS}) == len(demo.RUNS)
    with pytest.raises(ValueError, match="no run matches 'nvfp5'.*'mxfp4_naive'"):
        demo.select_runs("float32,nvfp5")
    with pytest.raises(ValueError, match="no run named"):
        demo.select_runs(" , ")


def test_table_and_figures(results, tmp_path):
    table = demo.summary_table(tuple(results.values()))
    for name in results:
        assert name in table
    assert "character frequencies alone" in table
    row = next(line for line in table.splitlines() if line.startswith("mxfp4_naive"))
    lost = np.mean(results["mxfp4_naive"].grads_lost[-(TINY.steps // 4) :])
    assert row.split()[5] == f"{lost:.2%}"  # grads lost: the recipe GEMMs' flushes
    assert "--runs 'nvfp4*'" in table  # the ablations are not in this list
    figs = demo.figures(tuple(results.values()))
    assert {"lm_training_curves.png", "lm_flushed_per_layer.png"} <= set(figs)
    # the recipe run is among the heat maps and in the scale histogram
    titles = [ax.get_title() for ax in figs["lm_flushed_per_layer.png"].axes]
    assert any(t.startswith("mxfp4_naive (recipe GEMMs)") for t in titles)
    titles = [ax.get_title() for ax in figs["lm_scale_exponents.png"].axes]
    assert any(t.startswith("mxfp4_naive: the E8M0 block scales") for t in titles)
    # the loss figure: the formats, then the 4-bit recipe against bf16
    axes = figs["lm_training_curves.png"].axes
    assert len(axes) == 2 and "against bf16" in axes[1].get_title()
    (line,) = [ln for ln in axes[1].get_lines() if ln.get_gid() == "run:mxfp4_naive"]
    assert line.get_ydata()[-1] > 0  # above bf16
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
    assert main(["demo", "lm", "--runs", "bf16,nvfp4*"]) == 0
    assert seen["runs"] == "bf16,nvfp4*"
    assert main(["demo", "--runs", "bf16"]) == 2  # the MLP demo has no runs to pick


def test_unknown_run_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "run_experiment", lambda *a, **k: 1 / 0)
    assert demo.run(runs="float32,fp4", outdir=str(tmp_path)) == 2
    assert "--runs: no run matches 'fp4'; valid runs: 'float32'" in capsys.readouterr().err


def test_config_is_checked():
    with pytest.raises(ValueError, match="multiple of heads"):
        demo.LMConfig(width=30, heads=4)
    with pytest.raises(ValueError, match="steps must be positive"):
        demo.LMConfig(steps=0)
