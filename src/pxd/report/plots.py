"""Figures (matplotlib, headless): BPD histograms (paper Fig. 1), ROC curves (Fig. 2),
accuracy against epsilon. Files are written atomically.

The accuracy figures take panels of plain data, in percent, so that they can be drawn from a
results.json alone (tools/figures.py) as well as by the bench:

    panel = {"title": str, "lines": [line, ...], "band": line | None,
             "clean": (acc, lo, hi) | None, "x_clean": bool}
    line = {"label": str, "x": [eps...], "y": [acc...], "lo": [...], "hi": [...],
            "style": (colour, marker, dash), optional: LINE_STYLES by position otherwise}

`band` is drawn wide and translucent under the lines (the per-eps minimum over attacks, which
always lies on one of them); `clean` as a horizontal reference line with its interval shaded.
`x_clean` labels eps 0 as "clean" (a line's point at eps 0 is its clean accuracy)."""

from __future__ import annotations

import itertools
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pxd.storage.files import atomic_path  # noqa: E402

# Colour, marker and dash per line: lines stay apart in greyscale and where they coincide.
LINE_STYLES = (
    ("tab:blue", "o", "-"), ("tab:orange", "s", "--"), ("tab:green", "^", "-."),
    ("tab:red", "D", ":"), ("tab:purple", "v", "-"), ("tab:brown", "P", "--"),
    ("tab:pink", "X", "-."), ("tab:olive", "*", ":"), ("tab:cyan", "h", "-"),
)


def save(fig, path: str) -> None:
    """Write `fig` as a PNG atomically (temp file, then rename) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def bpd_histograms(path: str, sets: dict[str, list[float]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, vals in sets.items():
        ax.hist(vals, bins=40, alpha=0.5, density=True, label=name)
    ax.set_xlabel("bits per dimension")
    ax.set_ylabel("density")
    ax.legend()
    save(fig, path)


def roc_curves(path: str, curves: dict[str, tuple], title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    save(fig, path)


def _offsets(xs: list[float], k: int) -> list[float]:
    """Horizontal shifts for k lines, so that equal points and their intervals stay apart:
    spread over a third of the smallest gap between eps values."""
    gaps = [b - a for a, b in itertools.pairwise(xs) if b > a]
    width = (min(gaps) if gaps else 1.0) / 3
    if k < 2:
        return [0.0] * k
    return [width * (i / (k - 1) - 0.5) for i in range(k)]


def _errs(line: dict) -> list[list[float]]:
    return [[max(y - lo, 0.0) for y, lo in zip(line["y"], line["lo"], strict=True)],
            [max(hi - y, 0.0) for y, hi in zip(line["y"], line["hi"], strict=True)]]


def _draw_panel(ax, panel: dict, intervals: str, handles: dict) -> None:
    lines = panel["lines"]
    xs = sorted({x for ln in lines for x in ln["x"]})
    shifts = _offsets(xs, len(lines))
    if panel.get("clean") is not None:
        acc, lo, hi = panel["clean"]
        ax.axhspan(lo, hi, color="0.6", alpha=0.15, lw=0, zorder=0)
        h = ax.axhline(acc, color="black", ls=(0, (6, 3)), lw=1.2, zorder=1)
        handles.setdefault("CLEAN (no attack), 95% interval shaded", h)
    band = panel.get("band")
    if band is not None:
        (h,) = ax.plot(band["x"], band["y"], color="0.45", lw=11, alpha=0.3,
                       solid_capstyle="round", zorder=2)
        handles.setdefault(band["label"], h)
    for i, (ln, dx) in enumerate(zip(lines, shifts, strict=True)):
        colour, marker, dash = ln.get("style") or LINE_STYLES[i % len(LINE_STYLES)]
        x = [v + dx for v in ln["x"]]
        if intervals == "bars":
            h = ax.errorbar(x, ln["y"], yerr=_errs(ln), color=colour, marker=marker, ls=dash,
                            ms=5, lw=1.4, elinewidth=1.0, capsize=2.5, zorder=3 + i)
        else:
            ax.fill_between(x, ln["lo"], ln["hi"], color=colour, alpha=0.14, lw=0, zorder=2)
            (h,) = ax.plot(x, ln["y"], color=colour, marker=marker, ls=dash, ms=5, lw=1.6,
                           zorder=3 + i)
        handles.setdefault(ln["label"], h)
    ticks = sorted(set(xs) | ({0} if panel.get("x_clean") else set()))
    ax.set_xticks(ticks)
    ax.set_xticklabels(["clean" if (t == 0 and panel.get("x_clean")) else f"{t:g}"
                        for t in ticks])
    lo_x = min(ticks) if ticks else 0
    hi_x = max(ticks) if ticks else 1
    pad = max((hi_x - lo_x) * 0.04, 0.4) + max(map(abs, shifts), default=0.0)
    ax.set_xlim(lo_x - pad, hi_x + pad)
    ax.set_ylim(-3, 103)
    ax.set_yticks(range(0, 101, 20))
    ax.grid(True, color="0.9", lw=0.6, zorder=0)
    ax.set_title(panel["title"], fontsize=9)
    ax.set_xlabel("eps_attack (0-255 scale)", fontsize=8)
    ax.tick_params(labelsize=8)


def accuracy_panels(path: str, panels: list[dict], *, title: str = "",
                    intervals: str = "bars", ncols: int | None = None,
                    note: str = "") -> None:
    """Panels side by side (sharing the y axis), one legend to the right of all of them.
    intervals: 'bars' (95% error bars) or 'bands' (shaded 95% bands); either way the lines
    are shifted slightly apart so that equal cells do not hide each other."""
    if intervals not in ("bars", "bands"):
        raise ValueError(f"intervals must be 'bars' or 'bands', not {intervals!r}")
    k = max(len(panels), 1)
    ncols = ncols or min(k, 3)
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.4 * nrows), squeeze=False,
                             sharey=True)
    handles: dict = {}
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw_panel(ax, panel, intervals, handles)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("accuracy (%)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    # Outside the axes: the legend can cover no line.
    fig.legend(list(handles.values()), list(handles.keys()), loc="upper left",
               bbox_to_anchor=(1.0, 0.93), frameon=False, fontsize=8)
    if note:
        fig.text(0.01, 0.0, note, fontsize=7, color="0.35", ha="left", va="top")
    save(fig, path)


def accuracy_vs_eps(path: str, panels: list[dict], title: str = "", note: str = "") -> None:
    """Each attack's accuracy against eps, one panel per classifier (error bars)."""
    accuracy_panels(path, panels, title=title, intervals="bars", note=note)


def summary(path: str, panels: list[dict], title: str = "", note: str = "") -> None:
    """Every defence on one panel per attack kind (shaded 95% bands)."""
    accuracy_panels(path, panels, title=title, intervals="bands", ncols=len(panels) or 1,
                    note=note)
