"""An image's numbers do not follow its slot in the batch or the device count, to the bit.

XLA:CPU computes a batch's last output rows on another code path (other rounding): measured
on AVX2 machines with the smoke models' 8-16 channels and the shipped ResNet. The guard
images (`pxd.models.guard`) take that tail; `devices.map_batches` runs every chunk as one
program on one device. On a CPU without that tail path the slot checks pass without guards.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxd.configs.classifier import clf_config
from pxd.configs.pixelcnn import PIXELCNN_PRESETS
from pxd.core.likelihood import make_bpd_fn
from pxd.engine import devices
from pxd.engine.batched import craft, evaluate_bpd
from pxd.models.classifiers import build_classifier, init_variables, make_logits_fn
from pxd.models.pixelcnn import build_model, init_params

K = 8


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).randint(0, 256, (K, 32, 32, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def density():
    model = build_model(dict(PIXELCNN_PRESETS["smoke"]), 1)  # 28x28: its tail path shows
    return model, init_params(model, (28, 28, 1), key=jax.random.key(0))


@pytest.fixture(scope="module")
def logits_fn():
    model = build_classifier(clf_config("cifar10", "resnet", "normal", "smoke"))
    v = init_variables(model, (32, 32, 3), key=jax.random.key(1))
    return make_logits_fn(model, v["params"], v.get("batch_stats", {}))


def _every_slot(fn, x):
    """fn on every rotation of the batch, rotated back: (K, K, ...) rows per image."""
    return np.stack([np.roll(np.asarray(fn(np.roll(x, r, 0))), -r, 0) for r in range(K)])


def test_bits_per_dim_same_in_every_slot(density, images):
    model, params = density
    bpd = make_bpd_fn(model)
    got = _every_slot(lambda xb: bpd(params, xb), images[..., :28, :28, :1])
    np.testing.assert_array_equal(got, np.broadcast_to(got[0], got.shape))


def test_logits_and_gradients_same_in_every_slot(logits_fn, images):
    x = images.astype(np.float32)
    y = np.arange(K) % 10
    logits = jax.jit(logits_fn)
    grad = jax.jit(jax.grad(lambda a, t: jnp.sum(
        jax.nn.log_softmax(logits_fn(a))[jnp.arange(K), t])))
    got = _every_slot(logits, x)
    np.testing.assert_array_equal(got, np.broadcast_to(got[0], got.shape))
    g = np.stack([np.roll(np.asarray(grad(np.roll(x, r, 0), np.roll(y, r))), -r, 0)
                  for r in range(K)])
    np.testing.assert_array_equal(g, np.broadcast_to(g[0], g.shape))


def test_chunks_same_on_one_device_or_two(density, logits_fn, images):
    if len(jax.local_devices()) < 2:
        pytest.skip("one device: nothing to compare (JAX_NUM_CPU_DEVICES=2 runs it)")
    model, params = density
    one, two = devices.mesh(jax.local_devices()[:1]), devices.mesh(jax.local_devices()[:2])
    x = np.concatenate([images, images[::-1], images[:3]])  # 19 rows: 5 chunks of 4, padded
    bpd = make_bpd_fn(model)
    xd = x[..., :28, :28, :1]
    a = devices.map_batches(bpd, (xd,), 4, one, consts=params)
    b = devices.map_batches(bpd, (xd,), 4, two, consts=params)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, evaluate_bpd(bpd, params, xd, batch_size=4))
    # a random attack: chunk c's key is fold_in(key, c) whatever device runs it
    y = np.arange(len(x)) % 10
    kw = dict(eps=8, key=jax.random.key(3), batch_size=4, steps=3)
    adv = [craft("pgd", logits_fn, x, y, mesh=m, **kw) for m in (one, two)]
    np.testing.assert_array_equal(adv[0], adv[1])
    assert not np.array_equal(adv[0], x)
