"""Wall time of the public API's batched jobs on the shipped models: purify 64 images (eps 16),
bits/dim and logits of 256, BIM at eps 8 on 128. Best of two timed calls after one that
compiles; prints one JSON line. To compare two versions of pxd on one machine, run it once
per source tree: `PYTHONPATH=OTHER/src python tools/api_timing.py`.
"""

import argparse
import json
import os
import time

import pxd
from pxd.engine import devices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("PXD_DATA_DIR"))
    args = ap.parse_args()
    devices.setup()
    x, y = pxd.load_dataset("cifar10:test[:256]", data_dir=args.data_dir)
    d, c = pxd.load_density(), pxd.load_classifier()
    jobs = {
        "purify 64 (eps 16)": lambda: pxd.purify(x[:64], eps=16, density=d),
        "bits/dim 256": lambda: pxd.bits_per_dim(x, density=d),
        "logits 256": lambda: c.logits(x),
        "BIM eps 8, 128": lambda: pxd.attack(x[:128], y[:128], "bim", eps=8, clf=c),
    }
    out = {}
    for name, f in jobs.items():
        f()  # compiles
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        out[name] = round(min(times), 3)
    print(json.dumps(dict(out, pxd=os.path.dirname(pxd.__file__), machine=devices.machine())))


if __name__ == "__main__":
    main()
