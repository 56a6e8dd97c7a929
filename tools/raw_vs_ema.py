"""Test bits/dim of density runs' raw (non-EMA) and EMA weights at their last checkpoint:
the no-EMA recipe without a second training (the EMA does not feed back into training).

    python tools/raw_vs_ema.py RUN [RUN ...] [--data-dir DIR] [--n 10000]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import pxd
from pxd.configs import base
from pxd.configs.datasets import DATASETS
from pxd.configs.pixelcnn import DensityConfig
from pxd.core.likelihood import make_bpd_fn
from pxd.engine.batched import evaluate_bpd
from pxd.engine.jobs import template_state
from pxd.models.pixelcnn import build_model
from pxd.storage import checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=10000)
    a = ap.parse_args()
    for run in a.runs:
        cfg = base.load_json(DensityConfig, f"{run}/config.json")
        x, _ = pxd.load_dataset(f"{cfg.dataset}:test[:{a.n}]", data_dir=a.data_dir)
        step, st = checkpoint.restore_state(run, template_state(cfg))
        bpd = make_bpd_fn(build_model(cfg.model, DATASETS[cfg.dataset].shape[-1]))
        raw = float(np.mean(evaluate_bpd(bpd, st.params, x, 64)))
        ema = float(np.mean(evaluate_bpd(bpd, st.ema, x, 64)))
        print(json.dumps(dict(run=run, step=int(step), raw=raw, ema=ema)), flush=True)


if __name__ == "__main__":
    main()
