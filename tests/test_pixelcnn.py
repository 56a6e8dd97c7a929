"""PixelCNN numbers: causality, normalisation, the uniform model, likelihood identities."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxd.configs.pixelcnn import PIXELCNN_PRESETS
from pxd.core.likelihood import make_bpd_fn
from pxd.models.guard import guarded
from pxd.models.mixture import bits_per_dim, nll_from_logits
from pxd.models.pixelcnn import PixelCNN, build_model, init_params

SHAPES = [(32, 32, 3), (28, 28, 1)]


def _model(preset, channels, **over):
    cfg = dict(PIXELCNN_PRESETS[preset])
    cfg.update(over)
    return build_model(cfg, channels)


def _init(model, shape, seed=0):
    return init_params(model, shape, key=jax.random.key(seed))


def _logits(model, params, x):
    v = {"params": params}
    h = model.apply(v, x, method=PixelCNN.features)
    return model.apply(v, h, x, method=PixelCNN.logits)


def _check_causal(model, params, shape, positions, seed=0, k=64):
    """Changing sub-pixel p never changes any conditional at positions <= p, exactly.

    Checked on the body's features at every pixel up to p's pixel (the head reads only its
    own pixel's features) and on the 256-way logits of p's pixel for channels <= p's.
    """
    h, w, c = shape
    n = h * w * c
    rng = np.random.RandomState(seed)
    x = rng.randint(0, 256, (1,) + shape).astype(np.uint8)
    v = {"params": params}

    # row 0 is compared with rows 1.. of the same call: guard images keep every row off the
    # CPU GEMM's tail, whose other rounding is no causality question (pxd.models.guard)
    features = guarded(lambda xb: model.apply(v, xb, method=PixelCNN.features))

    @jax.jit
    def fn(xb, qs):
        feats = features(xb)
        fq = feats.reshape(k, h * w, -1)[jnp.arange(k), qs][:, None, None]
        xq = xb.reshape(k, h * w, c)[jnp.arange(k), qs][:, None, None]
        f0 = feats.reshape(k, h * w, -1)[0, qs][:, None, None]
        x0 = xb.reshape(k, h * w, c)[0, qs][:, None, None]
        lg = model.apply(v, fq, xq, method=PixelCNN.logits)[:, 0, 0]
        lg0 = model.apply(v, f0, x0, method=PixelCNN.logits)[:, 0, 0]
        return feats, lg, lg0

    positions = list(positions)
    for start in range(0, len(positions), k - 1):
        chunk = positions[start : start + k - 1]
        # row 0 is the unmodified image, computed in the same call (same batch shape)
        xs = np.repeat(x.reshape(1, -1), k, axis=0)
        for r, p in enumerate(chunk, 1):
            xs[r, p] = (int(xs[r, p]) + 1 + rng.randint(254)) % 256
        qs = np.zeros(k, np.int32)
        qs[1 : len(chunk) + 1] = [p // c for p in chunk]
        feats, lg, lg0 = fn(jnp.asarray(xs.reshape((-1,) + shape)), jnp.asarray(qs))
        feats = np.asarray(feats).reshape(k, h * w, -1)
        lg, lg0 = np.asarray(lg), np.asarray(lg0)
        for r, p in enumerate(chunk, 1):
            q, ch = divmod(p, c)
            np.testing.assert_array_equal(feats[r, : q + 1], feats[0, : q + 1])
            np.testing.assert_array_equal(lg[r, : ch + 1], lg0[r, : ch + 1])
            if p < n - 1:  # and the change is seen later (the test is not vacuous)
                later = np.concatenate([lg[r, ch + 1 :].ravel(), feats[r, q + 1 :].ravel()])
                base = np.concatenate([lg0[r, ch + 1 :].ravel(), feats[0, q + 1 :].ravel()])
                assert not np.array_equal(later, base)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("over", [{}, {"downsample": True, "nr_stages": 2},
                                  {"head": "softmax"}])
def test_causality_every_position_smoke(shape, over):
    model = _model("smoke", shape[-1], **over)
    params = _init(model, shape)
    _check_causal(model, params, shape, range(shape[0] * shape[1] * shape[2]))


def test_causality_openai_wiring_and_joint_mixture():
    # openai/pixel-cnn's dn-pass wiring (stage inputs read, one more dn block) and its joint
    # mixture (channel c's weights read channels < c): still causal, every sub-pixel
    shape = (8, 8, 3)
    model = _model("smoke", 3, downsample=True, nr_stages=3, skips="inputs", mixture="joint")
    params = _init(model, shape, seed=4)
    assert len([k for k in params if k.startswith("u_dn_0_")]) == 2  # nr_resnet + 1
    _check_causal(model, params, shape, range(8 * 8 * 3))


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_causality_big_presets(preset):
    shape = (32, 32, 3)
    over = {"nr_filters": 16} if preset == "paper" else {}
    model = _model(preset, 3, **over)
    # random parameters of the right shapes: compiling the U-Net's initialisers costs ~20 s
    shapes = jax.eval_shape(lambda k: init_params(model, shape, key=k), jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.normal(0.0, 0.1, a.shape), a.dtype), shapes)
    n = 32 * 32 * 3
    pos = [0, 1, 2, 3, 95, 96, 97, 1535, 1536, 1537, 3070, 3071]
    pos += list(np.random.RandomState(2).choice(n, 8, replace=False))
    _check_causal(model, params, shape, sorted(set(int(p) for p in pos)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("head", ["mixture", "softmax"])
def test_conditionals_sum_to_one(shape, head):
    model = _model("smoke", shape[-1], head=head)
    params = _init(model, shape, seed=3)
    x = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2,) + shape), jnp.uint8)
    lg = np.asarray(_logits(model, params, x), np.float64)
    np.testing.assert_allclose(np.exp(lg).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_zero_output_weights_give_eight_bits(shape):
    model = _model("smoke", shape[-1], head="softmax")
    params = _init(model, shape)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if "head_" in jax.tree_util.keystr(path) else a,
        params,
    )
    x = jnp.asarray(np.random.RandomState(0).randint(0, 256, (3,) + shape), jnp.uint8)
    for exact in (False, True):
        bpd = np.asarray(make_bpd_fn(model, exact=exact)(params, x))
        # float32 sums of H*W*C equal terms: exact up to rounding
        np.testing.assert_allclose(bpd, 8.0, rtol=0, atol=2e-5)


def test_mixture_zero_weights_match_analytic_logistic():
    # Zero head: one logistic component per mixture slot with mean 0, scale 1 (in [-1, 1]
    # units); the bits/dim of a known image follows from the logistic CDF alone.
    shape = (4, 4, 1)
    model = _model("smoke", 1)
    params = _init(model, shape)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if "head" in jax.tree_util.keystr(path) else a,
        params,
    )
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1) * 17

    def cdf(t):
        return 1.0 / (1.0 + np.exp(-t))

    xv = x.astype(np.float64) * 2 / 255 - 1
    p = np.where(x == 0, cdf(xv + 1 / 255),
                 np.where(x == 255, 1 - cdf(xv - 1 / 255), cdf(xv + 1 / 255) - cdf(xv - 1 / 255)))
    want = -np.log(p).sum() / (16 * math.log(2))
    got = float(make_bpd_fn(model)(params, jnp.asarray(x))[0])
    assert got == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_closed_form_equals_softmax_cross_entropy(shape):
    model = _model("smoke", shape[-1])
    params = _init(model, shape, seed=5)
    x = jnp.asarray(np.random.RandomState(4).randint(0, 256, (2,) + shape), jnp.uint8)
    fast = np.asarray(make_bpd_fn(model)(params, x))
    exact = np.asarray(make_bpd_fn(model, exact=True)(params, x))
    np.testing.assert_allclose(fast, exact, atol=1e-4)
    lg = _logits(model, params, x)
    np.testing.assert_allclose(np.asarray(bits_per_dim(nll_from_logits(lg, x))), exact,
                               atol=1e-5)


def test_unknown_model_option_is_an_error():
    from pxd.errors import PxdError

    with pytest.raises(PxdError, match="n_resent"):
        build_model({"n_resent": 1}, 3)
