"""A classifier run's accuracy against training hours, from its meta.json evaluations:
clean accuracy on the run's evaluation images and, for an adversarial run, BIM accuracy at
eps = adv_delta on the first of them (`engine.jobs.ClassifierJob.evaluate`), with 95%
Wilson intervals.

    python tools/training_curve.py RUN_OR_ZOO_NAME [...] --out DIR

Writes DIR/training_curve.md (one table per run) and DIR/training_curve.png (one panel per
measure, one line per run). Hours are meta.json's wall_s at each evaluation, so a run resumed
across sessions counts its earlier sessions too.
"""

from __future__ import annotations

import argparse
import os

from pxd.core.metrics import wilson
from pxd.report.plots import LINE_STYLES, save
from pxd.storage import files
from pxd.storage import shipped as zoo

MEASURES = (("eval_acc", "eval_n", "clean"), ("eval_bim_acc", "eval_bim_n", "BIM"))


def load(ref: str) -> dict:
    """A run dir or shipped name: its name, config and meta.json."""
    path = ref if os.path.isdir(ref) else zoo.resolve(ref)
    return {"name": os.path.basename(os.path.normpath(ref)),
            "config": files.read_json(os.path.join(path, "config.json")),
            "meta": files.read_json(os.path.join(path, "meta.json"))}


def points(run: dict, acc_key: str, n_key: str) -> list[dict]:
    out = []
    for e in run["meta"].get("evals", []):
        if acc_key not in e:
            continue
        n = int(e.get(n_key, run["meta"].get("eval_n", 0)))
        k = round(e[acc_key] * n)
        lo, hi = wilson(k, n)
        out.append({"step": e["step"], "hours": e["wall_s"] / 3600, "acc": e[acc_key],
                    "lo": lo, "hi": hi, "n": n, "eps": e.get("eval_bim_eps")})
    return out


def table(run: dict) -> str:
    cfg = run["config"]
    clean = points(run, "eval_acc", "eval_n")
    bim = {p["step"]: p for p in points(run, "eval_bim_acc", "eval_bim_n")}
    head = f"### {run['name']}: {cfg['arch']} {cfg['training']} ({cfg['preset']})"
    if cfg.get("init_from"):
        head += f", from {cfg['init_from']}"
    eps = next((p["eps"] for p in bim.values()), None)
    cols = ["step", "hours", f"clean (n = {clean[0]['n'] if clean else '-'})"]
    if bim:
        cols.append(f"BIM eps {eps:g} (n = {next(iter(bim.values()))['n']})")
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for p in clean:
        row = [str(p["step"]), f"{p['hours']:.2f}",
               f"{100 * p['acc']:.1f} [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}]"]
        if bim:
            b = bim.get(p["step"])
            row.append(f"{100 * b['acc']:.1f} [{100 * b['lo']:.1f}, {100 * b['hi']:.1f}]"
                       if b else "")
        lines.append("| " + " | ".join(row) + " |")
    meta = run["meta"]
    if "test_acc" in meta:
        lines += ["", f"Full test split ({meta.get('n')} images) at step {meta.get('step')}: "
                  f"{100 * meta['test_acc']:.2f}%."]
    return "\n".join(lines)


def plot(runs: list[dict], path: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, (acc_key, n_key, what) in zip(axes, MEASURES, strict=True):
        for i, run in enumerate(runs):
            pts = points(run, acc_key, n_key)
            if not pts:
                continue
            colour, marker, dash = LINE_STYLES[i % len(LINE_STYLES)]
            x = [p["hours"] for p in pts]
            ax.plot(x, [100 * p["acc"] for p in pts], color=colour, marker=marker,
                    linestyle=dash, label=run["name"])
            ax.fill_between(x, [100 * p["lo"] for p in pts], [100 * p["hi"] for p in pts],
                            color=colour, alpha=0.15)
        eps = next((p["eps"] for r in runs for p in points(r, acc_key, n_key)), None)
        ax.set_title(f"accuracy under BIM, eps {eps:g}" if what == "BIM" and eps
                     else "clean accuracy")
        ax.set_xlabel("training hours (wall time)")
        ax.set_ylabel("accuracy (%), 95% Wilson band")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="classifier run dirs or shipped names")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    runs = [load(r) for r in a.runs]
    os.makedirs(a.out, exist_ok=True)
    files.write_text(os.path.join(a.out, "training_curve.md"),
                     "\n\n".join(table(r) for r in runs) + "\n")
    plot(runs, os.path.join(a.out, "training_curve.png"))
    print(f"wrote {a.out}/training_curve.md and training_curve.png")


if __name__ == "__main__":
    main()
