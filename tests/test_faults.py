"""Issue 27's bad inputs and faults: each gives exit 2 and one `pxd: error:` line saying
what to do, and leaves no file behind (or, for a damaged resume state, a state that the
next run recomputes). NaN and inf numbers, environment variables, lying .npy headers,
broken model folders and checkpoints, damaged purify chunks, zoo names, a full disk, and
the API's own boundary (attack options, scores, eps).

Mostly in-process on files made here and the shipped models; the few subprocesses need a
fresh interpreter (JAX parses JAX_NUM_CPU_DEVICES at import; `ulimit -f`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

import pxd
from pxd import cli
from pxd.storage import checkpoint
from pxd.storage import shipped as zoo

RNG = np.random.default_rng(27)
PXD = [sys.executable, "-m", "pxd"]


def pxd_main(args, capsys) -> tuple[int, str, str]:
    if isinstance(args, str):
        args = shlex.split(args)
    with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
        cli.main(args)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def tree(*dirs) -> dict[str, bytes | None]:
    """Every path under `dirs` with its bytes (None for a folder): a change shows."""
    found = {}
    for d in dirs:
        for root, sub, names in os.walk(d):
            found.update({os.path.join(root, n): None for n in sub})
            for n in names:
                with open(os.path.join(root, n), "rb") as f:
                    found[os.path.join(root, n)] = hashlib.sha256(f.read()).digest()
    return found


def one_error_line(code: int, err: str, needle: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("pxd: error: "), err
    assert needle in lines[0], lines[0]
    assert "this is a bug" not in lines[0]
    return lines[0]


def _npy_header(shape, descr="|u1") -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False,
                                            "shape": shape})
    return b.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs and broken model folders, made once (the model folders are copies of
    shipped entries, edited; the real zoo is never written)."""
    d = tmp_path_factory.mktemp("faults")
    good = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.savez(d / "good.npz", x=good, y=np.array([1, 2]))
    body = good.tobytes()
    (d / "huge.npy").write_bytes(_npy_header((10**12, 32, 32, 3)) + body)
    (d / "short.npy").write_bytes(_npy_header((3, 32, 32, 3)) + body)  # one image short
    (d / "huge_f32.npy").write_bytes(_npy_header((10**9, 32, 32, 3), "<f4") + body)
    for name, comp in (("huge.npz", zipfile.ZIP_STORED), ("huge_deflated.npz",
                                                          zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(d / name, "w", compression=comp) as z:
            z.writestr("x.npy", _npy_header((10**12, 32, 32, 3)) + body)
    with zipfile.ZipFile(d / "huge_labels.npz", "w") as z:  # images fine, labels lie
        buf = io.BytesIO()
        np.save(buf, good)
        z.writestr("x.npy", buf.getvalue())
        z.writestr("y.npy", _npy_header((10**12,), "<i8") + b"\0" * 16)

    def copy(src, name):
        shutil.copytree(os.path.join(zoo.ZOO_DIR, src), d / name)
        return d / name

    # a density folder holding a classifier's parameters, no card
    m = copy("pixelcnn-c10-cpu", "dens_clf_params")
    os.remove(m / "card.json")
    shutil.copy(os.path.join(zoo.ZOO_DIR, "resnet-c10-normal", "params.msgpack"), m)
    # a classifier whose card's checksum matches another model's parameters
    m = copy("resnet-c10-normal", "clf_other_params")
    shutil.copy(os.path.join(zoo.ZOO_DIR, "pixelcnn-c10-cpu", "params.msgpack"), m)
    card = json.loads((m / "card.json").read_text())
    card["sha256"] = hashlib.sha256((m / "params.msgpack").read_bytes()).hexdigest()
    (m / "card.json").write_text(json.dumps(card))
    # config.json with wrong types
    m = copy("pixelcnn-c10-cpu", "dens_abc")
    cfg = json.loads((m / "config.json").read_text())
    cfg["model"]["nr_filters"] = "abc"
    (m / "config.json").write_text(json.dumps(cfg))
    m = copy("pixelcnn-c10-cpu", "dens_zero_filters")
    cfg["model"]["nr_filters"] = 0
    (m / "config.json").write_text(json.dumps(cfg))
    m = copy("pixelcnn-c10-cpu", "dens_bad_head")
    cfg["model"].update(nr_filters=32, head="magic")
    (m / "config.json").write_text(json.dumps(cfg))
    m = copy("resnet-c10-normal", "clf_bad_widths")
    cfg = json.loads((m / "config.json").read_text())
    cfg["model"]["widths"] = [16, "wide", 64]
    (m / "config.json").write_text(json.dumps(cfg))
    # parameters with bytes overwritten (NaN floats), no card to catch it
    m = copy("pixelcnn-c10-cpu", "dens_nan_bytes")
    os.remove(m / "card.json")
    blob = bytearray((m / "params.msgpack").read_bytes())
    mid = len(blob) // 2
    blob[mid : mid + 64] = b"\xff" * 64
    (m / "params.msgpack").write_bytes(bytes(blob))
    return d


# (args with {d} for the folder of `files`, a word the one line must contain)
CORPUS = [
    # NaN and inf, every float option
    ("purify {d}/good.npz --eps nan", "--eps must be a finite number"),
    ("purify {d}/good.npz --eps inf", "--eps must be a finite number"),
    ("purify {d}/good.npz --eps 2.5", "--eps must be an integer"),
    ("purify {d}/good.npz --adaptive-threshold nan", "--adaptive-threshold"),
    ("purify {d}/good.npz --adaptive-threshold -inf", "--adaptive-threshold"),
    ("attack {d}/good.npz --eps-attack nan", "--eps-attack must be a finite"),
    ("attack {d}/good.npz --eps-attack 256", "--eps-attack must be in [0, 255]"),
    ("bench --eps-attack nan", "--eps-attack must be a finite"),
    ("bench --eps-attack 2,inf,8", "--eps-attack must be a finite"),
    ("bench --eps-defend nan", "--eps-defend must be a finite"),
    ("bench --adaptive-threshold nan", "--adaptive-threshold must be a finite"),
    ("bench --adaptive-bpd-weight inf", "--adaptive-bpd-weight must be a finite"),
    ("bench --attack-opt deepfool.overshoot=nan", "overshoot must be a finite"),
    ("bench --attack-opt bim.steps=0", "steps must be an integer >= 1"),
    ("bench --attack-opt pgd.restarts=0", "restarts must be an integer >= 1"),
    ("bench --attack-opt cw.learning_rate=-1", "learning_rate must be > 0"),
    ("bench --attack-opt bim.steps=2.5", "steps must be an integer"),
    ("train-density --out {d}/r --hours nan", "--hours must be a finite"),
    ("train-density --out {d}/r --lr inf", "--lr must be a finite"),
    ("train-density --out {d}/r --epochs nan", "--epochs must be a finite"),
    ("train-clf --out {d}/r --lr nan", "--lr must be a finite"),
    ("train-clf --out {d}/r --epochs inf", "--epochs must be a finite"),
    # headers that claim more than the file holds
    ("score {d}/huge.npy", "header claims shape (1000000000000, 32, 32, 3)"),
    ("score {d}/huge_f32.npy", "more than the file holds"),
    ("score {d}/short.npy", "header claims shape (3, 32, 32, 3)"),
    ("purify {d}/huge.npz", "huge.npz[x]: header claims"),
    ("purify {d}/huge_deflated.npz", "huge_deflated.npz[x]: header claims"),
    ("attack {d}/huge_labels.npz", "huge_labels.npz[y]: header claims"),
    # broken model folders
    ("score {d}/good.npz --density {d}/dens_clf_params", "do not fit the PixelCNN"),
    ("attack {d}/good.npz --clf {d}/clf_other_params", "do not fit the classifier"),
    ("score {d}/good.npz --density {d}/dens_abc", "model.nr_filters: expected an integer"),
    ("score {d}/good.npz --density {d}/dens_zero_filters", "model.nr_filters"),
    ("purify {d}/good.npz --density {d}/dens_bad_head", "model.head: expected one of"),
    ("attack {d}/good.npz --clf {d}/clf_bad_widths", "model.widths[1]"),
    ("score {d}/good.npz --density {d}/dens_nan_bytes", "parameters hold NaN or inf"),
]


@pytest.mark.parametrize("args,needle", CORPUS, ids=[a for a, _ in CORPUS])
def test_fault_is_one_line_exit_2_nothing_written(files, tmp_path, monkeypatch, capsys,
                                                  args, needle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PXD_DATA_DIR", raising=False)
    before = tree(files, tmp_path)
    code, out, err = pxd_main(args.format(d=files), capsys)
    one_error_line(code, err, needle)
    assert out == ""
    assert tree(files, tmp_path) == before


# --------------------------------------------------------------------------- environment

ENV_CASES = [("JAX_NUM_CPU_DEVICES", v) for v in ("abc", "nan", "0", "-1", "1.5", "")] + [
    ("PXD_NUM_CPU_DEVICES", "two"), ("PXD_PROGRESS_SECONDS", "abc"),
    ("PXD_PROGRESS_SECONDS", "nan"), ("PXD_PROGRESS_SECONDS", "inf"),
    ("PXD_PROGRESS_SECONDS", "-1")]


@pytest.mark.parametrize("var,value", ENV_CASES, ids=[f"{k}={v!r}" for k, v in ENV_CASES])
def test_bad_environment_numbers_are_one_line(files, tmp_path, monkeypatch, capsys, var,
                                              value):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    code, _, err = pxd_main(["score", str(files / "good.npz")], capsys)
    one_error_line(code, err, f"environment variable {var}={value!r}")
    assert os.listdir(tmp_path) == []


def test_good_environment_numbers_pass(monkeypatch):
    from pxd.configs.env import check_env, env_number

    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "1")  # the least value of each is allowed
    monkeypatch.setenv("PXD_PROGRESS_SECONDS", "0")
    check_env()
    assert env_number("JAX_NUM_CPU_DEVICES") == 1
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", " 2")
    assert env_number("JAX_NUM_CPU_DEVICES") == 2
    assert env_number("PXD_PROGRESS_SECONDS") == 0.0
    monkeypatch.setenv("PXD_PROGRESS_SECONDS", "")  # empty: unset, for pxd's own variables
    assert env_number("PXD_PROGRESS_SECONDS", 30.0) == 30.0


def test_bad_jax_num_cpu_devices_is_caught_before_jax_imports(tmp_path):
    """A fresh process: JAX itself would raise a ValueError traceback at import."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="abc")
    for argv in (["--version"], ["score", "x.npz"]):
        r = subprocess.run(PXD + argv, capture_output=True, text=True, env=env, cwd=tmp_path)
        one_error_line(r.returncode, r.stderr, "JAX_NUM_CPU_DEVICES='abc'")
    r = subprocess.run([sys.executable, "-c", "import pxd; pxd.zoo()"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith(
        "pxd.errors.PxdError: environment variable JAX_NUM_CPU_DEVICES='abc'"), r.stderr


# --------------------------------------------------------------------------- zoo names


@pytest.fixture
def scratch_zoo(tmp_path, monkeypatch):
    """A copy of two shipped entries as the zoo, and a run folder to export."""
    z = tmp_path / "zoo"
    for name in ("pixelcnn-c10-cpu", "resnet-c10-normal"):
        shutil.copytree(os.path.join(zoo.ZOO_DIR, name), z / name)
    monkeypatch.setattr(zoo, "ZOO_DIR", str(z))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(z / "resnet-c10-normal" / "config.json", run)
    return z, run


REAL_ZOO = zoo.ZOO_DIR


def stat_tree(d) -> dict:
    return {os.path.join(r, n): (os.stat(os.path.join(r, n)).st_size,
                                 os.stat(os.path.join(r, n)).st_mtime_ns)
            for r, sub, names in os.walk(d) for n in sub + names}


BAD_NAMES = ["../outside", ".", "..", "a/b", "/abs", "Upper", "", "-x", ".hidden",
             "x..y", "x.tmp", "a" * 65, "sp ace", "resnet-c10-normal"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_zoo_export_name_is_validated_before_anything(scratch_zoo, tmp_path, monkeypatch,
                                                      capsys, name):
    z, run = scratch_zoo
    monkeypatch.chdir(tmp_path)
    real = stat_tree(REAL_ZOO)
    before = tree(tmp_path)
    code, _, err = pxd_main(["zoo", "--export", str(run), "--name", name], capsys)
    needle = "already has a model" if name == "resnet-c10-normal" else "use a plain name"
    if name == "":
        needle = "--export needs --name"
    one_error_line(code, err, needle)
    assert tree(tmp_path) == before
    assert stat_tree(REAL_ZOO) == real


def test_zoo_name_rule_in_the_storage_layer_too(scratch_zoo):
    z, _ = scratch_zoo
    assert zoo.check_name("my-model.v2_1") == "my-model.v2_1"
    assert zoo.check_name("a" * 64) == "a" * 64  # the longest name allowed
    assert zoo.check_name("resnet-c10-normal", overwrite=True) == "resnet-c10-normal"
    (z / "stray").mkdir()  # a folder that is not an entry is never replaced
    for name, overwrite in (("..", True), (".", True), ("stray", True), ("a/../b", True)):
        with pytest.raises(pxd.PxdError):
            zoo.export("unused", name, kind="density", default=False, card={},
                       overwrite=overwrite)
    assert sorted(os.listdir(z)) == ["pixelcnn-c10-cpu", "resnet-c10-normal", "stray"]


# --------------------------------------------------------------------------- API boundary


@pytest.mark.parametrize("name,opts,needle", [
    ("bim", {"steps": 0}, "steps must be an integer >= 1"),
    ("bim", {"steps": -3}, "steps must be an integer >= 1"),
    ("bim", {"steps": 2.0}, "steps must be an integer"),
    ("bim", {"steps": True}, "steps must be an integer"),
    ("pgd", {"restarts": 0}, "restarts must be an integer >= 1"),
    ("pgd", {"alpha": 0}, "alpha must be > 0"),
    ("deepfool", {"overshoot": float("nan")}, "overshoot must be a finite number"),
    ("deepfool", {"max_iter": 0}, "max_iter must be an integer >= 1"),
    ("cw", {"confidence": -1.0}, "confidence must be >= 0"),
    ("cw", {"abort_early": "yes"}, "abort_early must be true or false"),
    ("fgsm", {"steps": 3}, "no option 'steps'"),
    ("bim", {}, "eps must be a finite number"),
])
def test_attack_options_are_checked_at_the_api(name, opts, needle):
    x = np.zeros((1, 32, 32, 3), np.uint8)
    eps = float("nan") if not opts else 8
    with pytest.raises(pxd.PxdError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        pxd.attack(x, [0], name, eps=eps, **opts)


def test_attack_options_keep_good_values():
    from pxd.api import check_attack_options

    assert check_attack_options("pgd", {"steps": np.int64(3), "restarts": 2, "alpha": 1,
                                        "random_start": False}) == {
        "steps": 3, "restarts": 2, "alpha": 1.0, "random_start": False}
    assert check_attack_options("bim", {"steps": None}) == {"steps": None}


@pytest.mark.parametrize("call,needle", [
    (lambda: pxd.roc_auc([], [1.0]), "clean_scores: no scores"),
    (lambda: pxd.roc_auc([1.0], []), "suspect_scores: no scores"),
    (lambda: pxd.roc_auc([1.0, np.nan], [2.0]), "NaN or inf at index 1"),
    (lambda: pxd.roc_auc([1.0], [np.inf]), "NaN or inf at index 0"),
    (lambda: pxd.roc_auc(["a", "b"], [1.0]), "must be numbers"),
    (lambda: pxd.roc_auc([[1.0, 2.0]], [1.0]), "shape (N,)"),
    (lambda: pxd.roc_auc([1.0], [[1.0], [2.0, 3.0]]), "cannot be read"),
    (lambda: pxd.p_values([], [1.0]), "no scores"),
    (lambda: pxd.p_values([1.0, 2.0], [np.nan]), "NaN or inf"),
    (lambda: pxd.p_values([1.0, 2.0], np.ones((2, 2))), "shape (N,)"),
    (lambda: pxd.p_values([True, False], [1.0]), "must be numbers"),
    (lambda: pxd.purify(np.zeros((1, 32, 32, 3), np.uint8), eps=np.nan), "finite"),
    (lambda: pxd.purify(np.zeros((1, 32, 32, 3), np.uint8), eps=np.array([np.inf])),
     "finite"),
    (lambda: pxd.purify(np.zeros((1, 32, 32, 3), np.uint8), eps=np.array("2")), "number"),
    (lambda: pxd.purify(np.zeros((1, 32, 32, 3), np.uint8), 2,
                        adaptive_threshold=np.nan), "adaptive_threshold must be a finite"),
    (lambda: pxd.purify(np.zeros((1, 32, 32, 3), np.uint8), 2,
                        adaptive_threshold="high"), "adaptive_threshold must be a number"),
])
def test_api_refuses_bad_scores_and_numbers(call, needle):
    with pytest.raises(pxd.PxdError) as e:
        call()
    assert needle in str(e.value)


def test_api_scores_exact_on_good_input():
    # pairs (suspect > clean): 1>0, 2>0, 2>1 and one tie 1=1 counted half: 3.5 / 4
    assert pxd.roc_auc([0, 1], [1, 2]) == 0.875
    assert pxd.roc_auc(np.array([0.5], np.float32), (0.25,)) == 0.0
    np.testing.assert_array_equal(pxd.p_values([1, 2, 3, 4], [2.5, 4, 0]), [0.5, 0.25, 1.0])


def test_eps_as_a_zero_d_array_is_a_number():
    x = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    # a threshold above every score: the images are scored, then returned unchanged
    for eps in (np.array(2), np.int64(2), np.float32(2.0), np.array([2, 2])):
        np.testing.assert_array_equal(pxd.purify(x, eps, adaptive_threshold=1e9), x)
    np.testing.assert_array_equal(pxd.purify(x, np.array(0)), x)


# --------------------------------------------------------------------------- purify chunks


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "garbage",
                                    "wrong_shape", "wrong_members"])
def test_damaged_partial_chunk_is_recomputed(tmp_path, monkeypatch, capsys, damage):
    from pxd.errors import Interrupted
    from pxd.storage import imageio

    monkeypatch.chdir(tmp_path)
    x = RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.savez("in.npz", x=x)
    args = "purify in.npz --method feature-squeeze --chunk 1 --out out.npz"
    real_write = imageio.write_npz
    writes = []

    def dies_on_third_chunk(path, **arrays):
        writes.append(path)
        if len(writes) == 3:
            raise Interrupted()  # what Ctrl-C raises, while chunk 2 is written
        real_write(path, **arrays)

    monkeypatch.setattr(imageio, "write_npz", dies_on_third_chunk)
    code, _, err = pxd_main(args, capsys)
    assert code == 130, (code, err)
    assert err.strip().splitlines()[-1].startswith("pxd: interrupted"), err
    monkeypatch.setattr(imageio, "write_npz", real_write)
    chunk0 = "out.npz.partial/chunk_00000.npz"
    blob = open(chunk0, "rb").read()
    if damage == "truncated":
        open(chunk0, "wb").write(blob[: len(blob) // 2])
    elif damage == "flipped":
        b = bytearray(blob)
        b[len(b) // 2] ^= 0xFF
        open(chunk0, "wb").write(bytes(b))
    elif damage == "empty":
        open(chunk0, "wb").close()
    elif damage == "garbage":
        open(chunk0, "wb").write(b"PK\x03\x04" + b"\0" * 100)
    elif damage == "wrong_shape":
        np.savez(chunk0, x=x[:2], eps=np.zeros(2, np.int32))
    elif damage == "wrong_members":
        np.savez(chunk0, images=x[:1])
    calls = []
    real_fs = pxd.api.feature_squeeze
    monkeypatch.setattr(pxd.api, "feature_squeeze",
                        lambda xc: calls.append(len(xc)) or real_fs(xc))
    code, _, err = pxd_main(args + " --resume", capsys)
    assert code == 0, err
    assert calls == [1, 1]  # chunk 0 (damaged) and chunk 2 (never written); chunk 1 kept
    with np.load("out.npz") as z:
        np.testing.assert_array_equal(z["x"], real_fs(x))
    assert sorted(os.listdir(".")) == ["in.npz", "out.npz"]


# --------------------------------------------------------------------------- a full disk


@pytest.mark.parametrize("cmd,path", [
    ("purify in.npz --method feature-squeeze --out o/out.npz", "o/out.npz.partial/chunk_0"),
    ("attack in.npz --attack fgsm --out o/adv.npz", "o/adv.npz"),
])
def test_full_disk_is_one_line_naming_the_file(tmp_path, cmd, path):
    x = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", x=x)
    os.mkdir(tmp_path / "o")
    # bash's ulimit -f counts KiB: files of at most 4096 bytes (Python ignores SIGXFSZ, so
    # writing more fails with EFBIG, as on a full disk with ENOSPC)
    r = subprocess.run(["bash", "-c", f"ulimit -f 4 && exec {shlex.join(PXD)} {cmd} --quiet"],
                       capture_output=True, text=True, cwd=tmp_path,
                       env=dict(os.environ, JAX_NUM_CPU_DEVICES="1"))
    line = one_error_line(r.returncode, r.stderr, "File too large")
    assert f"cannot write {path}" in line
    assert os.listdir(tmp_path / "o") == []  # no output, no partial folder, no temp file


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cifar):
    """A density run with checkpoints at steps 10 and 20, made once; tests edit copies."""
    from pxd.commands.train import run_train_density
    from pxd.configs.pixelcnn import density_config

    out = str(tmp_path_factory.mktemp("ckpt") / "run")
    run_train_density(density_config("cifar10", "smoke", steps=20), out, data_dir=cifar)
    assert checkpoint.saved_steps(out) == [10, 20]
    return out, cifar


RESUME = ("train-density --preset smoke --steps {steps} --quiet --resume --out {run} "
          "--data-dir {data}")


@pytest.mark.parametrize("damage,needle", [
    ("latest_abc", "ckpt/LATEST holds 'abc', not a step number; write a saved step (10, 20)"),
    ("latest_empty", "not a step number"),
    ("latest_missing_step", "LATEST names step 40, but ckpt/step_40 is missing; write an "
                            "older step (10, 20)"),
    ("truncated", "the checkpoint is damaged"),
])
def test_broken_checkpoint_on_resume_is_one_line_with_advice(smoke_run, tmp_path, capsys,
                                                             damage, needle):
    src, data = smoke_run
    run = str(tmp_path / "run")
    shutil.copytree(src, run)
    latest = os.path.join(run, "ckpt", "LATEST")
    if damage == "latest_abc":
        open(latest, "w").write("abc\n")
    elif damage == "latest_empty":
        open(latest, "w").close()
    elif damage == "latest_missing_step":
        open(latest, "w").write("40")
    else:  # the largest file of step_20, cut short
        step = os.path.join(run, "ckpt", "step_20")
        big = max((os.path.join(r, f) for r, _, fs in os.walk(step) for f in fs),
                  key=os.path.getsize)
        os.truncate(big, 10)
    before = tree(run)
    code, _, err = pxd_main(RESUME.format(steps=30, run=run, data=data), capsys)
    line = one_error_line(code, err, needle)
    assert f"delete {run} to start over" in line
    assert tree(run) == before


def test_a_run_stopped_before_its_first_checkpoint_starts_again(smoke_run, tmp_path, capsys):
    _, data = smoke_run
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(os.path.join(smoke_run[0], "config.json"), run)  # all a Ctrl-C left
    for extra in ("--resume", ""):
        code, _, err = pxd_main(f"train-density --preset smoke --steps 2 --out {run} "
                                f"--data-dir {data} {extra}", capsys)
        assert code == 0, err
        assert "stopped before its first checkpoint: starting it again" in err
        assert checkpoint.saved_steps(str(run)) == [2]
        shutil.rmtree(run / "ckpt")


def test_unfinished_saves_are_ignored_and_removed(smoke_run, tmp_path, capsys):
    src, data = smoke_run
    run = str(tmp_path / "run")
    shutil.copytree(src, run)
    junk = os.path.join(run, "ckpt", "step_30.orbax-checkpoint-tmp-1764626400")
    os.makedirs(junk)
    open(os.path.join(junk, "half"), "w").write("x")
    assert checkpoint.saved_steps(run) == [10, 20]
    code, _, err = pxd_main(RESUME.format(steps=22, run=run, data=data), capsys)
    assert code == 0, err
    assert sorted(os.listdir(os.path.join(run, "ckpt"))) == ["LATEST", "step_20", "step_22"]


def test_ctrl_c_during_a_save_waits_for_it(tmp_path, monkeypatch):
    """SIGINT in the middle of orbax's save: the save completes, LATEST points at it, no
    temporary folder stays, and the interrupt is raised once the save is done."""
    real = checkpoint._checkpointer
    sent = []

    class SignalledMidSave:
        def __init__(self):
            self.inner = real()

        def save(self, path, state):
            os.kill(os.getpid(), signal.SIGINT)
            sent.append(1)
            self.inner.save(path, state)

        def wait_until_finished(self):
            self.inner.wait_until_finished()

    monkeypatch.setattr(checkpoint, "_checkpointer", SignalledMidSave)
    state = {"w": np.arange(6, dtype=np.float32), "step": np.array(7, np.int32)}
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save_state(str(tmp_path), 7, state)
    finally:
        signal.signal(signal.SIGINT, old)
    assert sent == [1]
    monkeypatch.setattr(checkpoint, "_checkpointer", real)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["LATEST", "step_7"]
    step, back = checkpoint.restore_state(str(tmp_path), state)
    assert step == 7 and np.array_equal(back["w"], state["w"])


def test_cli_adaptive_threshold_at_the_top_score_purifies_nothing(tmp_path, monkeypatch,
                                                                  capsys):
    """`purify --adaptive-threshold T` leaves images scoring at or below T unchanged, as
    the API does; at exactly the highest score, no image is purified (cheap: no purifier
    runs), so a `>=` in place of `>` shows."""
    monkeypatch.chdir(tmp_path)
    x = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.savez("in.npz", x=x)
    top = float(pxd.bits_per_dim(x).max())  # the default density, as purify's
    code, out, err = pxd_main(["purify", "in.npz", "--adaptive-threshold", repr(top),
                               "--out", "o.npz", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["purified_images"] == 0
    with np.load("o.npz") as z:
        np.testing.assert_array_equal(z["x"], x)
        np.testing.assert_array_equal(z["eps"], [0, 0])


def test_score_detection_figures_point_the_right_way(cifar, tmp_path, monkeypatch, capsys):
    """Uniform noise against clean CIFAR-10 under the shipped PixelCNN: every noise image
    scores above every clean one, so ROC AUC is exactly 1 and every p-value exactly 0 (a
    swapped argument gives 0 and 1; `0 <= auc <= 1` alone let that through)."""
    monkeypatch.chdir(tmp_path)
    np.savez("noise.npz", x=RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    code, out, err = pxd_main(["score", "noise.npz", "--reference", "cifar10:test[:6]",
                               "--data-dir", cifar, "--json"], capsys)
    assert code == 0, err
    entry = json.loads(out)["inputs"]["noise.npz"]
    assert entry["roc_auc"] == 1.0 and entry["p_values"] == [0.0, 0.0, 0.0]
