"""All checkpoint I/O (orbax lives only here).

A run directory holds `config.json`, `ckpt/step_<n>/` (full training state, orbax),
`ckpt/LATEST` (the step of the newest complete checkpoint), `best/` (inference
parameters, orbax: for a density run the EMA parameters of its best evaluation, for a
classifier its LATEST evaluated variables, not selected on test accuracy) and `meta.json`
(metrics). Every pointer is written after the data it points to, by rename, so a run killed
at any moment leaves a usable checkpoint. `run_params_path` finds the inference parameters
of a run dir or of a shipped model (params.msgpack, whose sha256 is checked on load).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax

from pxd.configs import base as config
from pxd.errors import PxdError
from pxd.storage import files, imageio


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def _checkpointer():
    """A StandardCheckpointer; with several processes, one that involves only this one
    (states are host copies; process 0 saves, every process may restore)."""
    ocp = _ocp()
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def save_state(run_dir: str, step: int, state: Any, keep: int = 2) -> None:
    """Save the full training state at `step` and point LATEST at it (process 0 only)."""
    if not files.primary():
        return
    ckdir = os.path.abspath(os.path.join(run_dir, "ckpt"))
    os.makedirs(ckdir, exist_ok=True)
    path = os.path.join(ckdir, f"step_{step}")
    if os.path.exists(path):
        shutil.rmtree(path)
    ckptr = _checkpointer()
    ckptr.save(path, state)
    ckptr.wait_until_finished()
    files.write_text(os.path.join(ckdir, "LATEST"), str(step))
    steps = sorted(
        int(d.split("_")[1]) for d in os.listdir(ckdir) if d.startswith("step_") and "." not in d
    )
    for s in steps[:-keep]:
        shutil.rmtree(os.path.join(ckdir, f"step_{s}"), ignore_errors=True)


def check_run_dir(out: str, cfg: Any, *, resume: bool) -> None:
    """Refuse to overwrite a run, to resume nothing, or to resume with another config
    (apart from `steps`: a run may be extended)."""
    imageio.check_writable(out, "--out", folder=True)
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path):
        if not resume:
            raise PxdError(f"{out} already holds a run; pass --resume to continue it")
        saved = config.load_json(type(cfg), cfg_path)
        if config.replace(saved, steps=cfg.steps) != config.replace(cfg, steps=cfg.steps):
            raise PxdError(f"{out} was trained with a different config; resume it as it was")
    elif resume:
        raise PxdError(f"nothing to resume in {out}")


def latest_step(run_dir: str) -> int | None:
    p = os.path.join(run_dir, "ckpt", "LATEST")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return int(f.read().strip())


def restore_state(run_dir: str, target: Any) -> tuple[int, Any]:
    step = latest_step(run_dir)
    if step is None:
        raise PxdError(f"no checkpoint to resume in {run_dir}")
    path = os.path.abspath(os.path.join(run_dir, "ckpt", f"step_{step}"))
    return step, _checkpointer().restore(path, target)


def save_params(path: str, params: Any) -> None:
    """Inference parameters (e.g. EMA weights) to an orbax directory, replaced atomically
    (process 0 only)."""
    if not files.primary():
        return
    path = os.path.abspath(path)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    ckptr = _checkpointer()
    ckptr.save(tmp, params)
    ckptr.wait_until_finished()
    old = path + ".old"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def save_msgpack(path: str, params: Any) -> str:
    """Inference parameters as one msgpack file (the zoo's format); returns its sha256."""
    import hashlib

    from flax import serialization

    blob = serialization.msgpack_serialize(jax.device_get(params))
    files.write_bytes(path, blob)
    return hashlib.sha256(blob).hexdigest()


def save_state_msgpack(path: str, state: Any) -> str:
    """A full training state (a NamedTuple of pytrees) as one msgpack file; its sha256."""
    from flax import serialization

    return save_msgpack(path, serialization.to_state_dict(jax.device_get(state)))


def load_state_msgpack(path: str, target: Any, card_key: str = "state_sha256") -> Any:
    """The training state saved by `save_state_msgpack`, shaped like `target`."""
    from flax import serialization

    try:
        return serialization.from_state_dict(target, _load_msgpack(path, card_key))
    except (KeyError, ValueError, TypeError) as e:
        raise PxdError(f"{path} does not hold a training state of this model: {e}") from None


def _load_msgpack(path: str, card_key: str = "sha256") -> Any:
    """A zoo file; its sha256 must match `card_key` of card.json beside it."""
    import hashlib

    from flax import serialization

    with open(path, "rb") as f:
        blob = f.read()
    card = os.path.join(os.path.dirname(path), "card.json")
    if os.path.exists(card):
        want = files.read_json(card).get(card_key)
        got = hashlib.sha256(blob).hexdigest()
        if want != got:
            raise PxdError(f"checksum mismatch for {path}: card says {want}, file is {got}")
    try:
        return serialization.msgpack_restore(blob)
    except Exception as e:
        raise PxdError(f"cannot read parameters {path}: {type(e).__name__}") from None


def load_params(path: str, target: Any | None = None) -> Any:
    path = os.path.abspath(path)
    if path.endswith(".msgpack") and os.path.isfile(path):
        return _load_msgpack(path)
    if not os.path.isdir(path):
        raise PxdError(f"no parameters at {path}")
    try:
        return _checkpointer().restore(path, target)
    except Exception as e:  # orbax raises many types; all mean the same to a user
        raise PxdError(f"cannot load parameters from {path}: {type(e).__name__}") from None


def write_meta(run_dir: str, meta: dict) -> None:
    files.write_json(os.path.join(run_dir, "meta.json"), meta, sort_keys=True, newline=False)


def read_json(run_dir: str, name: str) -> dict:
    """run_dir/name parsed, or {} when absent (meta.json of a run, card.json of a zoo entry)."""
    return files.read_json(os.path.join(run_dir, name))


def model_kind(run_dir: str) -> str | None:
    """'classifier' or 'density' from a run's config.json (None if unreadable)."""
    try:
        cfg = read_json(run_dir, "config.json")
    except PxdError:
        return None
    if "arch" in cfg:
        return "classifier"
    if "model" in cfg and "arch" not in cfg:
        return "density"
    return None


def read_meta(run_dir: str) -> dict:
    return read_json(run_dir, "meta.json")


def run_params_path(run_dir: str) -> str:
    """The inference parameters of a run: a zoo entry's `params.msgpack`, else the run's
    `best/`, else `final/`."""
    for name in ("params.msgpack", "best", "final"):
        p = os.path.join(run_dir, name)
        if os.path.exists(p):
            return p
    raise PxdError(f"{run_dir} holds no trained parameters (best/ or final/)")
