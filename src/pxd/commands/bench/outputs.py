"""What the bench writes and prints: OUT/results.json, report.md (the table beside the
paper's), per_image.csv, the figures (through report.plots) and the terminal summary."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from pxd.commands.bench.paper import PAPER_EPS, TITLES, cell, paper_cell
from pxd.commands.bench.rows import paper_verdict
from pxd.report.terminal import Reporter
from pxd.storage import files


def column_title(info: dict, c: str) -> str:
    """The column's title, with its image count where it covers fewer than the grid's n."""
    ns = {n for r in info["rows"] for (_, n) in r.get("counts", {}).get(c, {}).values()}
    if ns and max(ns) < info["n"]:
        return f"{TITLES[c]}, n={max(ns)}"
    return TITLES[c]


def grid_lines(info: dict) -> list[str]:
    eps_list = info["eps_attack"]
    cols = info["columns"]
    paper_cols = {"clean", "rand", "fgsm", "bim", "deepfool", "cw", "strongest"}
    show_paper = any(e in PAPER_EPS for e in eps_list)
    head = ["NETWORK / TRAINING / DEFENCE"] + [column_title(info, c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in info["rows"]:
        vals = [cell(r["acc"].get(c, {}), eps_list) for c in cols]
        lines.append("| " + " | ".join([r["name"]] + vals) + " |")
        if show_paper and r["paper"] is not None:
            pv = [paper_cell(r["paper"].get(c), eps_list) if c in paper_cols else ""
                  for c in cols]
            lines.append("| " + " | ".join(["  paper Table 1"] + pv) + " |")
    return lines


def interval_lines(info: dict) -> list[str]:
    """The grid again, each cell as its 95% Wilson interval in percent ('3-12 / 0-4')."""
    eps_list = info["eps_attack"]
    cols = info["columns"]
    head = ["NETWORK / TRAINING / DEFENCE"] + [column_title(info, c) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in info["rows"]:
        vals = [" / ".join(f"{100 * r['ci95'][c][e][0]:.0f}-{100 * r['ci95'][c][e][1]:.0f}"
                           if e in r["ci95"].get(c, {}) else "--" for e in eps_list)
                for c in cols]
        lines.append("| " + " | ".join([r["name"]] + vals) + " |")
    return lines


def report_md(info: dict) -> str:
    eps_list = info["eps_attack"]
    eps_s = "/".join(str(e) for e in eps_list)
    L = ["# pxd bench: PixelDefend Table 1", ""]
    L += [f"Command: `{info['command']}`", "",
          f"- date {info['date']}, machine {info['machine']}, wall time {info['wall_s']:.1f} s",
          f"- {info['n']} test images ({info['input']}), seed {info['seed']}",
          f"- cells: accuracy (%) at eps_attack = {eps_s} (0-255 scale), "
          f"eps_defend = {info['eps_defend']}"]
    for part in info.get("merged_from", []):
        L.append(f"- joined from `{part['name']}`: `{part['command']}`, {part['date']}, "
                 f"{part['machine']}, wall time {part['wall_s']:.1f} s")
    if info["threshold"] is not None:
        L.append(f"- adaptive PixelDefend threshold {info['threshold']:.4f} bits/dim: "
                 f"{info['threshold_how']}")
    if info["attack_opts"]:
        L.append(f"- attack options: `{json.dumps(info['attack_opts'], sort_keys=True)}`")
    if tuple(eps_list) != PAPER_EPS or info["eps_defend"] != 16:
        L.append("- the paper's cells are for eps_attack 2/8/16 and eps_defend 16; '--' marks "
                 "eps it has no number for")
    L += ["", "## Models", "", "| role | path | sha256 (params) | preset | quality |",
          "|---|---|---|---|---|"]
    for c in info["classifiers"]:
        acc = c["test_acc"]
        q = f"test acc {acc:.4f} on {c['test_n']} images" if acc is not None else "test acc n/a"
        L.append(f"| classifier {c['label']} | `{c['path']}` | `{c['sha256']}` | "
                 f"{c['arch']} {c['preset']} | {q} |")
    d = info["density"]
    if d is not None:
        b = d["test_bpd"]
        q = (f"test bits/dim {b:.4f} on {d['test_bpd_n']} images" if b is not None
             else "test bits/dim n/a")
        L.append(f"| density | `{d['path']}` | `{d['sha256']}` | PixelCNN++ {d['preset']} | {q} |")
    L += ["", "## Accuracy (%)", "",
          "Oblivious attacks are crafted against the classifier alone, then the defence is "
          "applied (the paper's setting). STRONGEST ATTACK: per-eps minimum over the attack "
          "columns; WORST CASE PER IMAGE: images surviving every attack. ADAPTIVE (BPDA): "
          f"end-to-end attack on the defended classifier ({info['adaptive']['steps']} steps, "
          f"{info['adaptive']['restarts']} restart(s), first {info['adaptive']['images']} "
          "images); plain PGD for the undefended rows.", ""]
    L += grid_lines(info)
    L += ["", "### 95% confidence intervals (Wilson, %)", "",
          f"Each cell's accuracy is k of n images; n = {info['n']} unless the column title "
          "says otherwise.", ""]
    L += interval_lines(info)
    checked = [r for r in info["rows"] if r.get("paper_check")]
    if checked:
        L += ["", "### Against the paper", "",
              "Whether each of the paper's cells lies in our interval (the paper prints whole "
              "percents, so a cell counts as inside when its +-0.5 meets the interval).", ""]
        L += [f"- **{r['name']}**: {paper_verdict(r['paper_check'])}" for r in checked]
    L += ["", "## Detection: ROC AUC of the bits/dim detector", "",
          "Clean test images negative, attacked images positive (0.5: no signal).", ""]
    if info["detection"]:
        L += ["| classifier | attack | " + " | ".join(f"eps {e}" for e in eps_list) + " |",
              "|---|---|" + "---|" * len(eps_list)]
        for r in info["detection"]:
            L.append(f"| {r['classifier']} | {TITLES[r['attack']]} | "
                     + " | ".join(f"{r['auc'][e]:.3f}" for e in eps_list) + " |")
    else:
        L.append("No density model: detection skipped.")
    L += ["", "## Sanity checks (Carlini et al. 2019)", ""]
    for c in info["sanity"]:
        L.append(f"- **{c['status']}** {c['check']}: {c.get('detail', '')}")
    L += ["", "## Internal consistency (guaranteed by construction)", ""]
    bad = [c for c in info["consistency"] if not c["ok"]]
    L.append(f"- {len(info['consistency']) - len(bad)}/{len(info['consistency'])} PASS")
    L += [f"- **FAIL** {c['check']}" for c in bad]
    L += ["", "## Adaptive attack", "", info["adaptive"]["method"], ""]
    L += cache_lines(info)
    return "\n".join(L) + "\n"


def cache_lines(info: dict) -> list[str]:
    """The report's account of its arrays: the code versions, what came from the cache."""
    v = info.get("versions", {})
    L = ["## Cache and code versions", "",
         f"This run's code: pxd {v.get('pxd', '?')}; "
         + ", ".join(f"{k} v{n}" for k, n in v.items() if k != "pxd")
         + " (src/pxd/configs/versions.py).", "",
         "`cache/` holds every crafted, purified and scored array, each with the versions "
         "that made it; an array of other versions is recomputed"
         + (" unless reused on request (--reuse-stale-cache)." if not
            info.get("reuse_stale_cache") else
            ". **This run was asked to reuse arrays made by older code "
            "(--reuse-stale-cache).**"), ""]
    for kind, st in info["cache"].items():
        line = (f"- {kind}: {st['hits']} from the cache, {st['new']} computed "
                f"({st.get('stale', 0)} of them replacing an older version's, "
                f"{st.get('bad', 0)} an unreadable file's)")
        if st.get("stale_reused"):
            line += f"; **{st['stale_reused']} reused from older code**"
        made = st.get("versions", {})
        if made:
            line += "; made by " + "; ".join(f"{m} ({c})" for m, c in sorted(made.items()))
        L.append(line)
    return L + [""]


def write_outputs(out: str, info: dict, y, per_image: dict, roc_by_eps: dict) -> list[str]:
    """results.json, report.md, per_image.csv and this run's figures; returns the figures'
    paths (not every PNG in `out`: an earlier run's may still lie there)."""
    from pxd.commands.bench.figures import write_figures
    from pxd.report import plots

    files.write_json(os.path.join(out, "results.json"), jsonable(info))
    files.write_text(os.path.join(out, "report.md"), report_md(info))
    buf = io.StringIO()
    w = csv.writer(buf)
    names = list(per_image)
    w.writerow(["index", "label"] + names)
    for i in range(len(y)):
        w.writerow([i, int(y[i])] + [int(per_image[k][i]) if i < len(per_image[k]) else ""
                                     for k in names])
    files.write_text(os.path.join(out, "per_image.csv"), buf.getvalue())
    written = write_figures(out, info)
    for e, curves in roc_by_eps.items():
        written.append(os.path.join(out, f"roc_eps{e}.png"))
        plots.roc_curves(written[-1], curves,
                         title=f"bits/dim detector, eps {e} (clean negative)")
    return written


def jsonable(o):
    """Int keys (eps) to strings, arrays to lists, for results.json."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return o


def print_summary(info: dict, rep: Reporter) -> None:
    eps_s = "/".join(str(e) for e in info["eps_attack"])
    cols = info["columns"]
    short = dict(TITLES, strongest="STRONGEST", worst="WORST/IMG", adaptive="BPDA")
    rep.table(f"accuracy (%) at eps {eps_s}, eps_defend {info['eps_defend']}, "
              f"n={info['n']}", ["row"] + [short[c] for c in cols],
              [[r["name"]] + [cell(r["acc"].get(c, {}), info["eps_attack"]) for c in cols]
               for r in info["rows"]])
    for c in info["sanity"]:
        rep.info(f"{c['status']}: {c['check']} ({c.get('detail', '')})")
    bad = [c for c in info["consistency"] if not c["ok"]]
    for c in bad:
        rep.error(f"consistency FAIL: {c['check']}")
    rep.json(jsonable(info))
