"""Does classifier strength explain PixelDefend's gap to the paper? PixelDefend's accuracy
(clean, and the strongest oblivious attack per eps) for several classifiers, same density
model, against each classifier's clean accuracy, from `pxd bench` results.json files.

    python tools/classifier_study.py docs/table1-n300/all/results.json [more.json ...] \\
        --out docs/classifier_study [--clf NAME ...]

For each classifier (its 'none' and 'pixeldefend' rows): its accuracy on the full test split
(from the model card), its clean accuracy on the bench's images, PixelDefend's clean and
strongest-attack cells with 95% Wilson intervals, and the purification cost (clean minus
purified-clean accuracy, same images). Then a least-squares line of each PixelDefend column
against the classifiers' full-split accuracy, read at the paper's 92% beside the paper's own
ResNet + PixelDefend row. Writes study.json, study.md and pixeldefend_vs_clean.png in --out.
Every input must use one density model and one eps_defend.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from pxd.storage import files

PAPER_CLEAN = 0.92  # the paper's ResNet, Table 1
PAPER_PD = {"clean": 0.85, "2": 0.71, "8": 0.46, "16": 0.24}  # ResNet + PixelDefend, strongest


def rows_by_classifier(res: dict) -> dict[str, dict]:
    out: dict[str, dict] = {}
    info = {c["path"]: c for c in res["classifiers"]}
    for r in res["rows"]:
        if r["defence"] in ("none", "pixeldefend"):
            out.setdefault(r["classifier"], {"info": info[r["classifier"]]})[r["defence"]] = r
    return {k: v for k, v in out.items() if "none" in v and "pixeldefend" in v}


def entry(v: dict, eps: list[str]) -> dict:
    info, none, pd = v["info"], v["none"], v["pixeldefend"]
    e0 = eps[0]

    def cell(r, col, k):
        return {"acc": r["acc"][col][k], "ci95": r["ci95"][col][k], "counts": r["counts"][col][k]}

    return {
        "label": info["label"], "path": info["path"], "sha256": info.get("sha256"),
        "training": info.get("training"), "test_acc": info.get("test_acc"),
        "test_n": info.get("test_n"),
        "clean": cell(none, "clean", e0),
        "pd_clean": cell(pd, "clean", e0),
        "pd_strongest": {k: cell(pd, "strongest", k) for k in eps},
        "strongest": {k: cell(none, "strongest", k) for k in eps},
        "purification_cost": none["acc"]["clean"][e0] - pd["acc"]["clean"][e0],
    }


def fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least squares y = a + b x, the slope's standard error, and the line at 92%."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return None
    x, y = np.asarray(xs), np.asarray(ys)
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    dof = len(x) - 2
    se = float(np.sqrt(resid @ resid / dof / ((x - x.mean()) @ (x - x.mean())))) if dof else None
    return {"intercept": float(a), "slope": float(b), "slope_se": se,
            "at_paper_clean": float(a + b * PAPER_CLEAN)}


def study(results: list[dict], only: list[str] | None, training: str | None = None) -> dict:
    dens = {r["density"]["sha256"] for r in results}
    eps_d = {r["eps_defend"] for r in results}
    if len(dens) != 1 or len(eps_d) != 1:
        raise SystemExit("every results.json must use one density model and one eps_defend")
    eps = [f"{e:g}" for e in results[0]["eps_attack"]]
    found: dict[str, dict] = {}
    for res in results:
        for path, v in rows_by_classifier(res).items():
            name = os.path.basename(path.rstrip("/"))
            if only and name not in only and v["info"]["label"] not in only:
                continue
            if training and v["info"].get("training") != training:
                continue
            found[name] = dict(entry(v, eps), n=res["n"], input=res["input"],
                               command=res.get("command"))
    if not found:
        raise SystemExit("no classifier with both a 'none' and a 'pixeldefend' row")
    items = sorted(found.values(), key=lambda e: e["test_acc"])
    xs = [e["test_acc"] for e in items]
    fits = {"clean": fit(xs, [e["pd_clean"]["acc"] for e in items])}
    fits.update({k: fit(xs, [e["pd_strongest"][k]["acc"] for e in items]) for k in eps})
    return {"density": results[0]["density"], "eps_defend": results[0]["eps_defend"],
            "eps_attack": eps, "classifiers": items, "fits": fits, "paper": PAPER_PD,
            "paper_clean": PAPER_CLEAN}


def pct(c: dict) -> str:
    lo, hi = c["ci95"]
    return f"{100 * c['acc']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def markdown(s: dict) -> str:
    eps = s["eps_attack"]
    lines = [f"# PixelDefend against classifier strength (eps_defend {s['eps_defend']:g}, "
             f"density `{os.path.basename(s['density']['path'])}`)", "",
             "Accuracy (%) with 95% Wilson intervals on each run's images; full-split "
             "accuracy from the model card; cost = clean minus purified-clean accuracy.", "",
             "| classifier | training | full split | clean | PixelDefend clean | cost | "
             + " | ".join(f"PD strongest eps {e}" for e in eps) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(eps)]
    for c in s["classifiers"]:
        name = os.path.basename(c["path"].rstrip("/"))
        lines.append(f"| {name} ({c['label']}) | {c['training']} | {100 * c['test_acc']:.2f} | "
                     f"{pct(c['clean'])} | {pct(c['pd_clean'])} | "
                     f"{100 * c['purification_cost']:+.1f} | "
                     + " | ".join(pct(c["pd_strongest"][k]) for k in eps) + " |")
    lines += ["", "Least-squares lines against full-split accuracy, read at the paper's 92% "
              "(the paper's ResNet + PixelDefend cell beside it):", ""]
    for col, f in s["fits"].items():
        name = "clean" if col == "clean" else f"strongest eps {col}"
        if f is None:
            lines.append(f"- {name}: too few classifiers for a line")
            continue
        se = f" ± {f['slope_se']:.2f}" if f["slope_se"] is not None else ""
        lines.append(f"- {name}: slope {f['slope']:.2f}{se} points per point of clean "
                     f"accuracy; at 92%: {100 * f['at_paper_clean']:.1f}% "
                     f"(paper {100 * s['paper'][col]:.0f}%)")
    lines += ["", "Runs:", ""]
    lines += sorted({f"- `{c['command']}` ({c['input']})" for c in s["classifiers"]})
    return "\n".join(lines) + "\n"


def plot(s: dict, path: str) -> None:
    from pxd.report import plots  # matplotlib (Agg) and the atomic PNG save live there

    plt = plots.plt

    eps = s["eps_attack"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = np.array([100 * c["test_acc"] for c in s["classifiers"]])
    grid = np.linspace(min(xs.min(), 75), 93, 50)
    cols = [("clean", "PixelDefend, clean", "k", "o")]
    cols += [(k, f"PixelDefend, strongest eps {k}", c, m)
             for k, c, m in zip(eps, ("tab:blue", "tab:orange", "tab:red"), "s^v", strict=False)]
    for col, label, color, marker in cols:
        cells = [c["pd_clean"] if col == "clean" else c["pd_strongest"][col]
                 for c in s["classifiers"]]
        y = np.array([100 * c["acc"] for c in cells])
        err = np.array([[100 * (c["acc"] - c["ci95"][0]) for c in cells],
                        [100 * (c["ci95"][1] - c["acc"]) for c in cells]])
        ax.errorbar(xs, y, yerr=err, fmt=marker, color=color, capsize=3, label=label,
                    zorder=3)  # above the paper's stars, which sit at about the same x
        f = s["fits"][col]
        if f is not None:
            ax.plot(grid, 100 * (f["intercept"] + f["slope"] * grid / 100), color=color,
                    ls=":", lw=1)
        ax.plot([100 * s["paper_clean"]], [100 * s["paper"][col]], marker="*", ms=13,
                color=color, mec="k", ls="none", alpha=0.6, zorder=2)
    ax.plot([], [], marker="*", ms=11, color="w", mec="k", ls="none",
            label="the paper's ResNet (92%)")
    ax.plot([], [], ls=":", color="grey", label="least-squares line")
    for c, x in zip(s["classifiers"], xs, strict=True):
        short = os.path.basename(c["path"].rstrip("/")).replace("resnet-c10-", "resnet ")
        short = short.replace("-c10", "").replace("label-smoothing", "smooth")
        ax.annotate(short, (x, 111), fontsize=7, rotation=90, ha="center", va="top",
                    color="dimgrey")
    ax.set_xlabel("classifier accuracy on the full test split (%)")
    ax.set_ylabel("accuracy with PixelDefend (%)")
    ax.set_ylim(0, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.axhline(100, color="grey", lw=0.5)
    ax.set_title(f"PixelDefend vs classifier strength (eps_defend {s['eps_defend']:g}, "
                 f"n = {s['classifiers'][0]['n']}, 95% intervals)", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="pxd bench results.json files")
    p.add_argument("--out", required=True)
    p.add_argument("--clf", action="append", help="keep only these classifiers (names)")
    p.add_argument("--training", help="keep only classifiers of this training (e.g. normal)")
    a = p.parse_args(argv)
    results = []
    for path in a.results:
        results.append(files.read_json(path))
    s = study(results, a.clf, a.training)
    files.write_json(os.path.join(a.out, "study.json"), s, indent=1)
    files.write_text(os.path.join(a.out, "study.md"), markdown(s))
    plot(s, os.path.join(a.out, "pixeldefend_vs_clean.png"))
    print(markdown(s))


if __name__ == "__main__":
    main()
