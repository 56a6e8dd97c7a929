"""pxd's attacks against foolbox 3.3.4 (its JAX backend) on the same classifier, images and
settings, in one process: warm seconds per call for each, and the accuracy each leaves.

foolbox is not a pxd dependency; run this from a scratch venv that sees pxd's packages:

    python -m venv /tmp/fbv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/fbv/lib/python3.11/site-packages/pxd.pth
    echo "$PWD/src" >> /tmp/fbv/lib/python3.11/site-packages/pxd.pth
    /tmp/fbv/bin/pip install --no-deps foolbox==3.3.4 eagerpy==0.30.0 GitPython gitdb smmap
    JAX_NUM_CPU_DEVICES=1 taskset -c 0 /tmp/fbv/bin/python tools/foolbox_compare.py \\
        --data-dir DIR [--n 100] [--eps 8] [--out FILE.json]

Settings matched to pxd's defaults at eps 8 (pixel scale, bounds 0..255): FGSM; BIM 10 steps
of 1; PGD 30 steps of 2 from a random start; L2 DeepFool 50 steps, overshoot 0.02, all
classes; L2 CW 5 searches x 100 steps, lr 0.01, c0 10, abort early. foolbox's model is the
same logits function under `jax.jit`, as a foolbox user would pass it. Each library's call
is timed first (compiling, in this process) and warm (the faster of two more). foolbox
returns float images; pxd's are on the integer grid, so foolbox's accuracy is given both
on its images rounded to uint8 (what a classifier reading image files sees) and unrounded.
DeepFool and CW are minimal-perturbation attacks: both libraries' images are clipped to the
L-inf eps before they are judged.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import pxd
from pxd.models.classifiers import make_logits_fn


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def main() -> None:
    import eagerpy as ep
    import foolbox as fb

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--clf", default=None)
    ap.add_argument("--attacks", default="fgsm,bim,pgd,deepfool,cw")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    x, y = pxd.load_dataset(f"cifar10:test[:{a.n}]", data_dir=a.data_dir)
    clf = pxd.load_classifier(a.clf)
    lf = make_logits_fn(clf.model, clf.weights["params"], clf.weights.get("batch_stats", {}))
    logits = jax.jit(lambda z: lf(z))
    fmodel = fb.JAXModel(logits, bounds=(0, 255))
    xs, ys = ep.astensor(jnp.asarray(x, jnp.float32)), ep.astensor(jnp.asarray(y, jnp.int32))
    e = a.eps
    peers = {
        "fgsm": (fb.attacks.FGSM(), e, {}),
        "bim": (fb.attacks.LinfBasicIterativeAttack(abs_stepsize=1.0, steps=10), e, {}),
        "pgd": (fb.attacks.LinfPGD(abs_stepsize=2.0, steps=30, random_start=True), e, {}),
        "deepfool": (fb.attacks.L2DeepFoolAttack(steps=50, candidates=None, overshoot=0.02),
                     None, {}),
        "cw": (fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=100,
                                                 stepsize=0.01, initial_const=10.0,
                                                 abort_early=True), None,
               {"max_iterations": 100}),
    }
    rows = {}
    for name in a.attacks.split(","):
        atk, fb_eps, opts = peers[name]

        def peer(atk=atk, fb_eps=fb_eps):
            _, clipped, _ = atk(fmodel, xs, ys, epsilons=fb_eps)
            return clipped.raw

        def mine(name=name, opts=opts):
            return jnp.asarray(pxd.attack(x, y, name, eps=e, clf=clf, **opts))

        r = {}
        for who, fn in (("foolbox", peer), ("pxd", mine)):
            out, first = _timed(fn)
            warm = min(_timed(fn)[1] for _ in range(2))
            adv = np.asarray(out)
            if name in ("deepfool", "cw"):  # minimal-perturbation: both judged at the L-inf eps
                adv = np.clip(adv, x.astype(np.float32) - e, x.astype(np.float32) + e)
            acc = float(np.mean(np.asarray(clf.predict(np.clip(np.rint(adv), 0, 255)
                                                       .astype(np.uint8))) == y))
            acc_float = float(np.mean(np.argmax(np.asarray(logits(jnp.asarray(adv))), -1) == y))
            r[who] = {"first_s": first, "warm_s": warm, "images_per_s_warm": a.n / warm,
                      "accuracy_after": acc, "accuracy_after_unrounded": acc_float}
        r["pxd_speedup_warm"] = r["foolbox"]["warm_s"] / r["pxd"]["warm_s"]
        rows[name] = r
        print(f"{name:9s} foolbox first {r['foolbox']['first_s']:6.2f}s warm "
              f"{r['foolbox']['warm_s']:6.2f}s acc {r['foolbox']['accuracy_after']:.2f} "
              f"(unrounded {r['foolbox']['accuracy_after_unrounded']:.2f}) | pxd "
              f"first {r['pxd']['first_s']:6.2f}s warm {r['pxd']['warm_s']:6.2f}s acc "
              f"{r['pxd']['accuracy_after']:.2f} | pxd {r['pxd_speedup_warm']:.2f}x", flush=True)
    res = {"n": a.n, "eps": e, "classifier": clf.path, "jax": jax.__version__,
           "foolbox": fb.__version__, "devices": [str(d) for d in jax.devices()],
           "date": time.strftime("%Y-%m-%d %H:%M"), "attacks": rows}
    if a.out:
        from pxd.storage import files

        files.write_json(a.out, res, indent=1)


if __name__ == "__main__":
    main()
