"""The fast exact purifier against two plain forwards (its compute floor), per batch size,
on the default JAX devices; the figures behind BENCHMARKS' "The head was 3/4 of the fast
path" table (run there as `JAX_NUM_CPU_DEVICES=1 taskset -c 0 python tools/purify_floor.py`).

    python tools/purify_floor.py [--density NAME_OR_RUN | --untrained PRESET] [--data-dir DIR]
        [--batches 16,32] [--api]

`--untrained paper` times the paper preset's U-Net (random weights; none can be trained here)
on CIFAR-10, as `pxd bench --speed` does for its cached path. `--api` also times
`pxd.purify`, which spreads a batch over every JAX device as `pxd purify` and `pxd bench` do,
with `batch` images per device (so `JAX_NUM_CPU_DEVICES=2` on two cores purifies 2 x batch).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import pxd
from pxd.commands.bench.speed import timed
from pxd.core.purify import make_purifier
from pxd.models.pixelcnn import PixelCNN


def _seconds(fn, *args) -> float:
    timed(fn, *args)  # compile
    return timed(fn, *args)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--density", default="pixelcnn-c10-cpu-v4")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--batches", default="16,32,64,128")
    ap.add_argument("--eps", type=int, default=16)
    ap.add_argument("--untrained", default=None, help="a CIFAR-10 preset, e.g. paper")
    ap.add_argument("--api", action="store_true", help="also time pxd.purify on all devices")
    a = ap.parse_args()
    if a.untrained:
        from pxd.configs.pixelcnn import density_config
        from pxd.models.pixelcnn import build_model, init_params

        dcfg = density_config("cifar10", a.untrained)
        model = build_model(dcfg.model, 3)
        params, dataset = init_params(model, (32, 32, 3), key=jax.random.key(0)), "cifar10"
        d = pxd.Density(model, params, dcfg, f"untrained {a.untrained}", {})
    else:
        d = pxd.load_density(a.density)
        model, params, dataset = d.model, d.params, d.config.dataset
    batches = [int(b) for b in a.batches.split(",")]
    n_dev = jax.device_count()
    x, _ = pxd.load_dataset(f"{dataset}:test[:{max(batches) * n_dev}]", data_dir=a.data_dir)
    fast = make_purifier(model, "auto", max_eps=a.eps)
    feat = jax.jit(lambda p, xb: model.apply({"params": p}, xb, method=PixelCNN.features))
    for b in batches:
        e = jnp.full((b,), a.eps, jnp.int32)
        fast_ips = b / _seconds(fast, params, x[:b], e)
        floor_ips = b / (2 * _seconds(feat, params, x[:b]))
        print(f"batch {b}: fast {fast_ips:.3g} img/s, floor {floor_ips:.3g} img/s, "
              f"ratio {fast_ips / floor_ips:.2f}", flush=True)
    for b in batches if a.api else []:
        n = b * n_dev

        def run(xb, n=n):
            return pxd.purify(xb, a.eps, density=d, batch_size=n)

        api_s = _seconds(run, x[:n])
        print(f"pxd.purify, {n_dev} device(s), {b} images each: {n / api_s:.3g} img/s "
              f"({n} images in {api_s:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
