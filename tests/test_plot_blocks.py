"""fpsim.plot.block_plot: one block on the grid its scale makes."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fpsim  # noqa: E402
from fpsim import plot  # noqa: E402


def _line(ax, gid):
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == gid]
    return np.asarray(line.get_xdata(), np.float64)


def test_957_block_mxfp8(ax):
    """The 957 case: FLOOR gives scale 2, 957 saturates to 448 * 2; 0.001 flushes."""
    x = np.full(32, 0.001, np.float32)
    x[0] = 957.0
    x[1] = 3.0
    plot.block_plot(x, "mxfp8", ax=ax)
    d = plot.block_plot_data(x, "mxfp8")
    assert d.scale == 2.0
    assert d.q[0] == 896.0 and d.q[1] == 3.0
    assert np.array_equal(_line(ax, "saturated"), [957.0])
    assert len(_line(ax, "flushed")) == 30 and np.all(
        _line(ax, "flushed") == np.float32(0.001)
    )
    np.testing.assert_array_equal(_line(ax, "values"), [3.0])
    grid = _line(ax, "grid")
    e4m3 = np.asarray(fpsim.all_values(fpsim.E4M3), np.float64)
    np.testing.assert_array_equal(grid, np.unique(e4m3[np.isfinite(e4m3)]) * 2)
    st = fpsim.block_stats(x, "mxfp8")
    assert float(st.saturated[0]) * 32 == d.saturated.sum() == 1
    assert float(st.underflow[0]) * 32 == d.flushed.sum() == 30
    # CEIL: scale 4, nothing saturates
    c = plot.block_plot_data(x, "mxfp8", scale_mode="ceil")
    assert c.scale == 4.0 and c.q[0] == 960.0 and not c.saturated.any()


@pytest.mark.parametrize("name", ["mxfp4", "mxfp6_e2m3", "mxint8", "nvfp4", "fp8_tensor"])
def test_every_value_on_the_grid(ax, name):
    bfmt = fpsim.get_block_format(name)
    rng = np.random.default_rng(0)
    n = 64 if bfmt.per_tensor else bfmt.block_size
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    x[5] = 0.0
    d = plot.block_plot_data(x, bfmt)
    assert np.isin(d.q, d.grid).all()
    st = fpsim.block_stats(x, bfmt)
    assert float(np.asarray(st.saturated).ravel()[0]) * n == d.saturated.sum()
    assert float(np.asarray(st.underflow).ravel()[0]) * n == d.flushed.sum()
    plot.block_plot(x, bfmt, ax=ax)
    assert len(_line(ax, "values")) + d.flushed.sum() + d.saturated.sum() == n


def test_nvfp4_grid_is_elements_times_both_scales():
    x = np.linspace(-1, 2.5, 16, dtype=np.float32)
    d = plot.block_plot_data(x, "nvfp4")
    codes = fpsim.encode_blocks(x, "nvfp4")
    bs = np.float32(fpsim.decode(codes.scales[0], fpsim.E4M3))
    assert d.scale == float(np.float32(codes.tensor_scale) * bs)
    assert d.grid.max() == pytest.approx(6 * d.scale, rel=1e-7)


def test_bad_input():
    with pytest.raises(ValueError, match="32 values"):
        plot.block_plot_data(np.ones(16, np.float32), "mxfp8")
    with pytest.raises(ValueError, match="tiles"):
        plot.block_plot_data(np.ones(256, np.float32), "nvfp4_16x16")
