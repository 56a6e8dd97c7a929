"""The public Python API on smoke models: every function, its bad-input paths, and its
names (a test fails if one disappears)."""

import jax
import numpy as np
import pytest
from helpers import backend_compiles, train_smoke_models

import pxd

PUBLIC = {"Classifier", "Density", "PxdError", "attack", "bits_per_dim", "feature_squeeze",
          "load_classifier", "load_dataset", "load_density", "p_values", "purify", "roc_auc",
          "zoo"}


def test_public_names_stay():
    assert PUBLIC <= set(pxd.__all__)
    for name in PUBLIC:
        assert getattr(pxd, name) is not None, name
    # internal submodules must not shadow a public name once imported
    import importlib

    importlib.import_module("pxd.commands.bench")  # imports most of the package

    assert callable(pxd.purify) and callable(pxd.zoo) and callable(pxd.attack)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cifar):
    from pxd.storage import data

    m = train_smoke_models(str(tmp_path_factory.mktemp("api")), cifar, steps=4, eval_n=16)
    x, y = data.load("cifar10:test[:6]", cifar)
    return dict(density=m["density"], clf=m["clf"], x=x, y=y)


def test_purify_bits_per_dim_and_density_object(smoke):
    x = smoke["x"]
    d = pxd.load_density(smoke["density"])
    assert isinstance(d, pxd.Density) and d.shape == (32, 32, 3)
    out = pxd.purify(x, eps=4, density=d)
    assert out.dtype == np.uint8 and out.shape == x.shape
    assert np.abs(out.astype(int) - x).max() <= 4
    # the same as the purifier itself on the same model, run in the API's program shape (one
    # chunk of batch_size = 32 rows): XLA:CPU's rounding follows the batch shape
    from pxd.core.purify import make_purifier

    chunk = np.concatenate([x, np.repeat(x[-1:], 32 - len(x), 0)])
    ref = np.asarray(make_purifier(d.model, "auto", max_eps=4)(d.params, chunk, np.full(32, 4)))
    np.testing.assert_array_equal(out, ref[: len(x)])
    # an image's result does not follow its slot in the chunk or its neighbours (full chunks:
    # the last slot is the CPU GEMM's tail but for pxd.models.guard)
    full = pxd.purify(x, eps=4, density=d, batch_size=6)
    np.testing.assert_array_equal(pxd.purify(x[::-1], eps=4, density=d, batch_size=6),
                                  full[::-1])
    np.testing.assert_array_equal(pxd.purify(x[-1:], eps=4, density=d), out[-1:])
    # a name or dir loads the same model; lists and float arrays of whole numbers work
    np.testing.assert_array_equal(pxd.purify(x.tolist(), 4, density=smoke["density"]), out)
    b = pxd.bits_per_dim(x.astype(np.float32), density=d)
    assert b.shape == (6,) and b.dtype == np.float32
    np.testing.assert_allclose(d.bits_per_dim(x), b)
    assert pxd.bits_per_dim(out, density=d).mean() < b.mean()
    np.testing.assert_array_equal(pxd.purify(x, eps=0, density=d), x)


def test_adaptive_threshold_leaves_low_scores_alone(smoke):
    x, d = smoke["x"], pxd.load_density(smoke["density"])
    b = pxd.bits_per_dim(x, density=d)
    thr = float(np.median(b))
    out = pxd.purify(x, eps=8, density=d, adaptive_threshold=thr)
    full = pxd.purify(x, eps=8, density=d)
    low = b <= thr
    np.testing.assert_array_equal(out[low], x[low])
    np.testing.assert_array_equal(out[~low], full[~low])


def test_attack_at_a_new_eps_does_not_recompile(smoke):
    # BIM's and PGD's step counts follow eps, yet one compiled step serves every count:
    # after a first call, calls at new budgets compile nothing (counted by JAX's own
    # backend-compile event, which the check below shows firing)
    x, y = smoke["x"], smoke["y"]
    c = pxd.load_classifier(smoke["clf"])
    with backend_compiles() as compiles:
        jax.jit(lambda a: a * 3 + 1)(np.arange(7.0))
        assert len(compiles) == 1
        for name in ("bim", "pgd"):
            first = pxd.attack(x, y, name, eps=2, clf=c)
            seen = len(compiles)
            for eps in (8, 16, 5):
                pxd.attack(x, y, name, eps=eps, clf=c)
            assert len(compiles) == seen, name
            np.testing.assert_array_equal(pxd.attack(x, y, name, eps=2, clf=c), first)


def test_attack_and_classifier(smoke):
    x, y = smoke["x"], smoke["y"]
    c = pxd.load_classifier(smoke["clf"])
    assert c.logits(x).shape == (6, 10)
    np.testing.assert_array_equal(c.predict(x), c.logits(x).argmax(-1))
    adv = pxd.attack(x, y, "fgsm", eps=8, clf=c)
    assert adv.dtype == np.uint8 and np.abs(adv.astype(int) - x).max() <= 8
    # FGSM at eps 8 is x + 8 sign(grad), clipped: every changed sub-pixel moved by 8 or hit
    # the range's end
    d = np.abs(adv.astype(int) - x)
    assert np.all((d == 0) | (d == 8) | (adv == 0) | (adv == 255))
    again = pxd.attack(x, y, "bim", eps=4, clf=smoke["clf"], key=jax.random.key(1), steps=3)
    assert np.abs(again.astype(int) - x).max() <= 4


def test_feature_squeeze_and_metrics():
    x = np.array([[[[0], [8]], [[255], [130]]]], np.uint8)  # one 2x2 grey image
    out = pxd.feature_squeeze(x)
    assert out.shape == x.shape and out.dtype == np.uint8
    assert pxd.roc_auc([1, 2, 3], [2, 3, 4]) == pytest.approx(7 / 9)
    np.testing.assert_allclose(pxd.p_values([1, 2, 3, 4], [2.0]), [0.75])


def test_zoo_lists_the_shipped_cards():
    names = {e["name"] for e in pxd.zoo()}
    assert {"pixelcnn-c10-cpu", "resnet-c10-normal"} <= names
    assert all("sha256" in e and "path" not in e for e in pxd.zoo())


@pytest.mark.parametrize("call, needle", [
    (lambda s: pxd.purify(s["x"][0], density=s["density"]), "add a batch axis"),
    (lambda s: pxd.purify(s["x"] / 255.0, density=s["density"]), "multiply [0,1] floats"),
    (lambda s: pxd.purify(s["x"].astype(float) + 300, density=s["density"]), "outside 0..255"),
    (lambda s: pxd.purify(s["x"], eps=300, density=s["density"]), "[0, 255]"),
    (lambda s: pxd.purify(s["x"], eps=2.5, density=s["density"]), "integer"),
    (lambda s: pxd.purify(s["x"], eps="8", density=s["density"]), "number"),
    (lambda s: pxd.purify(s["x"], density=s["clf"]), "not a density"),
    (lambda s: pxd.purify(np.zeros((2, 28, 28, 1), np.uint8), density=s["density"]),
     "trained on cifar10"),
    (lambda s: pxd.purify(s["x"], density="no-such-model"), "not found"),
    (lambda s: pxd.purify(s["x"], density=s["density"], batch_size=0), "batch_size"),
    (lambda s: pxd.bits_per_dim(np.zeros((0, 32, 32, 3), np.uint8)), "no images"),
    (lambda s: pxd.bits_per_dim(np.full((1, 32, 32, 3), np.nan)), "NaN"),
    (lambda s: pxd.attack(s["x"], s["y"][:3], clf=s["clf"]), "3 labels for 6 images"),
    (lambda s: pxd.attack(s["x"], s["y"] + 10, clf=s["clf"]), "not a class"),
    (lambda s: pxd.attack(s["x"], s["y"], "nope", clf=s["clf"]), "unknown attack"),
    (lambda s: pxd.attack(s["x"], s["y"], clf=s["density"]), "not a classifier"),
    (lambda s: pxd.attack(s["x"], s["y"], "fgsm", clf=s["clf"], bogus=1), "bogus"),
    (lambda s: pxd.load_density(dataset="mnist"), "unknown dataset"),
    (lambda s: pxd.load_dataset("cifar10"), "dataset spec"),
])
def test_bad_input_is_one_line_pxd_error(smoke, call, needle):
    with pytest.raises(pxd.PxdError) as e:
        call(smoke)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg


@pytest.mark.parametrize("script, needle", [
    ("purify_before_classifier.py", "after PixelDefend"),
    ("detect_adversarial.py", "ROC AUC"),
])
def test_examples_run(script, needle, cifar):
    import os
    import subprocess
    import sys
    from pathlib import Path


    env = dict(os.environ, PXD_DATA_DIR=cifar)
    path = Path(__file__).resolve().parents[1] / "examples" / script
    r = subprocess.run([sys.executable, str(path), "8"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert needle in r.stdout


def test_adaptive_threshold_at_its_exact_value(smoke):
    """"Images scoring at or below it are returned unchanged": an image whose bits/dim IS
    the threshold stays as it was; one float step below it, it is purified."""
    x, d = smoke["x"][:3], pxd.load_density(smoke["density"])
    b = pxd.bits_per_dim(x, density=d)
    lo, mid, hi = np.argsort(b)
    assert b[lo] < b[mid] < b[hi]
    full = pxd.purify(x, eps=8, density=d)
    assert all(not np.array_equal(full[i], x[i]) for i in range(3))
    out = pxd.purify(x, eps=8, density=d, adaptive_threshold=float(b[mid]))
    np.testing.assert_array_equal(out[[lo, mid]], x[[lo, mid]])
    np.testing.assert_array_equal(out[hi], full[hi])
    below = float(np.nextafter(b[mid], np.float32(-np.inf)))
    out = pxd.purify(x, eps=8, density=d, adaptive_threshold=below)
    np.testing.assert_array_equal(out[lo], x[lo])
    np.testing.assert_array_equal(out[[mid, hi]], full[[mid, hi]])


def test_attack_defaults_as_a_user_calls_them(smoke):
    """No options, no model, no eps: DeepFool's published overshoot (0.02) is what
    `pxd.attack` uses (the default equals the explicit value; a default of 0 fails here,
    tried 2026-12-01), on the shipped classifier attacked on its own predictions so that
    DeepFool has work on every image; BIM's paper step count likewise (there, another
    count is shown to give other images)."""
    x = smoke["x"][:2]
    y = pxd.load_classifier().predict(x)
    df = pxd.attack(x, y, "deepfool")
    np.testing.assert_array_equal(df, pxd.attack(x, y, "deepfool", eps=8, overshoot=0.02))
    assert not np.array_equal(df, pxd.attack(x, y, "deepfool", overshoot=0.0))  # it matters
    c = pxd.load_classifier(smoke["clf"])
    bim = pxd.attack(x, y, "bim", eps=4, clf=c)  # floor(min(4 + 4, 1.25 * 4)) = 5 steps
    np.testing.assert_array_equal(bim, pxd.attack(x, y, "bim", eps=4, clf=c, steps=5))
    assert not np.array_equal(bim, pxd.attack(x, y, "bim", eps=4, clf=c, steps=4))
