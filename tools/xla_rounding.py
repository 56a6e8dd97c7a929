"""Show how XLA:CPU's rounding depends on a batch's shape (why `pxd.models.guard` exists).

Two facts behind docs/BENCHMARKS.md "Same arrays whatever the device count", measured on
this machine with random inputs (no model, no data):

1. tail rows: a convolution's outputs for the real images, computed alone and with random
   images appended after them. On some CPUs (AVX2 EPYC) the last output rows (batch x height
   x width) take another code path and other rounding; appended images move that tail off
   the real ones.
2. shape-chosen algorithms: a VALID 2x3 convolution giving one output pixel, the first 6
   images computed in batches of several sizes; differing bits mean the algorithm changed.

    python tools/xla_rounding.py [--quick]

Prints one line per differing case and a count; exit status 0 either way (a fact, not a test).
"""
from __future__ import annotations

import argparse
import itertools
import platform

import jax
import numpy as np
from jax import lax


def conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


_conv = jax.jit(conv, static_argnums=2)


def tail_rows(quick: bool) -> int:
    """Cases where appending 8 images changes the real images' outputs; each is printed."""
    rng = np.random.default_rng(0)
    channels = (3, 16, 160) if quick else (3, 8, 16, 32, 64, 160)
    kernels = (1, 3) if quick else (1, 2, 3)
    sizes = (2, 8, 32) if quick else (2, 4, 8, 16, 32)
    batches = (1, 6, 16) if quick else (1, 2, 5, 6, 8, 16, 17, 32, 33)
    bad = 0
    for c, k, s, b in itertools.product(channels, kernels, sizes, batches):
        x = rng.standard_normal((b + 8, s, s, c), np.float32)
        w = rng.standard_normal((k, k, c, c), np.float32) / np.sqrt(k * k * c)
        alone = np.asarray(_conv(x[:b], w, "SAME"))
        padded = np.asarray(_conv(x, w, "SAME"))[:b]
        differ = np.flatnonzero(np.any(alone != padded, axis=-1).reshape(-1))
        if differ.size:
            bad += 1
            print(f"tail rows: channels {c}, kernel {k}x{k}, size {s}, batch {b}: "
                  f"{differ.size} of {b * s * s} output rows differ, "
                  f"first at row {differ[0]} (max |diff| {np.abs(alone - padded).max():.2e})")
    return bad


def shape_chosen(quick: bool) -> int:
    """Batch sizes at which the first 6 images' 2x3 VALID convolution changes bits."""
    rng = np.random.default_rng(1)
    c = 160
    x = rng.standard_normal((40, 2, 3, c), np.float32)
    w = rng.standard_normal((2, 3, c, c), np.float32) / np.sqrt(6 * c)
    ref = np.asarray(_conv(x[:6], w, "VALID"))
    groups: dict[bytes, list[int]] = {}
    for b in (range(6, 41, 2) if quick else range(6, 41)):
        out = np.asarray(_conv(x[:b], w, "VALID"))[:6]
        groups.setdefault(out.tobytes(), []).append(b)
    for i, (bits, bs) in enumerate(groups.items()):
        same = np.array_equal(np.frombuffer(bits, np.float32).reshape(ref.shape), ref)
        print(f"2x3 conv, 160 channels, first 6 images: result {i}"
              f"{' (= batch 6 alone)' if same else ''} at batches {bs}")
    return len(groups) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes (about a minute)")
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"jax {jax.__version__}, {jax.default_backend()}, {cpu}")
    tails = tail_rows(args.quick)
    algos = shape_chosen(args.quick)
    print(f"tail-row cases that differ: {tails}; extra 2x3-conv results beyond batch 6's: {algos}")


if __name__ == "__main__":
    main()
