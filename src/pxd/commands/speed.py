"""`pxd bench --speed` (and `make bench`): throughput measured against a baseline in the same run.

- purification: the literal Algorithm 1 (one forward per sub-pixel) against the fast exact
  path on the same images, outputs compared; plus the compute floor (plain forwards).
- density training: images/s of the train step on one device against all devices.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from pxd import data, devices
from pxd.report import Reporter
from pxd.store import machine


def _timed(fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def bench_purify(model, params, x: np.ndarray, *, eps: int, n_ref: int, batch: int,
                 rep: Reporter) -> dict:
    from pxd.core.purify import first_difference_gaps, make_purifier
    from pxd.density import PixelCNN

    m = devices.mesh()
    ndev = m.devices.size
    e = np.full(len(x), eps, np.int32)
    fast = make_purifier(model, "auto", max_eps=eps)
    ref = make_purifier(model, "reference")
    # compile both on their batch shapes, then time
    xb, _ = devices.shard_batch((x[:batch], e[:batch]), m)
    _timed(fast, params, *xb)
    t_fast = 0.0
    outs = []
    for s in range(0, len(x), batch):
        xb, k = devices.shard_batch((x[s : s + batch], e[s : s + batch]), m)
        o, dt = _timed(fast, params, *xb)
        outs.append(np.asarray(o)[:k])
        t_fast += dt
    fast_out = np.concatenate(outs)
    xr, kr = devices.shard_batch((x[:n_ref], e[:n_ref]), m)
    rep.info(f"reference decode of {n_ref} images ({np.prod(x.shape[1:])} forwards each)...")
    ref_out, t_ref = _timed(ref, params, *xr)  # includes compile, subtracted below
    _, t_ref = _timed(ref, params, *xr)
    ref_out = np.asarray(ref_out)[:kr]
    feat = jax.jit(lambda p, xx: model.apply({"params": p}, xx, method=PixelCNN.features))
    xf, _ = devices.shard_batch(x[:batch], m)
    _timed(feat, params, xf)
    _, t_fwd = _timed(feat, params, xf)
    floor_ips = batch / (2 * t_fwd)
    fast_ips = len(x) / t_fast
    ref_ips = kr / t_ref
    same = np.all(ref_out.reshape(kr, -1) == fast_out[:kr].reshape(kr, -1), axis=1)
    gaps = first_difference_gaps(model, params, x[:kr], ref_out, fast_out[:kr], eps)
    return {
        "eps": eps, "devices": ndev,
        "near_tie_gaps_of_differing_images": gaps, "fast_batch": batch, "fast_images": len(x),
        "fast_images_per_s": fast_ips, "reference_images": kr,
        "reference_images_per_s": ref_ips, "speedup": fast_ips / ref_ips,
        "identical_on_reference_images": int(np.sum(same)),
        "floor_images_per_s_two_forwards": floor_ips,
        "fraction_of_floor": fast_ips / floor_ips,
    }


def bench_train(model, x: np.ndarray, *, batch: int, steps: int) -> dict:
    from pxd.density import init_params, make_loss_fn
    from pxd.training import init_state, make_optimizer, make_train_step

    out = {}
    tx = make_optimizer(1e-3, 1.0)
    for label, devs in (("1_device", jax.devices()[:1]), ("all_devices", jax.devices())):
        m = devices.mesh(devs)
        params = init_params(model, x.shape[1:], key=jax.random.key(0))
        state = jax.device_put(init_state(params, {}, tx), devices.replicated(m))
        step = make_train_step(make_loss_fn(model), tx, 0.999)
        batch_x, _ = devices.shard_batch({"x": x[:batch]}, m)
        state, mt = step(state, batch_x, key=jax.random.key(1))
        jax.block_until_ready(mt)
        t = time.perf_counter()
        for _ in range(steps):
            state, mt = step(state, batch_x, key=jax.random.key(1))
        jax.block_until_ready(mt)
        ips = batch * steps / (time.perf_counter() - t)
        out[label] = {"devices": len(devs), "images_per_s": ips,
                      "epochs_per_hour": ips * 3600 / 50000}
    out["ratio_all_vs_1"] = out["all_devices"]["images_per_s"] / out["1_device"]["images_per_s"]
    out["batch"] = batch
    return out


def bench_attacks(lf, x: np.ndarray, y: np.ndarray, *, eps: float, batch: int,
                  opts: dict) -> dict:
    """Images/s of each attack, 1 device vs all devices, on the same images."""
    from pxd.classify import craft

    out = {}
    for name in ("rand", "fgsm", "bim", "deepfool", "cw", "pgd"):
        row = {}
        for label, devs in (("1_device", jax.devices()[:1]), ("all_devices", jax.devices())):
            m = devices.mesh(devs)
            kw = dict(eps=eps, key=jax.random.key(0), batch_size=batch, mesh=m,
                      **opts.get(name, {}))
            craft(name, lf, x[:batch], y[:batch], **kw)  # compile
            t = time.perf_counter()
            craft(name, lf, x, y, **kw)
            row[label] = len(x) / (time.perf_counter() - t)
        row["ratio_all_vs_1"] = row["all_devices"] / row["1_device"]
        out[name] = row
    return out


def bench_clf_training(x: np.ndarray, y: np.ndarray, *, steps: int) -> dict:
    """Seconds per CIFAR-10 epoch of the cpu ResNet for each training technique."""
    from pxd.classify import (
        build_classifier,
        clf_config,
        init_variables,
        make_clf_loss_fn,
        make_clf_optimizer,
    )
    from pxd.training import init_state, make_train_step

    out = {}
    m = devices.mesh()
    for training in ("normal", "adv-fgsm", "adv-bim", "label-smoothing"):
        cfg = clf_config("cifar10", "resnet", training, "cpu")
        model = build_classifier(cfg)
        var = init_variables(model, x.shape[1:], key=jax.random.key(0))
        tx = make_clf_optimizer(cfg)
        state = jax.device_put(init_state(var["params"], var.get("batch_stats", {}), tx),
                               devices.replicated(m))
        step = make_train_step(make_clf_loss_fn(model, cfg), tx, 0.0)
        bs = min(cfg.batch_size, len(x))
        batch, _ = devices.shard_batch({"x": x[:bs], "y": y[:bs]}, m)
        state, mt = step(state, batch, key=jax.random.key(1))
        jax.block_until_ready(mt)
        t = time.perf_counter()
        for _ in range(steps):
            state, mt = step(state, batch, key=jax.random.key(1))
            jax.block_until_ready(mt)
        ips = bs * steps / (time.perf_counter() - t)
        out[training] = {"batch": bs, "images_per_s": ips, "seconds_per_epoch": 50000 / ips}
    return out


def run_bench_speed(*, density: str | None, preset: str = "cpu", n_fast: int = 64,
                    n_ref: int = 2, eps: int = 16, batch: int = 32, train_steps: int = 10,
                    attacks_too: bool = True, n_attack: int = 32,
                    data_dir: str | None = None, rep: Reporter | None = None) -> dict:
    from pxd.density import build_model, density_config, init_params
    from pxd.errors import PxdError

    rep = rep or Reporter(quiet=True)
    x, _ = data.load(f"cifar10:test[:{max(n_fast, n_ref)}]", data_dir)
    if density is None:
        from pxd import shipped as zoo

        try:
            density = zoo.default_path("density", (32, 32, 3))
        except PxdError:
            rep.info("no shipped CIFAR-10 density model: timing an untrained one")
    if density is not None:
        from pxd.store import load_density

        model, params, cfg, _ = load_density(density)
        label = f"{density} (preset {cfg.preset})"
    else:
        model = build_model(density_config("cifar10", preset).model, 3)
        params = init_params(model, (32, 32, 3), key=jax.random.key(0))
        label = f"untrained {preset} preset"
    res = {"machine": machine(), "model": label, "date": time.strftime("%Y-%m-%d")}
    rep.info(f"purification speed: {label}")
    res["purify"] = bench_purify(model, params, x[:n_fast], eps=eps, n_ref=n_ref, batch=batch,
                                 rep=rep)
    rep.info("training speed: 1 device vs all devices")
    res["train"] = bench_train(model, x, batch=batch, steps=train_steps)
    if attacks_too:
        from pxd.classify import load_classifier, make_logits_fn

        xa, ya = data.load(f"cifar10:test[:{n_attack}]", data_dir)
        rep.info("attack speed: 1 device vs all devices")
        try:
            from pxd import shipped as zoo

            clf_path = zoo.default_path("classifier", (32, 32, 3))
            cm, cv, _, _ = load_classifier(clf_path)
            lf = make_logits_fn(cm, cv["params"], cv.get("batch_stats", {}))
            res["attacks"] = bench_attacks(lf, xa, ya, eps=8.0, batch=min(n_attack, 100),
                                           opts={})
            res["attacks_model"] = clf_path
        except PxdError as e:
            rep.info(f"attack speed skipped: {e}")
        rep.info("classifier training speed per technique")
        xt, yt = data.load("cifar10:train[:128]", data_dir)
        res["clf_train"] = bench_clf_training(xt, yt, steps=train_steps)
    p, t = res["purify"], res["train"]
    rep.table("speed", ["measure", "value"], [
        ["machine", res["machine"]], ["model", label],
        ["reference purify img/s", p["reference_images_per_s"]],
        ["fast purify img/s", p["fast_images_per_s"]],
        ["speedup (same run)", p["speedup"]],
        ["identical outputs", f"{p['identical_on_reference_images']}/{p['reference_images']}"],
        ["first-difference gaps", ", ".join(f"{g:.1e}" for g in
                                             p["near_tie_gaps_of_differing_images"]) or "-"],
        ["floor img/s (2 forwards)", p["floor_images_per_s_two_forwards"]],
        ["train img/s, 1 device", t["1_device"]["images_per_s"]],
        ["train img/s, all devices", t["all_devices"]["images_per_s"]],
        ["train epochs/hour (all)", t["all_devices"]["epochs_per_hour"]],
    ])
    for name, r in res.get("attacks", {}).items():
        rep.text(f"attack {name}: {r['1_device']:.1f} img/s on 1 device, "
                 f"{r['all_devices']:.1f} on all ({r['ratio_all_vs_1']:.2f}x)")
    for name, r in res.get("clf_train", {}).items():
        rep.text(f"train-clf {name}: {r['images_per_s']:.0f} img/s, "
                 f"{r['seconds_per_epoch']:.0f} s per CIFAR-10 epoch")
    rep.json(res)
    return res
