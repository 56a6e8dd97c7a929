"""Equal-budget density recipes: which shape and schedule buys the most bits/dim in T minutes.

Each recipe is the `cpu` preset with a few fields changed; each trains from scratch on
CIFAR-10 for the same wall-clock budget (`pxd train-density --hours`: the step count comes
from timing the recipe's own step on this machine, so the cosine ends on the budget), then
its EMA parameters are scored on the test images. Run it on an otherwise idle machine: the
budget is converted to steps by a timing at the start of each run.

    python tools/recipes.py --minutes 30 --out runs/recipes            # all recipes
    python tools/recipes.py --minutes 30 --out runs/recipes --only wide,batch64
    taskset -c 0 python tools/recipes.py ... --only cpu &   # one recipe per core, same OUT
    taskset -c 1 python tools/recipes.py ... --only exponential

writes OUT/recipes.json and OUT/recipes.md (a run re-reads both and skips finished recipes;
a recipe interrupted mid-training continues with its saved step count).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time

import numpy as np

import pxd
from pxd.commands.train import run_train_density
from pxd.configs.pixelcnn import PIXELCNN_PRESETS, density_config

CPU = PIXELCNN_PRESETS["cpu"]

# name -> (what differs from the cpu preset, DensityConfig overrides)
RECIPES: dict[str, tuple[str, dict]] = {
    "cpu": ("the preset: 32 filters, 2 blocks, batch 32, cosine 2e-3, EMA 0.999", {}),
    "exponential": ("the old schedule: lr 2e-3 decayed 0.99999 per step, no warm-up",
                    dict(schedule="exponential", warmup=0)),
    "no-ema": ("no EMA (the raw weights are scored)", dict(ema=0.0)),
    "wide": ("48 filters, 1 block per stream", dict(model=dict(CPU, nr_filters=48,
                                                                 nr_resnet=1))),
    "deep": ("24 filters, 3 blocks per stream", dict(model=dict(CPU, nr_filters=24,
                                                                  nr_resnet=3))),
    "batch64": ("batch 64, peak lr 3e-3", dict(batch_size=64, lr=3e-3)),
    "mix5": ("5 logistic mixture components instead of 10", dict(model=dict(CPU, nr_mix=5))),
}


def table(results: dict, minutes: float, eval_n: int) -> str:
    lines = [f"Budget {minutes:g} min each, from scratch; test bits/dim on the first {eval_n} "
             "CIFAR-10 test images (EMA parameters unless stated).", "",
             "| recipe | what differs | params | steps | timed s/step | test bits/dim |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in sorted(results.items(), key=lambda kv: kv[1]["test_bpd"]):
        lines.append(f"| {name} | {r['what']} | {r['params']:,} | {r['steps']} | "
                     f"{minutes * 60 / r['steps']:.2f} | **{r['test_bpd']:.4f}** |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="", help="comma list of recipe names")
    ap.add_argument("--eval-n", type=int, default=10000)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n] or list(RECIPES)
    unknown = sorted(set(names) - set(RECIPES))
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "recipes.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    x, _ = pxd.load_dataset(f"cifar10:test[:{a.eval_n}]", data_dir=a.data_dir)
    for name in names:
        if name in results:
            continue
        what, over = RECIPES[name]
        run = os.path.join(a.out, name)
        cfg = density_config("cifar10", "cpu", eval_every=0, **over)
        t = time.perf_counter()
        started = os.path.exists(os.path.join(run, "config.json"))
        print(f"{name}: {what}", flush=True)
        r = run_train_density(cfg, run, resume=started, keep_steps=started,
                              hours=None if started else a.minutes / 60, data_dir=a.data_dir)
        wall = time.perf_counter() - t
        bpd = float(np.mean(pxd.bits_per_dim(x, density=run)))
        meta = json.load(open(os.path.join(run, "meta.json")))
        results[name] = dict(what=what, overrides=over, steps=int(r["step"]),
                             params=int(meta.get("params", 0)), wall_s=wall,
                             train_s=meta["wall_s"],
                             # the step time the budget was set from, not the wall time
                             # (which counts whatever else the machine did)
                             timed_s_per_step=a.minutes * 60 / max(1, int(r["step"])),
                             test_bpd=bpd,
                             command=f"python tools/recipes.py --minutes {a.minutes:g} "
                                     f"--out {a.out} --only {name}")
        print(f"  {name}: {r['step']} steps, test bits/dim {bpd:.4f}", flush=True)
        # Two processes (one per core, --only) may share OUT: read, merge and write under a lock.
        with open(path + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(path):
                results = {**json.load(open(path)), name: results[name]}
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(results, f, indent=2)
            os.replace(tmp, path)
    with open(os.path.join(a.out, "recipes.md"), "w") as f:
        f.write(table(results, a.minutes, a.eval_n))
    print(table(results, a.minutes, a.eval_n))


if __name__ == "__main__":
    main()
