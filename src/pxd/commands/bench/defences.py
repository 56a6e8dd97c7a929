"""The defences as functions of uint8 arrays (`Defences`: feature squeezing, PixelDefend,
adaptive PixelDefend, every purification and bits/dim cached) and adaptive PixelDefend's
bits/dim threshold."""

from __future__ import annotations

import numpy as np

from pxd.commands.bench.cache import Cache, digest, entry_name
from pxd.commands.bench.paper import THRESHOLD_IMAGES, THRESHOLD_MARGIN
from pxd.commands.bench.plan import Plan
from pxd.configs.commands import BenchConfig
from pxd.configs.datasets import DATASETS
from pxd.core.likelihood import make_bpd_fn
from pxd.core.purify import make_purifier
from pxd.engine.batched import evaluate_bpd, purify_batches, squeeze_batches
from pxd.report.terminal import Reporter
from pxd.storage import data


class Defences:
    """The defences as functions of uint8 arrays, every purification and bits/dim cached."""

    def __init__(self, cache: Cache, dens: dict | None, p: Plan, batch_size: int,
                 rep: Reporter):
        self.cache, self.dens, self.rep = cache, dens, rep
        self.e_def, self.names, self.batch_size = p.eps_defend, p.defences, batch_size
        self.bpd_jit = make_bpd_fn(dens["model"]) if dens else None
        self.threshold: float | None = None  # adaptive PixelDefend's, set by set_threshold
        self.purify_fn = None
        needs_density = any(d in p.defences for d in ("pixeldefend", "adaptive-pixeldefend"))
        if dens is not None and p.eps_defend > 0 and needs_density:
            self.purify_fn = make_purifier(dens["model"], "auto", max_eps=p.eps_defend)

    def bpd(self, xs: np.ndarray) -> np.ndarray:
        dens = self.dens
        name = entry_name("bpd", digest(xs)[:16], dens["digest"][:12],
                          batch_size=self.batch_size)
        return self.cache.get("bpd", name,
                              {"input": digest(xs), "density": dens["digest"]},
                              lambda: evaluate_bpd(self.bpd_jit, dens["params"], xs,
                                                   self.batch_size))

    def purified(self, xs: np.ndarray, label: str) -> np.ndarray:
        """PixelDefend(xs) with eps_defend, cached by input digest."""
        e_def, dens = self.e_def, self.dens
        if e_def == 0 or len(xs) == 0:
            return xs.copy()
        name = entry_name("pur", digest(xs)[:16], "pixeldefend", e_def, dens["digest"][:12],
                          batch_size=self.batch_size)

        def compute():
            eb = np.full(len(xs), e_def, np.int32)
            with self.rep.progress(f"purify {label}", total=len(xs)) as advance:
                return purify_batches(self.purify_fn, dens["params"], xs, eb, self.batch_size,
                                      on_batch=advance)

        return self.cache.get("purified", name, {"input": digest(xs), "eps_defend": e_def,
                                                  "density": dens["digest"]}, compute)

    def apply(self, d: str, xs: np.ndarray, label: str) -> np.ndarray:
        if d == "none":
            return xs
        if d == "feature-squeeze":
            return squeeze_batches(xs)
        if d == "pixeldefend":
            return self.purified(xs, label)
        over = self.bpd(xs) > self.threshold  # adaptive: purify only the unlikely images
        if "pixeldefend" in self.names:
            return np.where(over[:, None, None, None], self.purified(xs, label), xs)
        res = xs.copy()
        res[over] = self.purified(xs[over], label)
        return res


def adaptive_threshold(cfg: BenchConfig, n: int, dataset: str, defs: Defences,
                       rep: Reporter) -> tuple[float | None, str | None]:
    """Adaptive PixelDefend's bits/dim threshold and how it was set: given, or the mean
    clean bits/dim of THRESHOLD_IMAGES images disjoint from the evaluated ones + the margin."""
    if defs.dens is None or "adaptive-pixeldefend" not in defs.names:
        return None, None
    if cfg.adaptive_threshold is not None:
        threshold, how = float(cfg.adaptive_threshold), "given (--adaptive-threshold)"
    else:
        size = DATASETS[dataset].splits["test"]
        vspec = (f"{dataset}:test[-{THRESHOLD_IMAGES}:]" if n + THRESHOLD_IMAGES <= size
                 else f"{dataset}:train[:{THRESHOLD_IMAGES}]")
        xv, _ = data.load(vspec, cfg.data_dir)
        mean_v = float(np.mean(defs.bpd(xv)))
        threshold = mean_v + THRESHOLD_MARGIN
        how = (f"mean clean bits/dim of {vspec} ({mean_v:.4f}) + "
               f"{THRESHOLD_MARGIN} (the paper: 3.2 against a mean of 3.0)")
    rep.info(f"adaptive threshold {threshold:.4f} bits/dim: {how}")
    return threshold, how
