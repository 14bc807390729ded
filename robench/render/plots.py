"""Result rows -> matplotlib figures (eval and leak-check curves, transfer heatmaps), saved atomically.

matplotlib is optional (the ``plot`` extra), so it is imported only inside these functions,
with the Agg backend: no display is needed and ``robench --help`` stays fast.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from robench.core.files import atomic_write
from robench.core.outputs import check_output
from robench.core.stats import exact_interval
from robench.core.text import eps_label
from robench.errors import FieldError

if TYPE_CHECKING:  # matplotlib is optional: imported for its types only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage
    from matplotlib.ticker import Locator

PLOT_SUFFIXES = (".png", ".svg", ".pdf")
# Okabe & Ito's colour-blind-safe palette, ordered so the first few differ most, the hard-to-see yellow last;
# black is kept for the worst case.
OKABE_ITO = ("#E69F00", "#0072B2", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
WORST_COLOR, CLEAN_COLOR = "#000000", "#555555"
MAX_COLUMNS = 4
LEAK_LINES = (("clean_top1", "clean"), ("fgsm_true_top1", "fgsm (true labels)"),
              ("fgsm_predicted_top1", "fgsm (predicted labels)"), ("step_ll_top1", "step_ll"))


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend, or a FieldError (naming plot) saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FieldError("plot", '{name} needs matplotlib: pip install "robench[plot]"') from None
    return plt


def check_plot(path: Path | None, field: str = "plot") -> None:
    """Fail before any work if ``path`` cannot take a figure: unknown suffix, bad folder or no matplotlib.

    Raises FieldError naming ``field`` (the CLI names its option).
    """
    if path is not None:
        check_output(path, PLOT_SUFFIXES, field)
        pyplot()


def save_figure(fig: Figure, path: Path, dpi: int = 130) -> None:
    """Write ``fig`` in the format its suffix names, atomically, then free it."""
    check_output(path, PLOT_SUFFIXES, "plot")
    atomic_write(path, lambda p: fig.savefig(p, format=path.suffix.lower()[1:], dpi=dpi))
    pyplot().close(fig)


def panel_grid(n_panels: int, columns: int = MAX_COLUMNS) -> tuple[Figure, list[Axes]]:
    """A figure of ``n_panels`` panels sharing the y axis, at most ``columns`` a row; spare cells hidden.

    Rows of at most four keep every panel wide enough for its eps labels with ten models.
    """
    cols = max(1, min(columns, n_panels))
    nrows = math.ceil(n_panels / cols)
    fig, axes = pyplot().subplots(nrows, cols, squeeze=False, sharey=True, layout="constrained",
                                  figsize=(0.6 + 3.2 * cols, 1.3 + 2.6 * nrows))
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat[:n_panels]


def curve(ax: Axes, eps: np.ndarray, top1: np.ndarray, n: np.ndarray, label: str, color: str, band: bool = True,
          **line: Any) -> None:
    """One accuracy line with (``band``) its exact 95% binomial band (from n and the count it implies)."""
    if band:
        bounds = np.array([exact_interval(round(t * m), m) for t, m in zip(top1, n, strict=True)]).reshape(-1, 2)
        ax.fill_between(eps, bounds[:, 0], bounds[:, 1], color=color, alpha=0.15, linewidth=0, gid=f"band:{label}")
    ax.plot(eps, top1, color=color, marker="o", markersize=3.5, label=label, **line)


def clean_reference(ax: Axes, top1: float, n: int) -> None:
    """Clean top-1 as a dashed horizontal line over its exact 95% band."""
    low, high = exact_interval(round(top1 * n), n)
    ax.axhspan(low, high, color=CLEAN_COLOR, alpha=0.12, linewidth=0, gid="band:clean")
    ax.axhline(top1, color=CLEAN_COLOR, linestyle="--", linewidth=1.2, label="clean")


def style_axes(ax: Axes, eps_values: list[float], title: str, first_column: bool) -> None:
    """Eps ticks at the measured values, accuracy as a percentage, labels with units.

    Suites double eps (2, 4, 8, 16), so a log-2 axis spaces them evenly; eps 0 keeps it linear.
    """
    from matplotlib.ticker import NullFormatter, PercentFormatter

    log = min(eps_values) > 0 and max(eps_values) >= 4 * min(eps_values)
    if log:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(eps_values, [eps_label(e) for e in eps_values])
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("eps (1/255, log scale)" if log else "eps (1/255)", fontsize=8)
    if first_column:
        ax.set_ylabel("top-1 accuracy", fontsize=8)
    ax.tick_params(labelsize=7)


def figure_legend(fig: Figure, axes: list[Axes]) -> None:
    """One legend below every panel, each label once (panels may lack some attacks), plus the band's meaning."""
    from matplotlib.patches import Patch

    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    handles["exact 95% interval"] = Patch(color=CLEAN_COLOR, alpha=0.2)
    for ncols in range(min(len(handles), 5), 0, -1):  # as many columns as fit the figure's width
        legend = fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=ncols, fontsize=8,
                            frameon=False)
        if ncols == 1 or legend.get_window_extent().width <= 0.98 * fig.bbox.width:
            return
        legend.remove()


def dataset_caption(meta: dict[str, Any]) -> str:
    """"digits (test), n = 360" from the results' dataset record; blank when there is none."""
    ds = meta.get("dataset") or {}
    if not ds:
        return ""
    split = f" ({ds['split']})" if ds.get("split") else ""
    return f"{ds.get('name', ds.get('spec', ''))}{split}, n = {ds.get('n', '?')}"


def _suptitle(fig: Figure, what: str, meta: dict[str, Any]) -> None:
    caption = dataset_caption(meta)
    fig.suptitle(f"{what}: {caption}" if caption else what, fontsize=10)


def attack_colors(rows: pd.DataFrame) -> dict[str, str]:
    """Each attack's colour, the same in every panel; the worst case is black."""
    attacks = [a for a in dict.fromkeys(rows["attack"]) if a not in ("clean", "worst")]
    return {a: OKABE_ITO[i % len(OKABE_ITO)] for i, a in enumerate(attacks)} | {"worst": WORST_COLOR}


def eval_panel(ax: Axes, group: pd.DataFrame, colors: dict[str, str], cascade: bool = False,
               single_eps: bool = False) -> None:
    """One model: clean as the reference, a line per attack (a point, at a ``single_eps``), the worst case bold.

    The worst case lies under the thinner attack lines: it equals the strongest attack at
    most eps, and drawn on top it would hide that attack's line. Under a cascade an attack's
    row is the accuracy after that stage, and is labelled so, as in the table.
    """
    clean = group[group["attack"] == "clean"]
    if len(clean):
        clean_reference(ax, float(clean["top1"].iloc[0]), int(clean["n"].iloc[0]))
    attacks = group[~group["attack"].isin(["clean", "worst"])]
    series = [(a, g.sort_values("eps")) for a, g in [*attacks.groupby("attack", sort=False),
                                                      ("worst", group[group["attack"] == "worst"])] if len(g)]
    for i, (attack, g) in enumerate(series):
        bold = attack == "worst"
        label = "worst case" if bold else f"after {attack}" if cascade else str(attack)
        eps, top1, n = g["eps"].to_numpy(float), g["top1"].to_numpy(float), g["n"].to_numpy(int)
        if single_eps:
            point(ax, eps[0], i - (len(series) - 1) / 2, float(top1[0]), int(n[0]), label, colors[str(attack)], bold)
            ax.set_xlim(eps[0] - (len(series) + 1) / 2 * _slot(eps[0]), eps[0] + (len(series) + 1) / 2 * _slot(eps[0]))
        else:
            curve(ax, eps, top1, n, label, colors[str(attack)], linewidth=3.2 if bold else 1.4,
                  zorder=1.9 if bold else 2.1)


def point(ax: Axes, eps: float, slot: float, top1: float, n: int, label: str, color: str, bold: bool) -> None:
    """One attack at the only eps: a point with its exact 95% interval as an error bar, in its own slot.

    A single eps has no line to draw a band along, and equal accuracies would stack their
    points; side by side (the worst case last, larger, on top), each point and bar shows.
    """
    low, high = exact_interval(round(top1 * n), n)
    ax.errorbar([eps + slot * _slot(eps)], [top1], yerr=[[top1 - low], [high - top1]], color=color, label=label,
                fmt="D" if bold else "o", markersize=7 if bold else 5, capsize=3, elinewidth=1.4,
                zorder=2.3 if bold else 2.1)


def _slot(eps: float) -> float:
    """The distance between two points side by side at ``eps``."""
    return 0.12 * max(abs(eps), 1.0)


def eval_figure(rows: pd.DataFrame, meta: dict[str, Any]) -> Figure:
    """Top-1 against eps, a panel per model: where robustness falls off, and how sure the numbers are."""
    models = list(dict.fromkeys(rows["model"]))
    eps_values = sorted(rows.loc[rows["attack"] != "clean", "eps"].unique())
    colors, cascade = attack_colors(rows), "(cascade)" in str(meta.get("semantics", ""))
    fig, axes = panel_grid(len(models))
    for i, (ax, model) in enumerate(zip(axes, models, strict=True)):
        eval_panel(ax, rows[rows["model"] == model], colors, cascade, single_eps=len(eps_values) == 1)
        style_axes(ax, eps_values, str(model), i % MAX_COLUMNS == 0)
    _suptitle(fig, "top-1 accuracy under attack", meta)
    figure_legend(fig, axes)
    return fig


def leak_figure(rows: pd.DataFrame, meta: dict[str, Any]) -> Figure:
    """Clean, fgsm with true and predicted labels and step_ll against eps, a panel per model with its verdict.

    Leaking shows as the true-label line above the predicted-label one (or above clean). Only
    those two lines carry bands: the leak gap is what the figure is for.
    """
    models = list(dict.fromkeys(rows["model"]))
    eps_values = sorted(rows["eps"].unique())
    colors = (CLEAN_COLOR, *OKABE_ITO[:3])
    fig, axes = panel_grid(len(models))
    for i, (ax, model) in enumerate(zip(axes, models, strict=True)):
        g = rows[rows["model"] == model].sort_values("eps")
        for (column, label), color in zip(LEAK_LINES, colors, strict=True):
            style: dict[str, str | float] = {"linestyle": "--"} if column == "clean_top1" else {}
            gap = column in ("fgsm_true_top1", "fgsm_predicted_top1")  # bands on the leak gap's two lines only:
            if column == "fgsm_predicted_top1":  # wider and beneath: where it equals fgsm-true, both still show
                style = {"linewidth": 3.2, "alpha": 0.55, "zorder": 1.5}
            curve(ax, g["eps"].to_numpy(float), g[column].to_numpy(float), g["n"].to_numpy(int), label, color,
                  band=gap, **{"linewidth": 1.4, **style})  # four overlapping bands read as one muddy one
        style_axes(ax, eps_values, f"{model}: {g['verdict'].iloc[0]}", i % MAX_COLUMNS == 0)
    floor = leak_floor(rows)
    axes[0].set_ylim(floor, 1.02)  # shared by every panel
    axes[0].yaxis.set_major_locator(_ticks(floor))  # whole percents only: 97.5 must not read "98%"
    _suptitle(fig, "label leaking", meta)
    figure_legend(fig, axes)
    return fig


def _ticks(floor: float) -> Locator:
    """A y tick every 5 points on a zoomed axis (every 10 on a wide one), so every label is a whole percent."""
    from matplotlib.ticker import MultipleLocator

    return MultipleLocator(0.05 if floor >= 0.5 else 0.1)


def leak_floor(rows: pd.DataFrame) -> float:
    """The y axis's lower end for a leak figure: a step of 10% below the lowest line and the fgsm bands.

    Leak gaps are a few points between lines near the top; a full 0-100% axis would flatten them.
    """
    lowest = float(rows[[c for c, _ in LEAK_LINES]].to_numpy(float).min()) - 0.08
    for column in ("fgsm_true_top1", "fgsm_predicted_top1"):  # the banded lines: keep their bands in view
        lows = [exact_interval(round(t * n), n)[0] for t, n in zip(rows[column], rows["n"], strict=True)]
        lowest = min([lowest, *lows])
    return max(0.0, math.floor(lowest * 10) / 10)


FIGURE_METRICS = {"transfer_rate": "transfer rate %", "targeted_success_rate": "targeted success rate %"}


def transfer_figure(rows: pd.DataFrame, metric: str = "transfer_rate") -> Figure:
    """A grid of heatmaps (one per attack x eps): ``metric`` in each cell, with its n for the paper's transfer rate.

    ``metric``: the paper's transfer rate, or a targeted run's targeted success rate (FIGURE_METRICS).
    The diagonal (a source scoring its own examples) is white-box, 100% transfer by definition: it is
    masked, so the colour scale spans the off-diagonal rates. One colorbar serves every panel.
    """
    plt = pyplot()
    adv = rows[rows["attack"] != "clean"]
    attacks, eps_values = list(dict.fromkeys(adv["attack"])), sorted(adv["eps"].unique())
    sources, targets = list(dict.fromkeys(adv["source"])), list(dict.fromkeys(adv["target"]))
    size = (2.4 + 0.9 * len(targets) * len(eps_values), 1.2 + 0.9 * len(sources) * len(attacks))
    fig, axes = plt.subplots(len(attacks), len(eps_values), squeeze=False, figsize=size, layout="constrained")
    image = None
    counted = metric == "transfer_rate" and "n_fooled_source" in adv
    for i, attack in enumerate(attacks):
        for j, eps in enumerate(eps_values):
            cell = adv[(adv["attack"] == attack) & (adv["eps"] == eps)]
            rate = cell.pivot(index="source", columns="target", values=metric).reindex(sources)[targets]
            n = cell.pivot(index="source", columns="target", values="n_fooled_source").reindex(sources)[targets] \
                if counted else None
            image = heatmap(axes[i][j], rate.to_numpy(dtype=float), None if n is None else n.to_numpy(dtype=float),
                            f"{attack} eps {eps_label(eps)}/255", sources, targets, j == 0)
    bar = fig.colorbar(image, ax=axes, shrink=0.8)
    bar.set_label(FIGURE_METRICS[metric], fontsize=7)
    bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0", "25", "50", "75", "100"], fontsize=6)
    counts = "; n: source-fooled samples" if counted else ""
    fig.suptitle(f"{FIGURE_METRICS[metric]}\nrows: source, columns: target{counts}", fontsize=8)
    return fig


def heatmap(ax: Axes, grid: np.ndarray, n: np.ndarray | None, title: str, sources: list[str], targets: list[str],
            first: bool) -> AxesImage:
    """One attack x eps: rates in [0, 1] coloured, each cell's percentage and n written in it; the diagonal masked.

    Returns the image, for the figure's colorbar.
    """
    diagonal = np.array([[s == t for t in targets] for s in sources])
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.92")  # masked (diagonal) and empty cells: grey
    image = ax.imshow(np.ma.masked_array(grid, mask=diagonal), vmin=0, vmax=1, cmap=cmap)
    for (r, c), v in np.ndenumerate(grid):
        if diagonal[r, c]:
            ax.text(c, r, "white-\nbox", ha="center", va="center", color="0.35", fontsize=5)
            continue
        # dark text on viridis' bright end and on the blank (no sample to judge) cells, white elsewhere
        color = "0.35" if np.isnan(v) else ("k" if v > 0.6 else "w")
        count = "" if n is None or np.isnan(n[r, c]) else f"\nn={n[r, c]:.0f}"
        ax.text(c, r, ("-" if np.isnan(v) else f"{100 * v:.0f}") + count, ha="center", va="center", color=color,
                fontsize=6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks(range(len(targets)), targets, rotation=90, fontsize=6)
    ax.set_yticks(range(len(sources)), sources if first else [""] * len(sources), fontsize=6)
    return image
