"""`pxd bench --speed` (and `make bench`): throughput measured against a baseline in the same run.

- purification: the literal Algorithm 1 (one forward per sub-pixel) against the fast exact
  path on the same images, outputs compared; plus the compute floor (plain forwards).
- density training: images/s of the train step on one device against all devices.
- attacks (speed_attacks.py): pxd against an eager baseline, first calls and warm.
- classifier training: s per epoch per technique; adversarial BIM over normal as a ratio.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from pxd.engine import devices
from pxd.engine.devices import machine
from pxd.report.terminal import Reporter
from pxd.storage import data


def timed(fn, *args, **kwargs):
    """(fn(*args) ready, its wall seconds); call once first to time without the compile."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - t


def bench_purify(model, params, x: np.ndarray, *, eps: int, n_ref: int, batch: int,
                 rep: Reporter) -> dict:
    """Fast purifier against the literal Algorithm 1, both on the path the product runs
    (`engine.batched.purify_batches`: chunks of `batch` rows, one program per device)."""
    from pxd.core.purify import first_difference_gaps, make_purifier
    from pxd.engine.batched import purify_batches
    from pxd.models.pixelcnn import PixelCNN

    ndev = devices.mesh().devices.size
    e = np.full(len(x), eps, np.int32)
    fast = make_purifier(model, "auto", max_eps=eps)
    ref = make_purifier(model, "reference")
    kr = min(n_ref, len(x))
    ref_batch = -(-kr // ndev)  # every device decodes a share of the reference images

    def run(fn, k, b):
        return purify_batches(fn, params, x[:k], e[:k], b)

    # first calls compile (on every device that gets a chunk); the second are timed
    run(fast, min(len(x), batch * ndev), batch)
    fast_out, t_fast = timed(run, fast, len(x), batch)
    rep.info(f"reference decode of {kr} images ({np.prod(x.shape[1:])} forwards each)...")
    run(ref, kr, ref_batch)
    ref_out, t_ref = timed(run, ref, kr, ref_batch)
    feat = jax.jit(lambda p, xx: model.apply({"params": p}, xx, method=PixelCNN.features))
    k_fwd = min(len(x), batch * ndev)
    devices.map_batches(feat, (x[:k_fwd],), batch, consts=params)
    _, t_fwd = timed(devices.map_batches, feat, (x[:k_fwd],), batch, consts=params)
    floor_ips = k_fwd / (2 * t_fwd)
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


def _compiled(fn, *args):
    """Ahead-of-time compiled `fn` for these argument shapes, and the compile seconds."""
    t = time.perf_counter()
    c = jax.jit(fn).lower(*args).compile()
    return c, time.perf_counter() - t


def bench_unet_purify(x: np.ndarray, x_adv: np.ndarray | None, *, n_batch: int, eps: int,
                      positions: int, model_over: dict | None = None, rep: Reporter) -> dict:
    """The U-Net (`paper` preset, untrained: no paper-size model ships) on one device:
    the cached path at a batch of `n_batch` images against Jacobi (whole-image fixed-point
    iteration, one image at a time, with its forwards counted on clean and attacked
    images) and the literal reference, timed on its first `positions` sub-pixels and
    scaled to the image; plus two plain forwards as the compute floor. Outputs compared."""
    import jax.numpy as jnp

    from pxd.configs.pixelcnn import density_config
    from pxd.core.purify import (
        first_difference_gaps,
        purify_jacobi,
        purify_reference,
        purify_unet,
    )
    from pxd.models.pixelcnn import PixelCNN, build_model, init_params

    model = build_model(dict(density_config("cifar10", "paper").model, **(model_over or {})),
                        x.shape[-1])
    params = init_params(model, x.shape[1:], key=jax.random.key(0))
    sub = int(np.prod(x.shape[1:]))
    xb = np.resize(x, (n_batch,) + x.shape[1:])  # the first images, repeated to the batch
    eb = jnp.full((n_batch,), eps, jnp.int32)
    e1 = jnp.full((1,), eps, jnp.int32)
    rep.info(f"paper preset: cached purify of {n_batch} images (compiling)...")
    cached, t_c = _compiled(lambda p, a, e: purify_unet(model, p, a, e, max_eps=eps),
                            params, xb, eb)
    out_b, t_cached = timed(cached, params, xb, eb)
    out_b = np.asarray(out_b)
    feat, _ = _compiled(lambda p, a: model.apply({"params": p}, a, method=PixelCNN.features),
                        params, xb)
    _, t_fwd = timed(feat, params, xb)
    jac, t_jc = _compiled(lambda p, a, e: purify_jacobi(model, p, a, e, max_eps=eps,
                                                        return_iters=True),
                          params, x[:1], e1)
    cached1 = cached if n_batch == 1 else _compiled(
        lambda p, a, e: purify_unet(model, p, a, e, max_eps=eps), params, x[:1], e1)[0]
    jacobi = []
    sets = [("clean", x)] + ([("attacked", x_adv)] if x_adv is not None else [])
    for kind, xs in sets:
        for i in range(len(xs)):
            rep.info(f"paper preset: Jacobi purify, {kind} image {i}...")
            (o, iters), dt = timed(jac, params, xs[i : i + 1], e1)
            mine = np.asarray(cached1(params, xs[i : i + 1], e1))
            o = np.asarray(o)
            gaps = first_difference_gaps(model, params, xs[i : i + 1], o, mine, eps)
            jacobi.append(dict(kind=kind, forwards=int(iters), seconds=dt,
                               same_as_cached=bool(np.array_equal(o, mine)),
                               near_tie_gaps=gaps))
    rep.info(f"paper preset: literal reference on the first {positions} sub-pixels...")
    ref, _ = _compiled(lambda p, a, e: purify_reference(model, p, a, e, positions=positions),
                       params, x[:1], e1)
    ref_out, t_ref = timed(ref, params, x[:1], e1)
    flat = np.asarray(ref_out).reshape(-1)[:positions]
    cached_ips = n_batch / t_cached
    ref_ips = 1.0 / (t_ref * sub / positions)
    jac_ips = len(jacobi) / sum(r["seconds"] for r in jacobi)
    return {
        "model": f"untrained paper preset{' ' + str(model_over) if model_over else ''}",
        "parameters": int(sum(a.size for a in jax.tree_util.tree_leaves(params))),
        "eps": eps, "device": str(jax.devices()[0]),
        "cached_batch": n_batch, "cached_images_per_s": cached_ips,
        "cached_compile_s": t_c,
        "floor_images_per_s_two_forwards": n_batch / (2 * t_fwd),
        "fraction_of_floor": cached_ips * 2 * t_fwd / n_batch,
        "jacobi": jacobi, "jacobi_images_per_s": jac_ips, "jacobi_compile_s": t_jc,
        "reference_positions_timed": positions, "reference_images_per_s_scaled": ref_ips,
        "reference_prefix_same_as_cached": bool(np.array_equal(
            flat, out_b[0].reshape(-1)[:positions])),
        "cached_vs_jacobi": cached_ips / jac_ips, "cached_vs_reference": cached_ips / ref_ips,
    }


def _steps_per_s(step, state, batch, steps: int) -> float:
    """Training steps per second on one batch, after a first (compiling) step; steps are
    dispatched back to back as the trainer does, and the clock stops when the last is done."""
    state, mt = step(state, batch, key=jax.random.key(1))
    jax.block_until_ready(mt)
    t = time.perf_counter()
    for _ in range(steps):
        state, mt = step(state, batch, key=jax.random.key(1))
    jax.block_until_ready(mt)
    return steps / (time.perf_counter() - t)


def bench_train(model, x: np.ndarray, *, batch: int, steps: int) -> dict:
    from pxd.core.losses import make_density_loss_fn as make_loss_fn
    from pxd.core.training import init_state, make_optimizer, make_train_step
    from pxd.models.pixelcnn import init_params

    out = {}
    tx = make_optimizer(1e-3, 1.0)
    for label, devs in (("1_device", jax.devices()[:1]), ("all_devices", jax.devices())):
        m = devices.mesh(devs)
        params = init_params(model, x.shape[1:], key=jax.random.key(0))
        state = jax.device_put(init_state(params, {}, tx), devices.replicated(m))
        step = make_train_step(make_loss_fn(model), tx, 0.999)
        batch_x, _ = devices.shard_batch({"x": x[:batch]}, m)
        ips = batch * _steps_per_s(step, state, batch_x, steps)
        out[label] = {"devices": len(devs), "images_per_s": ips,
                      "epochs_per_hour": ips * 3600 / 50000}
    out["ratio_all_vs_1"] = out["all_devices"]["images_per_s"] / out["1_device"]["images_per_s"]
    out["batch"] = batch
    return out


def bench_clf_training(x: np.ndarray, y: np.ndarray, *, steps: int) -> dict:
    """Seconds per CIFAR-10 epoch of the cpu ResNet for each training technique."""
    from pxd.configs.classifier import clf_config
    from pxd.core.losses import make_clf_loss_fn
    from pxd.core.training import init_state, make_clf_optimizer, make_train_step
    from pxd.models.classifiers import build_classifier, init_variables

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
        ips = bs * _steps_per_s(step, state, batch, steps)
        out[training] = {"batch": bs, "images_per_s": ips, "seconds_per_epoch": 50000 / ips}
    return out


def _paper_part(x, n_images, positions, over, eps, data_dir, rep) -> dict:
    """bench_unet_purify on the first two test images and their FGSM (eps 8) versions
    against the default classifier when one ships."""
    from pxd import api
    from pxd.errors import PxdError

    xs = x[:2]
    x_adv = None
    try:
        _, ys = data.load("cifar10:test[:2]", data_dir)
        x_adv = api.attack(xs, ys, "fgsm", eps=8, clf=api.load_classifier(), batch_size=2)
    except PxdError as e:
        rep.info(f"paper preset: no attacked images ({e})")
    return bench_unet_purify(xs, x_adv, n_batch=n_images, eps=eps, positions=positions,
                             model_over=over, rep=rep)


def run_bench_speed(*, density: str | None, preset: str = "cpu", n_fast: int = 64,
                    n_ref: int = 2, eps: int = 16, batch: int = 32, train_steps: int = 10,
                    attacks_too: bool = True, n_attack: int = 100, paper_images: int = 16,
                    paper_positions: int = 12, paper_over: dict | None = None,
                    data_dir: str | None = None, rep: Reporter | None = None) -> dict:
    from pxd.configs.pixelcnn import density_config
    from pxd.errors import PxdError
    from pxd.models.pixelcnn import build_model, init_params

    rep = rep or Reporter(quiet=True)
    x, _ = data.load(f"cifar10:test[:{max(n_fast, n_ref)}]", data_dir)
    if density is None:
        from pxd.storage import shipped as zoo

        try:
            density = zoo.default_path("density", (32, 32, 3))
        except PxdError:
            rep.info("no shipped CIFAR-10 density model: timing an untrained one")
    if density is not None:
        from pxd.storage.runs import load_density

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
    if paper_images > 0:
        res["purify_paper"] = _paper_part(x, paper_images, paper_positions, paper_over, eps,
                                          data_dir, rep)
    rep.info("training speed: 1 device vs all devices")
    res["train"] = bench_train(model, x, batch=batch, steps=train_steps)
    if attacks_too:
        from pxd.models.classifiers import make_logits_fn
        from pxd.storage.runs import load_classifier

        xa, ya = data.load(f"cifar10:test[:{n_attack}]", data_dir)
        try:
            from pxd.storage import shipped as zoo

            clf_path = zoo.default_path("classifier", (32, 32, 3))
            cm, cv, _, _ = load_classifier(clf_path)
            lf = make_logits_fn(cm, cv["params"], cv.get("batch_stats", {}))
            from pxd.commands.bench.speed_attacks import bench_attacks, bench_old_loop

            res["attacks"] = bench_attacks(lf, xa, ya, eps=8.0, batch=min(n_attack, 100),
                                           rep=rep)
            rep.info("attack speed: BIM in a lax loop (before issue 12) vs pxd")
            res["attack_bim_lax_loop"] = bench_old_loop(lf, xa[:100], ya[:100], eps=8.0)
            res["attacks_model"] = clf_path
        except PxdError as e:
            rep.info(f"attack speed skipped: {e}")
        rep.info("classifier training speed per technique")
        xt, yt = data.load("cifar10:train[:128]", data_dir)
        res["clf_train"] = bench_clf_training(xt, yt, steps=train_steps)
        ct = res["clf_train"]
        res["clf_train"]["adv_bim_vs_normal"] = (ct["adv-bim"]["seconds_per_epoch"]
                                                 / ct["normal"]["seconds_per_epoch"])
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
    if "purify_paper" in res:
        q = res["purify_paper"]
        fw = ", ".join(f"{r['kind']} {r['forwards']}" for r in q["jacobi"])
        rep.text(f"paper preset ({q['parameters'] / 1e6:.1f}M params, untrained): cached "
                 f"{q['cached_images_per_s']:.3g} img/s at batch {q['cached_batch']}, Jacobi "
                 f"{q['jacobi_images_per_s']:.3g} ({q['cached_vs_jacobi']:.1f}x; forwards: {fw}), "
                 f"reference {q['reference_images_per_s_scaled']:.2g} scaled from "
                 f"{q['reference_positions_timed']} sub-pixels ({q['cached_vs_reference']:.0f}x); "
                 f"{q['fraction_of_floor']:.2f} of the two-forward floor")
    if res.get("attacks"):
        from pxd.commands.bench.speed_attacks import attack_rows

        rep.table("attacks at eps 8, s per call (first: in this process; new eps: eps 16 "
                  "after 8, then again)",
                  ["attack", "pxd first", "pxd warm", "pxd eps 16", "pxd eps 16 again",
                   "eager first", "eager warm", "eager eps 16", "warm ratio", "same images"],
                  attack_rows(res["attacks"]))
    if "attack_bim_lax_loop" in res:
        r = res["attack_bim_lax_loop"]
        rep.text(f"BIM eps 8: pxd {r['pxd_images_per_s']:.1f} img/s, lax loop "
                 f"{r['lax_loop_images_per_s']:.1f} ({r['ratio']:.2f}x)")
    for name, r in res.get("clf_train", {}).items():
        if isinstance(r, dict):
            rep.text(f"train-clf {name}: {r['images_per_s']:.0f} img/s, "
                     f"{r['seconds_per_epoch']:.0f} s per CIFAR-10 epoch")
    if "clf_train" in res:
        rep.text(f"adversarial BIM training / normal: {res['clf_train']['adv_bim_vs_normal']:.1f}x")
    rep.json(res)
    return res
