"""Classifiers of Appendix G: shapes, presets, layer counts, error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxd.configs.classifier import CLASSIFIER_PRESETS
from pxd.errors import PxdError
from pxd.models import init_key
from pxd.models.classifiers import VGG, ResNet, make_classifier

SHAPES = [(2, 32, 32, 3), (2, 28, 28, 1)]


def _key(seed: int) -> jax.Array:
    # threefry random bits take seconds to compile on this CPU; 'rbg' keys take a fraction
    return jax.random.key(seed, impl="rbg")


def _weight_layers(params) -> int:
    """Number of conv/dense layers: one 'kernel' leaf each."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return sum(1 for path, _ in leaves if path[-1].key == "kernel")


@pytest.mark.parametrize("arch", ["resnet", "vgg"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_shapes_train_and_eval(arch, shape):
    model = make_classifier(arch, "smoke", num_classes=7)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, shape), jnp.float32)

    @jax.jit
    def run(x):
        # one compiled program: eager flax dispatch of every op is far slower on CPU
        variables = model.init({"params": init_key(_key(0))}, x, train=False)
        logits = model.apply(variables, x, train=False)
        logits_t, updates = model.apply(
            variables,
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": _key(1)},
        )
        # gradients are taken w.r.t. 0..255 pixels, through the internal normalisation
        grad = jax.grad(lambda z: model.apply(variables, z, train=False)[:, 0].sum())(x)
        return variables, logits, logits_t, updates, grad

    variables, logits, logits_t, updates, grad = run(x)
    assert "batch_stats" in variables and "batch_stats" in updates
    assert logits.shape == (shape[0], 7) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    assert logits_t.shape == (shape[0], 7)
    assert grad.shape == x.shape and bool(jnp.all(jnp.isfinite(grad)))


def test_presets_exist_and_build():
    for arch in ("resnet", "vgg"):
        assert set(CLASSIFIER_PRESETS[arch]) >= {"smoke", "cpu", "paper"}
        for preset in CLASSIFIER_PRESETS[arch]:
            model = make_classifier(arch, preset)
            assert model.num_classes == 10
    assert isinstance(make_classifier("resnet", "paper"), ResNet)
    assert isinstance(make_classifier("vgg", {"fc": 8, "stages": ((4, 1),)}), VGG)


def test_paper_layer_counts():
    x = jnp.zeros((1, 32, 32, 3))

    def count(model):
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
        return _weight_layers(shapes["params"])

    resnet = make_classifier("resnet", "paper")
    assert resnet.blocks_per_stage == 10
    assert count(resnet) == 1 + 3 * 10 * 2 + 1 == 62
    # Appendix G.2's table: 1 + 2 + 3 + 3 convolutions and two dense layers
    assert count(make_classifier("vgg", "paper")) == 9 + 2


def test_unknown_names_raise_pxd_error():
    with pytest.raises(PxdError, match="unknown classifier"):
        make_classifier("alexnet", "smoke")
    with pytest.raises(PxdError, match="unknown resnet preset"):
        make_classifier("resnet", "huge")
    with pytest.raises(PxdError):
        make_classifier("vgg", {"no_such_field": 1})
