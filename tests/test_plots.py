"""The benchmark's width and depth figures: ticks at the sizes run, slopes only where they mean something."""

from __future__ import annotations

import pytest

from mechest.experiments import plots


def kprop_row(width: int, depth: int, order: int) -> dict:
    mse = 0.5 ** depth / width**order  # any positive values: the figures are checked, not the numbers
    return {"method": "kprop", "width": width, "depth": depth, "order": order, "variant": "simple",
            "factored": False, "mse": mse, "noise_floor": 0.0, "mse_over_var": mse, "flops_raw": 1.0,
            "flops_discounted": 1.0, "seconds": 1.0}


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """The figures plot_mse_against draws, by name, instead of files."""
    figures = {}

    def keep(figure, directory, name):
        figures[name] = figure
        return []

    monkeypatch.setattr(plots, "save", keep)
    yield figures
    for figure in figures.values():
        plots.plt.close(figure)


def test_width_axis_ticks_at_the_widths_with_slopes(drawn) -> None:
    widths = (16, 32, 64)
    rows = [kprop_row(width, 4, order) for width in widths for order in (1, 2)]
    plots.plot_mse_against(rows, [(width, 4) for width in widths], "width", None, "mse_vs_width")
    axes = drawn["mse_vs_width"].axes[0]
    assert axes.get_xscale() == "log"
    assert [label.get_text() for label in axes.get_xticklabels()] == ["16", "32", "64"]
    assert axes.xaxis.get_minor_locator().tick_values(16, 64) == []  # no 2×10¹-style minor labels
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["K=1 simple (slope -1.00)",
                                                                          "K=2 simple (slope -2.00)"]


def test_depth_axis_is_linear_without_slopes(drawn) -> None:
    depths = (1, 2, 3, 4)
    rows = [kprop_row(16, depth, 2) for depth in depths]
    plots.plot_mse_against(rows, [(16, depth) for depth in depths], "depth", None, "mse_vs_depth")
    axes = drawn["mse_vs_depth"].axes[0]
    assert axes.get_xscale() == "linear"
    assert [label.get_text() for label in axes.get_xticklabels()] == ["1", "2", "3", "4"]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["K=2 simple"]
