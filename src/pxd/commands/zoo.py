"""`pxd zoo`: list the shipped models; `--export` adds a trained run to the package's zoo;
`--import-openai` turns openai/pixel-cnn's PixelCNN++ checkpoint into a density model dir."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from pxd.commands.common import bpd_with_progress
from pxd.configs.base import config_from
from pxd.configs.commands import ZooExportConfig, ZooImportConfig
from pxd.engine.devices import machine
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import checkpoint, data, files
from pxd.storage import shipped as zoo


def run_zoo_list(rep: Reporter) -> list[dict]:
    rows = []
    for e in zoo.entries():
        if e.get("kind") == "density":
            fig = f"{e['test_bpd']:.3f} bits/dim"
        else:
            fig = f"{100 * e['test_acc']:.2f}%"
        name = e["name"] + (" *" if e.get("default") else "")
        rows.append([name, e.get("dataset"), e.get("preset"), fig, e.get("steps"),
                     f"{e.get('wall_s', 0) / 3600:.1f} h"])
    rep.table("shipped models (* default; test split measured by pxd; sha256 in --json)",
              ["name", "dataset", "preset", "test", "steps", "trained"], rows)
    rep.json(zoo.entries())
    return zoo.entries()


def _kind(run_dir: str) -> str:
    return "classifier" if "arch" in files.read_json(os.path.join(run_dir, "config.json")) \
        else "density"


def exported_step(run_dir: str, meta: dict) -> int | None:
    """The step of the parameters an export copies: a density run's best/ holds its best
    evaluation (which may predate the last checkpoint), a classifier's its last step."""
    evals = [e for e in meta.get("evals", []) if "test_bpd" in e]
    if evals:
        return min(evals, key=lambda e: e["test_bpd"])["step"]  # first of equals, as saved
    return meta.get("step") or checkpoint.latest_step(run_dir)


def run_zoo_export(cfg: ZooExportConfig | str, name: str | None = None, *,
                   rep: Reporter | None = None, zoo_dir: str | None = None,
                   **options) -> dict:
    """Measure a run on its full test split and copy its inference parameters into the zoo;
    `with_state` also keeps its latest training state for train-density/train-clf
    --resume-from.
    `cfg`: a ZooExportConfig, or the run dir with the other fields as keywords."""
    ec = config_from(ZooExportConfig, cfg, "run_dir", name=name, **options)
    run_dir, name, default, command = ec.run_dir, ec.name, ec.default, ec.command
    data_dir, with_state = ec.data_dir, ec.with_state
    rep = rep or Reporter(quiet=True)
    zoo.check_name(name, zoo_dir, overwrite=ec.overwrite)  # before minutes of measuring
    if not os.path.exists(os.path.join(run_dir, "config.json")):
        raise PxdError(f"{run_dir} is not a pxd run directory")
    kind = _kind(run_dir)
    meta = checkpoint.read_meta(run_dir)
    card = {"steps": exported_step(run_dir, meta), "wall_s": meta.get("wall_s"),
            "machine": meta.get("machine"), "train_command": command,
            "measured": time.strftime("%Y-%m-%d"), "measured_on": machine()}
    if kind == "density":
        from pxd.api import Density
        from pxd.storage.runs import load_density

        model, params, cfg, meta = load_density(run_dir)
        x, _ = data.load(f"{cfg.dataset}:test", data_dir)
        bpd = bpd_with_progress(Density(model, params, cfg, run_dir, meta), x, rep,
                                f"{cfg.dataset} test")
        card.update(dataset=cfg.dataset, preset=cfg.preset, test_bpd=float(np.mean(bpd)),
                    n_test=len(x), what=f"PixelCNN++ ({cfg.preset})")
    else:
        from pxd.engine.batched import evaluate_accuracy
        from pxd.models.classifiers import make_logits_fn
        from pxd.storage.runs import load_classifier

        model, variables, cfg, _ = load_classifier(run_dir)
        x, y = data.load(f"{cfg.dataset}:test", data_dir)
        f = make_logits_fn(model, variables["params"], variables.get("batch_stats", {}))
        acc = evaluate_accuracy(f, x, y)
        card.update(dataset=cfg.dataset, preset=cfg.preset, arch=cfg.arch,
                    training=cfg.training, test_acc=acc, n_test=len(x),
                    what=f"{cfg.arch} {cfg.training} ({cfg.preset})")
    state = None
    if with_state:
        from pxd.engine.jobs import template_state

        _, state = checkpoint.restore_state(run_dir, template_state(cfg))
    full = zoo.export(run_dir, name, kind=kind, default=default, card=card, zoo_dir=zoo_dir,
                      state=state, overwrite=ec.overwrite)
    rep.info(f"exported {run_dir} -> zoo/{name}: {json.dumps(card)}")
    return full


_BLOCK = 1 << 24


def _sha256(path: str, advance) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while blob := f.read(_BLOCK):
            h.update(blob)
            advance(1)
    return h.hexdigest()


def run_zoo_import_openai(cfg: ZooImportConfig | str, out: str | None = None, *,
                          rep: Reporter | None = None, **options) -> dict:
    """Write openai/pixel-cnn's PixelCNN++ (its EMA weights when present) as a pxd density
    model directory `out`: config.json, params.msgpack, meta.json, card.json (source files
    and their sha256, format, the import command, date). Returns the card."""
    import shutil
    import tempfile

    import jax

    from pxd.configs.datasets import DATASETS
    from pxd.configs.pixelcnn import density_config
    from pxd.models.pixelcnn import build_model, init_params
    from pxd.storage import openai, tfckpt

    ic = config_from(ZooImportConfig, cfg, "checkpoint", out=out, **options)
    rep = rep or Reporter(quiet=True)
    if not ic.out:
        raise PxdError("--import-openai needs --out DIR")
    dest = os.path.abspath(ic.out)
    if os.path.exists(dest):
        raise PxdError(f"--out {ic.out} already exists; give a new directory")
    if not os.path.isdir(os.path.dirname(dest)):
        raise PxdError(f"--out {ic.out}: its parent directory does not exist")
    # Everything is written into a fresh hidden folder beside --out (a user's own DEST.tmp is
    # never touched), made first: an unwritable parent is found before ~860 MB are read.
    try:
        tmp = tempfile.mkdtemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.")
    except OSError as e:
        raise PxdError(f"--out {ic.out}: cannot write in its parent directory "
                       f"({e.strerror or e})") from None
    try:
        ck = tfckpt.Checkpoint(ic.checkpoint)
        sizes = openai.infer_sizes(ck.shapes)
        spec = openai.layers(*sizes)
        with rep.progress(f"reading {os.path.basename(ck.files[0])}", len(spec)) as advance:
            params, sizes, ema = openai.read_params(ck, advance)
        model_opts = openai.model_options(*sizes)
        dcfg = density_config("cifar10", "paper", model=model_opts)
        model = build_model(dcfg.model, openai.CHANNELS)
        template = jax.eval_shape(lambda: init_params(model, DATASETS["cifar10"].shape,
                                                      key=jax.random.key(0)))
        openai.check_tree(params, template)
        total = sum(-(-os.path.getsize(f) // _BLOCK) for f in ck.files)
        with rep.progress("sha256 of the source (16 MiB blocks)", total) as advance:
            sources = [dict(file=os.path.basename(f), bytes=os.path.getsize(f),
                            sha256=_sha256(f, advance)) for f in ck.files]
        n_params = int(sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(params)))
        card = dict(kind="density", default=False, dataset="cifar10", preset="paper",
                    what=f"PixelCNN++ from openai/pixel-cnn ({sizes[0]} filters, nr_resnet "
                         f"{sizes[1]}, {sizes[2]} mixtures), imported",
                    source=dict(path=os.path.abspath(ic.checkpoint), format=ck.format,
                                files=sources, weights="EMA" if ema else "raw (no EMA shadows)"),
                    import_command=ic.command or f"pxd zoo --import-openai {ic.checkpoint} "
                                                f"--out {ic.out}",
                    imported=time.strftime("%Y-%m-%d"), params=n_params)
        files.write_config(tmp, dcfg)
        files.write_json(os.path.join(tmp, "meta.json"),
                         dict(kind="density", dataset="cifar10", preset="paper",
                              params=n_params, source="openai/pixel-cnn"),
                         sort_keys=True, newline=False)
        card["sha256"] = checkpoint.save_msgpack(os.path.join(tmp, "params.msgpack"), params)
        files.write_json(os.path.join(tmp, "card.json"), card, sort_keys=True, newline=False)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rep.info(f"imported {ic.checkpoint} ({ck.format}, {'EMA' if ema else 'raw'} weights, "
             f"{n_params:,} parameters) -> {ic.out}")
    rep.json(card)
    return card
