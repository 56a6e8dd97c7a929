"""The eps_defend trade-off: PixelDefend's accuracy on clean images and under the strongest
oblivious attack, for each eps_defend, from `pxd bench` runs that share one cache.

    python tools/eps_defend_sweep.py --clf resnet-c10-normal --n 300 \\
        --bench-out /work/runs/eps-sweep --out docs/eps_defend/cifar10 [-- extra bench options]

For each eps_defend E it runs `pxd bench --clf C --attack all --eps-attack A --n N
--defense none,pixeldefend --eps-defend E --adaptive-steps 0 --out BENCH_OUT -q` (the
attacks are crafted once and read back from BENCH_OUT's cache for every other E; eps_defend
0 leaves images unchanged, which the table shows as a check) and keeps its results.json as
OUT/runs/eps_E.json; a run already kept with the same settings is not repeated. It then
writes OUT/sweep.json, OUT/sweep.md (the table, 95% Wilson intervals) and
OUT/eps_defend.png (the curves with their bands; the paper's 16 marked).
`--aggregate-only` redoes the table and figure from OUT/runs alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from pxd.storage import files

DEFAULT_EPS_DEFEND = (0, 2, 4, 8, 12, 16, 24, 32)
PAPER_EPS_DEFEND = 16


def bench_command(a, e: float, extra: list[str]) -> list[str]:
    cmd = ["pxd", "bench", "--attack", a.attack, "--eps-attack", a.eps_attack, "--n", str(a.n),
           "--defense", "none,pixeldefend", "--eps-defend", f"{e:g}", "--adaptive-steps", "0",
           "--out", a.bench_out, "-q"]
    for flag, v in (("--clf", a.clf), ("--density", a.density), ("--dataset", a.dataset)):
        if v:
            cmd += [flag, v]
    return cmd + extra


def run_one(a, e: float, extra: list[str]) -> dict:
    """The bench's results.json for eps_defend `e` (run now unless kept already)."""
    path = os.path.join(a.out, "runs", f"eps_{e:g}.json")
    cmd = bench_command(a, e, extra)
    if os.path.exists(path):
        kept = files.read_json(path)
        if kept.get("sweep_command") == cmd:
            return kept
    t0 = time.time()
    print(f"eps_defend {e:g}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True)
    res = files.read_json(os.path.join(a.bench_out, "results.json"))
    res.update(sweep_command=cmd, sweep_wall_s=time.time() - t0)
    files.write_json(path, res, indent=1, sort_keys=True)
    return res


def row(res: dict, defence: str) -> dict:
    rows = [r for r in res["rows"] if r["defence"] == defence]
    if len(rows) != 1:
        raise SystemExit(f"expected one '{defence}' row, found {len(rows)} (one --clf only)")
    return rows[0]


def cells(res: dict) -> dict:
    """{column: {eps: (acc, low, high, k, n)}} for PixelDefend's clean and strongest cells,
    plus the undefended classifier's clean cell."""
    pd, none = row(res, "pixeldefend"), row(res, "none")
    out = {}
    for name, r, col in (("clean", pd, "clean"), ("strongest", pd, "strongest"),
                         ("undefended_clean", none, "clean"),
                         ("undefended_strongest", none, "strongest")):
        out[name] = {eps: (r["acc"][col][eps], *r["ci95"][col][eps], *r["counts"][col][eps])
                     for eps in r["acc"][col]}
    return out


def summarise(runs: dict[float, dict]) -> dict:
    eps_defend = sorted(runs)
    first = runs[eps_defend[0]]
    table = {f"{e:g}": cells(runs[e]) for e in eps_defend}
    summary = {"eps_defend": eps_defend, "eps_attack": first["eps_attack"], "n": first["n"],
               "classifier": first["classifiers"][0], "density": first["density"],
               "input": first["input"], "machine": first["machine"],
               "attacks": first["attacks"],
               "commands": {f"{e:g}": " ".join(runs[e]["sweep_command"]) for e in eps_defend},
               "wall_s": {f"{e:g}": runs[e].get("sweep_wall_s") for e in eps_defend},
               "cells": table}
    summary["dominates_paper"] = dominating(table)
    return summary


def dominating(table: dict) -> list[dict]:
    """Settings whose clean and every strongest-attack point estimate are >= the paper's 16
    and better in at least one; `significant` when some gain clears both intervals."""
    ref = table.get(f"{PAPER_EPS_DEFEND:g}")
    if ref is None:
        return []
    found = []
    for e, t in table.items():
        if e == f"{PAPER_EPS_DEFEND:g}":
            continue
        k0 = next(iter(t["clean"]))  # clean accuracy is the same cell at every eps
        pairs = [(t["clean"][k0], ref["clean"][k0])]
        pairs += [(t["strongest"][k], ref["strongest"][k]) for k in t["strongest"]]
        if all(a[0] >= b[0] for a, b in pairs) and any(a[0] > b[0] for a, b in pairs):
            found.append({"eps_defend": e, "significant": any(a[1] > b[2] for a, b in pairs)})
    return found


def pct(c) -> str:
    return f"{100 * c[0]:.1f} [{100 * c[1]:.1f}, {100 * c[2]:.1f}]"


def markdown(s: dict) -> str:
    eps_a = [f"{e:g}" for e in s["eps_attack"]]
    clf = s["classifier"].get("label", s["classifier"].get("path"))
    lines = [f"# eps_defend trade-off: {clf}, {s['input']} (n = {s['n']})", "",
             f"Density model: `{os.path.basename(s['density']['path'])}`. PixelDefend's "
             "accuracy (%) with 95% Wilson intervals; strongest = the lowest of the oblivious "
             f"attacks ({', '.join(a.upper() for a in s['attacks'])}, crafted against the "
             "classifier alone) per eps. The paper's setting is 16.", "",
             "| eps_defend | clean | " + " | ".join(f"strongest eps {e}" for e in eps_a) + " |",
             "|---|---|" + "---|" * len(eps_a)]
    for e in s["eps_defend"]:
        t = s["cells"][f"{e:g}"]
        mark = " (paper)" if e == PAPER_EPS_DEFEND else ""
        clean = t["clean"][eps_a[0]]
        lines.append(f"| {e:g}{mark} | {pct(clean)} | "
                     + " | ".join(pct(t["strongest"][k]) for k in eps_a) + " |")
    t0 = s["cells"][f"{s['eps_defend'][0]:g}"]
    lines += ["", f"Undefended classifier: clean {pct(t0['undefended_clean'][eps_a[0]])}, "
              "strongest " + " / ".join(pct(t0["undefended_strongest"][k]) for k in eps_a)
              + ".", ""]
    dom = s["dominates_paper"]
    if dom:
        lines.append("Settings at least as good as 16 in every column and better in one: "
                     + ", ".join(f"{d['eps_defend']} ({'beyond' if d['significant'] else 'within'}"
                                 " the intervals)" for d in dom) + ".")
    else:
        lines.append("No setting is at least as good as 16 in every column.")
    lines += ["", "Commands (machine: " + s["machine"] + "):", ""]
    lines += [f"- eps_defend {e}: `{c}` ({s['wall_s'][e] or 0:.0f} s)"
              for e, c in s["commands"].items()]
    return "\n".join(lines) + "\n"


def plot(s: dict, path: str) -> None:
    from pxd.report import plots  # matplotlib (Agg) and the atomic PNG save live there

    plt = plots.plt

    eps_d = s["eps_defend"]
    eps_a = [f"{e:g}" for e in s["eps_attack"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    series = [("clean (purified)", "clean", eps_a[0], "k", "o", "-")]
    styles = [("tab:blue", "s", "--"), ("tab:orange", "^", "-."), ("tab:red", "v", ":")]
    series += [(f"strongest attack, eps {e}", "strongest", e, *st)
               for e, st in zip(eps_a, styles, strict=False)]
    for label, col, k, color, marker, ls in series:
        c = [s["cells"][f"{e:g}"][col][k] for e in eps_d]
        ax.plot(eps_d, [100 * v[0] for v in c], color=color, marker=marker, ls=ls, label=label)
        ax.fill_between(eps_d, [100 * v[1] for v in c], [100 * v[2] for v in c], color=color,
                        alpha=0.12, lw=0)
    und = s["cells"][f"{eps_d[0]:g}"]["undefended_clean"][eps_a[0]][0]
    ax.axhline(100 * und, color="grey", lw=1, ls="--", label="undefended, clean")
    ax.axvline(PAPER_EPS_DEFEND, color="grey", lw=6, alpha=0.2, label="paper's eps_defend")
    ax.set_xlabel("eps_defend (0-255 scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(eps_d)
    ax.set_ylim(0, 100)
    clf = s["classifier"].get("label", "")
    data = s["input"].split(":")[0]
    ax.set_title(f"PixelDefend vs eps_defend: {clf} on {data}, n = {s['n']}, 95% bands")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clf")
    p.add_argument("--density")
    p.add_argument("--dataset")
    p.add_argument("--attack", default="all")
    p.add_argument("--eps-attack", default="2,8,16")
    p.add_argument("--eps-defend", default=",".join(map(str, DEFAULT_EPS_DEFEND)))
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--bench-out", help="pxd bench --out (the shared cache; not with "
                   "--aggregate-only)")
    p.add_argument("--out", required=True, help="folder for runs/, sweep.json/.md, the PNG")
    p.add_argument("--aggregate-only", action="store_true")
    a = p.parse_args(argv)
    if not a.aggregate_only and not a.bench_out:
        p.error("--bench-out is required (unless --aggregate-only)")
    eps_list = [float(e) for e in a.eps_defend.split(",")]
    runs = {}
    for e in eps_list:
        if a.aggregate_only:
            runs[e] = files.read_json(os.path.join(a.out, "runs", f"eps_{e:g}.json"))
        else:
            runs[e] = run_one(a, e, extra)
    s = summarise(runs)
    files.write_json(os.path.join(a.out, "sweep.json"), s, indent=1)
    files.write_text(os.path.join(a.out, "sweep.md"), markdown(s))
    plot(s, os.path.join(a.out, "eps_defend.png"))
    print(markdown(s))


if __name__ == "__main__":
    main()
