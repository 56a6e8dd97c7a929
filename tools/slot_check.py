"""Does an image get the same numbers in every slot of a batch, on this machine, to the bit?

Shifts a batch of random images by a few slots and compares each image's outputs with its
outputs at the first position, for the shipped models at the batch sizes pxd runs them
(classifier logits and input gradients at 100 and 128, bits/dim at 32 and 64 (one function
serves the scorer and adaptive PixelDefend), purification at eps 16 at 32 and 64). `--no-guard`
turns `pxd.models.guard` off, to see what the guard images change on this CPU.

    python tools/slot_check.py [--no-guard] [--clf resnet-c10-normal,vgg-c10-normal]
        [--density pixelcnn-c10-cpu-v4] [--skip-purify]

A fact about this machine, not a test: prints OK or DIFFERS per check, exit status 0.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

SHIFTS = (1, 5, 19, 46, 60)


def check(name: str, fn, x: np.ndarray, b: int) -> None:
    base = np.asarray(fn(x[:b], 0))
    bad = 0
    for s in [s for s in SHIFTS if s < b]:
        out = np.asarray(fn(x[s:s + b], s))
        a, o = base[s:], out[:b - s]  # image i: slot i in base, slot i - s in out
        diff = np.flatnonzero(np.any((a != o).reshape(len(a), -1), axis=1)) + s
        bad += diff.size
        if diff.size:
            print(f"  {name} batch {b}, shifted {s}: {diff.size} images differ "
                  f"(e.g. {diff[:4].tolist()}), max |diff| {np.abs(a - o).max():.2e}")
    print(f"{name} batch {b}: {'OK' if bad == 0 else 'DIFFERS'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-guard", action="store_true", help="without guard images")
    ap.add_argument("--clf", default="resnet-c10-normal,vgg-c10-normal")
    ap.add_argument("--density", default="pixelcnn-c10-cpu-v4")
    ap.add_argument("--skip-purify", action="store_true")
    args = ap.parse_args()

    from pxd import api
    from pxd.core.likelihood import make_bpd_fn
    from pxd.core.purify import make_purifier

    if args.no_guard:
        from pxd.models import guard

        guard.set_enabled(False)
    t = time.time()
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, (200, 32, 32, 3)).astype(np.uint8)
    xf, y = x.astype(np.float32), rng.randint(0, 10, 200)
    for name in filter(None, args.clf.split(",")):
        f = api.load_classifier(name).logits_fn
        logits = jax.jit(f)
        grad = jax.jit(jax.grad(lambda a, t, f=f: jnp.sum(
            jax.nn.log_softmax(f(a))[jnp.arange(len(t)), t])))
        for b in (100, 128):
            check(f"{name} logits", lambda xb, s, lg=logits: lg(xb), xf, b)
            check(f"{name} input gradient",
                  lambda xb, s, b=b, g=grad: g(xb, y[s:s + b]), xf, b)
    d = api.load_density(args.density)
    bpd = jax.jit(lambda xb: make_bpd_fn(d.model)(d.params, xb))
    for b in (32, 64):
        check(f"{args.density} bits/dim", lambda xb, s: bpd(xb), xf, b)
    if not args.skip_purify:
        pur = make_purifier(d.model, "auto", max_eps=16)
        for b in (32, 64):
            e = jnp.full((b,), 16, jnp.int32)
            check(f"{args.density} purified eps 16", lambda xb, s, e=e: pur(d.params, xb, e),
                  x, b)
    print(f"jax {jax.__version__}, guards {'off' if args.no_guard else 'on'}, "
          f"{time.time() - t:.0f} s")


if __name__ == "__main__":
    main()
