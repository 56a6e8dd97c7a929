"""Shipped models (package data under pxd/zoo/<name>/): listing, defaults, export.

An entry holds config.json (the training config, strict), meta.json (figures measured by
pxd), params.msgpack (inference parameters only: EMA weights, BatchNorm statistics) and
card.json (what it is, how it was made, the sha256 of params.msgpack, checked on load).
"""

from __future__ import annotations

import os
import re
import shutil

from pxd.configs.datasets import DATASETS
from pxd.errors import PxdError
from pxd.storage import checkpoint, files

# The package data folder pxd/zoo/ (this module lives in pxd/storage/).
ZOO_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "zoo")


def entries(zoo_dir: str | None = None) -> list[dict]:
    """Model cards of the shipped models, with `name` and `path` added."""
    zoo_dir = zoo_dir or ZOO_DIR
    out = []
    if not os.path.isdir(zoo_dir):
        return out
    for name in sorted(os.listdir(zoo_dir)):
        card = os.path.join(zoo_dir, name, "card.json")
        if os.path.isfile(card):
            out.append(dict(files.read_json(card), name=name, path=os.path.join(zoo_dir, name)))
    return out


def card_of(path: str) -> dict:
    """The model card of a zoo entry directory; {} for a plain run directory."""
    return checkpoint.read_json(path, "card.json")


def resolve(path: str) -> str:
    """A run directory as given, or the shipped model named `path` (e.g. vgg-c10-normal)."""
    if os.path.isdir(path) or os.sep in path:
        return path
    for e in entries():
        if e["name"] == path:
            return e["path"]
    return path


def shown(path: str) -> str:
    """How a report names a model: its zoo name when `path` is a shipped entry (so reports do
    not carry this machine's install path), else `path` as given."""
    real = os.path.realpath(path)
    for e in entries():
        if os.path.realpath(e["path"]) == real:
            return e["name"]
    return path


def not_found_hint(path: str, kind: str) -> str:
    """For a missing --clf/--density: the shipped names, when `path` looks like one."""
    if os.path.exists(path) or os.sep in path:
        return ""
    names = [e["name"] for e in entries() if e.get("kind") == kind]
    return f"; no such run dir, and not a shipped {kind} (shipped: {', '.join(names)})"


def default_path(kind: str, shape: tuple[int, ...], training: str | None = None,
                 arch: str | None = None) -> str:
    """The shipped default model of `kind` ('density' or 'classifier') for images of `shape`."""
    for e in entries():
        if e.get("kind") != kind or tuple(DATASETS[e["dataset"]].shape) != tuple(shape):
            continue
        if training is not None and e.get("training") != training:
            continue
        if arch is not None and e.get("arch") != arch:
            continue
        if training is None and arch is None and not e.get("default"):
            continue
        return e["path"]
    flag, cmd = ("density", "train-density") if kind == "density" else ("clf", "train-clf")
    raise PxdError(
        f"no {kind} model given and none shipped for images of shape {tuple(shape)}; "
        f"pass --{flag} RUN_DIR (train one with pxd {cmd})"
    )


NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def check_name(name: str, zoo_dir: str | None = None, *, overwrite: bool = False) -> str:
    """A new zoo entry's name: one plain folder name inside the zoo (lower-case letters,
    digits, '.', '_', '-'; no '/', no '..'), so an export can neither write outside the
    zoo nor replace the zoo itself; an existing entry only with `overwrite`."""
    zoo_dir = zoo_dir or ZOO_DIR
    if (not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name
            or name.endswith((".tmp", ".old"))):
        raise PxdError(f"--name {name!r}: use a plain name of lower-case letters, digits, "
                       "'.', '_' and '-' (at most 64, starting with a letter or digit), "
                       "e.g. pixelcnn-c10-mine")
    dest = os.path.join(zoo_dir, name)
    if os.path.lexists(dest):
        if not os.path.isfile(os.path.join(dest, "card.json")) or os.path.islink(dest):
            raise PxdError(f"--name {name}: {dest} exists and is not a zoo entry; "
                           "choose another name")
        if not overwrite:
            raise PxdError(f"--name {name}: the zoo already has a model of that name; "
                           "choose another name, or pass --overwrite to replace it")
    return name


def export(run_dir: str, name: str, *, kind: str, default: bool, card: dict,
           zoo_dir: str | None = None, state=None, overwrite: bool = False) -> dict:
    """Copy a run's inference parameters and config into the zoo with a model card.

    `state`, the run's full training state, is kept as train_state.msgpack so that
    `pxd train-density --resume-from NAME` can continue the run without its directory."""
    zoo_dir = zoo_dir or ZOO_DIR
    check_name(name, zoo_dir, overwrite=overwrite)
    params = checkpoint.load_params(checkpoint.run_params_path(run_dir))
    dest = os.path.join(zoo_dir, name)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    shutil.copy(os.path.join(run_dir, "config.json"), os.path.join(tmp, "config.json"))
    meta = checkpoint.read_meta(run_dir)
    if state is None:
        meta.pop("evals", None)  # kept with the state: a resumed run goes on with its curve
    files.write_json(os.path.join(tmp, "meta.json"), meta, sort_keys=True, newline=False)
    digest = checkpoint.save_msgpack(os.path.join(tmp, "params.msgpack"), params)
    full = dict(card, kind=kind, default=default, sha256=digest)
    if state is not None:
        full["state_sha256"] = checkpoint.save_state_msgpack(
            os.path.join(tmp, "train_state.msgpack"), state)
        full["state_step"] = int(state.step)
    files.write_json(os.path.join(tmp, "card.json"), full, sort_keys=True, newline=False)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return full
