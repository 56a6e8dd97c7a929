"""The per-classifier steps of a bench run: craft every oblivious attack (`craft_all`, and
BIM at twice the steps, `bim_twice`), score bits/dim (`detect`), defend (`oblivious_grid`),
attack end to end (`adaptive_column`), and add the rows (`add_rows` into a `Table`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from pxd.commands.bench.cache import Cache, bpda_cached, craft_cached
from pxd.commands.bench.defences import Defences
from pxd.commands.bench.paper import (
    DEFENCE_TITLES,
    EPS_FREE_ATTACKS,
    PAPER_TABLE1,
    TITLES,
    bim_steps,
)
from pxd.commands.bench.plan import Plan
from pxd.commands.bench.rows import (
    against_paper,
    consistency,
    intervals,
    row_accuracies,
    row_counts,
    sanity_checks,
)
from pxd.configs.commands import BenchConfig
from pxd.core import adaptive, metrics
from pxd.engine.batched import predict
from pxd.report.terminal import Reporter


def craft_all(cfg: BenchConfig, p: Plan, cache: Cache, m: dict, x: np.ndarray,
              y: np.ndarray, rep: Reporter) -> dict[tuple[str, int], np.ndarray]:
    """Every oblivious attack at every eps: (attack, eps) -> uint8 images."""
    adv: dict[tuple[str, int], np.ndarray] = {}
    for a in p.attacks:
        opts = p.attack_opts.get(a, {})
        for e in p.eps:
            if e == 0:
                adv[(a, e)] = x
                continue
            if a in EPS_FREE_ATTACKS:
                # Minimal-perturbation attacks ignore eps until their final clip, and
                # clipping commutes with rounding on the integer grid: craft once at 255.
                full = craft_cached(cache, m, a, 255, opts, x, y, seed=cfg.seed,
                                    batch_size=cfg.batch_size, rep=rep)
                xi = x.astype(np.int16)
                adv[(a, e)] = np.clip(full.astype(np.int16), xi - e, xi + e).astype(np.uint8)
                continue
            adv[(a, e)] = craft_cached(cache, m, a, e, opts, x, y, seed=cfg.seed,
                                       batch_size=cfg.batch_size, rep=rep)
    return adv


def bim_twice(cfg: BenchConfig, p: Plan, cache: Cache, m: dict, adv: dict, x: np.ndarray,
              y: np.ndarray, rep: Reporter) -> dict | None:
    """BIM with twice the steps at the largest eps (a sanity check), or None."""
    pos_eps = [e for e in p.eps if e > 0]
    if "bim" not in p.attacks or not pos_eps:
        return None
    lf, batch_size = m["logits_fn"], cfg.batch_size
    e = max(pos_eps)
    steps = bim_steps(e)
    opts = dict(p.attack_opts.get("bim", {}))
    steps = int(opts.get("steps") or steps)
    x2 = craft_cached(cache, m, "bim", e, dict(opts, steps=2 * steps), x, y, seed=cfg.seed,
                      batch_size=batch_size, rep=rep)
    return dict(eps=e, steps=steps, steps_2x=2 * steps,
                acc=float(np.mean(predict(lf, adv[("bim", e)], batch_size=batch_size) == y)),
                acc_2x=float(np.mean(predict(lf, x2, batch_size=batch_size) == y)))


def detect(p: Plan, defs: Defences, m: dict, adv: dict, x: np.ndarray, n_models: int,
           roc_by_eps: dict) -> list[dict]:
    """ROC AUCs of bits/dim, clean images negative and attacked ones positive; adds the
    curves to `roc_by_eps` (eps -> name -> (fpr, tpr, auc))."""
    rows = []
    b_clean = defs.bpd(x)
    for a in p.attacks:
        aucs = {}
        for e in p.eps:
            b_adv = defs.bpd(adv[(a, e)])
            aucs[e] = metrics.roc_auc(b_clean, b_adv)
            if e > 0:
                fpr, tpr = metrics.roc_curve(b_clean, b_adv)
                name = a if n_models == 1 else f"{m['label']}: {a}"
                roc_by_eps.setdefault(e, {})[name] = (fpr, tpr, aucs[e])
        rows.append(dict(classifier=m["label"], attack=a, auc=aucs,
                         mean_bpd={e: float(np.mean(defs.bpd(adv[(a, e)]))) for e in p.eps}))
    return rows


def oblivious_grid(cfg: BenchConfig, p: Plan, defs: Defences, m: dict, adv: dict,
                   x: np.ndarray, y: np.ndarray) -> dict[str, dict]:
    """Per defence row: per-image correctness on clean and on every (attack, eps)."""
    lf, batch_size = m["logits_fn"], cfg.batch_size
    grid: dict[str, dict] = {}
    for d in list(dict.fromkeys(["none"] + p.defences)):
        clean_ok = predict(lf, defs.apply(d, x, "clean"), batch_size=batch_size) == y
        corr = {a: {} for a in p.attacks}
        for a in p.attacks:
            for e in p.eps:
                xa = adv[(a, e)]
                xd = defs.apply(d, xa, f"{a} eps={e}")
                corr[a][e] = predict(lf, xd, batch_size=batch_size) == y
        grid[d] = dict(clean=clean_ok, corr=corr)
    return grid


def adaptive_column(cfg: BenchConfig, p: Plan, cache: Cache, defs: Defences, m: dict,
                    grid: dict, xk: np.ndarray, yk: np.ndarray, rep: Reporter) -> None:
    """BPDA-PGD end to end on each defended classifier: grid[d]['adaptive'][eps] is the
    per-image correctness on the first len(xk) images."""
    dens, e_def, threshold = defs.dens, p.eps_defend, defs.threshold
    for d in p.defences if cfg.adaptive_steps > 0 else []:
        # eps_defend = 0 leaves images unchanged: the end-to-end attack is plain PGD
        d_att = "none" if d.endswith("pixeldefend") and e_def == 0 else d
        attack_fn = adaptive.make_bpda_attack(
            d_att, density_model=dens["model"] if dens else None, purify=defs.purify_fn,
            eps_defend=e_def, threshold=threshold, bpd_weight=cfg.adaptive_bpd_weight,
            steps=cfg.adaptive_steps, restarts=cfg.restarts)
        settings = dict(steps=cfg.adaptive_steps, restarts=cfg.restarts, eps_defend=e_def,
                        density=dens["digest"] if dens and d != "none" else None,
                        threshold=threshold if d == "adaptive-pixeldefend" else None,
                        bpd_weight=cfg.adaptive_bpd_weight if d == "adaptive-pixeldefend"
                        else None)
        res = {}
        for e in p.eps:
            if e == 0:
                xb = xk
            else:
                xb = bpda_cached(cache, m, d, attack_fn, dens["params"] if dens else None,
                                 e, xk, yk, settings, seed=cfg.seed, batch_size=cfg.batch_size,
                                 rep=rep)
            res[e] = predict(m["logits_fn"], defs.apply(d, xb, f"BPDA {d} eps={e}"),
                             batch_size=cfg.batch_size) == yk
        grid[d]["adaptive"] = res


@dataclasses.dataclass
class Table:
    """What the per-classifier steps add up to: rows, per-image outcomes, checks."""

    rows: list = dataclasses.field(default_factory=list)
    per_image: dict = dataclasses.field(default_factory=dict)
    detection: list = dataclasses.field(default_factory=list)
    roc_by_eps: dict = dataclasses.field(default_factory=dict)
    sanity: list = dataclasses.field(default_factory=list)
    consistency: list = dataclasses.field(default_factory=list)


def add_rows(t: Table, p: Plan, m: dict, grid: dict, bim2x: dict | None, n: int,
             dataset: str, k_adapt: int) -> None:
    """One row per defence asked for (the undefended row also feeds the sanity checks)."""
    eps_list = p.eps
    for d in list(dict.fromkeys(["none"] + p.defences)):
        g = grid[d]
        acc = row_accuracies(g["clean"], g["corr"], eps_list, g.get("adaptive"))
        row_name = m["label"] + (f" + {DEFENCE_TITLES[d]}" if d != "none" else "")
        if d == "none":
            t.sanity += sanity_checks(m["label"], acc, eps_list, bim2x, n)
        if d not in p.defences:
            continue
        t.consistency += consistency(row_name, g["clean"], g["corr"], acc, eps_list,
                                     g.get("adaptive"))
        paper = (PAPER_TABLE1.get((m["cfg"].arch, m["cfg"].training, d))
                 if dataset == "cifar10" else None)  # Table 1 is CIFAR-10 only
        counts = row_counts(g["clean"], g["corr"], eps_list, g.get("adaptive"))
        ci = intervals(counts)
        t.rows.append(dict(
            name=row_name, classifier=m["path"], defence=d, acc=acc, paper=paper,
            adaptive_images=k_adapt if "adaptive" in g else 0,
            counts=counts, ci95=ci, paper_check=against_paper(ci, paper)))
        t.per_image[f"{row_name} | CLEAN"] = g["clean"]
        for a in p.attacks:
            for e in eps_list:
                t.per_image[f"{row_name} | {TITLES[a]} | eps {e}"] = g["corr"][a][e]
        for e, v in g.get("adaptive", {}).items():
            t.per_image[f"{row_name} | {TITLES['adaptive']} | eps {e}"] = v
