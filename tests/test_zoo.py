"""Zoo entries: export, checksum-verified load, clear errors on tampering."""

import json
import os

import jax
import numpy as np
import pytest

from pxd.commands.train import run_train_density
from pxd.configs.pixelcnn import density_config
from pxd.errors import PxdError
from pxd.storage import shipped as zoo
from pxd.storage.runs import load_density, params_digest


@pytest.fixture(scope="module")
def exported(tmp_path_factory, cifar):

    d = tmp_path_factory.mktemp("zoo")
    run = str(d / "run")
    cfg = density_config("cifar10", "smoke", steps=2, ckpt_every=2, eval_n=16, batch_size=8)
    run_train_density(cfg, run, data_dir=cifar)
    card = zoo.export(run, "pcnn-test", kind="density", default=True,
                      card={"dataset": "cifar10", "preset": "smoke"}, zoo_dir=str(d / "zoo"))
    return run, str(d / "zoo" / "pcnn-test"), card


def test_card_of_a_run_dir_is_empty(exported):
    run, entry, card = exported
    assert zoo.card_of(run) == {}
    assert zoo.card_of(entry) == card


def test_export_round_trip(exported):
    run, entry, card = exported
    _, p_run, _, _ = load_density(run)
    _, p_zoo, cfg, _ = load_density(entry)
    assert params_digest(p_run) == params_digest(p_zoo)
    assert cfg.preset == "smoke" and len(card["sha256"]) == 64
    listed = zoo.entries(os.path.dirname(entry))
    assert [e["name"] for e in listed] == ["pcnn-test"]


def test_checksum_mismatch_is_an_error(exported, tmp_path):
    _, entry, _ = exported
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(entry, bad)
    blob = bytearray((bad / "params.msgpack").read_bytes())
    blob[-1] ^= 0xFF
    (bad / "params.msgpack").write_bytes(bytes(blob))
    with pytest.raises(PxdError, match="checksum mismatch"):
        load_density(str(bad))


def test_config_mismatch_is_an_error(exported, tmp_path):
    _, entry, _ = exported
    import shutil

    bad = tmp_path / "badcfg"
    shutil.copytree(entry, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["n_resent"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PxdError, match="n_resent"):
        load_density(str(bad))


def test_shipped_entries_verify():
    # every model shipped in the package loads and matches its card
    for e in zoo.entries():
        from pxd.storage import checkpoint

        params = checkpoint.load_params(os.path.join(e["path"], "params.msgpack"))
        assert jax.tree_util.tree_leaves(params)
        assert all(np.all(np.isfinite(a)) for a in jax.tree_util.tree_leaves(params))


def test_shipped_models_load_by_name_with_one_default_per_kind_and_shape():
    from pxd.configs.datasets import DATASETS
    from pxd.storage.runs import load_classifier

    defaults = {}
    for e in zoo.entries():
        assert zoo.resolve(e["name"]) == e["path"]
        assert zoo.shown(e["path"]) == zoo.shown(e["name"]) == e["name"]
        assert zoo.card_of(e["path"])["sha256"] == e["sha256"]
        loader = load_density if e["kind"] == "density" else load_classifier
        cfg = loader(e["name"])[2]
        assert cfg.dataset == e["dataset"]
        if e["default"]:
            key = (e["kind"], DATASETS[e["dataset"]].shape)
            assert key not in defaults, f"two defaults for {key}"
            defaults[key] = e["path"]
    for key, path in defaults.items():
        assert zoo.default_path(*key) == path
    assert zoo.resolve("no-such-model") == "no-such-model"
    assert zoo.shown("/some/run/dir") == "/some/run/dir"
    with pytest.raises(PxdError, match="not found"):
        load_density("no-such-model")


def test_exported_step_is_the_best_evaluation_or_the_last_step(tmp_path):
    from pxd.commands.zoo import exported_step

    evals = [{"step": 1000, "test_bpd": 4.0}, {"step": 2000, "test_bpd": 3.7},
             {"step": 3000, "test_bpd": 3.7}, {"step": 4000, "test_bpd": 3.9}]
    assert exported_step(str(tmp_path), {"evals": evals}) == 2000
    clf = {"evals": [{"step": 1000, "eval_acc": 0.5}], "step": 1500}
    assert exported_step(str(tmp_path), clf) == 1500
    assert exported_step(str(tmp_path), {}) is None  # no checkpoint either


def test_resume_from_a_zoo_entry_equals_the_uninterrupted_run(tmp_path, cifar):
    """A run exported half-way with its training state, then continued from the zoo entry
    alone (the run directory deleted), ends bit for bit where the unbroken run ends."""
    import shutil

    from pxd.commands.zoo import run_zoo_export
    from pxd.report.terminal import Reporter

    data_dir = cifar
    cfg = density_config("cifar10", "smoke", steps=8, ckpt_every=4, eval_n=16, batch_size=8,
                         ema=0.9, schedule="cosine", warmup=2)
    a = run_train_density(cfg, str(tmp_path / "a"), data_dir=data_dir)
    half = str(tmp_path / "half")
    run_train_density(cfg, half, data_dir=data_dir, stop_after=4)
    zdir = str(tmp_path / "zoo")
    card = run_zoo_export(half, "pcnn-half", default=False, command="test", data_dir=data_dir,
                          rep=Reporter(quiet=True), zoo_dir=zdir, with_state=True)
    assert card["state_step"] == 4 and card["state_sha256"]
    shutil.rmtree(half)
    entry = os.path.join(zdir, "pcnn-half")
    c = run_train_density(cfg, str(tmp_path / "c"), resume_from=entry, keep_steps=True,
                          data_dir=data_dir)
    assert c["step"] == 8 and c["digest"] == a["digest"]
    with pytest.raises(PxdError, match="already holds a run"):
        run_train_density(cfg, str(tmp_path / "c"), resume_from=entry, data_dir=data_dir)
    with pytest.raises(PxdError, match="no training state"):
        run_train_density(cfg, str(tmp_path / "d"), resume_from="pixelcnn-fm-cpu",
                          data_dir=data_dir)
    # a tampered state is refused by its checksum
    with open(os.path.join(entry, "train_state.msgpack"), "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01")
    with pytest.raises(PxdError, match="checksum"):
        run_train_density(cfg, str(tmp_path / "e"), resume_from=entry, data_dir=data_dir)


def test_classifier_resume_from_a_zoo_entry_equals_the_uninterrupted_run(tmp_path, cifar):
    """train-clf --resume-from: a classifier exported half-way with its training state
    continues from the zoo entry alone to the unbroken run's exact variables; a density
    entry is refused as a classifier's state."""
    import shutil

    from pxd.commands.train import run_train_clf
    from pxd.commands.zoo import run_zoo_export
    from pxd.configs.classifier import clf_config
    from pxd.report.terminal import Reporter

    cfg = clf_config("cifar10", "resnet", "normal", "smoke", steps=6, ckpt_every=3,
                     eval_every=3, batch_size=8)
    a = run_train_clf(cfg, str(tmp_path / "a"), data_dir=cifar)
    half = str(tmp_path / "half")
    run_train_clf(cfg, half, data_dir=cifar, stop_after=3)
    zdir = str(tmp_path / "zoo")
    card = run_zoo_export(half, "clf-half", default=False, command="test", data_dir=cifar,
                          rep=Reporter(quiet=True), zoo_dir=zdir, with_state=True)
    assert card["state_step"] == 3 and card["kind"] == "classifier"
    shutil.rmtree(half)
    entry = os.path.join(zdir, "clf-half")
    c = run_train_clf(cfg, str(tmp_path / "c"), resume_from=entry, keep_steps=True,
                      data_dir=cifar)
    assert c["step"] == 6 and c["complete"] and c["digest"] == a["digest"]
    from pxd.storage import checkpoint

    # the evaluation curve goes on across the export: the curve of a multi-session run
    resumed, unbroken = (checkpoint.read_meta(str(tmp_path / d))["evals"] for d in "ca")
    assert [e["step"] for e in resumed] == [3, 6]
    assert [e["eval_acc"] for e in resumed] == [e["eval_acc"] for e in unbroken]
    with pytest.raises(PxdError, match="already holds a run"):
        run_train_clf(cfg, str(tmp_path / "c"), resume_from=entry, data_dir=cifar)
    # --eval-every applies to a resumed run too (it was silently the saved run's before)
    from pxd.configs.base import replace

    e = str(tmp_path / "e")
    run_train_clf(replace(cfg, steps=5), e, resume_from=entry, eval_every=1, data_dir=cifar)
    assert [x["step"] for x in checkpoint.read_meta(e)["evals"]] == [3, 4, 5]
    with open(os.path.join(e, "config.json")) as f:
        saved = json.load(f)
    assert (saved["eval_every"], saved["ckpt_every"], saved["steps"]) == (1, 1, 5)
    with pytest.raises(PxdError, match="not a classifier"):
        run_train_clf(cfg, str(tmp_path / "d"), resume_from="pixelcnn-c10-cpu-v4",
                      data_dir=cifar)


def test_zoo_command_lists_every_shipped_model():
    from typer.testing import CliRunner

    from pxd.cli import app

    r = CliRunner().invoke(app, ["zoo", "--json"])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)
    assert {e["name"] for e in listed} == {e["name"] for e in zoo.entries()}
    assert all(len(e["sha256"]) == 64 for e in listed)
