"""A bench run's plan and what it runs on: the options parsed and checked (`plan`), the
classifiers (`load_classifiers`) and the density model (`load_density`, `density_info`)."""

from __future__ import annotations

import dataclasses
import os

from pxd.commands.bench.options import parse_attacks, parse_defences, parse_eps_list
from pxd.commands.bench.paper import ARCH_TITLES, TRAINING_TITLES
from pxd.configs.base import check_eps
from pxd.configs.commands import BenchConfig
from pxd.configs.datasets import DATASETS
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage.runs import params_digest, resolve_density


def density_info(dens: dict) -> dict:
    """Identity and test bits/dim of the density model: the zoo card's full-test-split
    figure when shipped, else the run's best periodic evaluation."""
    from pxd.storage import shipped as zoo

    card = zoo.card_of(zoo.resolve(dens["path"]))
    bpd, bpd_n = card.get("test_bpd"), card.get("n_test")
    if bpd is None:
        bpd, bpd_n = dens["meta"].get("best_test_bpd"), dens["meta"].get("eval_n")
    return dict(path=zoo.shown(dens["path"]), sha256=dens["digest"], preset=dens["cfg"].preset,
                test_bpd=bpd, test_bpd_n=bpd_n)


def load_classifiers(paths: list[str | None], dataset: str | None):
    from pxd.configs.datasets import DATASETS
    from pxd.models.classifiers import make_logits_fn
    from pxd.storage import shipped as zoo
    from pxd.storage.runs import load_classifier, params_digest

    ds = dataset or "cifar10"
    if "all" in paths:  # every shipped classifier for the dataset, default first
        shipped = [e for e in zoo.entries() if e["kind"] == "classifier" and e["dataset"] == ds]
        shipped.sort(key=lambda e: not e.get("default"))
        paths = [q for p in paths for q in ([e["path"] for e in shipped] if p == "all" else [p])]
        if not paths:
            raise PxdError(f"no classifiers shipped for {ds}")
    out = []
    for p in paths:
        if p is None:
            p = zoo.default_path("classifier", DATASETS[ds].shape)
        model, variables, cfg, meta = load_classifier(p)
        out.append(dict(
            path=zoo.shown(p), cfg=cfg, meta=meta, digest=params_digest(variables),
            logits_fn=make_logits_fn(model, variables["params"],
                                     variables.get("batch_stats", {})),
            label=f"{ARCH_TITLES.get(cfg.arch, cfg.arch)} "
                  f"{TRAINING_TITLES.get(cfg.training, cfg.training)}",
        ))
    names = [c["label"] for c in out]
    for c in out:
        if names.count(c["label"]) > 1:  # same arch and training twice: tell them apart
            c["label"] += f" [{os.path.basename(os.path.normpath(c['path']))}]"
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """A bench config parsed and checked: what the run computes."""

    attacks: list[str]
    eps: list[int]
    defences: list[str]
    eps_defend: int
    attack_opts: dict
    k_adapt: int  # images of the adaptive column (before clipping to the data)


def plan(cfg: BenchConfig) -> Plan:
    """Parse the list options and check every number; nothing is loaded yet."""
    attack_names = parse_attacks(cfg.attacks)
    eps_list = parse_eps_list(cfg.eps_attack)
    defence_names = parse_defences(cfg.defenses)
    e_def = check_eps(cfg.eps_defend, "--eps-defend")
    from pxd.api import check_attack_options

    attack_opts = {a: check_attack_options(a, o) for a, o in (cfg.attack_opts or {}).items()}
    if cfg.n < 1 or cfg.batch_size < 1 or cfg.restarts < 1 or cfg.adaptive_steps < 0:
        raise PxdError("--n, --batch-size and --restarts must be positive, "
                       "--adaptive-steps >= 0")
    k_adapt = cfg.n if cfg.adaptive_n is None else min(cfg.adaptive_n, cfg.n)
    if k_adapt < 1:
        raise PxdError("--adaptive-n must be positive")
    if cfg.dataset is not None and cfg.dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{cfg.dataset}' (choose from {', '.join(DATASETS)})")
    return Plan(attack_names, eps_list, defence_names, e_def, attack_opts, k_adapt)


def load_density(density: str | None, shape, needs_density: bool, rep: Reporter) -> dict | None:
    """The density model as a dict (model, params, cfg, meta, path, digest), or None when
    none is given or shipped and no defence needs one (detection is then skipped)."""
    try:
        dmodel, dparams, dcfg, dmeta, dpath = resolve_density(density, shape)
    except PxdError:
        if density is not None or needs_density:
            raise
        # detection is a bonus when no defence needs the density model
        rep.info("no density model: skipping the bits/dim detector")
        return None
    return dict(model=dmodel, params=dparams, cfg=dcfg, meta=dmeta, path=dpath,
                digest=params_digest(dparams))
