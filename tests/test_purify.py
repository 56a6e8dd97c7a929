"""Purification: the fast paths equal the literal Algorithm 1, decoded position by position."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxd.configs.pixelcnn import PIXELCNN_PRESETS
from pxd.core.purify import (
    auto_method,
    first_difference_gaps,
    make_purifier,
    purify_unet,
)
from pxd.core.squeeze import feature_squeeze
from pxd.models.pixelcnn import build_model, init_params

NEAR_TIE = 1e-4


def _setup(shape, preset="smoke", seed=0, **over):
    cfg = dict(PIXELCNN_PRESETS[preset])
    cfg.update(over)
    model = build_model(cfg, shape[-1])
    return model, init_params(model, shape, key=jax.random.key(seed))


def _assert_same(model, params, x, ref, out, eps):
    if np.array_equal(ref, out):
        return
    gaps = first_difference_gaps(model, params, x, ref, out, eps)
    assert gaps and max(gaps) < NEAR_TIE, f"fast purifier differs beyond a near-tie: {gaps}"


# 16x24x3, not CIFAR's 32x32x3 (real images below cover it): a third of the sequential
# reference's pixels, and height != width catches a swapped axis
@pytest.mark.parametrize("shape", [(16, 24, 3), (28, 28, 1)])
@pytest.mark.parametrize("epss", [(0, 2, 16), (255,)])
def test_fast_paths_equal_reference_random_images(shape, epss):
    # eps is per image: one batch (two images at each eps) holds several eps with one compile
    # per method; 255 (the full window) gets its own batch, as its window would cost every
    # image in the batch
    model, params = _setup(shape)
    x = np.concatenate([np.random.RandomState(eps).randint(0, 256, (2,) + shape)
                        for eps in epss]).astype(np.uint8)
    eps_b = np.repeat(epss, 2)
    e = jnp.asarray(eps_b, jnp.int32)
    ref = np.asarray(make_purifier(model, "reference")(params, x, e))
    for method in ("pixels", "rows", "jacobi"):
        out = np.asarray(make_purifier(model, method, max_eps=max(epss))(params, x, e))
        for k, eps in enumerate(epss):
            g = slice(2 * k, 2 * k + 2)
            _assert_same(model, params, x[g], ref[g], out[g], eps)
    lo = np.maximum(x.astype(int) - eps_b[:, None, None, None], 0)
    hi = np.minimum(x.astype(int) + eps_b[:, None, None, None], 255)
    assert ref.dtype == np.uint8 and np.all(ref >= lo) and np.all(ref <= hi)
    assert not np.array_equal(ref[eps_b > 0], x[eps_b > 0])
    np.testing.assert_array_equal(ref[eps_b == 0], x[eps_b == 0])  # eps 0 changes nothing


def test_fast_equals_reference_real_images_and_unet(cifar):

    from pxd.storage import data

    x, _ = data.load("cifar10:test[:2]", cifar)
    for over in ({}, {"downsample": True, "nr_stages": 2}):
        model, params = _setup((32, 32, 3), seed=1, **over)
        e = jnp.full((2,), 16, jnp.int32)
        ref = np.asarray(make_purifier(model, "reference")(params, x, e))
        out = np.asarray(make_purifier(model, "auto", max_eps=16)(params, x, e))
        _assert_same(model, params, x, ref, out, 16)


def test_cpu_preset_fast_path_equals_reference():
    # One image through the real cpu architecture (untrained): every position decoded both
    # ways. The network reaches 11 rows up, 10 columns left and 9 right, so 16x24 still has
    # positions that see no edge (rows 11-15, columns 10-14) beside every edge case, at 3/8
    # of CIFAR's positions and a seventh of the reference's work.
    model, params = _setup((16, 24, 3), preset="cpu", seed=2)
    x = np.random.RandomState(7).randint(0, 256, (1, 16, 24, 3)).astype(np.uint8)
    e = jnp.full((1,), 8, jnp.int32)
    ref = np.asarray(make_purifier(model, "reference")(params, x, e))
    for method in ("pixels", "rows"):
        out = np.asarray(make_purifier(model, method, max_eps=8)(params, x, e))
        _assert_same(model, params, x, ref, out, 8)


@pytest.mark.parametrize("preset,over,shape,eps", [
    ("smoke", dict(downsample=True, nr_stages=3), (12, 8, 1), 255),
    # the paper's architecture (3 stages, 5 blocks each, dropout) at width 8
    ("paper", dict(nr_filters=8), (8, 8, 3), 8),
])
def test_unet_cached_path_equals_reference(preset, over, shape, eps):
    model, params = _setup(shape, preset=preset, seed=3, **over)
    assert auto_method(model) == "unet"
    x = np.random.RandomState(eps).randint(0, 256, (2,) + shape).astype(np.uint8)
    e = jnp.full((2,), eps, jnp.int32)
    ref = np.asarray(make_purifier(model, "reference")(params, x, e))
    out = np.asarray(make_purifier(model, "auto", max_eps=eps)(params, x, e))
    _assert_same(model, params, x, ref, out, eps)
    assert not np.array_equal(ref, x)


def test_unet_cached_path_refuses_sizes_its_strides_cannot_split():
    model, params = _setup((8, 8, 3), downsample=True, nr_stages=3)
    assert auto_method(_setup((8, 8, 3))[0]) == "pixels"
    with pytest.raises(ValueError, match="multiples of 4"):
        purify_unet(model, params, np.zeros((1, 6, 8, 3), np.uint8), 2, max_eps=2)


def test_per_image_eps_and_adaptive_zero():
    model, params = _setup((28, 28, 1))
    x = np.random.RandomState(3).randint(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    e = jnp.asarray([0, 16], jnp.int32)
    out = np.asarray(make_purifier(model, "pixels", max_eps=16)(params, x, e))
    np.testing.assert_array_equal(out[0], x[0])
    assert not np.array_equal(out[1], x[1])


def test_feature_squeeze_values():
    x = np.zeros((1, 2, 2, 1), np.uint8)
    x[0, :, :, 0] = [[0, 9], [100, 255]]
    # 32 levels: step 255/31; 9 -> 8.2258 -> 8, 100 -> 98.71 -> 99 (rounded to the grid)
    out = np.asarray(feature_squeeze(x))
    # windows (reflect pad on the far edges): (0,0): {0,8,99,255} -> (8+99)/2=53.5 -> 54
    assert out[0, 0, 0, 0] == 54
    # (0,1): cols 1 and reflected col 0 -> {8, 0, 255, 99} -> 54; (1,0): rows 1, 0 -> 54
    assert out[0, 0, 1, 0] == 54 and out[0, 1, 0, 0] == 54
    assert out.dtype == np.uint8
    flat = np.full((1, 4, 4, 3), 77, np.uint8)
    q = round(round(77 / (255 / 31)) * 255 / 31)
    np.testing.assert_array_equal(np.asarray(feature_squeeze(flat)), q)
