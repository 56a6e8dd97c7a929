"""One table row's maths: accuracies per column and eps from per-image outcomes, the grid's
guarantees (consistency) and Carlini et al.'s sanity checks (numpy only)."""

from __future__ import annotations

import numpy as np

from pxd.commands.bench.paper import pct


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
