"""The bench cache knows its code, survives broken files, and its arrays are reproducible.

One small bench (smoke models, 4 images, FGSM at eps 8, PixelDefend and adaptive PixelDefend,
2 BPDA steps) runs once; each test works on a copy of its output folder.
"""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import train_smoke_models

from pxd import __version__
from pxd.commands import bench
from pxd.configs import versions

N = 4


@pytest.fixture(scope="module")
def models(tmp_path_factory, cifar):
    return train_smoke_models(str(tmp_path_factory.mktemp("cache_models")), cifar, steps=4,
                              eval_n=32)


def _args(models):
    return dict(attacks="fgsm", eps_attack="8", clfs=[models["clf"]],
                density=models["density"], defenses="adaptive-pixeldefend,pixeldefend", n=N,
                adaptive_steps=2, adaptive_n=N, batch_size=N, data_dir=models["data_dir"],
                command="pytest")


def _run(models, out, **kw):
    return bench.run_bench(out=out, **dict(_args(models), **kw))


@pytest.fixture(scope="module")
def base(models, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cache_base") / "out")
    return dict(out=out, info=_run(models, out))


def _copy(base, tmp_path) -> str:
    out = str(tmp_path / "out")
    shutil.copytree(base["out"], out)
    return out


def _arrays(out) -> dict[str, dict[str, np.ndarray]]:
    res = {}
    for f in sorted(glob.glob(os.path.join(out, "cache", "*.npz"))):
        with np.load(f, allow_pickle=False) as z:
            res[os.path.basename(f)] = {k: z[k] for k in z.files}
    return res


def _same_arrays(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name]["x"].dtype == b[name]["x"].dtype, name
        assert np.array_equal(a[name]["x"], b[name]["x"]), name


def _report(out) -> str:
    return open(os.path.join(out, "report.md")).read()


def test_first_run_records_versions(base):
    info, out = base["info"], base["out"]
    kinds = {"attacks", "purified", "bpd", "bpda"}
    assert set(info["cache"]) == kinds
    # a run reuses within itself what it made (bits/dim of the same images twice)
    assert all(v["new"] > 0 and v["stale"] == v["bad"] == v["stale_reused"] == 0
               for v in info["cache"].values()), info["cache"]
    for name, z in _arrays(out).items():
        kind = {"adv": "attacks", "pur": "purified", "bpd": "bpd", "bpda": "bpda"}[
            name.split("_")[0]]
        assert str(z["code_version"]) == str(versions.CACHED[kind]), name
        # the batch size is in every key: rounding follows the program's shape
        assert re.search(rf"_b{N}(_[0-9a-f]{{8}})?\.npz$", name), name
        assert str(z["pxd_version"]) == __version__, name
    report = _report(out)
    assert f"bpda v{versions.BPDA}" in report and f"purified v{versions.PURIFY}" in report
    assert "from the cache" in report and "--reuse-stale-cache" in report
    assert "**This run was asked to reuse" not in report


def test_stale_version_recomputed(base, models, tmp_path, monkeypatch):
    out = _copy(base, tmp_path)
    before = _arrays(out)
    n_pur = base["info"]["cache"]["purified"]["new"]
    monkeypatch.setitem(versions.CACHED, "purified", versions.PURIFY + 1)
    info = _run(models, out)
    st = info["cache"]["purified"]
    assert st["new"] == st["stale"] == n_pur, st
    assert st["hits"] == base["info"]["cache"]["purified"]["hits"], st  # within the run
    assert info["cache"]["attacks"]["new"] == 0 and info["cache"]["bpda"]["new"] == 0
    after = _arrays(out)
    _same_arrays(before, after)  # the maths did not change: the same arrays, new versions
    assert {str(z["code_version"]) for n, z in after.items() if n.startswith("pur_")} == \
        {str(versions.PURIFY + 1)}
    assert f"{n_pur} computed ({n_pur} of them replacing an older version's" in _report(out)


def test_reuse_stale_cache_on_request(base, models, tmp_path, monkeypatch):
    out = _copy(base, tmp_path)
    before = _arrays(out)
    n_bpda = base["info"]["cache"]["bpda"]["new"]
    monkeypatch.setitem(versions.CACHED, "bpda", versions.BPDA + 1)
    info = _run(models, out, reuse_stale_cache=True)
    st = info["cache"]["bpda"]
    assert st["new"] == 0 and st["stale_reused"] == n_bpda and st["hits"] == 0, st
    assert all(v["new"] == 0 for v in info["cache"].values())
    _same_arrays(before, _arrays(out))
    # the files keep the version that made them
    assert {str(z["code_version"]) for n, z in _arrays(out).items() if n.startswith("bpda_")} \
        == {str(versions.BPDA)}
    report = _report(out)
    assert "**This run was asked to reuse arrays made by older code (--reuse-stale-cache).**" \
        in report
    assert f"**{n_bpda} reused from older code**" in report
    assert f"code v{versions.BPDA} ({n_bpda})" in report
    assert json.load(open(os.path.join(out, "results.json")))["reuse_stale_cache"] is True


def test_old_files_without_versions_are_stale(base, models, tmp_path):
    from pxd.storage import imageio

    out = _copy(base, tmp_path)
    before = _arrays(out)
    (f,) = [p for p in glob.glob(os.path.join(out, "cache", "adv_*.npz"))]
    z = before[os.path.basename(f)]
    imageio.write_npz(f, **{k: v for k, v in z.items() if k not in ("pxd_version",
                                                                      "code_version")})
    info = _run(models, out)
    assert info["cache"]["attacks"]["stale"] == info["cache"]["attacks"]["new"] == 1
    _same_arrays(before, _arrays(out))


def test_broken_cache_files_recomputed(base, models, tmp_path):
    out = _copy(base, tmp_path)
    before = _arrays(out)
    cache = os.path.join(out, "cache")
    adv = glob.glob(os.path.join(cache, "adv_*.npz"))[0]
    purs = sorted(glob.glob(os.path.join(cache, "pur_*.npz")))
    bpds = sorted(glob.glob(os.path.join(cache, "bpd_*.npz")))
    size = os.path.getsize(adv)
    with open(adv, "r+b") as fh:  # truncated
        fh.truncate(size // 2)
    with open(purs[0], "r+b") as fh:  # one byte flipped inside the image data: bad CRC
        fh.seek(os.path.getsize(purs[0]) // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    open(bpds[0], "wb").close()  # empty
    with open(bpds[1], "wb") as fh:  # not an npz at all
        fh.write(b"garbage")
    info = _run(models, out)
    bad = {k: v["bad"] for k, v in info["cache"].items()}
    assert bad == {"attacks": 1, "purified": 1, "bpd": 2, "bpda": 0}, info["cache"]
    _same_arrays(before, _arrays(out))  # recomputed, identical, replaced whole
    assert not [f for f in os.listdir(cache) if not f.endswith(".npz")]


def test_cache_that_is_a_file_is_refused(base, models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").write_text("not a folder")
    a = _args(models)
    args = ["bench", "--attack", a["attacks"], "--eps-attack", a["eps_attack"], "--clf",
            models["clf"], "--density", models["density"], "--defense", a["defenses"],
            "--n", str(N), "--out", str(out), "--data-dir", models["data_dir"]]
    r = subprocess.run([sys.executable, "-m", "pxd", *args], capture_output=True, text=True,
                       env=dict(os.environ, JAX_NUM_CPU_DEVICES="2"), timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pxd: error: --out "), r.stderr
    assert "cache" in lines[0] and "not a folder" in lines[0]
    assert sorted(os.listdir(out)) == ["cache"]  # no config.json, nothing else
    assert (out / "cache").read_text() == "not a folder"


def test_adaptive_column_reproducible(base, models, tmp_path):
    """Every array, the BPDA ones included, bit for bit: a second run in this process, and a
    run on one device instead of two (a different shard layout)."""
    first = _arrays(base["out"])
    again = str(tmp_path / "again")
    _run(models, again)
    _same_arrays(first, _arrays(again))
    one = str(tmp_path / "one")
    a = _args(models)
    code = ("import sys; from pxd.engine import devices; devices.setup(); "
            "from pxd.commands import bench; "
            f"bench.run_bench(out=sys.argv[1], **{a!r})")
    r = subprocess.run([sys.executable, "-c", code, one], capture_output=True, text=True,
                       env=dict(os.environ, JAX_NUM_CPU_DEVICES="1"), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # Every integer array (attacks, purifications, BPDA) is the same bit for bit. Bits/dim
    # are float32 sums whose rounding may follow the rows per device program (16 or 32
    # here): they agree to the last place (measured: 2 of 256 values 1 ulp apart).
    one_arrays = _arrays(one)
    assert sorted(first) == sorted(one_arrays)
    for name, z in first.items():
        if name.startswith("bpd_"):
            np.testing.assert_allclose(one_arrays[name]["x"], z["x"], rtol=3e-7, atol=0)
        else:
            assert np.array_equal(one_arrays[name]["x"], z["x"]), name


@pytest.mark.slow
def test_adaptive_bpda_reproducible_on_shipped_models(cifar):
    """Issue 27's case: adaptive PixelDefend's BPDA on the shipped models, 16 images over two
    devices. Before the fix the bits/dim gradient shared one XLA program with the purifier and
    about every other call changed a shard's first image; four attacks must agree."""
    import jax

    from pxd.commands.bench.cache import seed_key
    from pxd.core import adaptive
    from pxd.core.purify import make_purifier
    from pxd.engine import devices
    from pxd.models.classifiers import make_logits_fn
    from pxd.storage import data
    from pxd.storage.runs import load_classifier, resolve_density

    model, variables, _, _ = load_classifier("resnet-c10-normal")
    lf = make_logits_fn(model, variables["params"], variables.get("batch_stats", {}))
    dm, dp, _, _, _ = resolve_density(None, (32, 32, 3))
    x, y = data.load("cifar10:test[:16]", cifar)
    attack = adaptive.make_bpda_attack(
        "adaptive-pixeldefend", density_model=dm, purify=make_purifier(dm, "auto", max_eps=16),
        eps_defend=16, threshold=3.55, steps=5)
    key = seed_key(0, "bpda", "adaptive-pixeldefend", 8)

    def one(b, xb, yb, eb):
        return attack(lf, dp, xb, yb, eb, jax.random.fold_in(key, b))

    runs = [devices.map_batches(one, (x, y, np.full(16, 8, np.float32)), 32, indexed=True)
            for _ in range(4)]
    for r in runs[1:]:
        assert np.array_equal(r, runs[0]), np.nonzero((r != runs[0]).reshape(16, -1).any(1))
