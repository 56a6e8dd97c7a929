"""`pxd train-density` and `pxd train-clf`: a config in, `engine.trainer.train` on the
model's job (`engine.jobs`), the run directory out. Density runs may also start from a
shipped model's saved training state (--resume-from) or measure their budget (--hours)."""

from __future__ import annotations

import os

from pxd.configs import base as config
from pxd.configs.classifier import ClfConfig, eval_every_fields, validate
from pxd.configs.pixelcnn import DensityConfig
from pxd.engine.jobs import ClassifierJob, DensityJob, template_state
from pxd.engine.trainer import train
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import checkpoint, files
from pxd.storage import shipped as zoo
from pxd.storage.runs import density_config_of


def seed_from_zoo(name: str, out: str, steps: int | None, *,
                  kind: type = DensityConfig, adjust=None) -> DensityConfig | ClfConfig:
    """Make `out` a run directory holding a shipped model's training state, ready for
    --resume: its config (steps replaced when given, then the fields `adjust(cfg)` returns),
    checkpoint and metrics.
    `kind` is the config class the shipped model must have (DensityConfig or ClfConfig)."""
    src = zoo.resolve(name)
    state_path = os.path.join(src, "train_state.msgpack")
    if not os.path.isfile(state_path):
        raise PxdError(f"{name} keeps no training state to resume (train_state.msgpack); "
                       "use --init-from to fine-tune from its parameters")
    if os.path.exists(os.path.join(out, "config.json")):
        raise PxdError(f"{out} already holds a run; give a new --out for --resume-from")
    want = "classifier" if kind is ClfConfig else "density"
    card = zoo.card_of(src)
    if card.get("kind", want) != want:
        raise PxdError(f"{name} is a {card['kind']} model, not a {want} model")
    cfg = config.load_json(kind, os.path.join(src, "config.json"))
    if steps is not None:
        cfg = config.replace(cfg, steps=steps)
    if adjust is not None:
        cfg = config.replace(cfg, **adjust(cfg))
    state = checkpoint.load_state_msgpack(state_path, template_state(cfg))
    if int(state.step) >= cfg.steps:
        raise PxdError(f"{name} was saved at step {int(state.step)}; give --steps above it")
    checkpoint.save_state(out, int(state.step), state)
    meta = checkpoint.read_meta(src)
    meta.pop("best_test_bpd", None)  # measured on another slice; the run re-evaluates
    meta.pop("complete", None)
    checkpoint.write_meta(out, dict(meta, resumed_from=name))
    files.write_config(out, cfg)
    return cfg


def init_network(cfg: DensityConfig) -> DensityConfig:
    """`cfg` with the network of its `init_from` (a shipped name or model dir, e.g. one
    `pxd zoo --import-openai` wrote): the preset then gives only the training recipe."""
    _, src = density_config_of(cfg.init_from)
    return config.replace(cfg, model=dict(src.model))


def run_train_density(
    cfg: DensityConfig,
    out: str,
    *,
    resume: bool = False,
    hours: float | None = None,
    keep_steps: bool = False,
    resume_from: str | None = None,
    data_dir: str | None = None,
    rep: Reporter | None = None,
    stop_after: int | None = None,
    network_from_init: bool = False,
) -> dict:
    """Train (or resume) a density run in `out`. `hours` sets `steps` for a new run from
    the measured speed of this machine, so the cosine schedule ends on the budget;
    `keep_steps` resumes with the run's saved `steps` instead of `cfg.steps`;
    `resume_from` continues a shipped model's run (its config and state) in `out`;
    `network_from_init` takes the network of `cfg.init_from` (the CLI's --init-from)
    instead of refusing one that differs from the preset's."""
    rep = rep or Reporter(quiet=True)
    if network_from_init and cfg.init_from is not None:
        cfg = init_network(cfg)
    if resume_from is not None:
        if resume or hours is not None:
            raise PxdError("--resume-from starts from the shipped state; drop --resume/--hours")
        cfg = seed_from_zoo(resume_from, out, None if keep_steps else cfg.steps)
        resume, keep_steps = True, True
    if hours is not None and resume:
        raise PxdError("--hours sets the budget of a new run; --resume keeps the run's steps")
    if hours is not None and hours <= 0:
        raise PxdError("--hours must be positive")
    if resume and keep_steps and os.path.exists(os.path.join(out, "config.json")):
        saved = config.load_json(DensityConfig, os.path.join(out, "config.json"))
        cfg = config.replace(cfg, steps=saved.steps)
    return train(DensityJob(cfg, hours=hours), out, resume=resume, data_dir=data_dir,
                 rep=rep, stop_after=stop_after)


def run_train_clf(
    cfg: ClfConfig,
    out: str,
    *,
    resume: bool = False,
    resume_from: str | None = None,
    keep_steps: bool = False,
    eval_every: int | None = None,
    data_dir: str | None = None,
    rep: Reporter | None = None,
    stop_after: int | None = None,
) -> dict:
    """Train a classifier into the run dir `out`; `best/` holds the latest evaluated variables.
    `resume_from` continues a shipped classifier's own run (its config and saved training
    state) in `out`; with `keep_steps` it keeps that run's planned steps (and schedule), and
    `eval_every` replaces its evaluation (and at least as frequent checkpoint) interval.

    `best/` is not selected by test accuracy (that would bias `test_acc`); it is rewritten at
    every evaluation and at the end, so a killed run still has usable parameters.
    """
    if resume_from is not None:
        if resume:
            raise PxdError("--resume-from starts from the shipped state; drop --resume")
        every = None if eval_every is None else (lambda c: eval_every_fields(c, eval_every))
        cfg = seed_from_zoo(resume_from, out, None if keep_steps else cfg.steps, kind=ClfConfig,
                            adjust=every)
        resume = True
    validate(cfg)
    return train(ClassifierJob(cfg), out, resume=resume, data_dir=data_dir, rep=rep,
                 stop_after=stop_after)
