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


def bits_per_dim_of(model: PixelCNN, params, x: jax.Array, *, exact: bool = False) -> jax.Array:
    """Bits/dim (B,) of images on the 0..255 scale, with guard images (so an image's value
    does not follow its batch slot). Pure and differentiable in x with the mixture head.

    exact=False uses the closed-form mixture likelihood at the observed values;
    exact=True builds all 256 normalised logits per sub-pixel first (slower; equal up to
    float rounding, checked in tests).
    """

    def fn(xb):
        v = {"params": params}
        h = model.apply(v, xb, method=PixelCNN.features)
        if exact:
            from pxd.models.mixture import nll_from_logits

            nll = nll_from_logits(model.apply(v, h, xb, method=PixelCNN.logits), xb)
        else:
            nll = model.apply(v, h, xb, method=PixelCNN.nll)
        return bits_per_dim(nll)

    return guarded(fn)(x)


@functools.lru_cache(maxsize=16)
def make_bpd_fn(model: PixelCNN, exact: bool = False):
    """Jitted `bpd(params, x) -> (B,)` bits/dim (`bits_per_dim_of`). Cached per model, so
    chunked callers compile once."""
    return jax.jit(functools.partial(bits_per_dim_of, model, exact=exact))


def make_nll_map_fn(model: PixelCNN):
    """Jitted per-sub-pixel NLL map in bits, (B, H, W, C)."""

    def fn(params, x):
        return model.apply({"params": params}, x) / math.log(2.0)

    return jax.jit(lambda params, x: guarded(lambda xb: fn(params, xb))(x))
