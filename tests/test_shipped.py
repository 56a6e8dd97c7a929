"""Regression pins on the shipped default models: a change that still loads but alters
normalisation, the head layout or the parameters moves these figures.

When a model is re-exported on purpose, update its PIN (sha256 prefix and figure) in the
same commit, with the figures from `pxd zoo --export`.
"""

import numpy as np
import pytest

from pxd.storage import shipped as zoo

# name -> (sha256 prefix of params.msgpack, figure, tolerance)
DENSITY_PIN = ("pixelcnn-c10-cpu-v4", "fed7739e8f2e", 3.489396, 1e-3)  # bits/dim, test[:100]
CLF_PIN = ("resnet-c10-normal", "300e6c56163f", 0.888, 0.0021)  # acc, test[:500]


def _entry(name):
    return {x["name"]: x for x in zoo.entries()}[name]


def _check_pin(name, prefix):
    sha = _entry(name)["sha256"]
    if prefix is not None and not sha.startswith(prefix):
        pytest.fail(f"{name} was re-exported (sha256 {sha[:12]}): update its pin in this file")


def test_default_density_bits_per_dim_pinned(cifar):

    from pxd.core.likelihood import make_bpd_fn
    from pxd.storage import data
    from pxd.storage.runs import load_density

    name, prefix, want, tol = DENSITY_PIN
    assert _entry(name)["default"]
    _check_pin(name, prefix)
    x, _ = data.load("cifar10:test[:100]", cifar)
    model, params, _, _ = load_density(name)
    got = float(np.mean(np.asarray(make_bpd_fn(model)(params, x))))
    assert got == pytest.approx(want, abs=tol)


def test_default_classifier_accuracy_pinned(cifar):

    from pxd.engine.batched import evaluate_accuracy
    from pxd.models.classifiers import make_logits_fn
    from pxd.storage import data
    from pxd.storage.runs import load_classifier

    name, prefix, want, tol = CLF_PIN
    assert _entry(name)["default"]
    _check_pin(name, prefix)
    x, y = data.load("cifar10:test[:500]", cifar)
    model, variables, _, _ = load_classifier(name)
    f = make_logits_fn(model, variables["params"], variables.get("batch_stats", {}))
    assert evaluate_accuracy(f, x, y) == pytest.approx(want, abs=tol)
