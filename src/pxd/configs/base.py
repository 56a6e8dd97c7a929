"""Strict helpers for every frozen config: from_dict and replace (unknown keys and type
mismatches are errors), to_json, load_json and loads (saved configs read back as strictly),
config_from (a run_* function's config or its fields), and check_eps for 0..255 epsilons."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from pxd.errors import PxdError


def _check_type(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return _check_type(name, value, arm)
            except PxdError:
                continue
        raise PxdError(f"config key '{name}': {value!r} is not of type {tp}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise PxdError(f"config key '{name}': expected a mapping, got {value!r}")
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise PxdError(f"config key '{name}': expected a list, got {value!r}")
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise PxdError(f"config key '{name}': expected {tp.__name__}, got {value!r}")
        if tp is float and not math.isfinite(value):
            raise PxdError(f"config key '{name}': must be a finite number, got {value!r}")
        return value
    return value


def check_finite(value, name: str):
    """`value` if it is a finite number (NaN and inf pass every `<` test, so refuse them
    where numbers enter); `name` is the option or argument named in the error."""
    try:
        ok = math.isfinite(value)
    except (TypeError, ValueError):
        raise PxdError(f"{name} must be a number, got {value!r}") from None
    if not ok:
        raise PxdError(f"{name} must be a finite number, got {value}")
    return value


def from_dict(cls, data: dict) -> Any:
    """Build a frozen config dataclass; unknown keys and type mismatches are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PxdError(f"unknown config key(s) for {cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _check_type(k, v, hints[k]) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise PxdError(f"{cls.__name__}: {e}") from None


def config_from(cls, given, first: str, **fields):
    """`given` itself when it is a `cls` (then no other fields may be given); else a `cls`
    built by `from_dict` with `given` as field `first` and the other fields as given, so
    `run_purify("in.npz", eps=4)` and `run_purify(PurifyConfig("in.npz", eps=4))` agree."""
    if isinstance(given, cls):
        extra = sorted(k for k, v in fields.items() if v is not None)
        if extra:
            raise PxdError(f"give a {cls.__name__} or its fields, not both ({', '.join(extra)})")
        return given
    fields = {k: v for k, v in fields.items() if v is not None or k not in _defaults(cls)}
    return from_dict(cls, {first: given, **fields})


def _defaults(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


def replace(cfg, **changes):
    """`dataclasses.replace` with the same strictness as `from_dict`."""
    data = dataclasses.asdict(cfg)
    data.update({k: v for k, v in changes.items() if v is not None})
    return from_dict(type(cfg), data)


def to_json(cfg) -> str:
    return json.dumps(dataclasses.asdict(cfg), indent=2, sort_keys=True)


def load_json(cls, path: str):
    """The config saved at `path` (a config.json); unknown keys are errors."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise PxdError(f"cannot read config {path}: {e}") from None
    return from_dict(cls, data)


def loads(cls, text: str):
    """A config from its JSON text (e.g. the `config` member of an output .npz)."""
    try:
        data = json.loads(str(text))
    except json.JSONDecodeError as e:
        raise PxdError(f"cannot read config: {e}") from None
    if not isinstance(data, dict):
        raise PxdError("cannot read config: expected a JSON object")
    return from_dict(cls, data)


def check_eps(eps: float, name: str = "--eps") -> int:
    """An epsilon given on the 0..255 pixel scale, as the integer every purifier and attack
    uses; anything else is a one-line error naming the option."""
    check_finite(eps, name)
    if eps < 0 or eps > 255:
        raise PxdError(f"{name} must be in [0, 255] (the 0-255 pixel scale), got {eps}")
    if eps != int(eps):
        raise PxdError(f"{name} must be an integer on the 0-255 scale, got {eps}")
    return int(eps)


def check_model_options(model: dict, presets: dict[str, dict], choices: dict | None = None,
                        where: str = "model") -> None:
    """A config's architecture options (`model`, e.g. from a config.json) against the
    presets' (same keys, same kinds: counts are integers >= 1, the one float is a dropout
    rate in [0, 1), lists hold counts); `choices`: the allowed strings of string options.
    A hand-edited `nr_filters: "abc"` is a one-line error here, not a failure deep in Flax."""
    if not isinstance(model, dict):
        raise PxdError(f"{where}: expected a mapping of architecture options, got {model!r}")
    ref: dict = {}
    for p in presets.values():
        for k, v in p.items():
            ref.setdefault(k, v)
    for k, v in model.items():
        if k in ref:
            _check_option(f"{where}.{k}", v, ref[k], (choices or {}).get(k))


def _check_option(name: str, v, ref, choices) -> None:
    if isinstance(ref, bool):
        ok = isinstance(v, bool)
        want = "true or false"
    elif isinstance(ref, int):
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= 1
        want = "an integer >= 1"
    elif isinstance(ref, float):
        ok = (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
              and 0 <= v < 1)
        want = "a number in [0, 1)"
    elif isinstance(ref, str):
        ok = isinstance(v, str) and (choices is None or v in choices)
        want = f"one of {', '.join(choices)}" if choices else "a string"
    elif isinstance(ref, list | tuple):
        if not isinstance(v, list | tuple) or not v:
            raise PxdError(f"{name}: expected a non-empty list like {list(ref)}, got {v!r}")
        for i, item in enumerate(v):
            _check_option(f"{name}[{i}]", item, ref[0], None)
        return
    else:
        return
    if not ok:
        raise PxdError(f"{name}: expected {want}, got {v!r}")
