"""`pxd bench` end to end on smoke models and a handful of images, plus the BPDA attack.

The grid runs once (all attacks, all defences, eps 0/2/8, BPDA with 2 steps) and once more
from its cache; the checks are the grid's guarantees, the files, the cache and the bounds of
everything crafted.
"""

import glob
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import backend_compiles, train_smoke_models

from pxd.commands import bench
from pxd.core import adaptive
from pxd.errors import PxdError

N = 4
EPS = "0,2,8"
# few iterations keep DeepFool and CW cheap; they are tested for strength elsewhere
FAST_OPTS = {"deepfool": {"max_iter": 3}, "cw": {"search_steps": 1, "max_iterations": 5}}


@pytest.fixture(scope="module")
def models(tmp_path_factory, cifar):
    return train_smoke_models(str(tmp_path_factory.mktemp("bench_models")), cifar, steps=20,
                              eval_n=32)


def _run(models, out):
    return bench.run_bench(
        attacks="all", eps_attack=EPS, clfs=[models["clf"]], density=models["density"],
        defenses="all", n=N, out=out, adaptive_steps=2, restarts=1, batch_size=4,
        attack_opts=FAST_OPTS, command="pytest", data_dir=models["data_dir"],
    )


@pytest.fixture(scope="module")
def grid(models, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("bench_out"))
    return dict(out=out, first=_run(models, out))


def test_outputs_exist(grid):
    out = grid["out"]
    for f in ("report.md", "results.json", "per_image.csv", "roc_eps2.png", "roc_eps8.png"):
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    for d in bench.DEFENCES:
        assert os.path.exists(os.path.join(out, f"acc_vs_eps_{d}.png"))
    report = open(os.path.join(out, "report.md")).read()
    assert "Command: `pytest`" in report and "paper Table 1" in report
    assert "ADAPTIVE (BPDA)" in report and "ROC AUC" in report
    lines = open(os.path.join(out, "per_image.csv")).read().strip().splitlines()
    assert len(lines) == N + 1
    # clean + 5 attacks x 3 eps + BPDA x 3 eps, for each of the 4 defence rows
    assert len(lines[0].split(",")) == 2 + 4 * (1 + 5 * 3 + 3)


def test_grid_guarantees(grid):
    res = json.load(open(os.path.join(grid["out"], "results.json")))
    assert [r["defence"] for r in res["rows"]] == list(bench.DEFENCES)
    attacks = res["attacks"]
    assert attacks == list(bench.PAPER_ATTACKS)
    for r in res["rows"]:
        acc = r["acc"]
        for e in ("0", "2", "8"):
            assert all(acc["strongest"][e] <= acc[a][e] for a in attacks), r["name"]
            assert acc["strongest"][e] == min(acc[a][e] for a in attacks)
            assert acc["worst"][e] <= acc["strongest"][e]
        for col in attacks + ["strongest", "worst", "adaptive"]:
            assert acc[col]["0"] == acc["clean"]["0"], (r["name"], col)
    assert res["consistency"] and all(c["ok"] for c in res["consistency"])
    for r in res["rows"]:  # every cell: its k of n, and a 95% interval around the accuracy
        for col, by_eps in r["acc"].items():
            for e, a in by_eps.items():
                k, n = r["counts"][col][e]
                lo, hi = r["ci95"][col][e]
                assert n == N and k / n == a and lo <= a <= hi, (r["name"], col, e)
    report = open(os.path.join(grid["out"], "report.md")).read()
    assert "95% confidence intervals (Wilson" in report and "Against the paper" in report
    assert {c["status"] for c in res["sanity"]} <= {"PASS", "WARN"} and len(res["sanity"]) == 3
    assert res["threshold"] is not None
    assert res["density"]["sha256"] and res["classifiers"][0]["sha256"]
    for row in res["detection"]:
        assert row["auc"]["0"] == 0.5  # eps 0: the same images on both sides


def test_crafted_within_bounds(grid):
    from pxd.storage.data import load

    x, _ = load(f"cifar10:test[:{N}]", None)
    x = x.astype(int)
    files = glob.glob(os.path.join(grid["out"], "cache", "adv_*.npz")) + \
        glob.glob(os.path.join(grid["out"], "cache", "bpda_*.npz"))
    bpda = [f for f in files if os.path.basename(f).startswith("bpda_")]
    assert len(bpda) == 4 * 2  # 4 defences x eps 2, 8 (eps 0 is the input itself)
    for f in files:
        eps = int(re.match(r"(?:adv|bpda)_[0-9a-f]+_[a-z-]+_(\d+)_", os.path.basename(f))[1])
        with np.load(f) as z:
            xa = z["x"]
        assert xa.dtype == np.uint8 and xa.shape == x.shape, f  # integral, in [0, 255]
        assert np.abs(xa.astype(int) - x).max() <= eps, f


def test_rerun_reuses_cache(grid, models):
    cache_files = sorted(glob.glob(os.path.join(grid["out"], "cache", "*.npz")))
    before = {f: os.stat(f).st_mtime_ns for f in cache_files}
    second = _run(models, grid["out"])
    assert all(v["new"] == 0 for v in second["cache"].values()), second["cache"]
    assert {f: os.stat(f).st_mtime_ns for f in cache_files} == before
    assert sorted(glob.glob(os.path.join(grid["out"], "cache", "*.npz"))) == cache_files
    assert [r["acc"] for r in second["rows"]] == [r["acc"] for r in grid["first"]["rows"]]


def test_cli_runs_from_cache(grid, models):
    from typer.testing import CliRunner

    from pxd.cli import app

    args = ["bench", "--attack", "fgsm,bim", "--eps-attack", "0,8", "--clf", models["clf"],
            "--density", models["density"], "--defense", "none,pixeldefend", "--n", str(N),
            "--out", grid["out"], "--adaptive-steps", "0", "--batch-size", "4",
            "--data-dir", models["data_dir"], "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["cache"]["attacks"]["new"] == 0 and res["cache"]["purified"]["new"] == 0
    assert res["columns"] == ["clean", "fgsm", "bim", "strongest", "worst"]


# --------------------------------------------------------------------------- BPDA unit tests


def test_bpda_forward_is_real_backward_is_identity():
    f = adaptive.bpda(lambda z: jnp.round(z / 16.0) * 16.0)
    x = jnp.asarray([[3.0, 9.0], [30.0, 201.0]])
    np.testing.assert_array_equal(np.asarray(f(x)), [[0.0, 16.0], [32.0, 208.0]])
    g = jax.grad(lambda z: jnp.sum(f(z) * jnp.asarray([1.0, -2.0])))(x)
    np.testing.assert_array_equal(np.asarray(g), [[1.0, -2.0], [1.0, -2.0]])


def test_bpda_pgd_bounds_and_strength():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)

    def logits_fn(z):
        return (z.reshape(z.shape[0], -1) / 127.5 - 1.0) @ w

    def quantise(z):  # non-differentiable, like the purifier
        return jnp.round(z / 16.0) * 16.0

    x = rng.integers(0, 256, (8, 8, 8, 1)).astype(np.uint8)
    x[0] = 0
    x[1] = 255  # budgets at the edges of the pixel range
    y = np.asarray(jnp.argmax(logits_fn(quantise(jnp.asarray(x, jnp.float32))), -1))
    eps = jnp.asarray([0, 1, 2, 4, 8, 16, 32, 32], jnp.float32)
    oracle = adaptive.ce_oracle(logits_fn, quantise)
    xa = np.asarray(jax.jit(lambda xx, yy, ee, k: adaptive.bpda_pgd(
        oracle, xx, yy, eps=ee, key=k, steps=8, restarts=2))(x, y, eps, jax.random.key(0)))
    assert xa.dtype == np.uint8
    diff = np.abs(xa.astype(int) - x.astype(int)).reshape(8, -1).max(1)
    assert np.all(diff <= np.asarray(eps)) and diff[0] == 0
    pred = np.asarray(jnp.argmax(logits_fn(quantise(jnp.asarray(xa, jnp.float32))), -1))
    assert pred[0] == y[0]  # eps 0 returns the input
    assert np.all(pred[-2:] != y[-2:])  # a large budget breaks the defended linear model


def test_bpda_host_loop_equals_lax_loop():
    # on concrete arrays the step loop runs on the host (a network in a lax loop body is
    # slow on CPU); under jit it is the lax loop: the same images, early stop on or off
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.normal(size=(48, 3)), jnp.float32)

    def logits_fn(z):
        return (z.reshape(z.shape[0], -1) / 127.5 - 1.0) @ w

    x = rng.integers(0, 256, (6, 4, 4, 3)).astype(np.uint8)
    y = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x, jnp.float32)), -1))
    eps = jnp.asarray([0, 1, 2, 4, 8, 64], jnp.float32)
    for early, clean_first in ((True, False), (False, True)):
        oracle = adaptive.ce_oracle(logits_fn, lambda z: jnp.round(z / 8.0) * 8.0)
        kw = dict(steps=6, restarts=2, early_stop=early, clean_first=clean_first)
        host = adaptive.bpda_pgd(oracle, x, y, eps=eps, key=jax.random.key(1), **kw)
        lax_loop = jax.jit(lambda xx, yy, ee, k, kw=kw, oracle=oracle: adaptive.bpda_pgd(
            oracle, xx, yy, eps=ee, key=k, **kw))(x, y, eps, jax.random.key(1))
        np.testing.assert_array_equal(host, lax_loop)
    for name in ("none", "feature-squeeze"):
        attack = adaptive.make_bpda_attack(name, steps=5, restarts=2)
        lf = jax.tree_util.Partial(logits_fn)
        host = attack(lf, None, x, y, eps, jax.random.key(2))
        traced = jax.jit(attack)(lf, None, x, y, eps, jax.random.key(2))
        np.testing.assert_array_equal(host, traced)


def test_bpda_early_stop_fools_the_same_images():
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(48, 3)), jnp.float32)

    def logits_fn(z):
        return (z.reshape(z.shape[0], -1) / 127.5 - 1.0) @ w

    oracle = adaptive.ce_oracle(logits_fn, lambda z: jnp.round(z / 8.0) * 8.0)
    x = rng.integers(0, 256, (6, 4, 4, 3)).astype(np.uint8)
    y = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x, jnp.float32)), -1))

    def fooled(eps, early):
        xa = adaptive.bpda_pgd(oracle, x, y, eps=eps, key=jax.random.key(3), steps=12,
                               restarts=2, early_stop=early)
        return np.asarray(jnp.argmax(logits_fn(jnp.round(jnp.asarray(xa, jnp.float32) / 8.0)
                                               * 8.0), -1)) != y

    for eps in (2.0, 6.0, 64.0):  # some, more, then every image fooled (loop ends early)
        np.testing.assert_array_equal(fooled(eps, True), fooled(eps, False))
    assert fooled(64.0, True).all()


def test_bpda_host_calls_compile_once_per_shape():
    # the host loop's jitted pieces take the oracle as a pytree: a second attack built the
    # same way, with new classifier weights and a new eps, compiles nothing (counted by
    # XLA's backend-compile event)
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (4, 4, 4, 3)).astype(np.uint8)
    y = np.zeros(4, np.int32)

    def logits_fn(w, z):
        return (z.reshape(z.shape[0], -1) / 127.5 - 1.0) @ w

    def run(seed, eps):
        w = jnp.asarray(np.random.default_rng(seed).normal(size=(48, 3)), jnp.float32)
        attack = adaptive.make_bpda_attack("feature-squeeze", steps=3, restarts=2)
        return attack(jax.tree_util.Partial(logits_fn, w), None, x, y,
                      jnp.full((4,), eps, jnp.float32), jax.random.key(seed))

    with backend_compiles() as compiles:
        run(0, 4.0)
        assert compiles  # the first call compiles, and the listener sees it
        seen = len(compiles)
        second = run(1, 9.0)
        assert len(compiles) == seen
        assert np.abs(second.astype(int) - x.astype(int)).max() <= 9


def test_parsing():
    assert bench.parse_eps_list("16, 2,8,2") == [2, 8, 16]
    assert bench.parse_attacks("all") == list(bench.PAPER_ATTACKS)
    assert bench.parse_attacks("bim,fgsm") == ["fgsm", "bim"]
    assert bench.parse_defences("pixeldefend,none") == ["none", "pixeldefend"]
    assert bench.parse_attack_opts(["cw.search_steps=2", "deepfool.max_iter=3"]) == \
        {"cw": {"search_steps": 2}, "deepfool": {"max_iter": 3}}
    for bad in (["cw.nope=1"], ["zz.steps=1"], ["cw=1"]):
        with pytest.raises(PxdError):
            bench.parse_attack_opts(bad)
    with pytest.raises(PxdError):
        bench.parse_eps_list("2.5")
    with pytest.raises(PxdError):
        bench.parse_attacks("fgsm,magic")


def test_paper_table_transcribed():
    cols = {"clean", "rand", "fgsm", "bim", "deepfool", "cw", "strongest"}
    assert len(bench.PAPER_TABLE1) == 11
    off = []
    for key, row in bench.PAPER_TABLE1.items():
        assert set(row) == cols, key
        vals = {c: [int(v) for v in s.split("/")] for c, s in row.items()}
        assert all(len(v) == 3 for v in vals.values())
        for i in range(3):
            low = min(vals[a][i] for a in ("rand", "fgsm", "bim", "deepfool", "cw"))
            if vals["strongest"][i] != low:
                off.append((key, i))
    # the paper's STRONGEST is the minimum of its attack columns in every cell but one
    # (ResNet adversarial FGSM + PixelDefend, eps 8: FGSM 68, STRONGEST 69): kept as printed
    assert off == [(("resnet", "adv-fgsm", "pixeldefend"), 1)]
    assert bench.paper_cell("92/87/76", [0, 2, 8]) == "--/92/87"
    assert bench.cell({2: 0.07, 8: 1.0}, [2, 8]) == "07/100"


def test_clf_all_expands_to_the_shipped_classifiers():
    from pxd.storage import shipped as zoo

    shipped = [e for e in zoo.entries() if e["kind"] == "classifier"
               and e["dataset"] == "cifar10"]
    models = bench._load_classifiers(["all"], "cifar10")
    assert len(models) == len(shipped) >= 1
    # reports name shipped models by zoo name, not by this machine's install path
    assert zoo.resolve(models[0]["path"]) == zoo.default_path("classifier", (32, 32, 3))
    assert [m["path"] for m in models] == [e["name"] for e in sorted(
        shipped, key=lambda e: not e.get("default"))]
    with pytest.raises(PxdError, match="no classifiers shipped"):
        bench._load_classifiers(["all"], "no-such-dataset")


def test_cells_equal_direct_computations(grid, models):
    """Bench wiring: cells recomputed here through the public API on the same images."""
    import pxd

    # the first run's rows (a later test rewrites results.json with fewer defences)
    rows = {r["defence"]: json.loads(json.dumps(r["acc"], default=float))
            for r in grid["first"]["rows"]}
    x, y = pxd.load_dataset(f"cifar10:test[:{N}]", data_dir=models["data_dir"])
    clf = pxd.load_classifier(models["clf"])
    dens = pxd.load_density(models["density"])

    def acc(images):
        return float(np.mean(clf.predict(images) == y))

    adv = pxd.attack(x, y, "fgsm", eps=8, clf=clf, batch_size=4)
    assert rows["none"]["fgsm"]["8"] == acc(adv)
    pur = pxd.purify(x, eps=16, density=dens, batch_size=4)
    assert rows["pixeldefend"]["clean"]["8"] == acc(pur)
    assert rows["feature-squeeze"]["fgsm"]["8"] == acc(pxd.feature_squeeze(adv))
    # the BPDA cell of the PixelDefend row: its stored adversarials, purified and classified
    (f,) = glob.glob(os.path.join(grid["out"], "cache", "bpda_*_pixeldefend_8_*.npz"))
    with np.load(f) as z:
        xb = z["x"]
    assert rows["pixeldefend"]["adaptive"]["8"] == acc(pxd.purify(xb, 16, density=dens,
                                                                  batch_size=4))


def test_speed_bench_runs_and_writes_its_json(models, tmp_path):
    """`bench --speed` at toy sizes: it runs and writes what it measured (no timing asserts:
    figures belong in docs/BENCHMARKS.md)."""
    path = str(tmp_path / "speed.json")
    res = bench.run_speed(path, density=models["density"], batch_size=2,
                          data_dir=models["data_dir"], n_fast=2, n_ref=1, train_steps=1,
                          attacks_too=False, paper_images=1, paper_positions=3,
                          paper_over=dict(nr_filters=4, nr_resnet=1))
    saved = json.load(open(path))
    assert saved["purify"] == json.loads(json.dumps(res["purify"]))
    p = saved["purify"]
    assert p["fast_images_per_s"] > 0 and p["reference_images_per_s"] > 0
    assert p["identical_on_reference_images"] + len(p["near_tie_gaps_of_differing_images"]) \
        == p["reference_images"] == 1
    assert saved["train"]["1_device"]["images_per_s"] > 0 and "machine" in saved
    # the U-Net part: cached against Jacobi (forwards counted) and a reference prefix
    q = saved["purify_paper"]
    assert q["cached_batch"] == 1 and q["cached_images_per_s"] > 0
    assert q["reference_prefix_same_as_cached"] and q["reference_positions_timed"] == 3
    assert [r["kind"] for r in q["jacobi"]][:2] == ["clean", "clean"]
    for r in q["jacobi"]:
        assert r["forwards"] >= 1
        assert r["same_as_cached"] or max(r["near_tie_gaps"]) < 1e-4


def test_config_saved_beside_the_outputs(grid):
    from pxd.configs.base import load_json
    from pxd.configs.commands import BenchConfig

    cfg = load_json(BenchConfig, os.path.join(grid["out"], "config.json"))
    with open(os.path.join(grid["out"], "results.json")) as f:
        res = json.load(f)  # written by the same (latest) run into this folder
    assert (cfg.out, cfg.n, cfg.batch_size) == (grid["out"], N, 4)
    assert bench.parse_eps_list(cfg.eps_attack) == res["eps_attack"]
    assert bench.parse_attacks(cfg.attacks) == res["attacks"]
    assert cfg.command == res["command"] and (cfg.attack_opts or {}) == res["attack_opts"]


def test_interval_and_paper_verdicts_by_hand():
    from pxd.commands.bench.outputs import column_title
    from pxd.commands.bench.rows import against_paper, intervals, paper_verdict, row_counts

    clean = np.array([1, 1, 1, 0], bool)
    corr = {"fgsm": {2: np.array([1, 0, 0, 0], bool)}, "bim": {2: np.array([0, 1, 0, 0], bool)}}
    cnt = row_counts(clean, corr, [2], adaptive={2: np.array([0, 1], bool)})
    assert cnt["clean"][2] == [3, 4] and cnt["strongest"][2] == [1, 4]
    assert cnt["worst"][2] == [0, 4] and cnt["adaptive"][2] == [1, 2]
    ci = intervals(cnt)
    # paper 92 at eps 2 for CLEAN: our 3/4 has interval 30-95%, so inside; FGSM's 33 vs 1/4
    # (5-70%) inside; BIM's 10 vs 1/4 inside; the made-up 99 for STRONGEST is not
    checks = against_paper(ci, {"clean": "92/92/92", "fgsm": "33/15/11", "strongest": "99/0/0"})
    assert [(c["column"], c["inside"]) for c in checks] == [
        ("clean", True), ("fgsm", True), ("strongest", False)]
    assert paper_verdict(checks).startswith("paper inside our 95% interval in 2/3 cells")
    assert "STRONGEST ATTACK eps 2 (paper 99, ours 5-70)" in paper_verdict(checks)
    info = {"n": 4, "rows": [{"counts": cnt}]}
    assert column_title(info, "adaptive") == "ADAPTIVE (BPDA), n=2"
    assert column_title(info, "fgsm") == "FGSM"


def test_adaptive_row_cells_equal_direct_computations(grid, models):
    """The adaptive PixelDefend row, cell by cell, through the public API: purify only the
    images whose bits/dim is above the run's threshold (`pxd.purify(adaptive_threshold=)`),
    then classify; its BPDA cell from the stored adversarials the same way."""
    import pxd

    res = grid["first"]
    t = res["threshold"]
    row = json.loads(json.dumps(next(r["acc"] for r in res["rows"]
                                     if r["defence"] == "adaptive-pixeldefend"), default=float))
    x, y = pxd.load_dataset(f"cifar10:test[:{N}]", data_dir=models["data_dir"])
    clf = pxd.load_classifier(models["clf"])
    dens = pxd.load_density(models["density"])

    def defended_acc(images):
        d = pxd.purify(images, 16, density=dens, adaptive_threshold=t, batch_size=4)
        return float(np.mean(clf.predict(d) == y))

    for e in (0, 2, 8):
        assert row["clean"][str(e)] == defended_acc(x)
    for a in ("fgsm", "bim"):
        for e in (2, 8):
            adv = pxd.attack(x, y, a, eps=e, clf=clf, batch_size=4)
            assert row[a][str(e)] == defended_acc(adv), (a, e)
    (f,) = glob.glob(os.path.join(grid["out"], "cache", "bpda_*_adaptive-pixeldefend_8_*.npz"))
    with np.load(f) as z:
        assert row["adaptive"]["8"] == defended_acc(z["x"])


def test_merged_runs_equal_a_joint_run(grid, models, tmp_path):
    """Two one-classifier runs joined by `merge_runs` give the report of one run over both:
    every row, check and AUC, the shared label told apart as `--clf A,B` tells it. The second
    classifier is a copy under another name (same parameters, so every array is a cache hit)."""
    import shutil

    from pxd.commands.bench.merge import merge_runs, run_merge

    clf_b = str(tmp_path / "clf_b")
    shutil.copytree(models["clf"], clf_b)
    runs = {}
    for name, clfs in (("a", [models["clf"]]), ("b", [clf_b]), ("ab", [models["clf"], clf_b])):
        out = tmp_path / name
        out.mkdir()
        os.symlink(os.path.join(grid["out"], "cache"), out / "cache")
        runs[name] = json.loads(json.dumps(bench.run_bench(
            attacks="all", eps_attack=EPS, clfs=clfs, density=models["density"],
            defenses="all", n=N, out=str(out), adaptive_steps=2, restarts=1, batch_size=4,
            attack_opts=FAST_OPTS, command="pytest", data_dir=models["data_dir"],
        ), default=float))
    with pytest.raises(PxdError, match="both hold classifier"):  # each classifier once
        merge_runs([runs["a"], runs["ab"]])
    joint = runs["ab"]
    info = run_merge([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m"))
    merged = json.load(open(tmp_path / "m" / "results.json"))
    labels = [c["label"] for c in joint["classifiers"]]
    assert len(set(labels)) == 2 and all(" [" in lab for lab in labels)
    for k in ("classifiers", "rows", "detection", "sanity", "consistency", "columns",
              "threshold", "density", "versions", "adaptive"):
        assert merged[k] == joint[k], k
    assert info["wall_s"] == runs["a"]["wall_s"] + runs["b"]["wall_s"]
    report = open(tmp_path / "m" / "report.md").read()
    assert report.count("- joined from") == 2
    assert (tmp_path / "m" / "summary_clf_b.png").exists()
    named = json.loads(json.dumps(runs["b"]))
    runs["a"]["density"]["path"] = "/elsewhere/density"  # the same model, by install path
    named["density"]["path"] = "density-name"
    assert merge_runs([runs["a"], named])["density"]["path"] == "density-name"
    runs["b"]["n"] = N + 1  # another grid
    with pytest.raises(PxdError, match="differs from run 1 in 'n'"):
        merge_runs([runs["a"], runs["b"]])
