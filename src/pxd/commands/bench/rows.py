"""One table row's maths: accuracies per column and eps from per-image outcomes, the grid's
guarantees (consistency) and Carlini et al.'s sanity checks (numpy only)."""

from __future__ import annotations

import numpy as np

from pxd.commands.bench.paper import PAPER_EPS, TITLES, pct
from pxd.core.metrics import wilson


def row_accuracies(clean: np.ndarray, attack_correct: dict[str, dict[int, np.ndarray]],
                   eps_list: list[int], adaptive: dict[int, np.ndarray] | None = None) -> dict:
    """Accuracies of one table row: column -> {eps -> accuracy}.

    clean: bool (n,); attack_correct[attack][eps]: bool (n,). STRONGEST is the per-eps
    minimum over the attack columns, WORST CASE the fraction surviving all of them, so
    WORST <= STRONGEST <= every column by construction. adaptive[eps] may cover fewer images.
    """
    acc: dict[str, dict[int, float]] = {"clean": {e: float(clean.mean()) for e in eps_list}}
    for a, by_eps in attack_correct.items():
        acc[a] = {e: float(by_eps[e].mean()) for e in eps_list}
    names = list(attack_correct)
    acc["strongest"] = {e: min(acc[a][e] for a in names) for e in eps_list}
    acc["worst"] = {e: float(np.all([attack_correct[a][e] for a in names], 0).mean())
                    for e in eps_list}
    if adaptive is not None:
        acc["adaptive"] = {e: float(adaptive[e].mean()) for e in eps_list if e in adaptive}
    return acc


def row_counts(clean: np.ndarray, attack_correct: dict[str, dict[int, np.ndarray]],
               eps_list: list[int], adaptive: dict[int, np.ndarray] | None = None) -> dict:
    """Per cell of `row_accuracies`, [images correct, images evaluated]. STRONGEST counts as
    the column that attains the minimum (every attack column covers the same images)."""
    n = len(clean)
    cnt: dict[str, dict[int, list[int]]] = {"clean": {e: [int(clean.sum()), n]
                                                      for e in eps_list}}
    for a, by_eps in attack_correct.items():
        cnt[a] = {e: [int(by_eps[e].sum()), len(by_eps[e])] for e in eps_list}
    names = list(attack_correct)
    cnt["strongest"] = {e: min((cnt[a][e] for a in names), key=lambda kn: kn[0] / kn[1])
                        for e in eps_list}
    cnt["worst"] = {e: [int(np.all([attack_correct[a][e] for a in names], 0).sum()), n]
                    for e in eps_list}
    if adaptive is not None:
        cnt["adaptive"] = {e: [int(adaptive[e].sum()), len(adaptive[e])]
                           for e in eps_list if e in adaptive}
    return cnt


def intervals(counts: dict) -> dict:
    """column -> eps -> [low, high]: 95% Wilson intervals of the accuracies."""
    return {c: {e: list(wilson(k, n)) for e, (k, n) in by_eps.items()}
            for c, by_eps in counts.items()}


def against_paper(ci: dict, paper: dict[str, str] | None) -> list[dict]:
    """Each of the paper's cells we also measured, and whether it lies in our interval. The
    paper prints whole percents, so a value p counts as inside when [p-0.5, p+0.5]% meets it."""
    out = []
    for c, ref in (paper or {}).items():
        for e, v in zip(PAPER_EPS, ref.split("/"), strict=True):
            if c not in ci or e not in ci[c]:
                continue
            lo, hi = ci[c][e]
            p = int(v)
            inside = lo * 100 <= p + 0.5 and p - 0.5 <= hi * 100
            out.append(dict(column=c, eps=e, paper=p, low=lo, high=hi, inside=bool(inside)))
    return out


def paper_verdict(checks: list[dict]) -> str:
    """One line: how many of the paper's cells lie in our intervals, and the others."""
    if not checks:
        return "no paper cells to compare"
    bad = [c for c in checks if not c["inside"]]
    s = f"paper inside our 95% interval in {len(checks) - len(bad)}/{len(checks)} cells"
    if bad:
        s += "; outside: " + ", ".join(
            f"{TITLES[c['column']]} eps {c['eps']} (paper {c['paper']}, ours "
            f"{100 * c['low']:.0f}-{100 * c['high']:.0f})" for c in bad)
    return s


def consistency(name: str, clean: np.ndarray, attack_correct: dict, acc: dict,
                eps_list: list[int], adaptive: dict | None) -> list[dict]:
    """The grid's guarantees, checked: STRONGEST <= every column, WORST <= STRONGEST, and at
    eps = 0 every attack (and BPDA) leaves each image's outcome as on the clean image."""
    out = []
    cols = list(attack_correct)
    ok = all(acc["strongest"][e] <= acc[c][e] for c in cols for e in eps_list)
    out.append(dict(check=f"{name}: STRONGEST <= every attack column", ok=ok))
    ok = all(acc["worst"][e] <= acc["strongest"][e] for e in eps_list)
    out.append(dict(check=f"{name}: WORST CASE <= STRONGEST", ok=ok))
    if 0 in eps_list:
        same = all(np.array_equal(attack_correct[c][0], clean) for c in cols)
        if adaptive is not None and 0 in adaptive:
            same = same and np.array_equal(adaptive[0], clean[: len(adaptive[0])])
        out.append(dict(check=f"{name}: eps=0 equals CLEAN per image", ok=bool(same)))
    for c in out:
        c["status"] = "PASS" if c["ok"] else "FAIL"
    return out


def sanity_checks(label: str, acc: dict, eps_list: list[int], bim2x: dict | None,
                  n: int) -> list[dict]:
    """Carlini et al. (2019) checks on the undefended row; PASS or WARN."""
    out = []
    pos = [e for e in eps_list if e > 0]
    if "fgsm" in acc and "bim" in acc and pos:
        bad = [e for e in pos if acc["bim"][e] > acc["fgsm"][e]]
        out.append(dict(check=f"{label}: iterative >= single-step (BIM acc <= FGSM acc)",
                        ok=not bad, detail=", ".join(
                            f"eps {e}: BIM {pct(acc['bim'][e])} FGSM {pct(acc['fgsm'][e])}"
                            for e in pos)))
    if pos:
        s = [acc["strongest"][e] for e in eps_list]
        mono = all(b <= a for a, b in zip(s, s[1:], strict=False))
        low = acc["strongest"][max(pos)] <= 0.10
        out.append(dict(check=f"{label}: undefended accuracy falls towards 0 as eps grows",
                        ok=mono and low,
                        detail="strongest " + "/".join(pct(v) for v in s)
                        + ("" if mono else "; not monotone")
                        + ("" if low else f"; {pct(s[-1])}% > 10% at eps {max(pos)}")))
    if bim2x is not None:
        a1, a2 = bim2x["acc"], bim2x["acc_2x"]
        tol = max(0.02, 1.0 / n)  # two points, or one image on a small n
        out.append(dict(check=f"{label}: doubling BIM steps changes accuracy little",
                        ok=abs(a1 - a2) <= tol + 1e-9,
                        detail=f"eps {bim2x['eps']}: {bim2x['steps']} steps {pct(a1)}%, "
                               f"{bim2x['steps_2x']} steps {pct(a2)}%"))
    for c in out:
        c["status"] = "PASS" if c["ok"] else "WARN"
    return out
