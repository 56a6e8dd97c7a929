"""Image classifiers of PixelDefend's Appendix G: a pre-activation ResNet and a VGG.

Both take float32 NHWC images on the raw 0..255 pixel scale and normalise inside, so
that input gradients (used by every attack) are gradients w.r.t. 0..255 pixel values.
`__call__(x, *, train)` returns logits (N, num_classes). BatchNorm statistics live in
the `batch_stats` collection; dropout draws from the rng stream named 'dropout'.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pxd.configs.classifier import CLASSIFIER_PRESETS, ClfConfig
from pxd.configs.datasets import DATASETS
from pxd.errors import PxdError
from pxd.models import init_key
from pxd.models.guard import guarded

_BN_MOMENTUM = 0.9  # faster-moving statistics than flax's 0.99 suit short CPU runs
_BN_EPSILON = 1e-5
_conv_init = nn.initializers.he_normal()  # ReLU-family nets train better with He init


def _normalise(x: jnp.ndarray) -> jnp.ndarray:
    """Map 0..255 pixels to [-1, 1]; dataset-agnostic, BatchNorm absorbs the rest."""
    return x.astype(jnp.float32) / 127.5 - 1.0


class _PreActBlock(nn.Module):
    """Pre-activation residual block: (BN, leaky ReLU, conv3x3) twice, plus shortcut.

    A block that changes resolution or width uses the paper's parameter-free shortcut:
    `stride`x`stride` average pooling, then zero-padding of the new channels.
    """

    width: int
    stride: int = 1
    slope: float = 0.1

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=_BN_MOMENTUM,
            epsilon=_BN_EPSILON,
        )
        conv = partial(
            nn.Conv, self.width, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init
        )
        h = nn.leaky_relu(norm()(x), self.slope)
        h = conv(strides=(self.stride, self.stride))(h)
        h = nn.leaky_relu(norm()(h), self.slope)
        h = conv()(h)

        shortcut = x
        if self.stride != 1:
            # 'SAME' keeps the pooled size equal to the strided conv's for odd sizes (7 -> 4)
            shortcut = nn.avg_pool(
                shortcut,
                (self.stride, self.stride),
                strides=(self.stride, self.stride),
                padding="SAME",
                count_include_pad=False,
            )
        extra = self.width - x.shape[-1]
        if extra < 0:
            raise ValueError(f"block width {self.width} is below its input width {x.shape[-1]}")
        if extra:
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return h + shortcut


class ResNet(nn.Module):
    """Pre-activation ResNet of Appendix G.1.

    Layers: conv3x3(widths[0]) -> len(widths) stages of `blocks_per_stage` residual blocks
    (the first block of every stage after the first has stride 2) -> BN + leaky ReLU ->
    global average pool -> Dense(num_classes). Weight layers: 1 + 2 * blocks * stages + 1,
    i.e. 62 for the paper's 10 blocks per stage.

    Input x: float32 (N, H, W, C) in [0, 255]. Output: logits (N, num_classes).
    """

    blocks_per_stage: int = 10
    widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    slope: float = 0.1

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        h = nn.Conv(self.widths[0], (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init)(
            _normalise(x)
        )
        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                h = _PreActBlock(width, stride, self.slope)(h, train=train)
        h = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON)(
            h
        )
        h = nn.leaky_relu(h, self.slope)
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_classes)(h)


class VGG(nn.Module):
    """VGG of Appendix G.2.

    `stages` lists (width, convs) per feature block; every conv is 3x3 + BN + ReLU and
    every block ends in 2x2/2 max pooling ('SAME', so 28x28 inputs go 14, 7, 4, 2).
    Classifier: flatten -> dropout -> Dense(fc) -> ReLU -> dropout -> Dense(num_classes).

    Input x: float32 (N, H, W, C) in [0, 255]. Output: logits (N, num_classes).
    """

    stages: Sequence[tuple[int, int]] = ((16, 1), (128, 2), (512, 3), (512, 3))
    fc: int = 512
    dropout: float = 0.5
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        h = _normalise(x)
        for width, convs in self.stages:
            for _ in range(convs):
                h = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init)(
                    h
                )
                h = nn.BatchNorm(
                    use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON
                )(h)
                h = nn.relu(h)
            h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
        h = h.reshape(h.shape[0], -1)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.relu(nn.Dense(self.fc)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.num_classes)(h)


_ARCHS: dict[str, type[nn.Module]] = {"resnet": ResNet, "vgg": VGG}


def make_classifier(arch: str, preset: str | dict, num_classes: int = 10) -> nn.Module:
    """Build a classifier from an architecture name and a preset name or kwargs dict.

    Raises PxdError for an unknown architecture, preset or preset field.
    """
    if arch not in _ARCHS:
        raise PxdError(f"unknown classifier {arch!r}; choose from {', '.join(_ARCHS)}")
    if isinstance(preset, str):
        presets = CLASSIFIER_PRESETS[arch]
        if preset not in presets:
            raise PxdError(f"unknown {arch} preset {preset!r}; choose from {', '.join(presets)}")
        kwargs = dict(presets[preset])
    else:
        kwargs = dict(preset)
    kwargs["num_classes"] = num_classes
    try:
        return _ARCHS[arch](**kwargs)
    except TypeError as err:
        raise PxdError(f"bad {arch} settings {sorted(kwargs)}: {err}") from None


def _tuples(v: Any) -> Any:
    """Lists back to tuples: flax modules must be hashable."""
    return tuple(_tuples(a) for a in v) if isinstance(v, list | tuple) else v


def build_classifier(cfg: ClfConfig):
    """The classifier a ClfConfig describes (its dataset's number of classes)."""
    model_cfg = {k: _tuples(v) for k, v in cfg.model.items()}
    return make_classifier(cfg.arch, model_cfg, DATASETS[cfg.dataset].num_classes)


def init_variables(model, shape: tuple[int, int, int], *, key: jax.Array) -> dict:
    """{'params', 'batch_stats'} for images of `shape` (H, W, C)."""
    return dict(_init(model, tuple(shape), key))


@partial(jax.jit, static_argnums=(0, 1))  # one compile per (model, shape)
def _init(model, shape: tuple[int, ...], key: jax.Array):
    x = jnp.zeros((1,) + shape, jnp.float32)
    return model.init({"params": init_key(key)}, x, train=False)


def _apply(model, variables, x):
    return guarded(lambda xb: model.apply(variables, xb, train=False))(jnp.asarray(x, jnp.float32))


@functools.cache
def _bound_apply(model):
    # one function object per model, so jitted callers hit their cache across calls
    return functools.partial(_apply, model)


def make_logits_fn(model, params, batch_stats) -> jax.tree_util.Partial:
    """Eval-mode `logits_fn(x float32 (N,H,W,C) in 0..255) -> logits (N, K)`.

    A `jax.tree_util.Partial`: the variables are pytree leaves, so jitted code takes them as
    arguments (no constants baked into programs) and can place them on the mesh.
    """
    return jax.tree_util.Partial(_bound_apply(model), {"params": params,
                                                       "batch_stats": batch_stats})
