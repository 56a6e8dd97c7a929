"""The CLI as a user meets it: real subprocesses, one-line errors, no partial outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pxd.commands import purify as purify_cmd
from pxd.commands.purify import run_purify

PXD = [sys.executable, "-m", "pxd"]


def run(args, **kw):
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2")
    return subprocess.run(PXD + args, capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def density_run(tmp_path_factory, cifar):

    d = tmp_path_factory.mktemp("cli")
    out = str(d / "pcnn")
    r = run(["train-density", "--preset", "smoke", "--steps", "6", "--out", out,
             "--data-dir", cifar, "--quiet"])
    assert r.returncode == 0, r.stderr
    return out, cifar


def test_version_and_help():
    r = run(["--version"])
    assert r.returncode == 0 and r.stdout.startswith("pxd ")
    r = run(["--help"])
    for cmd in ("train-density", "score", "purify", "zoo"):
        assert cmd in r.stdout


def test_score_json_and_reference(density_run, tmp_path):
    run_dir, data_dir = density_run
    r = run(["score", "cifar10:test[:6]", "--density", run_dir, "--data-dir", data_dir,
             "--reference", "cifar10:train[:8]", "--json", "--plot", str(tmp_path / "plots")])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    entry = res["inputs"]["cifar10:test[:6]"]
    assert entry["n"] == 6 and len(entry["bpd"]) == 6 and 0 <= entry["roc_auc"] <= 1
    assert all(0 <= p <= 1 for p in entry["p_values"])
    assert np.mean(entry["bpd"]) == pytest.approx(entry["mean"], rel=1e-6)
    assert (tmp_path / "plots" / "bpd_hist.png").exists()
    assert (tmp_path / "plots" / "roc.png").exists()


def test_purify_end_to_end(density_run, tmp_path):
    run_dir, data_dir = density_run
    out = tmp_path / "p.npz"
    r = run(["purify", "cifar10:test[:4]", "--eps", "8", "--density", run_dir, "--out", str(out),
             "--data-dir", data_dir, "--json", "--grid", str(tmp_path / "g.png")])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    with np.load(out, allow_pickle=False) as z:
        x, xin = z["x"], z["x_input"]
        assert x.dtype == np.uint8 and x.shape == (4, 32, 32, 3)
        assert np.abs(x.astype(int) - xin.astype(int)).max() <= 8
        assert res["mean_changed_subpixels"] == pytest.approx(
            float((x != xin).reshape(4, -1).sum(1).mean()))
    assert (tmp_path / "g.png").exists()


@pytest.mark.parametrize("args,needle", [
    (["purify", "cifar10:test[:2]", "--eps", "300"], "--eps"),
    (["purify", "cifar10:test[:2]", "--eps", "-1"], "--eps"),
    (["purify", "/nonexistent.npz", "--eps", "4"], "nonexistent"),
    (["purify", "cifar10:test[:2]", "--eps", "4", "--method", "magic"], "method"),
    (["purify", "{fmnist}", "--eps", "4"], "trained on"),  # Fashion-MNIST-shaped, no dataset
])
def test_bad_purify_input(density_run, tmp_path, args, needle):
    run_dir, data_dir = density_run
    fmnist = tmp_path / "fm.npz"
    np.savez(fmnist, x=np.zeros((2, 28, 28, 1), np.uint8))
    args = [a.format(fmnist=fmnist) for a in args]
    out = tmp_path / "o.npz"
    r = run(args + ["--density", run_dir, "--out", str(out), "--data-dir", data_dir])
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("pxd: error")]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob("o.npz*"))
    assert sorted(os.listdir(tmp_path)) == ["fm.npz"]


def test_missing_density_checkpoint(tmp_path):
    r = run(["score", "cifar10:test[:2]", "--density", str(tmp_path / "nope")])
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_purify_resume_skips_finished_chunks(density_run, tmp_path, monkeypatch):
    run_dir, data_dir = density_run
    out = str(tmp_path / "r.npz")
    calls = []
    failed = []
    real = purify_cmd.purify_array

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2 and not failed:
            failed.append(1)
            raise RuntimeError("killed")  # dies during the second chunk
        return real(*a, **k)

    monkeypatch.setattr(purify_cmd, "purify_array", flaky)
    with pytest.raises(RuntimeError, match="killed"):
        run_purify("cifar10:test[:6]", out, eps=4, density=run_dir, chunk=2, data_dir=data_dir)
    assert not os.path.exists(out)
    assert sorted(os.listdir(out + ".partial")) == ["chunk_00000.npz", "job.json"]
    calls.clear()
    res = run_purify("cifar10:test[:6]", out, eps=4, density=run_dir, chunk=2,
                     data_dir=data_dir, resume=True)
    assert len(calls) == 2  # chunks 1 and 2 only
    assert res["n"] == 6 and os.path.exists(out) and not os.path.exists(out + ".partial")
    monkeypatch.setattr(purify_cmd, "purify_array", real)
    fresh = run_purify("cifar10:test[:6]", str(tmp_path / "f.npz"), eps=4, density=run_dir,
                       chunk=6, data_dir=data_dir)
    with np.load(out) as a, np.load(str(tmp_path / "f.npz")) as b:
        np.testing.assert_array_equal(a["x"], b["x"])
    assert fresh["n"] == 6


def test_adaptive_threshold_skips_low_bpd(density_run, tmp_path):
    run_dir, data_dir = density_run
    res = run_purify("cifar10:test[:4]", str(tmp_path / "a.npz"), eps=8, density=run_dir,
                     data_dir=data_dir, adaptive_threshold=1e9)
    assert res["purified_images"] == 0 and res["mean_changed_subpixels"] == 0
    res = run_purify("cifar10:test[:4]", str(tmp_path / "b.npz"), eps=8, density=run_dir,
                     data_dir=data_dir, adaptive_threshold=0.0)
    assert res["purified_images"] == 4


def test_devices_option_sets_the_device_count(cifar, tmp_path):
    """--devices 1 overrides the two virtual devices the tests' environment asks for; the
    run records the devices it used."""
    out = str(tmp_path / "d1")
    r = run(["train-density", "--out", out, "--preset", "smoke", "--steps", "1",
             "--devices", "1", "--data-dir", cifar, "--quiet"])
    assert r.returncode == 0, r.stderr
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["machine"].endswith("1 x cpu"), meta["machine"]
