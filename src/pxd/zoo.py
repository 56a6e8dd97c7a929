"""Shipped models (package data under pxd/zoo/): listing and default lookup."""

from __future__ import annotations

import json
import os

from pxd.errors import PxdError

ZOO_DIR = os.path.join(os.path.dirname(__file__), "zoo")


def entries() -> list[dict]:
    """Model cards of the shipped models (zoo/<name>/card.json)."""
    out = []
    if not os.path.isdir(ZOO_DIR):
        return out
    for name in sorted(os.listdir(ZOO_DIR)):
        card = os.path.join(ZOO_DIR, name, "card.json")
        if os.path.isfile(card):
            with open(card) as f:
                out.append(dict(json.load(f), name=name, path=os.path.join(ZOO_DIR, name)))
    return out


def default_path(kind: str, shape: tuple[int, ...]) -> str:
    from pxd.data import DATASETS

    for e in entries():
        if e.get("kind") == kind and e.get("default") and \
                tuple(DATASETS[e["dataset"]].shape) == tuple(shape):
            return e["path"]
    raise PxdError(
        f"no {kind} model given and none shipped for images of shape {tuple(shape)}; "
        f"pass --{'density' if kind == 'density' else 'clf'} RUN_DIR "
        f"(train one with pxd train-{'density' if kind == 'density' else 'clf'})"
    )
