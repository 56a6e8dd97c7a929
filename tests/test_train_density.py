"""Density training: it learns, checkpoints round-trip, resume equals an unbroken run,
and a 2-device sharded step equals the 1-device step."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pxd.commands.train import run_train_density
from pxd.configs.base import replace
from pxd.configs.pixelcnn import PIXELCNN_PRESETS, density_config
from pxd.core.losses import make_density_loss_fn as make_loss_fn
from pxd.core.training import init_state, make_optimizer, make_train_step
from pxd.engine import devices
from pxd.errors import PxdError
from pxd.models.pixelcnn import build_model, init_params
from pxd.storage import checkpoint
from pxd.storage.runs import load_density, params_digest


@pytest.fixture(scope="module")
def cifar(cifar):

    return cifar


def _cfg(**over):
    base = dict(steps=12, ckpt_every=4, eval_n=32, batch_size=8)
    base.update(over)
    return density_config("cifar10", "smoke", **base)


def test_smoke_training_lowers_test_bpd(tmp_path, cifar):
    cfg = _cfg(steps=40, eval_every=20, eval_n=64, batch_size=16, ckpt_every=40)
    run_train_density(cfg, str(tmp_path / "r"), data_dir=cifar)
    meta = checkpoint.read_meta(str(tmp_path / "r"))
    first, last = meta["evals"][0]["test_bpd"], meta["evals"][-1]["test_bpd"]
    model, params, _, _ = load_density(str(tmp_path / "r"))
    init = init_params(model, (32, 32, 3), key=jax.random.fold_in(jax.random.key(0), 0))
    from pxd.core.likelihood import make_bpd_fn
    from pxd.engine.batched import evaluate_bpd
    from pxd.storage.data import load

    x, _ = load("cifar10:test[:64]", cifar)
    untrained = float(np.mean(evaluate_bpd(make_bpd_fn(model), init, x)))
    assert last < first < untrained
    assert last < untrained - 0.5


def test_resume_equals_uninterrupted(tmp_path, cifar):
    cfg = _cfg()
    a = run_train_density(cfg, str(tmp_path / "a"), data_dir=cifar)
    b_dir = str(tmp_path / "b")
    run_train_density(cfg, b_dir, data_dir=cifar, stop_after=6)  # "killed" after step 6
    assert checkpoint.latest_step(b_dir) == 6
    b = run_train_density(cfg, b_dir, data_dir=cifar, resume=True)
    assert b["step"] == a["step"] == 12
    _, pa, _, _ = load_density(str(tmp_path / "a"))
    _, pb, _, _ = load_density(b_dir)
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_refuses_to_overwrite_and_to_resume_nothing(tmp_path, cifar):
    cfg = _cfg(steps=2, ckpt_every=2)
    run_train_density(cfg, str(tmp_path / "r"), data_dir=cifar)
    with pytest.raises(PxdError, match="--resume"):
        run_train_density(cfg, str(tmp_path / "r"), data_dir=cifar)
    with pytest.raises(PxdError, match="nothing to resume"):
        run_train_density(cfg, str(tmp_path / "empty"), data_dir=cifar, resume=True)
    with pytest.raises(PxdError, match="different config"):
        run_train_density(replace(cfg, lr=0.5), str(tmp_path / "r"), data_dir=cifar,
                          resume=True)


def test_checkpoint_round_trip(tmp_path):
    model = build_model(density_config("cifar10", "smoke").model, 3)
    params = init_params(model, (32, 32, 3), key=jax.random.key(3))
    checkpoint.save_params(str(tmp_path / "p"), jax.device_get(params))
    back = checkpoint.load_params(str(tmp_path / "p"))
    assert params_digest(back) == params_digest(params)
    tx = make_optimizer(1e-3, 1.0)
    state = jax.device_get(init_state(params, {}, tx))
    checkpoint.save_state(str(tmp_path / "run"), 7, state)
    step, restored = checkpoint.restore_state(str(tmp_path / "run"), state)
    assert step == 7
    assert params_digest(restored.opt_state) == params_digest(state.opt_state)
    with pytest.raises(PxdError):
        checkpoint.load_params(str(tmp_path / "missing"))


def test_sharded_step_matches_single_device():
    assert len(jax.devices()) >= 2, "tests run with two virtual CPU devices (conftest)"
    cfg = density_config("cifar10", "smoke")
    model = build_model(cfg.model, 3)
    params = init_params(model, (32, 32, 3), key=jax.random.key(0))
    tx = make_optimizer(1e-3, 1.0)
    x = np.random.RandomState(0).randint(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    results = []
    for devs in (jax.devices()[:1], jax.devices()[:2]):
        m = devices.mesh(devs)
        step = make_train_step(make_loss_fn(model), tx, 0.9)
        own = jax.tree_util.tree_map(np.array, jax.device_get(params))  # the step donates
        state = jax.device_put(init_state(own, {}, tx), devices.replicated(m))
        batch, _ = devices.shard_batch({"x": x}, m)
        state, metrics = step(state, batch, key=jax.random.key(1))
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    (p1, l1), (p2, l2) = results
    assert l1 == pytest.approx(l2, rel=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_shard_batch_pads_and_map_batches_trims():
    x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    sharded, n = devices.shard_batch({"x": x})
    assert n == 7 and sharded["x"].shape[0] % len(jax.devices()) == 0
    out = devices.map_batches(jax.jit(lambda a: a * 2), (x,), batch_size=4)
    np.testing.assert_array_equal(out, x * 2)
    assert jnp.asarray(out).shape == (7, 3)


def test_map_batches_chunks_in_order_and_raises_a_worker_error():
    seen = []

    def fn(c, a):
        seen.append(int(c))
        if c == 3:
            raise ValueError("chunk 3 failed")
        return a + c

    x = np.zeros((7, 2), np.float32)
    out = devices.map_batches(lambda c, a: a + c, (x,), 2, indexed=True)
    np.testing.assert_array_equal(out[:, 0], [0, 0, 1, 1, 2, 2, 3])  # chunk c's rows get c
    with pytest.raises(ValueError, match="chunk 3 failed"):  # whichever thread ran chunk 3
        devices.map_batches(fn, (np.zeros((16, 2)),), 2, indexed=True)
    assert 3 in seen


def test_cosine_schedule_warms_up_and_ends_at_zero():
    from pxd.core.training import lr_schedule

    s = lr_schedule(1e-3, schedule="cosine", warmup=10, steps=110)
    assert float(s(0)) == 0.0
    assert float(s(5)) == pytest.approx(5e-4)
    assert float(s(10)) == pytest.approx(1e-3)
    assert float(s(60)) == pytest.approx(5e-4, rel=1e-5)  # half-way down the cosine
    assert float(s(110)) == 0.0
    e = lr_schedule(1e-3, schedule="exponential", lr_decay=0.5)
    assert float(e(3)) == pytest.approx(1.25e-4)
    with pytest.raises(ValueError):
        lr_schedule(1e-3, schedule="cosine", warmup=10, steps=10)


def test_cosine_budget_must_exceed_warmup(tmp_path, cifar):
    with pytest.raises(PxdError, match="warm-up"):
        _cfg(schedule="cosine", warmup=20, steps=10)
    cfg = replace(_cfg(schedule="cosine", warmup=2), warmup=20, steps=10)  # as --steps does
    with pytest.raises(PxdError, match="warm-up"):
        run_train_density(cfg, str(tmp_path / "r"), data_dir=cifar)


def test_init_from_starts_at_the_source_and_resumes_exactly(tmp_path, cifar):
    src = str(tmp_path / "src")
    run_train_density(_cfg(steps=8, ckpt_every=8), src, data_dir=cifar)
    _, p_src, _, _ = load_density(src)
    cfg = _cfg(init_from=src, schedule="cosine", warmup=2, steps=10, ckpt_every=5)
    from pxd.engine.jobs import initial_params

    model = build_model(cfg.model, 3)
    p0 = initial_params(cfg, model, (32, 32, 3), key=jax.random.key(9))
    assert params_digest(p0) == params_digest(p_src)  # the key is not used
    a = run_train_density(cfg, str(tmp_path / "a"), data_dir=cifar)
    b_dir = str(tmp_path / "b")
    run_train_density(cfg, b_dir, data_dir=cifar, stop_after=5)
    b = run_train_density(cfg, b_dir, data_dir=cifar, resume=True)
    assert a["digest"] == b["digest"]  # bit for bit, fine-tune and cosine included
    assert a["digest"] != params_digest(p_src)


def test_init_from_refuses_another_architecture(tmp_path, cifar):
    src = str(tmp_path / "src")
    run_train_density(_cfg(steps=2, ckpt_every=2), src, data_dir=cifar)
    cfg = _cfg(init_from=src, model=dict(_cfg().model, nr_filters=16))
    with pytest.raises(PxdError, match="same --dataset and --preset"):
        run_train_density(cfg, str(tmp_path / "r"), data_dir=cifar)


def test_hours_budget_sets_steps_from_measured_speed(tmp_path, cifar):
    with pytest.raises(PxdError, match="--hours"):
        run_train_density(_cfg(), str(tmp_path / "x"), hours=1.0, resume=True, data_dir=cifar)
    out = str(tmp_path / "r")
    r = run_train_density(_cfg(schedule="cosine", warmup=0), out, hours=2e-4, data_dir=cifar)
    saved = checkpoint.read_json(out, "config.json")
    assert saved["steps"] == r["step"] >= 1  # 0.72 s of budget
    short = str(tmp_path / "short")  # fewer steps than the warm-up: a clear error, no run dir
    with pytest.raises(PxdError, match="warm-up"):
        run_train_density(_cfg(schedule="cosine", warmup=10**6), short, hours=2e-4,
                          data_dir=cifar)
    assert not os.path.exists(short)


def test_resume_bit_exact_with_ema_decay_dropout_and_epoch_boundary(tmp_path, cifar):
    """Killed at step 5 of 12 with 4 steps per epoch: the resumed stretch crosses two
    epoch boundaries, under EMA, a cosine decay with warm-up and dropout; the full final
    state (parameters, EMA, Adam moments, step) equals the uninterrupted run's bit for bit."""
    model = dict(PIXELCNN_PRESETS["smoke"], dropout=0.5)
    cfg = _cfg(train_split="train[:64]", batch_size=16, steps=12, ckpt_every=5, ema=0.9,
               schedule="cosine", warmup=3, model=model)
    a_dir, b_dir = str(tmp_path / "a"), str(tmp_path / "b")
    run_train_density(cfg, a_dir, data_dir=cifar)
    run_train_density(cfg, b_dir, data_dir=cifar, stop_after=5)
    assert checkpoint.latest_step(b_dir) == 5
    run_train_density(cfg, b_dir, data_dir=cifar, resume=True)
    tx = make_optimizer(1e-3)
    m = build_model(model, 3)
    target = jax.device_get(init_state(init_params(m, (32, 32, 3), key=jax.random.key(0)),
                                       {}, tx))
    sa, sb = (checkpoint.restore_state(d, target) for d in (a_dir, b_dir))
    assert sa[0] == sb[0] == 12
    la, lb = jax.tree_util.tree_leaves(sa[1]), jax.tree_util.tree_leaves(sb[1])
    assert len(la) == len(lb) > 10
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # and the run did move: dropout and EMA are live
    assert not np.array_equal(np.asarray(sa[1].ema["head"]["kernel"]),
                              np.asarray(sa[1].params["head"]["kernel"]))
