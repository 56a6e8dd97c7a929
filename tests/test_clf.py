"""Classifier training (normal, adversarial, label smoothing) and `pxd attack`.

CIFAR-10 tests train the smoke ResNet for a few steps (skipped without the data); the
adversarial-training benefit is shown on a synthetic task where it is large and cheap.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pxd.commands.train import run_train_clf
from pxd.configs.classifier import clf_config
from pxd.core import attacks
from pxd.core.losses import make_clf_loss_fn, soft_targets, training_adversarial
from pxd.core.training import init_state, make_clf_optimizer, make_train_step
from pxd.engine.batched import craft, evaluate_accuracy
from pxd.engine.trainer import train_loop
from pxd.errors import PxdError
from pxd.models.classifiers import init_variables, make_classifier, make_logits_fn
from pxd.storage.imageio import read_images
from pxd.storage.runs import load_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.environ.get("PXD_DATA_DIR") or os.path.join(REPO, "..", "shared", "data")
HAVE_CIFAR = any(
    os.path.exists(os.path.join(DATA_DIR, f))
    for f in ("cifar-10-binary.tar.gz", "cifar-10-batches-bin")
)
needs_cifar = pytest.mark.skipif(not HAVE_CIFAR, reason=f"no CIFAR-10 in {DATA_DIR}")

SMOKE = dict(steps=6, ckpt_every=100)  # a few steps; checkpoints only where a run stops
TINY_VGG = {"stages": ((8, 1), (16, 1)), "fc": 32, "dropout": 0.0}
SHAPE = (8, 8, 1)


def _pxd(*args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "pxd")
    env = dict(os.environ, PXD_DATA_DIR=DATA_DIR, JAX_NUM_CPU_DEVICES="2")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A smoke ResNet trained straight through SMOKE['steps'] steps on CIFAR-10."""
    if not HAVE_CIFAR:
        pytest.skip(f"no CIFAR-10 in {DATA_DIR}")
    out = str(tmp_path_factory.mktemp("clf") / "run")
    cfg = clf_config("cifar10", "resnet", "normal", "smoke", **SMOKE)
    run_train_clf(cfg, out, data_dir=DATA_DIR)
    return out, cfg


# --------------------------------------------------------------------------- training


@needs_cifar
def test_smoke_trains_and_records_accuracy(smoke_run):
    out, cfg = smoke_run
    model, variables, loaded, meta = load_classifier(out)
    assert loaded == cfg
    assert meta["kind"] == "classifier" and meta["complete"] and meta["step"] == cfg.steps
    assert meta["n"] == cfg.test_n and 0.0 <= meta["test_acc"] <= 1.0
    assert {meta["dataset"], meta["arch"], meta["training"]} == {"cifar10", "resnet", "normal"}
    assert meta["wall_s"] > 0 and meta["machine"]
    assert set(variables) == {"params", "batch_stats"}


@needs_cifar
def test_resume_matches_uninterrupted(smoke_run, tmp_path):
    straight, cfg = smoke_run
    out = str(tmp_path / "run")
    half = run_train_clf(cfg, out, data_dir=DATA_DIR, stop_after=cfg.steps // 2)
    assert half["step"] == cfg.steps // 2 and not half["complete"]
    with pytest.raises(PxdError, match="--resume"):
        run_train_clf(cfg, out, data_dir=DATA_DIR)
    run_train_clf(cfg, out, data_dir=DATA_DIR, resume=True)
    a, b = load_classifier(straight)[1], load_classifier(out)[1]
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@needs_cifar
def test_init_from_warm_starts_from_a_trained_classifier(smoke_run, tmp_path):
    # e.g. adversarial BIM training from the normally trained network (issue 14)
    from pxd.engine.jobs import ClassifierJob

    src, _ = smoke_run
    cfg = clf_config("cifar10", "resnet", "label-smoothing", "smoke", steps=2, ckpt_every=100,
                     init_from=src)
    params, stats = ClassifierJob(cfg).init((32, 32, 3), key=jax.random.key(7))
    want = load_classifier(src)[1]
    for a, b in ((params, want["params"]), (stats, want["batch_stats"])):
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    out = str(tmp_path / "ls")
    assert run_train_clf(cfg, out, data_dir=DATA_DIR)["step"] == 2
    assert json.load(open(os.path.join(out, "config.json")))["init_from"] == src
    vgg = clf_config("cifar10", "vgg", "normal", "smoke", steps=2, init_from=src)
    with pytest.raises(PxdError, match="same --dataset, --arch and --preset"):
        run_train_clf(vgg, str(tmp_path / "vgg"), data_dir=DATA_DIR)


@needs_cifar
def test_adversarial_run_records_bim_accuracy_at_each_evaluation(smoke_run, tmp_path):
    # the robustness curve of an adversarial run; a normal run's evaluations have none
    from pxd.storage import checkpoint, data

    src, _ = smoke_run
    assert "eval_bim_acc" not in checkpoint.read_meta(src)["evals"][-1]
    cfg = clf_config("cifar10", "resnet", "adv-bim", "smoke", steps=4, eval_every=2,
                     ckpt_every=100, eval_n=64, adv_delta=1.0, init_from=src)
    out = str(tmp_path / "adv")
    run_train_clf(cfg, out, data_dir=DATA_DIR)
    evals = checkpoint.read_meta(out)["evals"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(e["eval_bim_eps"] == 1.0 and e["eval_bim_n"] == 64 for e in evals)
    # recomputed from best/ (the step-4 variables): BIM at eps 1 is one signed-gradient step
    model, v, _, _ = load_classifier(out)
    f = make_logits_fn(model, v["params"], v["batch_stats"])
    x, y = data.load("cifar10:test[:64]", DATA_DIR)
    xf = jnp.asarray(x, jnp.float32)
    g = jax.grad(lambda z: optax.softmax_cross_entropy_with_integer_labels(f(z), y).sum())(xf)
    x_adv = jnp.clip(xf + jnp.sign(g), 0.0, 255.0)
    acc = float(np.mean(np.asarray(jnp.argmax(f(x_adv), -1)) == y))
    assert evals[-1]["eval_bim_acc"] == acc
    assert evals[-1]["eval_bim_acc"] < evals[-1]["eval_acc"]  # the attack did something


def test_label_smoothing_targets_exact():
    eps, k = 0.1, 10
    t = np.asarray(soft_targets(jnp.array([3, 0, 9]), k, eps))
    assert np.allclose(t.sum(-1), 1.0, atol=1e-6)
    for row, y in zip(t, [3, 0, 9], strict=True):
        assert row[y] == pytest.approx(1 - eps)
        assert np.allclose(np.delete(row, y), eps / (k - 1))
    # not optax's formula, which gives the correct class 1 - eps + eps / k
    assert not np.allclose(t, optax.smooth_labels(jax.nn.one_hot(jnp.array([3, 0, 9]), k), eps))


def test_label_smoothing_loss_uses_soft_targets():
    model = make_classifier("vgg", TINY_VGG, 4)
    v = init_variables(model, SHAPE, key=jax.random.key(0))
    cfg = clf_config("fashion_mnist", "vgg", "label-smoothing", "smoke", augment=False)
    x = np.random.default_rng(0).integers(0, 256, (8, *SHAPE)).astype(np.uint8)
    y = np.arange(8, dtype=np.int32) % 4
    loss_fn = make_clf_loss_fn(model, cfg)

    @jax.jit  # one program: eager flax ops are slow on CPU
    def both(v, x, y):
        loss, _ = loss_fn(v["params"], v["batch_stats"], {"x": x, "y": y}, key=jax.random.key(1))
        logits, _ = model.apply(v, x.astype(jnp.float32), train=True, mutable=["batch_stats"])
        t = soft_targets(y, 4, cfg.label_smoothing)
        return loss, -jnp.mean(jnp.sum(t * jax.nn.log_softmax(logits), -1))

    loss, want = both(v, x, y)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)


def test_adversarial_training_examples_use_predictions_within_2delta():
    model = make_classifier("vgg", TINY_VGG, 4)
    v = init_variables(model, SHAPE, key=jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, *SHAPE)), jnp.float32)
    key = jax.random.key(3)

    @jax.jit
    def run(v, x, key):
        x_adv = training_adversarial(model, v["params"], v["batch_stats"], x, method="fgsm",
                                     key=key, delta=8.0)
        f = make_logits_fn(model, v["params"], v["batch_stats"])
        pred = jnp.argmax(f(x), -1)
        k_eps, k_attack = jax.random.split(key)
        eps = attacks.training_eps(k_eps, x.shape[0], 8.0)
        by_pred = attacks.fgsm(f, x, pred, eps=eps, key=k_attack)
        by_other = attacks.fgsm(f, x, (pred + 1) % 4, eps=eps, key=k_attack)
        return x_adv, by_pred, by_other

    x_adv, by_pred, by_other = run(v, x, key)
    assert x_adv.dtype == jnp.uint8
    assert float(jnp.max(jnp.abs(x_adv.astype(jnp.float32) - x))) <= 16.0
    assert bool(jnp.all(x_adv == by_pred))
    assert not bool(jnp.all(x_adv == by_other))


def _robust_vs_fragile(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: 56 weak pixels shifted by +-6 (noise 20) that FGSM at eps 8 reverses,
    and a top row at 128 +- 60 that agrees with the label 90% of the time (robust)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(np.int32)
    s = (2.0 * y - 1.0)[:, None, None, None]
    x = 128 + 6 * s + rng.normal(0, 20, (n, *SHAPE))
    agree = np.where(rng.random(n) < 0.9, 1.0, -1.0)[:, None, None]
    x[:, 0] = 128 + 60 * s[:, 0] * agree
    return np.clip(np.round(x), 0, 255).astype(np.uint8), y


def test_adversarial_training_raises_fgsm_accuracy():
    x_train, y_train = _robust_vs_fragile(2048, 1)
    x_test, y_test = _robust_vs_fragile(512, 2)
    acc = {}
    for training in ("normal", "adv-fgsm"):
        cfg = clf_config("fashion_mnist", "vgg", training, "smoke", augment=False, steps=80,
                         batch_size=64, lr=0.05, weight_decay=0.0)
        model = make_classifier("vgg", TINY_VGG, 2)
        v = init_variables(model, SHAPE, key=jax.random.key(0))
        tx = make_clf_optimizer(cfg)
        state = init_state(v["params"], v["batch_stats"], tx)
        step_fn = make_train_step(make_clf_loss_fn(model, cfg), tx, 0.0)
        # on_step makes the loop wait for every step (as the CLI does)
        state, _ = train_loop(state=state, step_fn=step_fn, data={"x": x_train, "y": y_train},
                              batch_size=cfg.batch_size, steps=cfg.steps,
                              key=jax.random.key(1), seed=0, on_step=lambda *a: None)
        f = make_logits_fn(model, state.params, state.model_state)
        x_adv = craft("fgsm", f, x_test, y_test, eps=8.0, key=jax.random.key(2), batch_size=256)
        assert int(np.abs(x_adv.astype(int) - x_test.astype(int)).max()) <= 8
        acc[training] = (evaluate_accuracy(f, x_test, y_test), evaluate_accuracy(f, x_adv, y_test))
    # measured: normal clean 0.99 / FGSM 0.52; adv-fgsm clean 0.94 / FGSM 0.86
    assert acc["normal"][0] > 0.9 and acc["adv-fgsm"][0] > 0.8
    assert acc["adv-fgsm"][1] > acc["normal"][1] + 0.2


def test_craft_batches_fold_in_their_index():
    model = make_classifier("vgg", TINY_VGG, 2)
    v = init_variables(model, SHAPE, key=jax.random.key(0))
    f = make_logits_fn(model, v["params"], v["batch_stats"])
    x = np.full((8, *SHAPE), 128, np.uint8)
    y = np.zeros(8, np.int32)
    a = craft("rand", f, x, y, eps=4.0, key=jax.random.key(5), batch_size=4)
    b = craft("rand", f, x, y, eps=4.0, key=jax.random.key(5), batch_size=4)
    assert np.array_equal(a, b) and not np.array_equal(a[:4], a[4:])
    assert np.abs(a.astype(int) - 128).max() <= 4


# --------------------------------------------------------------------------- CLI


@needs_cifar
def test_cli_attack_end_to_end(smoke_run, tmp_path):
    run, _ = smoke_run
    out = tmp_path / "adv.npz"
    r = _pxd("attack", "cifar10:test[:8]", "--clf", run, "--attack", "fgsm", "--eps-attack", "8",
             "--out", str(out), "--batch-size", "4", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n"] == 8 and res["attack"] == "fgsm" and res["eps"] == 8.0
    assert res["labels"] == "dataset" and res["linf_max"] <= 8.0
    for k in ("acc_clean", "acc_adv", "success_rate", "l2_mean", "seconds", "images_per_s"):
        assert k in res
    with np.load(out) as z:
        assert {"x", "y", "x_clean", "pred_clean", "pred_adv"} <= set(z.files)
        x_adv, x, y = z["x"], z["x_clean"], z["y"]
        assert x_adv.dtype == np.uint8 and x_adv.shape == (8, 32, 32, 3)
        assert np.abs(x_adv.astype(int) - x.astype(int)).max() <= 8
        assert res["acc_adv"] == pytest.approx(float(np.mean(z["pred_adv"] == y)))
    xr, yr = read_images(str(out))
    assert np.array_equal(xr, x_adv) and np.array_equal(yr, y)


@needs_cifar
def test_cli_bad_arguments_exit_2_without_output(smoke_run, tmp_path):
    run, _ = smoke_run
    small = tmp_path / "fmnist.npz"
    np.savez(small, x=np.zeros((2, 28, 28, 1), np.uint8))
    out = tmp_path / "never.npz"
    cases = [
        (["cifar10:test[:2]", "--clf", run, "--eps-attack", "-1"], "eps"),
        (["cifar10:test[:2]", "--clf", run, "--eps-attack", "300"], "eps"),
        (["cifar10:test[:2]", "--clf", run, "--attack", "nope"], "fgsm"),
        (["cifar10:test[:2]", "--clf", str(tmp_path / "missing")], "not found"),
        ([str(small), "--clf", run], "shape"),
    ]
    for args, word in cases:
        r = _pxd("attack", *args, "--out", str(out))
        assert r.returncode == 2, (args, r.stderr)
        err = r.stderr.strip()
        assert err.startswith("pxd: error:") and "\n" not in err and word in err, err
        assert not out.exists()
    r = _pxd("train-clf", "--out", run, "--preset", "smoke")
    assert r.returncode == 2 and "--resume" in r.stderr
    r = _pxd("train-clf", "--out", str(tmp_path / "lr0"), "--preset", "smoke", "--lr", "0")
    assert r.returncode == 2 and "--lr must be positive" in r.stderr
    assert not (tmp_path / "lr0").exists()


@needs_cifar
def test_cli_eval_every_and_warmup_steps_reach_the_config(tmp_path):
    # --eval-every also checkpoints at least as often, so an export finds best/ and the
    # training state of one step
    out = tmp_path / "run"
    r = _pxd("train-clf", "--out", str(out), "--preset", "smoke", "--steps", "4",
             "--eval-every", "2", "--warmup-steps", "1", "-q")
    assert r.returncode == 0, r.stderr
    cfg = json.load(open(out / "config.json"))
    assert (cfg["eval_every"], cfg["ckpt_every"], cfg["warmup_steps"]) == (2, 2, 1)
    assert [e["step"] for e in json.load(open(out / "meta.json"))["evals"]] == [2, 4]
    r = _pxd("train-clf", "--out", str(tmp_path / "r0"), "--preset", "smoke",
             "--eval-every", "0")
    assert r.returncode == 2 and not (tmp_path / "r0").exists()
