"""Figures: their data read back from the matplotlib objects (not pixels), and the files --plot writes."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import binomtest

from robench.cli.main import main
from robench.errors import RobenchError
from robench.render import plots

META = {"dataset": {"name": "digits", "split": "test", "n": 50}}
EPS = [2.0, 4.0, 8.0]


def _row(model: str, attack: str, eps: float, top1: float, n: int = 50) -> dict:
    return {"model": model, "attack": attack, "eps": eps, "top1": top1, "top5": 1.0, "success_rate": 0.0, "n": n,
            "linf_max": eps}


def eval_rows() -> pd.DataFrame:
    """Two models, fgsm and pgd at three eps, the worst case; shares are whole counts out of 50."""
    rows = []
    for model, clean in (("a", 0.96), ("b", 0.9)):
        rows.append(_row(model, "clean", 0.0, clean))
        rows += [_row(model, "fgsm", e, clean - 0.1 * i) for i, e in enumerate(EPS)]
        rows += [_row(model, "pgd", e, clean - 0.2 * i) for i, e in enumerate(EPS)]
        rows += [_row(model, "worst", e, clean - 0.2 * i - 0.02) for i, e in enumerate(EPS)]
    return pd.DataFrame(rows)


def lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines()}


def band(ax, label: str) -> tuple[np.ndarray, np.ndarray]:
    """The (lower, upper) edges of a fill_between band, at each x, read from its polygon."""
    (coll,) = [c for c in ax.collections if c.get_gid() == f"band:{label}"]
    xy = coll.get_paths()[0].vertices
    xs = np.unique(xy[:, 0])
    return (np.array([xy[xy[:, 0] == x, 1].min() for x in xs]), np.array([xy[xy[:, 0] == x, 1].max() for x in xs]))


@pytest.fixture(scope="module")
def eval_fig():
    fig = plots.eval_figure(eval_rows(), META)
    yield fig
    plots.pyplot().close(fig)


def test_eval_figure_has_a_panel_per_model_with_its_lines(eval_fig) -> None:
    axes = [ax for ax in eval_fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["a", "b"]
    rows = eval_rows()
    for ax, model in zip(axes, "ab", strict=True):
        found = lines(ax)
        assert set(found) == {"clean", "fgsm", "pgd", "worst case"}
        for attack, label in (("fgsm", "fgsm"), ("pgd", "pgd"), ("worst", "worst case")):
            want = rows[(rows.model == model) & (rows.attack == attack)]
            assert np.array_equal(found[label].get_xdata(), want.eps.to_numpy())
            assert np.allclose(found[label].get_ydata(), want.top1.to_numpy())
        assert found["worst case"].get_linewidth() > found["pgd"].get_linewidth()
        assert found["clean"].get_linestyle() == "--"
        clean = rows[(rows.model == model) & (rows.attack == "clean")].top1.item()
        assert np.allclose(found["clean"].get_ydata(), clean)


def test_eval_figure_bands_are_exact_binomial_intervals(eval_fig) -> None:
    ax = eval_fig.axes[0]
    low, high = band(ax, "pgd")
    for i, top1 in enumerate([0.96, 0.76, 0.56]):
        ci = binomtest(round(top1 * 50), 50).proportion_ci(0.95, method="exact")
        assert low[i] == pytest.approx(ci.low) and high[i] == pytest.approx(ci.high)


def test_eval_figure_labels_units_title_and_one_legend(eval_fig) -> None:
    ax = eval_fig.axes[0]
    assert "eps (1/255" in ax.get_xlabel() and ax.get_ylabel() == "top-1 accuracy"
    assert eval_fig.get_suptitle() == "top-1 accuracy under attack: digits (test), n = 50"
    assert len(eval_fig.legends) == 1
    assert {t.get_text() for t in eval_fig.legends[0].get_texts()} >= {"clean", "fgsm", "pgd", "worst case"}


def test_ten_models_wrap_in_rows_of_four_sharing_y() -> None:
    rows = pd.concat([eval_rows().assign(model=lambda f, i=i: f.model + str(i)) for i in range(5)])
    fig = plots.eval_figure(rows, META)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 10 and len(fig.axes) == 12
    assert {round(ax.get_position().x0, 3) for ax in visible} == {round(ax.get_position().x0, 3) for ax in visible[:4]}
    assert all(ax.get_ylim() == visible[0].get_ylim() for ax in visible)
    plots.pyplot().close(fig)


def test_leak_figure_has_four_lines_and_the_verdict() -> None:
    rows = pd.DataFrame([
        {"model": m, "eps": e, "clean_top1": 0.9, "fgsm_true_top1": 0.8, "fgsm_predicted_top1": 0.7,
         "step_ll_top1": 0.85, "n": 40, "verdict": v}
        for m, v in (("x", "OK"), ("y", "LEAK")) for e in EPS])
    fig = plots.leak_figure(rows, META)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["x: OK", "y: LEAK"]
    for ax in axes:
        found = lines(ax)
        assert list(found) == [label for _, label in plots.LEAK_LINES]
        assert np.allclose(found["fgsm (true labels)"].get_ydata(), 0.8)
        assert np.array_equal(found["step_ll"].get_xdata(), EPS)
        assert found["clean"].get_linestyle() == "--"
    plots.pyplot().close(fig)


@pytest.mark.parametrize("name", ["f.png", "f.svg", "f.pdf"])
def test_save_figure_writes_the_suffix_format(eval_fig, tmp_path: Path, name: str) -> None:
    fig = plots.eval_figure(eval_rows(), META)
    path = tmp_path / name
    plots.save_figure(fig, path)
    data = path.read_bytes()
    if name.endswith(".png"):
        assert data.startswith(b"\x89PNG")
    elif name.endswith(".pdf"):
        assert data.startswith(b"%PDF")
    else:
        assert ET.fromstring(data).tag.endswith("svg")
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_an_unknown_plot_suffix_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RobenchError, match="^plot .*unknown format '.jpg'"):  # the CLI: --plot
        plots.check_plot(tmp_path / "f.jpg")


# --- the commands --------------------------------------------------------------------------------------

def test_cli_eval_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    r = CliRunner().invoke(main, ["eval", "zoo:resnet-base", "--attack", "fgsm", "--eps", "4,8", "--limit", "20", "-q",
                                  "--plot", str(out)])
    assert r.exit_code == 0, r.stderr
    assert out.read_bytes().startswith(b"\x89PNG")


def test_cli_eval_bad_plot_suffix_exits_2_before_work(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["eval", "zoo:resnet-base", "--limit", "20", "-q", "--plot", str(tmp_path / "o.jpg")])
    assert r.exit_code == 2
    lines_ = r.stderr.strip().splitlines()
    assert len(lines_) == 1 and "--plot" in lines_[0] and "'.jpg'" in lines_[0]
    assert not list(tmp_path.iterdir())


def test_leak_figure_zooms_on_the_accuracies() -> None:
    rows = pd.DataFrame([{"model": "x", "eps": 8.0, "clean_top1": 0.98, "fgsm_true_top1": 0.84,
                          "fgsm_predicted_top1": 0.86, "step_ll_top1": 0.9, "n": 120, "verdict": "OK"}])
    fig = plots.leak_figure(rows, {})
    assert fig.axes[0].get_ylim() == (pytest.approx(0.7), pytest.approx(1.02))
    assert fig.get_suptitle() == "label leaking"  # no dataset record: no caption
    plots.pyplot().close(fig)


def test_transfer_figure_masks_the_diagonal_and_writes_rate_and_n() -> None:
    rows = pd.DataFrame([
        {"source": s, "target": t, "attack": "fgsm", "eps": 8.0, "transfer_rate": r, "n_fooled_source": n}
        for (s, t), (r, n) in {("a", "a"): (1.0, 40), ("a", "b"): (0.25, 12), ("b", "a"): (np.nan, 0),
                               ("b", "b"): (1.0, 30)}.items()])
    fig = plots.transfer_figure(rows)
    assert [t.get_text() for t in fig.axes[0].texts] == ["white-\nbox", "25\nn=12", "-\nn=0", "white-\nbox"]
    shown = fig.axes[0].images[0].get_array()
    assert shown.mask.tolist() == [[True, False], [True, True]]  # the diagonal (and the empty cell) not coloured
    assert shown[0, 1] == 0.25 and shown.data[0, 0] == 1.0 and np.isnan(shown.data[1, 0])
    colorbar = fig.axes[-1]  # one colorbar beside the panels, on the rates' 0-100% scale
    assert colorbar.get_ylabel() == "transfer rate %" and colorbar.get_ylim() == (0.0, 1.0)
    plots.pyplot().close(fig)


def test_cascade_rows_are_labelled_after_their_stage() -> None:
    fig = plots.eval_figure(eval_rows(), META | {"semantics": "robust after this stage (cascade); full iterations"})
    assert set(lines(fig.axes[0])) == {"clean", "after fgsm", "after pgd", "worst case"}
    plots.pyplot().close(fig)


# ---------------------------------------------------------------- a single eps (issue 26 item 11)

AUTOATTACK = (("apgd-ce", 0.30), ("apgd-t", 0.25), ("fab-t", 0.25), ("square", 0.245), ("worst", 0.245))
CASCADE = {"semantics": "robust after this stage (cascade); full iterations"}


def single_eps_rows(models: tuple[str, ...] = ("resnet-base",)) -> pd.DataFrame:
    """`eval --attacks autoattack --eps 8`: clean, four cascade stages and the worst case, out of 200."""
    return pd.DataFrame([r for m in models for r in [_row(m, "clean", 0.0, 0.905, 200),
                                                     *[_row(m, a, 8.0, t, 200) for a, t in AUTOATTACK]]])


@pytest.fixture(scope="module")
def single_fig():
    fig = plots.eval_figure(single_eps_rows(), META | CASCADE)
    fig.canvas.draw()  # lay it out as savefig does
    yield fig
    plots.pyplot().close(fig)


def test_single_eps_legend_shows_every_attack(single_fig) -> None:
    """Each entry is in the legend and drawn inside the figure (a clipped one is not shown)."""
    (legend,) = single_fig.legends
    texts = legend.get_texts()
    assert [t.get_text() for t in texts] == [
        "clean", "after apgd-ce", "after apgd-t", "after fab-t", "after square", "worst case", "exact 95% interval"]
    box = single_fig.bbox
    assert all(box.x0 <= t.get_window_extent().x0 and t.get_window_extent().x1 <= box.x1 for t in texts)


@pytest.mark.parametrize("models", [("resnet-base",), ("a", "b"), tuple("abcdefg")])
def test_single_eps_legend_and_panels_lie_inside_the_figure(models: tuple[str, ...]) -> None:
    fig = plots.eval_figure(single_eps_rows(models), META | CASCADE)
    fig.canvas.draw()
    box = fig.bbox
    for artist in [*fig.legends, *[ax for ax in fig.axes if ax.get_visible()]]:
        extent = artist.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
    plots.pyplot().close(fig)


def test_single_eps_points_carry_exact_intervals_as_error_bars(single_fig) -> None:
    from matplotlib.container import ErrorbarContainer

    ax = single_fig.axes[0]
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    assert set(bars) == {"after apgd-ce", "after apgd-t", "after fab-t", "after square", "worst case"}
    for attack, top1 in AUTOATTACK:
        container = bars["worst case" if attack == "worst" else f"after {attack}"]
        (segment,) = container.lines[2][0].get_segments()
        ci = binomtest(round(top1 * 200), 200).proportion_ci(0.95, method="exact")
        assert segment[:, 1].min() == pytest.approx(ci.low) and segment[:, 1].max() == pytest.approx(ci.high)
        assert container.lines[0].get_ydata()[0] == pytest.approx(top1)


def test_single_eps_worst_case_is_not_hidden(single_fig) -> None:
    """The worst case equals square's 24.5%: it has its own x, above the attacks, and a larger marker."""
    ax = single_fig.axes[0]
    points = {c.get_label(): c.lines[0] for c in ax.containers}
    worst = points.pop("worst case")
    xs = [line.get_xdata()[0] for line in points.values()]
    assert worst.get_xdata()[0] not in xs and len(set(xs)) == 4
    left, right = ax.get_xlim()
    assert all(left < x < right for x in [*xs, worst.get_xdata()[0]])
    assert worst.get_zorder() > max(line.get_zorder() for line in points.values())
    assert worst.get_markersize() > max(line.get_markersize() for line in points.values())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8"]
