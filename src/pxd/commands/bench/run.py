"""`pxd bench`: Table 1 of the paper (CIFAR-10), reproduced on our models, plus an adaptive
BPDA column, BPD detection AUCs and sanity checks (Carlini et al. 2019).

Oblivious setting, as the paper: every attack is crafted against the classifier alone, then
each defence is applied and the defended classifier is scored. Cells are accuracies (%) at
each eps_attack joined with '/' (the paper's x/y/z for eps = 2/8/16). STRONGEST ATTACK is
the per-eps minimum over the attack columns (as the paper); WORST CASE PER IMAGE counts an
image only if it survives every attack. ADAPTIVE (BPDA) attacks each defence end to end
(`pxd.core.adaptive`); for no defence it is plain PGD.

Everything crafted is cached under OUT/cache (cache.py), so reruns, new defences and new
classifiers reuse what exists. eps = 0 attacks are the inputs themselves (every attack
returns its input there), so those cells equal CLEAN.

`run_bench` reads as the steps of a run: plan (parse and check the options), load the
classifiers, the images and the density model, set the adaptive threshold, then per
classifier craft, score bits/dim (detection), defend (the oblivious grid), attack end to end
(the adaptive column) and add its rows; finally write and print (outputs.py).
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from pxd import __version__
from pxd.commands.bench.cache import Cache, bpda_cached, check_cache_dir, craft_cached, digest
from pxd.commands.bench.options import parse_attacks, parse_defences, parse_eps_list
from pxd.commands.bench.outputs import print_summary, write_outputs
from pxd.commands.bench.paper import (
    ADAPTIVE_METHOD,
    ARCH_TITLES,
    DEFENCE_TITLES,
    EPS_FREE_ATTACKS,
    PAPER_TABLE1,
    THRESHOLD_IMAGES,
    THRESHOLD_MARGIN,
    TITLES,
    TRAINING_TITLES,
    bim_steps,
)
from pxd.commands.bench.rows import (
    against_paper,
    consistency,
    intervals,
    row_accuracies,
    row_counts,
    sanity_checks,
)
from pxd.configs import versions
from pxd.configs.base import check_eps, from_dict
from pxd.configs.commands import BenchConfig, SpeedConfig
from pxd.configs.datasets import DATASETS
from pxd.core import adaptive, metrics
from pxd.core.likelihood import make_bpd_fn
from pxd.core.purify import make_purifier
from pxd.engine.batched import evaluate_bpd, predict, purify_batches, squeeze_batches
from pxd.engine.devices import machine
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import data, files, imageio
from pxd.storage.runs import params_digest, resolve_density


def _density_info(dens: dict) -> dict:
    """Identity and test bits/dim of the density model: the zoo card's full-test-split
    figure when shipped, else the run's best periodic evaluation."""
    from pxd.storage import shipped as zoo

    card = zoo.card_of(zoo.resolve(dens["path"]))
    bpd, bpd_n = card.get("test_bpd"), card.get("n_test")
    if bpd is None:
        bpd, bpd_n = dens["meta"].get("best_test_bpd"), dens["meta"].get("eval_n")
    return dict(path=dens["path"], sha256=dens["digest"], preset=dens["cfg"].preset,
                test_bpd=bpd, test_bpd_n=bpd_n)


def _load_classifiers(paths: list[str | None], dataset: str | None):
    from pxd.configs.datasets import DATASETS
    from pxd.models.classifiers import make_logits_fn
    from pxd.storage import shipped as zoo
    from pxd.storage.runs import load_classifier, params_digest

    ds = dataset or "cifar10"
    if "all" in paths:  # every shipped classifier for the dataset, default first
        shipped = [e for e in zoo.entries() if e["kind"] == "classifier" and e["dataset"] == ds]
        shipped.sort(key=lambda e: not e.get("default"))
        paths = [q for p in paths for q in ([e["path"] for e in shipped] if p == "all" else [p])]
        if not paths:
            raise PxdError(f"no classifiers shipped for {ds}")
    out = []
    for p in paths:
        if p is None:
            p = zoo.default_path("classifier", DATASETS[ds].shape)
        model, variables, cfg, meta = load_classifier(p)
        out.append(dict(
            path=p, cfg=cfg, meta=meta, digest=params_digest(variables),
            logits_fn=make_logits_fn(model, variables["params"],
                                     variables.get("batch_stats", {})),
            label=f"{ARCH_TITLES.get(cfg.arch, cfg.arch)} "
                  f"{TRAINING_TITLES.get(cfg.training, cfg.training)}",
        ))
    names = [c["label"] for c in out]
    for c in out:
        if names.count(c["label"]) > 1:  # same arch and training twice: tell them apart
            c["label"] += f" [{os.path.basename(os.path.normpath(c['path']))}]"
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """A bench config parsed and checked: what the run computes."""

    attacks: list[str]
    eps: list[int]
    defences: list[str]
    eps_defend: int
    attack_opts: dict
    k_adapt: int  # images of the adaptive column (before clipping to the data)


def plan(cfg: BenchConfig) -> Plan:
    """Parse the list options and check every number; nothing is loaded yet."""
    attack_names = parse_attacks(cfg.attacks)
    eps_list = parse_eps_list(cfg.eps_attack)
    defence_names = parse_defences(cfg.defenses)
    e_def = check_eps(cfg.eps_defend, "--eps-defend")
    from pxd.api import check_attack_options

    attack_opts = {a: check_attack_options(a, o) for a, o in (cfg.attack_opts or {}).items()}
    if cfg.n < 1 or cfg.batch_size < 1 or cfg.restarts < 1 or cfg.adaptive_steps < 0:
        raise PxdError("--n, --batch-size and --restarts must be positive, "
                       "--adaptive-steps >= 0")
    k_adapt = cfg.n if cfg.adaptive_n is None else min(cfg.adaptive_n, cfg.n)
    if k_adapt < 1:
        raise PxdError("--adaptive-n must be positive")
    if cfg.dataset is not None and cfg.dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{cfg.dataset}' (choose from {', '.join(DATASETS)})")
    return Plan(attack_names, eps_list, defence_names, e_def, attack_opts, k_adapt)


def load_density(density: str | None, shape, needs_density: bool, rep: Reporter) -> dict | None:
    """The density model as a dict (model, params, cfg, meta, path, digest), or None when
    none is given or shipped and no defence needs one (detection is then skipped)."""
    try:
        dmodel, dparams, dcfg, dmeta, dpath = resolve_density(density, shape)
    except PxdError:
        if density is not None or needs_density:
            raise
        # detection is a bonus when no defence needs the density model
        rep.info("no density model: skipping the bits/dim detector")
        return None
    return dict(model=dmodel, params=dparams, cfg=dcfg, meta=dmeta, path=dpath,
                digest=params_digest(dparams))


class Defences:
    """The defences as functions of uint8 arrays, every purification and bits/dim cached."""

    def __init__(self, cache: Cache, dens: dict | None, p: Plan, batch_size: int,
                 rep: Reporter):
        self.cache, self.dens, self.rep = cache, dens, rep
        self.e_def, self.names, self.batch_size = p.eps_defend, p.defences, batch_size
        self.bpd_jit = make_bpd_fn(dens["model"]) if dens else None
        self.threshold: float | None = None  # adaptive PixelDefend's, set by set_threshold
        self.purify_fn = None
        needs_density = any(d in p.defences for d in ("pixeldefend", "adaptive-pixeldefend"))
        if dens is not None and p.eps_defend > 0 and needs_density:
            self.purify_fn = make_purifier(dens["model"], "auto", max_eps=p.eps_defend)

    def bpd(self, xs: np.ndarray) -> np.ndarray:
        dens = self.dens
        return self.cache.get("bpd", f"bpd_{digest(xs)[:16]}_{dens['digest'][:12]}.npz",
                              {"input": digest(xs), "density": dens["digest"]},
                              lambda: evaluate_bpd(self.bpd_jit, dens["params"], xs,
                                                   self.batch_size))

    def purified(self, xs: np.ndarray, label: str) -> np.ndarray:
        """PixelDefend(xs) with eps_defend, cached by input digest."""
        e_def, dens = self.e_def, self.dens
        if e_def == 0 or len(xs) == 0:
            return xs.copy()
        name = f"pur_{digest(xs)[:16]}_pixeldefend_{e_def}_{dens['digest'][:12]}.npz"

        def compute():
            eb = np.full(len(xs), e_def, np.int32)
            with self.rep.progress(f"purify {label}", total=len(xs)) as advance:
                return purify_batches(self.purify_fn, dens["params"], xs, eb, self.batch_size,
                                      on_batch=advance)

        return self.cache.get("purified", name, {"input": digest(xs), "eps_defend": e_def,
                                                  "density": dens["digest"]}, compute)

    def apply(self, d: str, xs: np.ndarray, label: str) -> np.ndarray:
        if d == "none":
            return xs
        if d == "feature-squeeze":
            return squeeze_batches(xs)
        if d == "pixeldefend":
            return self.purified(xs, label)
        over = self.bpd(xs) > self.threshold  # adaptive: purify only the unlikely images
        if "pixeldefend" in self.names:
            return np.where(over[:, None, None, None], self.purified(xs, label), xs)
        res = xs.copy()
        res[over] = self.purified(xs[over], label)
        return res


def adaptive_threshold(cfg: BenchConfig, n: int, dataset: str, defs: Defences,
                       rep: Reporter) -> tuple[float | None, str | None]:
    """Adaptive PixelDefend's bits/dim threshold and how it was set: given, or the mean
    clean bits/dim of THRESHOLD_IMAGES images disjoint from the evaluated ones + the margin."""
    if defs.dens is None or "adaptive-pixeldefend" not in defs.names:
        return None, None
    if cfg.adaptive_threshold is not None:
        threshold, how = float(cfg.adaptive_threshold), "given (--adaptive-threshold)"
    else:
        size = DATASETS[dataset].splits["test"]
        vspec = (f"{dataset}:test[-{THRESHOLD_IMAGES}:]" if n + THRESHOLD_IMAGES <= size
                 else f"{dataset}:train[:{THRESHOLD_IMAGES}]")
        xv, _ = data.load(vspec, cfg.data_dir)
        mean_v = float(np.mean(defs.bpd(xv)))
        threshold = mean_v + THRESHOLD_MARGIN
        how = (f"mean clean bits/dim of {vspec} ({mean_v:.4f}) + "
               f"{THRESHOLD_MARGIN} (the paper: 3.2 against a mean of 3.0)")
    rep.info(f"adaptive threshold {threshold:.4f} bits/dim: {how}")
    return threshold, how


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


def run_bench(cfg: BenchConfig | None = None, *, rep: Reporter | None = None,
              **options) -> dict:
    """Run the grid and write OUT/report.md, results.json, per_image.csv, PNG figures and
    config.json (the BenchConfig). Give `cfg`, or its fields as keywords.

    attacks, eps_attack, defenses: comma lists ('all' allowed for attacks and defenses).
    adaptive_steps = 0 skips the BPDA column; adaptive_n limits it to the first images.
    adaptive_threshold None: mean clean bits/dim of 256 test images disjoint from the
    evaluated ones (the last of the split) + 0.2, the paper's margin (3.2 vs 3.0).
    """
    if cfg is None:
        cfg = from_dict(BenchConfig, options)
    elif options:
        raise PxdError(f"run_bench: give a BenchConfig or options, not both ({sorted(options)})")
    rep = rep or Reporter(quiet=True)
    t_start = time.perf_counter()
    p = plan(cfg)
    out = cfg.out
    imageio.check_writable(out, "--out", folder=True)
    cache_dir = check_cache_dir(out)  # before anything is loaded or written

    models = _load_classifiers(list(cfg.clfs) if cfg.clfs else [None], cfg.dataset)
    dataset = cfg.dataset or models[0]["cfg"].dataset
    for m in models:
        if m["cfg"].dataset != dataset:
            raise PxdError(f"{m['path']} was trained on {m['cfg'].dataset}, not {dataset}")
    spec = f"{dataset}:test[:{cfg.n}]"
    x, y = data.load(spec, cfg.data_dir)
    n = len(x)
    k_adapt = min(p.k_adapt, n)
    os.makedirs(out, exist_ok=True)
    files.write_config(out, cfg)
    cache = Cache(cache_dir, reuse_stale=cfg.reuse_stale_cache)
    timings: dict[str, float] = {}

    needs_density = any(d in p.defences for d in ("pixeldefend", "adaptive-pixeldefend"))
    dens = load_density(cfg.density, tuple(x.shape[1:]), needs_density, rep)
    defs = Defences(cache, dens, p, cfg.batch_size, rep)
    threshold, threshold_how = adaptive_threshold(cfg, n, dataset, defs, rep)
    defs.threshold = threshold

    t = Table()
    for m in models:
        t0 = time.perf_counter()
        adv = craft_all(cfg, p, cache, m, x, y, rep)
        timings[f"craft {m['label']}"] = time.perf_counter() - t0
        bim2x = bim_twice(cfg, p, cache, m, adv, x, y, rep)
        if dens is not None:
            t0 = time.perf_counter()
            t.detection += detect(p, defs, m, adv, x, len(models), t.roc_by_eps)
            timings[f"bits/dim {m['label']}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        grid = oblivious_grid(cfg, p, defs, m, adv, x, y)
        timings[f"defend {m['label']}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        adaptive_column(cfg, p, cache, defs, m, grid, x[:k_adapt], y[:k_adapt], rep)
        timings[f"adaptive {m['label']}"] = time.perf_counter() - t0
        add_rows(t, p, m, grid, bim2x, n, dataset, k_adapt)
        if bim2x is not None:
            m["bim2x"] = bim2x

    wall = time.perf_counter() - t_start
    columns = ["clean"] + p.attacks + ["strongest", "worst"] + \
        (["adaptive"] if cfg.adaptive_steps > 0 else [])
    info = dict(
        command=cfg.command, date=time.strftime("%Y-%m-%d %H:%M:%S"), machine=machine(),
        wall_s=wall, n=n, input=spec, seed=cfg.seed, eps_attack=p.eps, eps_defend=p.eps_defend,
        attacks=p.attacks, defences=p.defences, attack_opts=p.attack_opts,
        adaptive=dict(steps=cfg.adaptive_steps, restarts=cfg.restarts, images=k_adapt,
                      bpd_weight=cfg.adaptive_bpd_weight,
                      alpha="max(1, round(eps/4))", method=ADAPTIVE_METHOD),
        threshold=threshold, threshold_how=threshold_how,
        classifiers=[dict(label=m["label"], path=m["path"], sha256=m["digest"],
                          arch=m["cfg"].arch, training=m["cfg"].training,
                          preset=m["cfg"].preset, test_acc=m["meta"].get("test_acc"),
                          test_n=m["meta"].get("n"), bim_2x_steps=m.get("bim2x"))
                     for m in models],
        density=None if dens is None else _density_info(dens),
        columns=columns, rows=t.rows, detection=t.detection, sanity=t.sanity,
        consistency=t.consistency, cache=cache.stats, timings=timings,
        versions=dict(pxd=__version__, **versions.ALL),
        reuse_stale_cache=bool(cfg.reuse_stale_cache),
    )
    write_outputs(out, info, x, y, t.per_image, t.roc_by_eps, p.eps, rep)
    print_summary(info, rep)
    figures = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    rep.done(f"report: {os.path.join(out, 'report.md')} (full table, detection, checks); "
             f"figures: {', '.join(os.path.join(out, f) for f in figures)}; "
             f"per image: {os.path.join(out, 'per_image.csv')}")
    return info


def run_speed(cfg: SpeedConfig | str, *, rep: Reporter | None = None, **sizes) -> dict:
    """`pxd bench --speed`: speed.run_bench_speed, its JSON written to `cfg.out` (a .json
    path, or OUT/speed.json for a folder). `cfg` may be just the out path, with density,
    batch_size and data_dir as keywords; other `sizes` shrink the run (tests)."""
    from pxd.commands.bench.speed import run_bench_speed

    if not isinstance(cfg, SpeedConfig):
        fields = {f.name for f in dataclasses.fields(SpeedConfig)}
        cfg = from_dict(SpeedConfig, dict(out=cfg, **{k: sizes.pop(k) for k in list(sizes)
                                                         if k in fields}))
    out = cfg.out
    path = out if out.endswith(".json") else os.path.join(out, "speed.json")
    imageio.check_writable(path, "--out")
    if cfg.paper_images < 0:
        raise PxdError("--paper-images must be 0 (skip) or positive")
    res = run_bench_speed(density=cfg.density, batch=cfg.batch_size, data_dir=cfg.data_dir,
                          paper_images=cfg.paper_images, rep=rep, **sizes)
    files.write_json(path, res)
    (rep or Reporter(quiet=True)).done(f"speed results written to {path}")
    return res
