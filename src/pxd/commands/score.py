"""`pxd score`: bits/dim of images, and detection against a clean reference set."""

from __future__ import annotations

import os

import numpy as np

from pxd.commands.common import bpd_with_progress, load_input
from pxd.configs.base import config_from
from pxd.configs.commands import ScoreConfig
from pxd.core import metrics
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import files, imageio
from pxd.storage.runs import resolve_density


def run_score(cfg: ScoreConfig | list[str], *, rep: Reporter | None = None,
              **options) -> dict:
    """Bits/dim of each input (and ROC AUC and p-values against `reference`); with
    `plot_dir`, figures and the resolved config (config.json) go there. `cfg`: a ScoreConfig,
    or the inputs with the other fields as keywords."""
    if not isinstance(cfg, ScoreConfig):
        cfg = tuple(cfg)
    cfg = config_from(ScoreConfig, cfg, "inputs", **options)
    inputs, density, reference = list(cfg.inputs), cfg.density, cfg.reference
    plot_dir, data_dir, batch_size = cfg.plot_dir, cfg.data_dir, cfg.batch_size
    rep = rep or Reporter(quiet=True)
    if not inputs:
        raise PxdError("give at least one INPUT (file, folder or dataset spec)")
    if batch_size < 1:
        raise PxdError(f"--batch-size must be positive, got {batch_size}")
    if plot_dir is not None:
        imageio.check_writable(plot_dir, "--plot", folder=True)
    sets = {name: load_input(name, data_dir)[0] for name in inputs}
    shapes = {x.shape[1:] for x in sets.values()}
    if len(shapes) != 1:
        raise PxdError(f"inputs have different image shapes: {sorted(shapes)}")
    from pxd import api

    model, params, dcfg, meta, dpath = resolve_density(density, next(iter(shapes)))
    dens = api.Density(model, params, dcfg, dpath, meta)
    ref_bpd = None
    if reference is not None:
        xr, _ = load_input(reference, data_dir)
        if xr.shape[1:] != next(iter(shapes)):
            raise PxdError(f"reference images are {xr.shape[1:]}, inputs {next(iter(shapes))}")
        ref_bpd = bpd_with_progress(dens, xr, rep, "reference", batch_size)
    result = {"density": dpath, "inputs": {}}
    if ref_bpd is not None:
        result["reference"] = dict(metrics.summary(ref_bpd), spec=reference)
    rows, curves, hists = [], {}, {}
    if ref_bpd is not None:
        hists[f"reference {reference}"] = ref_bpd.tolist()
    for name, x in sets.items():
        bpd = bpd_with_progress(dens, x, rep, name, batch_size)
        entry = dict(metrics.summary(bpd), bpd=[float(b) for b in bpd])
        hists[name] = bpd.tolist()
        row = [name, entry["n"], entry["mean"], entry["median"], entry["q05"], entry["q95"]]
        if ref_bpd is not None:
            auc = metrics.roc_auc(ref_bpd, bpd)
            entry["roc_auc"] = auc
            entry["p_values"] = metrics.p_values(ref_bpd, bpd).tolist()
            fpr, tpr = metrics.roc_curve(ref_bpd, bpd)
            curves[name] = (fpr, tpr, auc)
            row.append(auc)
        result["inputs"][name] = entry
        rows.append(row)
    cols = ["input", "n", "mean bpd", "median", "q05", "q95"]
    if ref_bpd is not None:
        cols.append("ROC AUC vs reference")
        rows.insert(0, [f"reference {reference}", len(ref_bpd), float(np.mean(ref_bpd)),
                        float(np.median(ref_bpd)), float(np.quantile(ref_bpd, 0.05)),
                        float(np.quantile(ref_bpd, 0.95)), "-"])
    rep.table(f"bits/dim under {os.path.basename(os.path.normpath(dpath))}", cols, rows)
    if plot_dir is not None:
        from pxd.report import plots

        os.makedirs(plot_dir, exist_ok=True)
        files.write_config(plot_dir, cfg)
        plots.bpd_histograms(os.path.join(plot_dir, "bpd_hist.png"), hists)
        if curves:
            plots.roc_curves(os.path.join(plot_dir, "roc.png"), curves,
                             title="BPD detector (reference negative)")
        rep.done(f"plots written to {plot_dir}")
    rep.json(result)
    return result
