"""Bits/dim of images under a PixelCNN (pure, jitted): the paper's detection score.

Images are integers 0..255 (N, H, W, C); results are float32 bits/dim (N,), or a per-sub-pixel
NLL map in bits. The mixture maths behind them is in `pxd.models.mixture`.
"""

from __future__ import annotations

import functools
import math

import jax

from pxd.models.guard import guarded
from pxd.models.mixture import bits_per_dim
from pxd.models.pixelcnn import PixelCNN


@functools.lru_cache(maxsize=16)
def make_bpd_fn(model: PixelCNN, exact: bool = False):
    """Jitted `bpd(params, x) -> (B,)` bits/dim.

    exact=False uses the closed-form mixture likelihood at the observed values;
    exact=True builds all 256 normalised logits per sub-pixel first (slower; equal up to
    float rounding, checked in tests). Cached per model, so chunked callers compile once.
    """

    def fn(params, x):
        v = {"params": params}
        h = model.apply(v, x, method=PixelCNN.features)
        if exact:
            from pxd.models.mixture import nll_from_logits

            nll = nll_from_logits(model.apply(v, h, x, method=PixelCNN.logits), x)
        else:
            nll = model.apply(v, h, x, method=PixelCNN.nll)
        return bits_per_dim(nll)

    return jax.jit(lambda params, x: guarded(lambda xb: fn(params, xb))(x))


def make_nll_map_fn(model: PixelCNN):
    """Jitted per-sub-pixel NLL map in bits, (B, H, W, C)."""

    def fn(params, x):
        return model.apply({"params": params}, x) / math.log(2.0)

    return jax.jit(lambda params, x: guarded(lambda xb: fn(params, xb))(x))
