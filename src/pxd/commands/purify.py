"""`pxd purify`: PixelDefend (plain or adaptive) or feature squeezing, chunked and resumable.

Without --out the result goes to INPUT.purified.npz beside the input (a folder `imgs/` ->
`imgs.purified.npz`; a dataset spec -> e.g. `cifar10_test_4.purified.npz` in the working
folder). PixelDefend runs through the public API (`pxd.purify`, the default fast exact
path of `core.purify`). Finished chunks
wait in OUT.partial/ (with job.json, the settings they belong to) until the whole output is
written, so --resume continues an interrupted run and a run with other settings starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time

import numpy as np

from pxd.commands.common import load_input
from pxd.configs.base import check_eps, config_from, to_json
from pxd.configs.commands import PurifyConfig
from pxd.engine import devices
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import files, imageio
from pxd.storage.runs import resolve_density

METHODS = ("pixeldefend", "feature-squeeze")


def purify_array(density, x: np.ndarray, eps: np.ndarray, *, batch_size: int = 32,
                 on_batch=None) -> np.ndarray:
    """One chunk through the public API (the CLI and library users share one path)."""
    from pxd import api

    return api.purify(x, eps, density=density, batch_size=batch_size, on_batch=on_batch)


def _partial_state(part_dir: str, job: str) -> tuple[bool, bool]:
    """(OUT.partial exists, it belongs to this job)."""
    if not os.path.isdir(part_dir):
        return False, False
    try:
        return True, files.read_json(os.path.join(part_dir, "job.json")).get("job") == job
    except PxdError:
        return True, False


def _read_chunk(path: str, xc: np.ndarray, with_bpd: bool, in_ball: bool) -> dict | None:
    """A finished chunk's arrays, or None when it is missing, unreadable or not this
    chunk's (wrong members, shapes or types; PixelDefend's outside the eps-ball): then it
    is recomputed.
    A chunk is written atomically, so only damage from outside makes it unreadable."""
    if not os.path.isfile(path):
        return None
    keys = {"x", "eps"} | ({"bpd_before", "bpd_after"} if with_bpd else set())
    try:
        with np.load(path, allow_pickle=False) as z:
            if set(z.files) != keys:
                return None
            arrays = {k: z[k] for k in keys}
    except Exception:  # zip/CRC/header errors of a damaged file: recompute it
        return None
    xp, e = arrays["x"], arrays["eps"]
    if xp.dtype != np.uint8 or xp.shape != xc.shape or e.shape != (len(xc),):
        return None
    if e.dtype.kind not in "iu" or (in_ball and (np.abs(xp.astype(int) - xc.astype(int))
                                             .reshape(len(xc), -1).max(1) > e).any()):
        return None
    if with_bpd and any(arrays[k].shape != (len(xc),) for k in ("bpd_before", "bpd_after")):
        return None
    return arrays


def _job_id(x: np.ndarray, settings: dict) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def run_purify(cfg: PurifyConfig | str, out: str | None = None, *,
               rep: Reporter | None = None, **options) -> dict:
    """Purify INPUT into OUT (.npz: x, x_input, eps, y, bpd_before/after, config).

    `cfg`: a PurifyConfig, or the input with the other fields as keywords (unknown keys are
    errors). The resolved config is saved in the output as its `config` member (JSON)."""
    cfg = config_from(PurifyConfig, cfg, "input", out=out, **options)
    input_spec, out, eps, method = cfg.input, cfg.out, cfg.eps, cfg.method
    density, adaptive_threshold, grid = cfg.density, cfg.adaptive_threshold, cfg.grid
    resume, chunk, batch_size, data_dir = cfg.resume, cfg.chunk, cfg.batch_size, cfg.data_dir
    rep = rep or Reporter(quiet=True)
    if method not in METHODS:
        raise PxdError(f"unknown method '{method}' (choose from {', '.join(METHODS)})")
    if out is None:
        out = imageio.default_output(input_spec, "purified")
        cfg = dataclasses.replace(cfg, out=out)
    if not out.endswith(".npz"):
        raise PxdError(f"--out must name a .npz file, got {out}")
    e = check_eps(eps)
    if chunk < 1 or batch_size < 1:
        raise PxdError("--chunk and --batch-size must be positive")
    if grid is not None and not grid.lower().endswith(".png"):
        raise PxdError(f"--grid must name a .png file, got {grid}")
    x, y = load_input(input_spec, data_dir)
    imageio.check_writable(out, "--out")
    if grid is not None:
        imageio.check_writable(grid, "--grid")
    need_density = method == "pixeldefend" or density is not None
    from pxd import api

    dens = dpath = None
    if need_density:
        model, params, dcfg, dmeta, dpath = resolve_density(density, x.shape[1:])
        dens = api.Density(model, params, dcfg, dpath, dmeta)
    if adaptive_threshold is not None and method != "pixeldefend":
        raise PxdError("--adaptive-threshold applies to --method pixeldefend only")

    settings = {"eps": e, "method": method, "density": dpath, "threshold": adaptive_threshold,
                "chunk": chunk}
    job = _job_id(x, settings)
    part_dir = out + ".partial"
    n = len(x)
    paths = [os.path.join(part_dir, f"chunk_{k:05d}.npz") for k in range(-(-n // chunk))]
    # several processes: all act on process 0's reading of the disk, process 0 alone writes
    exists, same = (bool(v) for v in devices.agree(np.array(_partial_state(part_dir, job))))
    if exists and (not resume or not same):
        if resume:
            raise PxdError(f"{part_dir} belongs to a different job; rerun without --resume")
        if files.primary():
            shutil.rmtree(part_dir)
        exists = False
    if not exists and resume:
        rep.info(f"nothing to resume at {part_dir}; starting")
    starts = range(0, n, chunk)
    saved = [_read_chunk(p, x[i : i + chunk], dens is not None, method == "pixeldefend")
             if exists else None for p, i in zip(paths, starts, strict=True)]
    done = devices.agree(np.array([c is not None for c in saved], bool))
    if files.primary():
        os.makedirs(part_dir, exist_ok=True)
    try:
        files.write_json(os.path.join(part_dir, "job.json"), {"job": job, **settings})
    except PxdError:
        if files.primary() and not any(done):
            shutil.rmtree(part_dir, ignore_errors=True)
        raise

    t0 = time.perf_counter()
    done_imgs = 0
    parts = []
    with rep.progress("purify", total=n) as advance:
        for k, start in enumerate(starts):
            path = paths[k]
            xc = x[start : start + chunk]
            if done[k]:
                parts.append(saved[k])
                advance(len(xc))
                continue
            tc = time.perf_counter()
            bpd_before = bpd_after = None
            if dens is not None:
                bpd_before = api.bits_per_dim(xc, density=dens)
            if method == "feature-squeeze":
                xp = api.feature_squeeze(xc)
                eps_used = np.zeros(len(xc), np.int32)
            else:
                eps_used = np.full(len(xc), e, np.int32)
                if adaptive_threshold is not None:
                    eps_used = np.where(bpd_before > adaptive_threshold, e, 0).astype(np.int32)
                xp = purify_array(dens, xc, eps_used, batch_size=batch_size)
            if dens is not None:
                bpd_after = api.bits_per_dim(xp, density=dens)
            arrays = {"x": xp, "eps": eps_used}
            if bpd_before is not None:
                arrays.update(bpd_before=bpd_before, bpd_after=bpd_after)
            try:
                imageio.write_npz(path, **arrays)
            except PxdError:  # e.g. a full disk: leave no folder that holds no chunk
                if files.primary() and not any(done) and k == 0:
                    shutil.rmtree(part_dir, ignore_errors=True)
                raise
            parts.append(arrays)
            done_imgs += len(xc)
            advance(len(xc), **{"img/s": len(xc) / (time.perf_counter() - tc)})

    xp = np.concatenate([p["x"] for p in parts])
    eps_used = np.concatenate([p["eps"] for p in parts])
    result_arrays = {"x": xp, "x_input": x, "eps": eps_used, "config": np.asarray(to_json(cfg))}
    if y is not None:
        result_arrays["y"] = y
    summary = {"input": input_spec, "out": out, "n": n, "method": method,
               "eps": e if method == "pixeldefend" else None,
               "adaptive_threshold": adaptive_threshold, "density": dpath}
    if "bpd_before" in parts[0]:
        bb = np.concatenate([p["bpd_before"] for p in parts])
        ba = np.concatenate([p["bpd_after"] for p in parts])
        result_arrays.update(bpd_before=bb, bpd_after=ba)
        summary.update(mean_bpd_before=float(bb.mean()), mean_bpd_after=float(ba.mean()))
    changed = (xp != x).reshape(n, -1).sum(1)
    summary.update(
        mean_changed_subpixels=float(changed.mean()),
        max_linf=int(np.abs(xp.astype(int) - x.astype(int)).max()),
        purified_images=int((eps_used > 0).sum()) if method == "pixeldefend" else n,
        seconds=time.perf_counter() - t0,
    )
    if done_imgs:
        summary["images_per_s"] = done_imgs / summary["seconds"]
    imageio.write_npz(out, **result_arrays)
    if grid is not None:
        imageio.write_grid(grid, [x[:16], xp[:16]])
    if files.primary():
        shutil.rmtree(part_dir, ignore_errors=True)
    rep.table("purify", ["quantity", "value"], [[k, v] for k, v in summary.items()])
    rep.done(f"purified {n} image{'s' * (n != 1)}: wrote {out}"
             + (f" and {grid}" if grid is not None else ""))
    rep.json(summary)
    return summary
