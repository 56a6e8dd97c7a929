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

from pxd import __version__
from pxd.commands.bench.cache import Cache, check_cache_dir
from pxd.commands.bench.defences import Defences, adaptive_threshold
from pxd.commands.bench.outputs import print_summary, write_outputs
from pxd.commands.bench.paper import ADAPTIVE_METHOD
from pxd.commands.bench.plan import density_info, load_classifiers, load_density, plan
from pxd.commands.bench.steps import (
    Table,
    adaptive_column,
    add_rows,
    bim_twice,
    craft_all,
    detect,
    oblivious_grid,
)
from pxd.configs import versions
from pxd.configs.base import from_dict
from pxd.configs.commands import BenchConfig, SpeedConfig
from pxd.engine.devices import machine
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import data, files, imageio


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

    models = load_classifiers(list(cfg.clfs) if cfg.clfs else [None], cfg.dataset)
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
        density=None if dens is None else density_info(dens),
        columns=columns, rows=t.rows, detection=t.detection, sanity=t.sanity,
        consistency=t.consistency, cache=cache.stats, timings=timings,
        versions=dict(pxd=__version__, **versions.ALL),
        reuse_stale_cache=bool(cfg.reuse_stale_cache),
    )
    figures = sorted(write_outputs(out, info, y, t.per_image, t.roc_by_eps))
    print_summary(info, rep)
    rep.done(f"report: {os.path.join(out, 'report.md')} (full table, detection, checks); "
             f"figures: {', '.join(figures)}; "
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
