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

import contextlib
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
    # Ctrl-C waits for the save: stopping orbax half-way left its threads failing with
    # tracebacks at exit and a step_N.orbax-checkpoint-tmp folder behind.
    with files.deferred_sigint():
        remove_partial_saves(ckdir)
        if os.path.exists(path):
            shutil.rmtree(path)
        with _no_space_is_an_error(path, lambda: remove_partial_saves(ckdir)):
            ckptr = _checkpointer()
            ckptr.save(path, state)
            ckptr.wait_until_finished()
        files.write_text(os.path.join(ckdir, "LATEST"), str(step))
        for s in saved_steps(run_dir)[:-keep]:
            shutil.rmtree(os.path.join(ckdir, f"step_{s}"), ignore_errors=True)


# How tensorstore words the OSErrors of files.no_space_message (its own exception types)
_NO_SPACE_WORDS = ("No space left", "File too large", "Disk quota", "Read-only file system")


@contextlib.contextmanager
def _no_space_is_an_error(path: str, clean):
    """An orbax save that fails for want of space: its partial folder removed, one line."""
    try:
        yield
    except Exception as e:
        text = str(e)
        word = next((w for w in _NO_SPACE_WORDS if w in text), None)
        if word is None:
            raise
        clean()
        raise PxdError(f"cannot write {path}: {word} (free some space or raise the file "
                       "size limit, then rerun)") from None


def saved_steps(run_dir: str) -> list[int]:
    """The steps of the complete checkpoint folders ckpt/step_<n>, in order."""
    ckdir = os.path.join(run_dir, "ckpt")
    if not os.path.isdir(ckdir):
        return []
    return sorted(int(d[5:]) for d in os.listdir(ckdir)
                  if d.startswith("step_") and d[5:].isdigit())


def remove_partial_saves(ckdir: str) -> None:
    """Folders of saves that never finished (a process killed mid-save): never pointed at
    by LATEST, so never resumed from; removed before the next save."""
    if os.path.isdir(ckdir):
        for d in os.listdir(ckdir):
            if d.startswith("step_") and not d[5:].isdigit():
                shutil.rmtree(os.path.join(ckdir, d), ignore_errors=True)


def has_checkpoint(run_dir: str) -> bool:
    """Whether the run saved a training state to continue from."""
    return os.path.exists(os.path.join(run_dir, "ckpt", "LATEST")) or bool(saved_steps(run_dir))


def check_run_dir(out: str, cfg: Any, *, resume: bool) -> bool:
    """Refuse to overwrite a run, to resume nothing, or to resume with another config
    (apart from `steps`: a run may be extended). Returns whether there is a checkpoint to
    resume from: a run stopped before its first one is started again (its config.json
    alone holds nothing to lose), with or without --resume."""
    imageio.check_writable(out, "--out", folder=True)
    cfg_path = os.path.join(out, "config.json")
    if os.path.exists(cfg_path):
        if not has_checkpoint(out):
            return False
        if not resume:
            raise PxdError(f"{out} already holds a run; pass --resume to continue it")
        saved = config.load_json(type(cfg), cfg_path)
        if config.replace(saved, steps=cfg.steps) != config.replace(cfg, steps=cfg.steps):
            raise PxdError(f"{out} was trained with a different config; resume it as it was")
        checkpoint_path(out)  # LATEST and its folder, checked before any work
        return True
    if resume:
        raise PxdError(f"nothing to resume in {out}")
    return False


def _advice(run_dir: str, bad: int | None = None) -> str:
    older = [s for s in saved_steps(run_dir) if s != bad]
    lat = os.path.join(run_dir, "ckpt", "LATEST")
    if older:
        return (f"write {'an older' if bad is not None else 'a saved'} step "
                f"({', '.join(map(str, older))}) into {lat} to resume "
                f"from it, or delete {run_dir} to start over")
    return f"delete {run_dir} to start over"


def latest_step(run_dir: str) -> int | None:
    """The step ckpt/LATEST names (None: no LATEST); unreadable is a PxdError with advice."""
    p = os.path.join(run_dir, "ckpt", "LATEST")
    if not os.path.exists(p):
        return None
    try:
        with open(p) as f:
            text = f.read(64)
    except (OSError, UnicodeDecodeError) as e:
        raise PxdError(f"cannot read {p} ({type(e).__name__}); {_advice(run_dir)}") from None
    if not text.strip().isdigit():
        raise PxdError(f"{p} holds {text.strip()[:20]!r}, not a step number; "
                       f"{_advice(run_dir)}")
    return int(text.strip())


def checkpoint_path(run_dir: str) -> tuple[int, str]:
    """(step, folder) of the checkpoint a resume starts from; a PxdError with advice when
    there is none or LATEST names a missing one."""
    step = latest_step(run_dir)
    if step is None and saved_steps(run_dir):  # killed between a save and its LATEST
        step = saved_steps(run_dir)[-1]
    if step is None:
        raise PxdError(f"no checkpoint to resume in {run_dir}")
    path = os.path.abspath(os.path.join(run_dir, "ckpt", f"step_{step}"))
    if not os.path.isdir(path):
        raise PxdError(f"{run_dir}/ckpt/LATEST names step {step}, but ckpt/step_{step} is "
                       f"missing; {_advice(run_dir, step)}")
    return step, path


def restore_state(run_dir: str, target: Any) -> tuple[int, Any]:
    step, path = checkpoint_path(run_dir)
    try:
        return step, _checkpointer().restore(path, target)
    except Exception as e:  # orbax/tensorstore raise many types; all mean a damaged save
        raise PxdError(f"cannot restore {path}: the checkpoint is damaged "
                       f"({type(e).__name__}); {_advice(run_dir, step)}") from None


def save_params(path: str, params: Any) -> None:
    """Inference parameters (e.g. EMA weights) to an orbax directory, replaced atomically
    (process 0 only)."""
    if not files.primary():
        return
    path = os.path.abspath(path)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    def clean():
        for d in os.listdir(os.path.dirname(path)):
            if d.startswith(os.path.basename(tmp)):
                shutil.rmtree(os.path.join(os.path.dirname(path), d), ignore_errors=True)

    with _no_space_is_an_error(path, clean):
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
