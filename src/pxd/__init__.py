"""pxd: PixelDefend (Song et al., ICLR 2018) in JAX.

The public API (documented in `pxd.api` and the README) is importable from here:
`pxd.purify`, `pxd.bits_per_dim`, `pxd.attack`, `pxd.load_density`, `pxd.load_classifier`,
`pxd.feature_squeeze`, `pxd.zoo`, `pxd.roc_auc`, `pxd.p_values`, `pxd.PxdError`. Names load
lazily, so `import pxd` stays cheap and leaves JAX's device set-up to the caller.

Layout, imports pointing downward only: errors and configs (typed configs, presets,
datasets) < models (Flax modules) < core (pure jittable maths) < storage (disk) < report
(terminal, figures) < engine (host loops over devices, the trainer) < api (this public
surface) < commands (one per CLI command) < cli. No internal module is named like a public
name, so `pxd.purify` is always the function; the public names are `pxd.api.__all__`,
copied here so that reaching a submodule never loads JAX.
"""

import importlib

from pxd.errors import PxdError as PxdError  # cheap: no JAX

__version__ = "0.1.0"

# JAX-free copy of `pxd.api.__all__` (tests/test_layout.py checks they agree), so that
# `from pxd import configs` or `hasattr(pxd, "x")` never loads the API and JAX
__all__ = ["Classifier", "Density", "PxdError", "attack", "bits_per_dim", "feature_squeeze",
           "load_classifier", "load_dataset", "load_density", "p_values", "purify", "roc_auc",
           "zoo"]


def __getattr__(name: str):
    if name in __all__:
        import sys

        if "pxd.api" not in sys.modules:  # before JAX, which parses JAX_NUM_CPU_DEVICES
            from pxd.configs.env import check_env

            check_env()
        return getattr(importlib.import_module("pxd.api"), name)
    raise AttributeError(f"module 'pxd' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
