"""Attacks of Appendix A and the adversarial-training helpers of Appendix C.

Everything runs on tiny inputs: an MLP trained for a second on separable 8x8x1 synthetic
images, and linear models on 4x4x1 images, where DeepFool's and CW's answers are known.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pxd.core.attacks import (
    ATTACKS,
    adversarial_batch,
    bim,
    cw_raw,
    deepfool_raw,
    fgsm,
    training_eps,
)
from pxd.errors import PxdError

K = 3  # classes of the synthetic task
SHAPE = (8, 8, 1)
# few iterations keep the property tests fast; the strength tests use the defaults
FAST = {
    "cw": {"search_steps": 2, "max_iterations": 10},
    "deepfool": {"max_iter": 10},
    "pgd": {"restarts": 2, "steps": 6},
}


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class templates plus Gaussian noise, rounded to uint8: separable but not trivially."""
    templates = np.random.default_rng(0).uniform(90, 166, size=(K, *SHAPE))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n).astype(np.int32)
    x = np.clip(np.round(templates[y] + rng.normal(0, 30, size=(n, *SHAPE))), 0, 255)
    return x.astype(np.uint8), y


def _mlp(params, x):
    h = x.reshape(x.shape[0], -1) / 127.5 - 1.0
    h = jax.nn.relu(h @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


@functools.cache
def _trained_logits_fn():
    """A one-hidden-layer MLP trained full-batch on 512 synthetic images (~1 s)."""
    x, y = _data(512, 1)
    rng = np.random.default_rng(2)
    d = int(np.prod(SHAPE))
    params = {
        "w1": jnp.asarray(rng.normal(0, d**-0.5, (d, 32)), jnp.float32),
        "b1": jnp.zeros(32),
        "w2": jnp.asarray(rng.normal(0, 32**-0.5, (32, K)), jnp.float32),
        "b2": jnp.zeros(K),
    }
    opt = optax.adam(1e-2)
    xf = jnp.asarray(x, jnp.float32)

    def loss(p):
        return optax.softmax_cross_entropy_with_integer_labels(_mlp(p, xf), y).mean()

    @jax.jit
    def train(p):
        def step(carry, _):
            p, s = carry
            updates, s = opt.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(step, (p, opt.init(p)), None, length=200)[0][0]

    params = train(params)
    return functools.partial(_mlp, params)


@functools.cache
def _jitted(name: str, fast: bool = True):
    """The attack jitted with traced eps and key, closed over the trained MLP."""
    attack, opts = ATTACKS[name], FAST.get(name, {}) if fast else {}
    logits_fn = _trained_logits_fn()
    return jax.jit(lambda x, y, eps, key: attack(logits_fn, x, y, eps=eps, key=key, **opts))


def _batch(n: int = 6):
    x, y = _data(n, 3)
    x[0, :2] = 0  # saturated pixels exercise the [0, 255] clipping
    x[1, :2] = 255
    return x, y


def _check(x_adv, x, eps) -> np.ndarray:
    """Assert the attack contract; return |x_adv - x| as int (N, H, W, C)."""
    assert x_adv.dtype == jnp.uint8 and x_adv.shape == x.shape
    diff = np.abs(np.asarray(x_adv, np.int32) - np.asarray(x, np.int32))
    budget = np.floor(np.broadcast_to(np.asarray(eps, np.float64), (x.shape[0],)))
    assert np.all(diff.reshape(len(x), -1).max(1) <= budget)
    return diff


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_contract(name):
    x, y = _batch()
    attack, key = _jitted.__wrapped__(name), jax.random.key(0)  # fresh: counts compiles
    for eps in (0.0, 2.5, 8.0):
        x_adv = attack(x, y, jnp.float32(eps), key)
        diff = _check(x_adv, x, eps)
        if eps == 0.0:
            assert diff.max() == 0
    assert attack._cache_size() == 1  # eps is traced: changing it does not recompile
    # integral float32 input is accepted as well
    _check(attack(x.astype(np.float32), y, jnp.float32(8.0), key), x, 8.0)
    # same key, same answer
    np.testing.assert_array_equal(attack(x, y, jnp.float32(8.0), key), x_adv)


@pytest.mark.parametrize("name", ["rand", "fgsm", "bim", "pgd"])
def test_per_example_eps(name):
    x, y = _batch()
    eps = jnp.asarray([0.0, 1.0, 2.7, 4.0, 8.0, 16.0], jnp.float32)
    diff = _check(_jitted(name)(x, y, eps, jax.random.key(0)), x, eps)
    assert diff[0].max() == 0
    if name in ("fgsm", "bim"):
        # each example is attacked as if alone with its own eps
        for i in (2, 5):
            alone = _jitted(name)(x[i : i + 1], y[i : i + 1], eps[i], jax.random.key(0))
            got = _jitted(name)(x, y, eps, jax.random.key(0))[i : i + 1]
            np.testing.assert_array_equal(got, alone)


def test_random_attacks_depend_on_key():
    x, y = _batch()
    for name in ("rand", "pgd"):
        a = _jitted(name)(x, y, jnp.float32(8.0), jax.random.key(0))
        b = _jitted(name)(x, y, jnp.float32(8.0), jax.random.key(1))
        assert np.any(np.asarray(a) != np.asarray(b))


def test_rand_and_fgsm_use_the_full_budget():
    x, y = _data(4, 3)  # mid-range pixels: no clipping at 0 or 255
    diff = _check(_jitted("fgsm")(x, y, jnp.float32(5.0), jax.random.key(0)), x, 5.0)
    assert np.all((diff == 5) | (diff == 0)) and (diff == 5).mean() > 0.9
    diff = _check(_jitted("rand")(x, y, jnp.float32(5.0), jax.random.key(0)), x, 5.0)
    assert set(np.unique(diff)) == {0, 1, 2, 3, 4, 5}


def test_bim_one_step_is_fgsm():
    logits_fn = _trained_logits_fn()
    x, y = _batch()
    np.testing.assert_array_equal(
        bim(logits_fn, x, y, eps=1.0, steps=1), fgsm(logits_fn, x, y, eps=1.0)
    )


def test_attack_strength_order_on_trained_model():
    x, y = _data(128, 4)
    logits_fn = _trained_logits_fn()

    def acc(x_adv):
        return float(np.mean(np.argmax(logits_fn(jnp.asarray(x_adv, jnp.float32)), -1) == y))

    assert acc(x) > 0.95
    key = jax.random.key(5)
    for eps in (8.0, 16.0):
        r, f, b = (
            acc(_jitted(n, fast=False)(x, y, jnp.float32(eps), key))
            for n in ("rand", "fgsm", "bim")
        )
        assert r >= f >= b
    assert acc(_jitted("bim", fast=False)(x, y, jnp.float32(64.0), key)) == 0.0
    assert acc(_jitted("pgd", fast=False)(x, y, jnp.float32(64.0), key)) == 0.0
    # minimal-L2 attacks sit near the boundary; rounding to pixels may save a rare example
    assert acc(_jitted("deepfool", fast=False)(x, y, jnp.float32(64.0), key)) <= 0.05
    assert acc(_jitted("cw", fast=False)(x, y, jnp.float32(64.0), key)) <= 0.05


# --------------------------------------------------------------------------- linear models


def _linear_problem(num_classes: int, n: int = 8, seed: int = 0):
    """Linear logits on 4x4x1 images and the analytic minimal L2 distance to misclassify.

    Returns (logits_fn, x, y, distance) with x mid-range and the distances in [2, 15], so
    box constraints stay inactive.
    """
    rng = np.random.default_rng(seed)
    d = 16
    w = rng.normal(0, 0.3, (d, num_classes)).astype(np.float32)
    # boundaries pass near the middle of the data, so both sides are populated
    b = (rng.normal(0, 1.0, num_classes) - 127.5 * w.sum(0)).astype(np.float32)
    x = rng.uniform(110, 145, (200, 4, 4, 1)).astype(np.float32)
    logits = x.reshape(len(x), -1) @ w + b
    y = logits.argmax(-1)
    dw = w.T[None, :, :] - w.T[y][:, None, :]  # (N, K, D)
    margin = np.abs(logits - np.take_along_axis(logits, y[:, None], 1))
    dist = margin / np.maximum(np.linalg.norm(dw, axis=-1), 1e-12)
    dist[np.arange(len(x)), y] = np.inf
    dist = dist.min(-1)
    pick = np.flatnonzero((dist > 2) & (dist < 15))[:n]
    assert len(pick) == n

    def logits_fn(z):
        return z.reshape(z.shape[0], -1) @ w + b[None]

    return logits_fn, x[pick], y[pick].astype(np.int32), dist[pick]


def _l2(a, b) -> np.ndarray:
    return np.linalg.norm((np.asarray(a) - np.asarray(b)).reshape(len(a), -1), axis=-1)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_deepfool_matches_analytic_linear_solution(num_classes):
    logits_fn, x, y, dist = _linear_problem(num_classes)
    x_df = deepfool_raw(logits_fn, x, y, max_iter=50, overshoot=0.02, num_classes=None)
    np.testing.assert_allclose(_l2(x_df, x), dist * 1.02, rtol=0.01)
    assert np.all(np.argmax(logits_fn(x_df), -1) != y)


@pytest.mark.parametrize("abort_early", [True, False])
def test_cw_finds_near_minimal_l2_on_linear_model(abort_early):
    logits_fn, x, y, dist = _linear_problem(4)
    x_cw = cw_raw(logits_fn, x, y, abort_early=abort_early)
    assert np.all(np.argmax(logits_fn(x_cw), -1) != y)
    l2 = _l2(x_cw, x)
    assert np.all(l2 >= dist * 0.999) and np.all(l2 <= dist * 1.05)


# --------------------------------------------------------------------------- Appendix C


def test_training_eps_is_truncated_half_normal():
    eps = np.asarray(training_eps(jax.random.key(0), 20000, delta=8.0))
    assert eps.shape == (20000,) and eps.dtype == np.float32
    assert eps.min() >= 0.0 and eps.max() <= 16.0
    # E|Z| for Z ~ N(0, 1) truncated to [-2, 2], times delta: 8 * 0.7228 = 5.78
    assert abs(eps.mean() - 5.78) < 0.15
    assert abs(np.mean(eps < 8.0) - 0.6827 / 0.9545) < 0.02


@pytest.mark.parametrize("method", ["fgsm", "bim"])
def test_adversarial_batch_attacks_predicted_labels(method):
    logits_fn = _trained_logits_fn()
    x, _ = _data(16, 6)
    pred = np.argmax(logits_fn(jnp.asarray(x, jnp.float32)), -1).astype(np.int32)
    wrong = (pred + 1) % K  # "true" labels that the model gets all wrong
    x_adv = adversarial_batch(logits_fn, x, method=method, key=jax.random.key(3))
    diff = _check(x_adv, x, 16.0)
    eps = diff.reshape(len(x), -1).max(1).astype(np.float32)  # the drawn budgets, floored
    assert eps.max() > 0
    attack = ATTACKS[method]
    np.testing.assert_array_equal(x_adv, attack(logits_fn, x, pred, eps=eps))
    assert np.any(np.asarray(x_adv) != np.asarray(attack(logits_fn, x, wrong, eps=eps)))


def test_adversarial_batch_rejects_other_methods():
    with pytest.raises(PxdError):
        adversarial_batch(
            _trained_logits_fn(),
            np.zeros((1, *SHAPE), np.uint8),
            method="cw",
            key=jax.random.key(0),
        )


# --------------------------------------------------------------------------- host-driven loops


def _conv_logits_fn():
    """A small random conv net: the host loops must match the lax loops on convolutions."""
    rng = np.random.default_rng(7)
    k1 = jnp.asarray(rng.normal(0, 0.3, (3, 3, 1, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(0, 0.1, (8 * 8 * 4, K)), jnp.float32)

    def logits_fn(x):
        h = jax.lax.conv_general_dilated(x / 127.5 - 1.0, k1, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.tanh(h).reshape(x.shape[0], -1) @ w

    return logits_fn


HOST_OPTS = {
    "bim": {},
    "pgd": {"restarts": 2, "steps": 7},
    "deepfool": {"max_iter": 6},
    "cw": {"search_steps": 3, "max_iterations": 30, "initial_const": 100.0},
}


@pytest.mark.parametrize("name", sorted(HOST_OPTS))
@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_host_loop_equals_lax_loop(name, model):
    # Called on concrete arrays an attack drives its loop from Python over jitted chunks;
    # under jit it is the lax loop the attacks used before. Every iterate must agree.
    logits_fn = _trained_logits_fn() if model == "mlp" else _conv_logits_fn()
    attack, opts = ATTACKS[name], HOST_OPTS[name]
    x, y = _batch(8)
    eps = jnp.asarray([0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 16.0], jnp.float32)
    key = jax.random.key(4)
    host = attack(logits_fn, x, y, eps=eps, key=key, **opts)
    lax_loop = jax.jit(lambda x, y, e, k: attack(logits_fn, x, y, eps=e, key=k, **opts))
    np.testing.assert_array_equal(host, lax_loop(x, y, eps, key))
    assert np.any(np.asarray(host) != x)


def test_host_loop_raw_floats_match_lax_loop():
    # The continuous iterates (DeepFool's r_tot, CW's tanh-space Adam) agree to float32
    # rounding, not bit for bit: XLA fuses a loop body and a standalone chunk differently
    # (reduction order), a few ulps apart. The attacks' integer outputs are equal (above,
    # and on the shipped ResNet-14 for 20 test images at eps 2 and 8).
    logits_fn = _conv_logits_fn()
    x, y = _batch(8)
    xf = x.astype(np.float32)
    for fn, opts in ((deepfool_raw, {"max_iter": 6}), (cw_raw, HOST_OPTS["cw"])):
        host = np.asarray(fn(logits_fn, xf, y, **opts))
        traced = jax.jit(lambda a, b, fn=fn, opts=opts: fn(logits_fn, a, b, **opts))(xf, y)
        np.testing.assert_allclose(host, np.asarray(traced), rtol=1e-6, atol=0)
        np.testing.assert_array_equal(np.round(host), np.round(np.asarray(traced)))


def test_deepfool_shrinks_the_batch_to_active_examples(monkeypatch):
    # Fooled examples leave the batch (next power of two above the active count); the
    # others' iterates are a full-batch loop's up to float32 rounding (XLA:CPU blocks a
    # matmul by batch size: here a few ulps; on the shipped ResNet-14, whose only matmul
    # is 64 wide, bit-identical, as `pxd bench --speed` reports) and its integer images.
    import pxd.core.attacks as A
    import pxd.core.attacks.deepfool_l2 as D
    from pxd.engine.active import ActiveBatch, bucket

    logits_fn = A.as_pytree(_conv_logits_fn())
    x, y = _batch(8)
    xf = jnp.asarray(x, jnp.float32)
    x0, y0, cand, full = D.deepfool_setup(logits_fn, xf, y, None)
    for _ in range(6):
        full = D._deepfool_chunk(logits_fn, full, x0, y0, cand, k=1, overshoot=0.02,
                                 quantize=True)
    sizes, real = [], D._deepfool_chunk

    def spy(f, s, x0, *args, **kw):
        sizes.append(x0.shape[0])
        return real(f, s, x0, *args, **kw)

    monkeypatch.setattr(D, "_deepfool_chunk", spy)
    got = deepfool_raw(logits_fn, xf, y, max_iter=6, quantize=True, host_batch=ActiveBatch)
    want = D.deepfool_result(x0, full.r_tot, 0.02)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(A.finish(got, x0, A.budget(255.0, 8)),
                                  A.finish(want, x0, A.budget(255.0, 8)))
    assert sizes[0] == 8 and min(sizes) < 8, sizes
    assert [bucket(c, 100, 2) for c in (1, 3, 31, 54, 86)] == [2, 4, 32, 64, 100]
    assert bucket(5, 8, 1) == 8 and bucket(3, 8, 1) == 4


def test_cw_aborts_per_example_and_shrinks_the_batch(monkeypatch):
    # CW's early abort judges each example's own objective (Carlini's code at its default
    # batch size of 1), so an image's result does not depend on the rest of its batch, and
    # the host loop drops stopped examples at each checkpoint.
    import pxd.core.attacks as A
    import pxd.core.attacks.cw_l2 as C
    from pxd.engine.active import ActiveBatch

    logits_fn = _conv_logits_fn()
    x, y = _batch(8)
    xf = jnp.asarray(x, jnp.float32)
    opts = dict(search_steps=2, max_iterations=40, initial_const=100.0,
                host_batch=ActiveBatch)
    sizes, real = [], C._cw_chunk

    def spy(f, c, x0, *args, **kw):
        sizes.append(x0.shape[0])
        return real(f, c, x0, *args, **kw)

    monkeypatch.setattr(C, "_cw_chunk", spy)
    whole = np.asarray(cw_raw(logits_fn, xf, y, **opts))
    assert sizes[0] == 8 and min(sizes) < 8, sizes
    halves = np.concatenate([np.asarray(cw_raw(logits_fn, xf[:4], y[:4], **opts)),
                             np.asarray(cw_raw(logits_fn, xf[4:], y[4:], **opts))])
    np.testing.assert_allclose(whole, halves, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.round(whole), np.round(halves))
    # the stop rule itself: an example whose objective rose at a checkpoint stops, others not
    x0, y0, w0, st = C.cw_setup(xf, y, 100.0)
    c = C.cw_round_init(st, w0, learning_rate=1e-2)
    c = c._replace(i=jnp.int32(4), prev=jnp.where(jnp.arange(8) < 3, 0.0, jnp.inf))
    step = C.cw_step(A.as_pytree(logits_fn), c, x0, y0, st.const, max_iterations=40,
                      learning_rate=1e-2, confidence=0.0, quantize=True, abort_early=True)
    assert np.asarray(step.stop).tolist() == [True] * 3 + [False] * 5
    again = C.cw_step(A.as_pytree(logits_fn), step, x0, y0, st.const, max_iterations=40,
                       learning_rate=1e-2, confidence=0.0, quantize=True, abort_early=True)
    np.testing.assert_array_equal(np.asarray(again.w)[:3], np.asarray(step.w)[:3])
    assert not np.array_equal(np.asarray(again.w)[3:], np.asarray(step.w)[3:])


def test_bim_bounded_unroll_equals_while_loop():
    # adversarial training's BIM unrolls a static bound of steps under jit (masked past
    # each example's own count) instead of a while_loop: the same images
    logits_fn = _conv_logits_fn()
    x, y = _batch(6)
    eps = jnp.asarray([0.0, 1.0, 2.7, 4.0, 8.0, 16.0], jnp.float32)
    loop = jax.jit(lambda e: bim(logits_fn, x, y, eps=e))(eps)
    unrolled = jax.jit(lambda e: bim(logits_fn, x, y, eps=e, max_steps=20))(eps)
    np.testing.assert_array_equal(loop, unrolled)


def test_chunks():
    from pxd.core.attacks.sign import chunks

    assert chunks(0) == [] and chunks(2, 4) == [2] and chunks(7, 4) == [4, 2, 1]
    assert chunks(10, 4) == [4, 4, 2] and sum(chunks(50, 4)) == 50


def test_one_list_of_attack_names():
    """The JAX-free names the CLI and the API read are the registry's, in its order, and the
    CLI's help offers every one (a new attack added to one place only fails here)."""
    from typer.testing import CliRunner

    import pxd.api
    from pxd.cli import app
    from pxd.configs.attacks import ATTACK_NAMES, PAPER_ATTACKS

    assert tuple(ATTACKS) == ATTACK_NAMES == pxd.api.ATTACK_NAMES
    assert set(PAPER_ATTACKS) < set(ATTACK_NAMES)
    out = CliRunner().invoke(app, ["attack", "--help"], env={"COLUMNS": "200"}).output
    assert all(n in out for n in ATTACK_NAMES), out
