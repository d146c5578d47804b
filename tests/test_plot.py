"""fpsim.plot draws the right data: points, band edges, bar heights, curves."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fpsim  # noqa: E402
from fpsim import plot  # noqa: E402


def _gid(ax, gid):
    return [a for a in ax.get_children() if a.get_gid() == gid]


def _lines(ax, prefix):
    return [ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith(prefix)]


def _span(patch):
    """The x extent of an axvspan rectangle, in data coordinates."""
    return [patch.get_x(), patch.get_x() + patch.get_width()]


@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e2m3", "e3m2", "e2m1", "e4m3fnuz"])
def test_number_line_draws_every_finite_value(ax, name):
    fmt = fpsim.get_format(name)
    plot.number_line(fmt, ax=ax)
    drawn = np.sort(np.concatenate([ln.get_xdata() for ln in _lines(ax, "values:")]))
    np.testing.assert_array_equal(drawn, fpsim.all_values(fmt))
    subnormals = _lines(ax, "values:subnormal")[0].get_xdata()
    assert np.all(np.abs(subnormals) < fmt.min_normal) and np.all(subnormals != 0)
    assert len(subnormals) == 2 * (2**fmt.mantissa_bits - 1)


def test_number_line_band_edges(ax):
    fmt = fpsim.E4M3
    plot.number_line(fmt, ax=ax)
    normal = sorted(_span(p) for p in _gid(ax, "band:normal"))
    assert normal == [[-fmt.max, -fmt.min_normal], [fmt.min_normal, fmt.max]]
    sub = sorted(_span(p) for p in _gid(ax, "band:subnormal"))
    assert sub == [
        [-fmt.min_normal, -fmt.min_subnormal],
        [fmt.min_subnormal, fmt.min_normal],
    ]
    over = sorted(_span(p) for p in _gid(ax, "band:overflow"))
    assert over[0][1] == -fmt.max and over[1][0] == fmt.max
    data = plot.number_line_data(fmt)
    assert (data.min_subnormal, data.min_normal, data.max) == (2**-9, 2**-6, 448.0)


def test_number_line_refuses_wide_formats():
    with pytest.raises(ValueError, match="at most 10"):
        plot.number_line("fp16")


def test_spacing_data_is_fpsim_ulp():
    for name in ("fp32", "bf16", "fp16", "e4m3"):
        fmt = fpsim.get_format(name)
        d = plot.spacing_data(fmt)
        assert d.x[0] == fmt.min_subnormal and d.x[-1] == fmt.max
        np.testing.assert_array_equal(d.ulp, np.asarray(fpsim.ulp(d.x, fmt), np.float64))
        normal = d.x >= fmt.min_normal
        np.testing.assert_array_equal(d.relative_error[normal], fmt.unit_roundoff)
        assert d.relative_error[0] == 0.5  # the smallest subnormal: half of itself


def test_ulp_and_relative_error_plots_draw_the_data(ax):
    plot.relative_error_plot(("fp16", "bf16"), ax=ax)
    (line,) = _lines(ax, "relative_error:fp16")
    d = plot.spacing_data("fp16")
    np.testing.assert_array_equal(line.get_ydata(), d.relative_error)
    fig = plot.spacing_figure(("fp32", "e5m2"))
    top = fig.axes[0]
    np.testing.assert_array_equal(
        _lines(top, "ulp:e5m2")[0].get_ydata(), plot.spacing_data("e5m2").ulp
    )


def _grads():
    rng = np.random.default_rng(1)
    g = (np.exp2(rng.uniform(-40, 0, 5000)) * rng.choice([-1, 1], 5000)).astype(np.float32)
    g[:50] = 0
    g[50] = np.inf
    g[51] = 1e5  # overflows fp16
    return g


def test_range_histogram_bars_and_bands(ax):
    g = _grads()
    fmt = fpsim.FP16
    plot.range_histogram(g, fmt, ax=ax)
    bars = ax.containers[0]
    heights = np.array([b.get_height() for b in bars])
    lefts = np.array([b.get_x() for b in bars])
    hist = fpsim.log2_histogram(g, lo=int(lefts[0]), hi=int(lefts[-1]) + 1)
    np.testing.assert_array_equal(heights, np.asarray(hist.counts))
    assert heights.sum() == g.size - 50 - 1  # zeros and inf are not binned
    edges = [_span(_gid(ax, f"band:{b}")[0]) for b in ("subnormal", "normal")]
    # rounding to nearest lifts [min_subnormal/2, min_subnormal) to min_subnormal: the
    # flushed band ends at min_subnormal/2, where band_fractions stops counting it
    assert edges[0] == [math.log2(fmt.min_subnormal) - 1, fmt.emin]
    assert _span(_gid(ax, "band:underflow")[0])[1] == math.log2(fmt.min_subnormal) - 1
    assert edges[1][0] == fmt.emin
    assert edges[1][1] == pytest.approx(math.log2(fmt.max))


def test_band_fractions_match_value_counts():
    g = _grads()
    fr = plot.band_fractions(g, "fp16")
    c = fpsim.value_counts(g, "fp16")
    nonzero = g.size - 50 - 1  # one basis: the nonzero finite values
    assert fr.exact and fr.total == g.size and fr.nonzero == nonzero
    assert fr.underflow == int(c.underflow) / nonzero
    assert fr.overflow == 1 / nonzero and fr.nonfinite == 1 / g.size
    assert fr.zero == 50 / g.size
    assert fr.underflow + fr.subnormal + fr.normal + fr.overflow == pytest.approx(1.0)


def test_range_histogram_from_a_histogram(ax):
    g = _grads()
    hist = fpsim.log2_histogram(g, lo=-45, hi=20)
    plot.range_histogram(hist, "fp16", ax=ax)
    heights = [b.get_height() for b in ax.containers[0]]
    np.testing.assert_array_equal(heights, np.asarray(hist.counts))
    fr = plot.band_fractions(hist, "fp16")
    assert not fr.exact and fr.total == g.size
    texts = " ".join(t.get_text() for t in ax.texts)
    assert f"{100 * fr.subnormal:.1f}%" in texts


def test_training_curves(ax):
    runs = {"fp32": [3.0, 2.0, 1.0], "fp8": [3.0, np.nan, np.nan]}
    plot.training_curves(runs, ax=ax, logy=True)
    np.testing.assert_array_equal(_lines(ax, "run:fp32")[0].get_ydata(), runs["fp32"])
    assert ax.get_yscale() == "log"
    assert "diverged at step 1" in [t.get_text() for t in ax.get_legend().get_texts()][1]


def test_loss_scale_plot_marks_skipped_steps(ax):
    scale = [8.0, 8.0, 4.0, 4.0, 8.0]
    plot.loss_scale_plot(scale, [False, True, False, False, False], ax=ax)
    (skipped,) = _lines(ax, "skipped")
    assert list(skipped.get_xdata()) == [1] and list(skipped.get_ydata()) == [8.0]
    np.testing.assert_array_equal(_lines(ax, "loss_scale")[0].get_ydata(), scale)
    plot.loss_scale_plot(scale, [1, 3], ax=ax)  # indices work too
    assert list(_lines(ax, "skipped")[-1].get_xdata()) == [1, 3]


def test_underflow_heatmap(ax):
    data = {"dense_0": [0.0, 0.1, 0.5], "dense_1": [0.2, 0.3, 0.9]}
    plot.underflow_heatmap(data, ax=ax)
    np.testing.assert_array_equal(ax.images[0].get_array(), list(data.values()))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dense_0", "dense_1"]
    with pytest.raises(ValueError, match="layer, step"):
        plot.underflow_heatmap(np.zeros(3), ax=ax)


def test_helpers_make_a_figure_when_ax_is_none():
    ax = plot.number_line("e2m1")
    assert ax.figure is not None
    plt.close(ax.figure)


def test_importing_fpsim_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, fpsim; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_figures_are_written_and_deterministic(tmp_path):
    from fpsim.showcase import figures

    names = ["numberline_e4m3.png", "spacing_and_relative_error.png"]
    first = figures.write_figures(tmp_path / "a", only=names)
    second = figures.write_figures(tmp_path / "b", only=names)
    assert [p.name for p in first] == names
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes() and a.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown figure"):
        figures.write_figures(tmp_path, only=["nope.png"])


def test_slow_figures_are_opt_in(tmp_path, monkeypatch):
    from fpsim.showcase import figures

    assert "lm_training_curves.png" in figures.SLOW
    called = []
    fake = [(n, lambda n=n: called.append(n) or figures.numberline_e4m3())
            for n in ("numberline_e4m3.png", "lm_training_curves.png")]  # fmt: skip
    monkeypatch.setattr(figures, "FIGURES", fake)
    figures.write_figures(tmp_path)
    assert called == ["numberline_e4m3.png"]  # the LM demo is not trained
    figures.write_figures(tmp_path, slow=True)
    figures.write_figures(tmp_path, only=["lm_training_curves.png"])
    assert called == ["numberline_e4m3.png", "numberline_e4m3.png",
                      "lm_training_curves.png", "lm_training_curves.png"]  # fmt: skip


def test_binade_estimate_matches_exact_counts_at_the_subnormal_edge():
    import fpsim
    from fpsim.plot import band_fractions

    # one value per binade around fp16's smallest subnormal 2^-24 (midpoints, no ties)
    x = np.float32([0.75 * 2.0**-26, 0.75 * 2.0**-25, 0.75 * 2.0**-24, 1.5 * 2.0**-24])
    exact = band_fractions(x, fpsim.FP16)
    estimate = band_fractions(fpsim.log2_histogram(x, lo=-30, hi=0), fpsim.FP16)
    assert not estimate.exact and exact.exact
    assert (exact.underflow, exact.subnormal) == (0.5, 0.5)
    assert (estimate.underflow, estimate.subnormal) == (exact.underflow, exact.subnormal)


def test_log_count_axis_keeps_bars_readable():
    import fpsim

    x = np.float32([2.0**-3] * 1000 + [2.0**-10] * 3)
    ax = fpsim.plot.range_histogram(x, fpsim.FP16, logy=True)
    bottom, top = ax.get_ylim()
    assert ax.get_yscale() == "log" and 0 < bottom < 3 and top >= 1000


def test_what_is_drawn_is_what_is_counted(ax):
    # the binade just below fp16's min subnormal: kept (rounds up), drawn as subnormal
    x = np.float32([0.75 * 2.0**-24] * 30 + [0.75 * 2.0**-25] * 10 + [1.0] * 60)
    plot.range_histogram(x, fpsim.FP16, ax=ax, lo=-30, hi=4)
    fr = plot.band_fractions(x, fpsim.FP16)
    assert (fr.underflow, fr.subnormal, fr.normal) == (0.1, 0.3, 0.6)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "10.0% of nonzero" in texts and "30.0% of nonzero" in texts
    sub = _span(_gid(ax, "band:subnormal")[0])
    assert sub[0] <= math.log2(0.75 * 2.0**-24) and sub[0] > math.log2(0.75 * 2.0**-25)


def test_end_bars_hold_everything_beyond_and_say_so(ax):
    x = np.float32([2.0**-60, 2.0**-50, 2.0**-20, 2.0**30])
    plot.range_histogram(x, fpsim.FP16, ax=ax, lo=-45, hi=20)
    heights = [b.get_height() for b in ax.containers[0]]
    assert heights[0] == 2 and heights[-1] == 1
    labels = [t.get_text() for t in ax.texts if t.get_gid() == "end_bar"]
    assert labels == ["all < $2^{-44}$", "all ≥ $2^{19}$"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "min subnormal = $2^{-24}$" in legend and "max = 65504" in legend


def test_public_style():
    assert plot.PALETTE == plot.OKABE_ITO and len(set(plot.PALETTE)) == len(plot.PALETTE)
    assert plot.style(0)["color"] != plot.style(1)["color"]
    assert plot.style(0)["linestyle"] != plot.style(1)["linestyle"]
    assert plot.style(0)["marker"] != plot.style(1)["marker"]
    fmt = plot.pow2_formatter()
    assert fmt(2.0**-3) == "$2^{-3}$" and fmt(3.0) == "3"
    assert plot.pow2_formatter(base_is_log2=True)(16) == "$2^{16}$"
    fig, axes = plot.new_figure((4, 3), rows=2)
    assert len(axes) == 2 and fig.get_figwidth() == 4


def test_spacing_figure_ticks_cover_the_data_and_zoom_on_narrow_formats():
    fig = plot.spacing_figure()
    top, bottom = fig.axes[:2]
    lo, hi = bottom.get_xlim()
    assert lo == fpsim.FP16.min_subnormal / 2 and hi == fpsim.FP16.max * 2
    ticks = bottom.get_yticks()
    assert max(ticks) >= 0.5  # the subnormal ends reach 2^-1
    assert "(ulp / 2)" in bottom.get_ylabel()
    d = plot.spacing_data("e4m3")
    np.testing.assert_array_equal(
        _lines(bottom, "relative_error:e4m3")[0].get_ydata(), d.ulp / 2 / np.exp2(
            np.floor(np.log2(d.x)))
    )  # fmt: skip
