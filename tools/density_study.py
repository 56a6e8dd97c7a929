"""Why the density model matters: PixelDefend with PixelCNNs of different quality.

For each density model: its bits/dim on the study images, the classifier's accuracy after
purification on clean images and under each oblivious attack (FGSM, BIM, DeepFool, CW at
each eps, crafted against the classifier alone as in Table 1), the strongest attack per
eps, and how much of each attack's perturbation purification removes:
removal = 1 - ||purify(x_adv) - purify(x)||_2 / ||x_adv - x||_2 (median over images whose
perturbation is non-zero; 1 = purify maps x_adv exactly where it maps x).

    python tools/density_study.py --density pixelcnn-c10-cpu --density pixelcnn-c10-cpu-v2 \\
        --n 200 --out docs/density_study

writes study.json and bpd_vs_accuracy.png in --out (a later run adds its models to the same
study, reusing the crafted attacks in adversarials.npz). Uses only the public API (pxd.*).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import pxd

ATTACKS = ("fgsm", "bim", "deepfool", "cw")
MINIMAL = ("deepfool", "cw")  # crafted once at 255, clipped per eps as in the bench


def adversarials(x, y, clf, eps_list, cache: str, key_seed=0):
    """The oblivious attacks' images, crafted once and kept in `cache` (an .npz), so a later
    run adds density models without crafting again."""
    import jax

    if os.path.exists(cache):
        with np.load(cache, allow_pickle=False) as z:
            if np.array_equal(z["x"], x) and all(f"{a}@{e}" in z for a in ATTACKS
                                                 for e in eps_list):
                return {(a, e): z[f"{a}@{e}"] for a in ATTACKS for e in eps_list}
    adv = {}
    for a in ATTACKS:
        if a in MINIMAL:
            full = pxd.attack(x, y, a, eps=255, clf=clf, key=jax.random.key(key_seed))
            for e in eps_list:
                xi = x.astype(np.int16)
                adv[(a, e)] = np.clip(full.astype(np.int16), xi - e, xi + e).astype(np.uint8)
        else:
            for e in eps_list:
                adv[(a, e)] = pxd.attack(x, y, a, eps=e, clf=clf, key=jax.random.key(key_seed))
        print(f"  crafted {a}", flush=True)
    with open(cache + ".tmp", "wb") as f:
        np.savez_compressed(f, x=x, **{f"{a}@{e}": v for (a, e), v in adv.items()})
    os.replace(cache + ".tmp", cache)
    return adv


def l2(a, b):
    d = a.astype(np.float64) - b.astype(np.float64)
    return np.sqrt((d.reshape(len(d), -1) ** 2).sum(-1))


def study_one(name, x, y, clf, adv, eps_list, eps_defend):
    dens = pxd.load_density(name)
    t0 = time.perf_counter()
    bpd = pxd.bits_per_dim(x, density=dens)
    px = pxd.purify(x, eps_defend, density=dens)
    out = {"density": name, "bpd_study_images": float(np.mean(bpd)),
           "clean_acc": float(np.mean(clf.predict(x) == y)),
           "clean_acc_purified": float(np.mean(clf.predict(px) == y)),
           "bpd_purified": float(np.mean(pxd.bits_per_dim(px, density=dens))),
           "attacks": {}}
    for (a, e), xa in adv.items():
        pa = pxd.purify(xa, eps_defend, density=dens)
        d_in, d_out = l2(xa, x), l2(pa, px)
        moved = d_in > 0
        out["attacks"][f"{a}@{e}"] = {
            "acc_undefended": float(np.mean(clf.predict(xa) == y)),
            "acc_purified": float(np.mean(clf.predict(pa) == y)),
            "removal_median": float(np.median(1 - d_out[moved] / d_in[moved])) if moved.any()
            else None,
            "l2_adv_median": float(np.median(d_in)),
            "l2_after_purify_median": float(np.median(d_out)),
        }
    out["strongest_purified"] = {
        str(e): min(out["attacks"][f"{a}@{e}"]["acc_purified"] for a in ATTACKS)
        for e in eps_list}
    out["seconds"] = time.perf_counter() - t0
    print(f"  {name}: {out['bpd_study_images']:.3f} bits/dim, clean after purify "
          f"{out['clean_acc_purified']:.3f}, strongest {out['strongest_purified']}", flush=True)
    return out


def plot(results, eps_list, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = sorted(results, key=lambda r: r["bpd_study_images"])
    b = [r["bpd_study_images"] for r in rs]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(b, [100 * r["clean_acc_purified"] for r in rs], "o-", label="clean, purified")
    for e in eps_list:
        ax.plot(b, [100 * r["strongest_purified"][str(e)] for r in rs], "s--",
                label=f"strongest attack eps {e}, purified")
    for r in rs:
        ax.annotate(os.path.basename(r["density"].rstrip("/")),
                    (r["bpd_study_images"], 100 * r["clean_acc_purified"]),
                    fontsize=7, xytext=(3, 4), textcoords="offset points")
    ax.invert_xaxis()
    ax.set_xlabel(f"PixelCNN bits/dim on the {rs[0]['n']} study images (lower is better)")
    ax.set_ylabel("ResNet accuracy after PixelDefend (%)")
    ax.set_title(f"PixelDefend vs density quality (n = {rs[0]['n']}, eps_defend 16)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=120)
    os.replace(path + ".tmp.png", path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--density", action="append", required=True,
                   help="shipped model name or run dir (repeat; results add to --out's study)")
    p.add_argument("--clf", default="resnet-c10-normal")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--eps", default="2,8,16")
    p.add_argument("--eps-defend", type=int, default=16)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    eps_list = [int(e) for e in args.eps.split(",")]
    os.makedirs(args.out, exist_ok=True)
    x, y = pxd.load_dataset(f"cifar10:test[:{args.n}]")
    clf = pxd.load_classifier(args.clf)
    print(f"crafting attacks on {args.n} images", flush=True)
    t0 = time.perf_counter()
    adv = adversarials(x, y, clf, eps_list, os.path.join(args.out, "adversarials.npz"))
    path = os.path.join(args.out, "study.json")
    settings = {"clf": args.clf, "n": args.n, "eps": eps_list, "eps_defend": args.eps_defend}
    doc = {"settings": settings, "runs": [], "results": []}
    if os.path.exists(path):  # add to an earlier study with the same settings
        with open(path) as f:
            old = json.load(f)
        if old.get("settings") == settings:
            doc = old
    for name in args.density:
        r = study_one(name, x, y, clf, adv, eps_list, args.eps_defend)
        r["n"] = args.n
        doc["results"] = [o for o in doc["results"] if o["density"] != name] + [r]
    doc["runs"].append({
        "command": "python tools/density_study.py " + " ".join(
            f"--density {d}" for d in args.density) + f" --clf {args.clf} --n {args.n} "
        f"--eps {args.eps} --eps-defend {args.eps_defend} --out {args.out}",
        "date": time.strftime("%Y-%m-%d"), "wall_s": time.perf_counter() - t0,
        "machine": f"{os.uname().machine} {os.cpu_count()} cores"})
    results = doc["results"]
    with open(os.path.join(args.out, "study.json.tmp"), "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(os.path.join(args.out, "study.json.tmp"), os.path.join(args.out, "study.json"))
    plot(results, eps_list, os.path.join(args.out, "bpd_vs_accuracy.png"))
    print(f"wrote {args.out}/study.json and bpd_vs_accuracy.png", flush=True)


if __name__ == "__main__":
    main()
