"""The bench's accuracy figures, from its results (the in-memory info or a results.json read
back with `from_json`): which cells each figure plots, then report.plots draws them.

- acc_vs_eps_{defence}.png: every attack's accuracy against eps, one panel per classifier,
  each cell with its 95% Wilson interval, STRONGEST ATTACK as a band under the attack lines,
  clean accuracy as a reference line;
- summary_{classifier}.png: per classifier, the strongest oblivious attack and the adaptive
  (BPDA) attack against eps for every defence, undefended included, with 95% bands.

`tools/figures.py RESULTS.json OUTDIR` redraws both from a results.json alone."""

from __future__ import annotations

import os
import re

from pxd.commands.bench.paper import DEFENCE_TITLES, DEFENCES, KNOWN_ATTACKS, TITLES
from pxd.report import plots

# Fixed styles, so a column or defence looks the same in every figure and every run.
_COLUMN_ORDER = KNOWN_ATTACKS + ("worst", "adaptive")
_UNDEFENDED = ("black", "o", "-")


def from_json(obj):
    """results.json back to the bench's in-memory form: eps keys ('8') to ints."""
    if isinstance(obj, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): from_json(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def _n(row: dict, column: str) -> int:
    return max((n for (_, n) in row["counts"][column].values()), default=0)


def cell_line(row: dict, column: str, eps_list: list[int], label: str,
              clean_at_0: bool = False) -> dict:
    """One line of a figure: a row's cells in one column, in percent, with their intervals;
    clean_at_0 puts the row's clean accuracy at eps 0 (no perturbation)."""
    pts = [(e, row["acc"][column][e], row["ci95"][column][e]) for e in eps_list
           if e in row["acc"].get(column, {})]
    if clean_at_0:
        e0 = next(iter(row["acc"]["clean"]))
        pts = [(0, row["acc"]["clean"][e0], row["ci95"]["clean"][e0])] + pts
    return dict(label=label, x=[e for e, _, _ in pts], y=[100 * a for _, a, _ in pts],
                lo=[100 * ci[0] for _, _, ci in pts], hi=[100 * ci[1] for _, _, ci in pts])


def _column_label(info: dict, row: dict, column: str) -> str:
    n = _n(row, column)
    return TITLES[column] + (f", n={n}" if n < info["n"] else "")


def attack_panels(info: dict, defence: str) -> list[dict]:
    """acc_vs_eps_{defence}.png's panels: one per classifier with a row for this defence."""
    eps_list = info["eps_attack"]
    panels = []
    for r in (r for r in info["rows"] if r["defence"] == defence):
        lines = []
        for c in info["columns"]:
            if c in ("clean", "strongest") or c not in r["acc"]:
                continue
            ln = cell_line(r, c, eps_list, _column_label(info, r, c))
            if c in _COLUMN_ORDER:
                ln["style"] = plots.LINE_STYLES[_COLUMN_ORDER.index(c)]
            lines.append(ln)
        band = None
        if "strongest" in r["acc"]:
            band = cell_line(r, "strongest", eps_list,
                             "STRONGEST ATTACK (per-eps minimum of the attacks)")
        clean = None
        if r["acc"].get("clean"):
            e0 = next(iter(r["acc"]["clean"]))
            lo, hi = r["ci95"]["clean"][e0]
            clean = (100 * r["acc"]["clean"][e0], 100 * lo, 100 * hi)
        panels.append(dict(title=f"{r['name']} (n={info['n']})", lines=lines, band=band,
                           clean=clean))
    return panels


def summary_series(info: dict, classifier: str) -> list[dict]:
    """summary_{classifier}.png's panels: the strongest oblivious attack and, when the run
    has it, the adaptive (BPDA) column, each with one line per defence (undefended first);
    every line starts at eps 0 with the row's clean accuracy."""
    eps_list = info["eps_attack"]
    rows = sorted((r for r in info["rows"] if r["classifier"] == classifier),
                  key=lambda r: DEFENCES.index(r["defence"]))
    panels = []
    for column, title in (
            ("strongest", "STRONGEST oblivious attack"),
            ("adaptive", "ADAPTIVE: BPDA-PGD through the defence\n(plain PGD without one)")):
        have = [r for r in rows if column in r["acc"]]
        if not have:
            continue
        lines = []
        for r in have:
            d = r["defence"]
            label = "no defence" if d == "none" else DEFENCE_TITLES[d]
            ln = cell_line(r, column, eps_list, label, clean_at_0=True)
            ln["style"] = (_UNDEFENDED if d == "none"
                           else plots.LINE_STYLES[DEFENCES.index(d) - 1])
            lines.append(ln)
        n = _n(have[0], column)
        panels.append(dict(title=f"{title}, n={n}", lines=lines, band=None, clean=None,
                           x_clean=True))
    return panels


def _slug(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    base = re.sub(r"\.(npz|msgpack)$", "", base)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base) or "classifier"


def write_figures(out: str, info: dict) -> list[str]:
    """Write every accuracy figure of this run into `out`; returns their paths."""
    written = []
    eps_d = info["eps_defend"]
    for d in info["defences"]:
        panels = attack_panels(info, d)
        if not panels:
            continue
        path = os.path.join(out, f"acc_vs_eps_{d}.png")
        name = "no defence" if d == "none" else f"{DEFENCE_TITLES[d]} (eps_defend {eps_d})"
        plots.accuracy_vs_eps(path, panels, title=f"Accuracy under attack: {name}",
                              note="bars: 95% Wilson intervals; lines shifted apart "
                                   "horizontally so equal cells stay visible")
        written.append(path)
    for c in info["classifiers"]:
        panels = summary_series(info, c["path"])
        if not panels:
            continue
        path = os.path.join(out, f"summary_{_slug(c['path'])}.png")
        k = info["adaptive"]["images"]
        note = (f"bands: 95% Wilson intervals; 'clean' is each defence's accuracy on "
                f"unattacked images (all {info['n']})"
                + (f"; BPDA on the first {k}" if len(panels) > 1 else ""))
        plots.summary(path, panels, title=f"{c['label']}: every defence against the strongest "
                                          f"attacks (eps_defend {eps_d})", note=note)
        written.append(path)
    return written
