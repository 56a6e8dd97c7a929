"""`pxd bench --speed`, the attacks: pxd against an eager baseline in the same run.

The baseline runs each attack as an eager library does (foolbox's way): a Python loop calling
one jitted step at a time on the default device (no sharding, no batch shrinking), exits
checked after every step. It is written with the attacks' public pieces (`bim_setup`,
`pgd_update`, `deepfool_step`, `cw_step`, ...) and their own defaults
(`ATTACKS[name].defaults()`), so it computes the same iterates as pxd, and the bench reports
whether the images agree. Per attack: the first call in this process (compiling), the warm
figure (the faster of two interleaved runs), and a first and a repeated call at a new eps
(16 after 8: their ratio is what a new setting costs in compilation).
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from pxd.core.attacks import (
    ATTACKS,
    as_pytree,
    budget,
    finish,
    sign_init,
    sign_update,
    xent_oracle,
)
from pxd.core.attacks.cw_l2 import cw_round_end, cw_round_init, cw_setup, cw_step
from pxd.core.attacks.deepfool_l2 import deepfool_result, deepfool_setup, deepfool_step
from pxd.core.attacks.grid import as_inputs
from pxd.core.attacks.sign import (
    bim_setup,
    pgd_init,
    pgd_judge,
    pgd_setup,
    pgd_start,
    pgd_update,
)
from pxd.report.terminal import Reporter

# options of the attacks timed at eps 8 (CW as in foolbox's 5 x 100 reference run)
ATTACK_SPEED_OPTS = {"bim": {}, "pgd": {}, "deepfool": {}, "cw": {"max_iterations": 100}}


@functools.cache
def _steps() -> dict:
    """The baseline's jitted single steps, compiled once per process."""
    cw_static = ("max_iterations", "learning_rate", "confidence", "quantize", "abort_early")
    return {
        "bim": jax.jit(sign_update),
        "pgd": jax.jit(pgd_update, static_argnames=("record",)),
        "pgd_judge": jax.jit(pgd_judge),
        "pgd_start": jax.jit(pgd_start),
        "deepfool": jax.jit(deepfool_step, static_argnames=("overshoot", "quantize")),
        "cw": jax.jit(cw_step, static_argnames=cw_static),
    }


def eager_baseline(name: str, lf, x, y, *, eps: float, key, opts: dict) -> np.ndarray:
    """`name` on (x, y) at `eps` as an eager library runs it; uint8 images as pxd's."""
    o = {**ATTACKS[name].defaults(), **opts}
    f, step = as_pytree(lf), _steps()
    if name == "bim":
        x0, y0, e, count, a = bim_setup(x, y, eps, o["steps"], o["alpha"])
        s = sign_init(x0)
        for _ in range(int(count.max())):
            s = step["bim"](f, s, x0, y0, e, a, count)
        return np.asarray(finish(s.x_adv, x0, e))
    if name == "pgd":
        oracle = xent_oracle(lf)
        x0, y0, e, a, count = pgd_setup(x, y, eps, o["steps"], o["alpha"])
        s = pgd_init(x0)
        for k in jax.random.split(key, max(1, o["restarts"])):
            s = step["pgd_start"](s, x0, e, k, o["random_start"])
            for _ in range(int(count.max())):
                s = step["pgd"](oracle, s, x0, y0, e, a, count)
            s = step["pgd_judge"](oracle, s, y0)
        return np.asarray(finish(s.best_x, x0, e))
    x0, y0 = as_inputs(x, y)
    e = budget(eps, x0.shape[0])
    if name == "deepfool":
        x0, y0, cand, s = deepfool_setup(f, x0, y0, o["num_classes"])
        for _ in range(o["max_iter"]):
            if not bool(s.active.any()):
                break
            s = step["deepfool"](f, s, x0, y0, cand, overshoot=o["overshoot"], quantize=True)
        return np.asarray(finish(deepfool_result(x0, s.r_tot, o["overshoot"]), x0, e))
    if name == "cw":
        kw = dict(max_iterations=o["max_iterations"], learning_rate=o["learning_rate"],
                  confidence=o["confidence"], quantize=True, abort_early=o["abort_early"])
        x0, y0, w0, st = cw_setup(x0, y0, o["initial_const"])
        for _ in range(o["search_steps"]):
            c = cw_round_init(st, w0, learning_rate=o["learning_rate"])
            while int(c.i) < o["max_iterations"] and not bool(c.stop.all()):
                c = step["cw"](f, c, x0, y0, st.const, **kw)
            st = cw_round_end(st, c)
        return np.asarray(finish(st.best_x, x0, e))
    raise ValueError(f"no eager baseline for {name!r}")


def _seconds(fn) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_attacks(lf, x: np.ndarray, y: np.ndarray, *, eps: float, batch: int,
                  rep: Reporter, opts: dict | None = None, new_eps: float = 16.0) -> dict:
    """Seconds and images/s of each iterative attack against the eager baseline, same images,
    same run: the first calls (pxd, then the baseline), calls at `new_eps` (pxd twice), then
    baseline, pxd, baseline, pxd warm (interleaved, so a change in the machine's load hits
    both; each warm figure is the faster of its two runs). pxd = `engine.batched.craft`, as
    `pxd.attack`, `pxd attack` and `pxd bench` run it (all devices)."""
    from pxd.engine.batched import craft

    opts = ATTACK_SPEED_OPTS if opts is None else opts
    x, y = x[:batch], y[:batch].astype(np.int32)
    key = jax.random.key(0)
    d0 = jax.devices()[0]
    xb, yb = jax.device_put(x, d0), jax.device_put(y, d0)
    out = {}
    for name, o in opts.items():
        rep.info(f"attack speed: {name} (pxd vs eager baseline), {len(x)} images")

        def base(e=eps, name=name, o=o):
            return eager_baseline(name, lf, xb, yb, eps=e, key=jax.random.fold_in(key, 0),
                                  opts=o)

        def ours(e=eps, name=name, o=o):
            return craft(name, lf, x, y, eps=e, key=key, batch_size=batch, **o)

        mine, t_first = _seconds(ours)
        ref, tb_first = _seconds(base)
        _, t_new = _seconds(lambda: ours(new_eps))
        _, t_new_again = _seconds(lambda: ours(new_eps))
        _, tb_new = _seconds(lambda: base(new_eps))
        tb, tp = [], []
        for _ in range(2):
            for fn, ts in ((base, tb), (ours, tp)):
                ts.append(_seconds(fn)[1])
        out[name] = {"options": o, "baseline_images_per_s": len(x) / min(tb),
                     "pxd_images_per_s": len(x) / min(tp), "ratio": min(tb) / min(tp),
                     "baseline_s": tb, "pxd_s": tp, "pxd_first_s": t_first,
                     "baseline_first_s": tb_first, "new_eps": new_eps,
                     "pxd_new_eps_s": t_new, "pxd_new_eps_repeat_s": t_new_again,
                     "new_eps_ratio": t_new / t_new_again, "baseline_new_eps_s": tb_new,
                     "same_images": bool(np.array_equal(ref, mine))}
    return out


def attack_rows(res: dict) -> list[list]:
    """The terminal table's rows of `bench_attacks`' result."""
    return [[name, r["pxd_first_s"], min(r["pxd_s"]), r["pxd_new_eps_s"],
             r["pxd_new_eps_repeat_s"], r["baseline_first_s"], min(r["baseline_s"]),
             r["baseline_new_eps_s"], r["ratio"], r["same_images"]] for name, r in res.items()]


def bench_old_loop(lf, x: np.ndarray, y: np.ndarray, *, eps: float) -> dict:
    """BIM as pxd ran it before issue 12 (the whole attack jitted, steps in a
    `lax.fori_loop`) against the host-driven steps, same images."""
    from pxd.engine.batched import craft

    f = as_pytree(lf)

    @jax.jit
    def old(f, x, y):
        x0, y0, e, count, a = bim_setup(x, y, eps, None, 1.0)
        body = lambda _, s: sign_update(f, s, x0, y0, e, a, count)  # noqa: E731
        s = jax.lax.fori_loop(0, count.max(), body, sign_init(x0))
        return finish(s.x_adv, x0, e)

    y = y.astype(np.int32)
    a = np.asarray(old(f, x, y))
    craft("bim", lf, x, y, eps=eps, key=jax.random.key(0), batch_size=len(x))
    t = time.perf_counter()
    old(f, x, y).block_until_ready()
    t_old = time.perf_counter() - t
    t = time.perf_counter()
    b = craft("bim", lf, x, y, eps=eps, key=jax.random.key(0), batch_size=len(x))
    t_new = time.perf_counter() - t
    return {"lax_loop_images_per_s": len(x) / t_old, "pxd_images_per_s": len(x) / t_new,
            "ratio": t_old / t_new, "same_images": bool(np.array_equal(a, b))}
