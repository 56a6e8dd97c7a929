"""The bench's cache: every crafted, purified and scored array as an .npz under OUT/cache.

File names carry the key (classifier digest, attack, eps, n, seed, batch size, a hash of
the options; every kind depends on the batch size: XLA picks algorithms and rounding by the
program's shape, and random starts fold in the batch index); the fields stored beside `x`
(inputs, models, settings, and the version of the code that made it) are checked on load,
so a stale, unreadable, truncated or corrupt file is recomputed and replaced (atomically).
Keys depend only on (seed, what is computed), never on what else a run computes, so reruns
and new columns reuse what exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib

import numpy as np

from pxd import __version__
from pxd.configs import versions
from pxd.engine import devices
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import imageio


def digest(x: np.ndarray) -> str:
    """sha256 of an array's shape, dtype and bytes."""
    h = hashlib.sha256(f"{x.shape}{x.dtype}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def opts_tag(opts: dict) -> str:
    if not opts:
        return ""
    return "_" + hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8]


class Cache:
    """npz files under DIR/cache, validated by stored fields and by the version of the code
    that made them (configs/versions.py and pxd's); counts, per kind, arrays reused, newly
    computed, recomputed (stale or unreadable) and, with `reuse_stale`, stale ones reused."""

    def __init__(self, root: str, *, reuse_stale: bool = False):
        self.root, self.reuse_stale = root, reuse_stale
        self.stats: dict[str, dict] = {}
        os.makedirs(root, exist_ok=True)

    @staticmethod
    def _read(path: str) -> dict | None:
        """Every array of an npz file, or None if it is missing or cannot be read whole
        (truncated, empty, bad CRC, not an npz, pickled objects)."""
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if not isinstance(z, np.lib.npyio.NpzFile):
                    return None
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
            return None  # unreadable: recompute and replace

    def _load(self, kind: str, path: str, check: dict) -> tuple[str, np.ndarray | None, str]:
        """(status, array, version that made it): status hit, stale (other code version),
        stale_reused (the same, with reuse_stale), bad (unreadable) or miss."""
        z = self._read(path)
        if z is None or "x" not in z:
            return ("bad" if os.path.lexists(path) else "miss"), None, ""
        if any(k not in z or str(z[k]) != str(v) for k, v in check.items()):
            return "miss", None, ""  # made from other inputs: recompute and replace
        made = _version_tag(str(z["pxd_version"]) if "pxd_version" in z else "?",
                            str(z["code_version"]) if "code_version" in z else "?")
        if made == _version_tag(__version__, versions.CACHED[kind]):
            return "hit", z["x"], made
        return ("stale_reused", z["x"], made) if self.reuse_stale else ("stale", None, made)

    def get(self, kind: str, name: str, check: dict, compute) -> np.ndarray:
        path = os.path.join(self.root, name)
        st = self.stats.setdefault(kind, {"hits": 0, "new": 0, "stale": 0, "bad": 0,
                                          "stale_reused": 0, "versions": {}})
        status, x, made = self._load(kind, path, check)
        # several processes: all follow process 0's hit or miss (a miss runs collectives)
        if bool(devices.agree(x is not None)):
            if x is None:  # this process could not read what process 0 did
                status, x, made = self._load(kind, path, check)
            st["hits" if status == "hit" else "stale_reused"] += 1
            st["versions"][made] = st["versions"].get(made, 0) + 1
            return x
        x = compute()
        version = versions.CACHED[kind]
        imageio.write_npz(path, x=x, pxd_version=np.asarray(__version__),
                          code_version=np.asarray(str(version)),
                          **{k: np.asarray(str(v)) for k, v in check.items()})
        if status in ("stale", "bad"):
            st[status] += 1
        st["new"] += 1
        made = _version_tag(__version__, version)
        st["versions"][made] = st["versions"].get(made, 0) + 1
        return x


def entry_name(kind: str, *parts, batch_size: int, tag: str = "") -> str:
    """A cache file name: kind_part_..._b{batch_size}{tag}.npz. The batch size is in every
    key, since XLA:CPU rounding follows the program's shape (see `pxd.models.guard`)."""
    return f"{kind}_{'_'.join(str(p) for p in parts)}_b{batch_size}{tag}.npz"


def _version_tag(pxd_version: str, code_version) -> str:
    return f"pxd {pxd_version}, code v{code_version}"


def check_cache_dir(out: str) -> str:
    """OUT/cache, refused (one line, before anything is written) if it is not a folder."""
    root = os.path.join(out, "cache")
    if os.path.lexists(root) and not os.path.isdir(root):
        raise PxdError(f"--out {out}: {root} exists and is not a folder (the bench keeps its "
                       "cache there); move it away or choose another --out")
    return root


def craft_cached(cache: Cache, m: dict, attack: str, e: int, opts: dict, x: np.ndarray,
                  y: np.ndarray, *, seed: int, batch_size: int, rep: Reporter) -> np.ndarray:
    """Oblivious attack on the classifier alone; key depends on (seed, attack, eps) only."""
    from pxd.engine.batched import craft

    name = entry_name("adv", m["digest"][:12], attack, e, len(x), seed,
                      batch_size=batch_size, tag=opts_tag(opts))

    def compute():
        with rep.progress(f"{attack} eps={e} {opts_tag(opts)[1:]} ({m['label']})",
                          total=len(x)) as advance:
            return craft(attack, m["logits_fn"], x, y, eps=float(e),
                         key=seed_key(seed, attack, e), batch_size=batch_size,
                         on_batch=advance, **opts)

    return cache.get("attacks", name, {"input": digest(x), "clf": m["digest"],
                                       "opts": json.dumps(opts, sort_keys=True)}, compute)


def bpda_cached(cache: Cache, m: dict, defence: str, attack_fn, dparams, e: int,
                 x: np.ndarray, y: np.ndarray, settings: dict, *, seed: int, batch_size: int,
                 rep: Reporter) -> np.ndarray:
    """End-to-end BPDA-PGD on the defended classifier; batch b uses fold_in(key, b)."""
    import jax

    name = entry_name("bpda", m["digest"][:12], defence, e, len(x), seed,
                      batch_size=batch_size, tag=opts_tag(settings))

    def compute():
        key = seed_key(seed, "bpda", defence, e)

        def one(b, models, xb, yb, eb):
            return attack_fn(*models, xb, yb, eb, jax.random.fold_in(key, b))

        with rep.progress(f"BPDA-PGD {defence} eps={e} ({m['label']})",
                          total=len(x)) as advance:
            return devices.map_batches(one, (x, y, np.full(len(x), e, np.float32)),
                                       batch_size, on_batch=advance, indexed=True,
                                       consts=(m["logits_fn"], dparams))

    return cache.get("bpda", name, {"input": digest(x), "clf": m["digest"],
                                    "settings": json.dumps(settings, sort_keys=True)}, compute)


def seed_key(seed: int, *parts):
    """A key that depends only on (seed, parts): stable whatever else the run computes."""
    import jax

    key = jax.random.key(seed)
    for p in parts:
        key = jax.random.fold_in(key, zlib.crc32(str(p).encode()))
    return key
