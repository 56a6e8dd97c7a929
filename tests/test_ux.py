"""A new user's first hour: the README's commands verbatim, and a corpus of bad inputs that
must each give exit 2, one `pxd: error:` line saying what to do, and no file left behind.

The corpus runs in-process (`pxd.cli.main`) on files it makes, with the shipped models:
no dataset needed, and every error is found before any heavy work.
"""

from __future__ import annotations

import os
import pickle
import shlex
import subprocess
import sys
import warnings

import numpy as np
import pytest

from pxd import cli
from pxd.storage import imageio

RNG = np.random.default_rng(0)


def pxd_main(args: list[str] | str, capsys) -> tuple[int, str, str]:
    """Run `pxd ARGS` in this process; (exit code, stdout, stderr)."""
    if isinstance(args, str):
        args = shlex.split(args)
    with warnings.catch_warnings(), pytest.raises(SystemExit) as e:
        cli.main(args)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def tree(*dirs) -> set[str]:
    found = set()
    for d in dirs:
        for root, sub, files in os.walk(d):
            found.update(os.path.join(root, n) for n in sub + files)
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad inputs, made once."""
    d = tmp_path_factory.mktemp("inputs")
    good = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    p = lambda name: str(d / name)  # noqa: E731
    np.savez(p("good.npz"), x=good, y=np.array([1, 2]))
    open(p("empty.npz"), "wb").close()
    with open(p("good.npz"), "rb") as f:
        blob = f.read()
    with open(p("truncated.npz"), "wb") as f:
        f.write(blob[: len(blob) // 2])
    with open(p("pickled.npz"), "wb") as f:
        pickle.dump({"x": good}, f)
    with open(p("text.npz"), "w") as f:
        f.write("x,y\n1,2\n")
    np.save(p("objects.npy"), np.array([good, None], dtype=object), allow_pickle=True)
    np.savez(p("unit_float.npz"), x=good / 255.0)
    nan = good.astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.savez(p("nan.npz"), x=nan)
    np.savez(p("range.npz"), x=good.astype(np.int16) + 100)
    np.savez(p("strings.npz"), x=good.astype(str))
    np.save(p("rank2.npy"), good[0, :, :, 0])
    np.save(p("one_image.npy"), good[0])
    np.save(p("nchw.npy"), good.transpose(0, 3, 1, 2).copy())
    np.save(p("no_images.npy"), good[:0])
    np.savez(p("bad_labels.npz"), x=good, y=np.array([1, 2, 3]))
    np.savez(p("no_x.npz"), images_typo=good)
    np.savez(p("fmnist.npz"), x=RNG.integers(0, 256, (2, 28, 28, 1), dtype=np.uint8))
    os.mkdir(p("empty_folder"))
    os.mkdir(p("folder.npz"))
    os.mkdir(p("mixed_folder"))
    imageio.write_png(p("mixed_folder/a.png"), good[0])
    imageio.write_png(p("mixed_folder/b.png"), good[0, :16])
    os.mkdir(p("corrupt_folder"))
    with open(p("corrupt_folder/a.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with open(p("notes.txt"), "w") as f:
        f.write("not images")
    os.mkdir(p("not_a_run"))
    return d


# (args with {d} for the inputs folder, a word the error must contain)
CORPUS = [
    # usage errors, every command
    ("purify", "Missing argument"),
    ("attack", "Missing argument"),
    ("score", "Missing argument"),
    ("train-density", "Missing option '--out'"),
    ("train-clf", "Missing option '--out'"),
    ("bench --bogus", "No such option"),
    ("zoo --bogus", "No such option"),
    ("frobnicate", "No such command"),
    ("purify {d}/good.npz --eps abc", "--eps"),
    ("purify {d}/good.npz --eps 300", "--eps"),
    ("purify {d}/good.npz --chunk 0", "--chunk"),
    ("score {d}/good.npz --batch-size 0", "--batch-size"),
    ("attack {d}/good.npz --eps-attack -1", "--eps-attack"),
    ("attack {d}/good.npz --steps 0 --attack bim", "--steps"),
    ("bench --n 0", "--n"),
    ("bench --eps-attack 2,x", "--eps-attack"),
    ("train-density --out {d}/r --steps 0", "--steps"),
    ("train-clf --out {d}/r --epochs -1", "--epochs"),
    ("score {d}/good.npz --devices 0", "--devices"),
    # unknown names
    ("purify {d}/good.npz --method magic", "method"),
    ("attack {d}/good.npz --attack nope", "unknown attack"),
    ("train-density --out {d}/r --preset huge", "preset"),
    ("train-density --out {d}/r --dataset mnist", "dataset"),
    ("train-clf --out {d}/r --arch mlp", "arch"),
    ("train-clf --out {d}/r --training weird", "training"),
    ("bench --defense magic", "defence"),
    ("bench --attack-opt cw.nope=1", "option"),
    ("score cifar10:validation", "split"),
    ("zoo --export {d}/not_a_run", "--name"),
    ("zoo --export {d}/not_a_run --name x", "not a pxd run directory"),
    # files
    ("purify {d}/empty.npz", "empty file"),
    ("purify {d}/truncated.npz", "not a readable numpy file"),
    ("purify {d}/pickled.npz", "pickled"),
    ("purify {d}/text.npz", "text, not a numpy"),
    ("score {d}/objects.npy", "Python objects"),
    ("purify {d}/unit_float.npz", "multiply [0,1] floats by 255"),
    ("purify {d}/nan.npz", "NaN"),
    ("score {d}/range.npz", "outside 0..255"),
    ("score {d}/strings.npz", "dtype"),
    ("score {d}/rank2.npy", "expected (N,H,W)"),
    ("purify {d}/one_image.npy", "add a batch axis"),
    ("score {d}/nchw.npy", "channels"),
    ("score {d}/no_images.npy", "no images"),
    ("attack {d}/bad_labels.npz", "3 labels for 2 images"),
    ("purify {d}/no_x.npz", "no image array named 'x'"),
    ("score {d}/empty_folder", "holds no PNG/JPEG"),
    ("score {d}/mixed_folder", "all images must be one size"),
    ("purify {d}/corrupt_folder", "corrupt image"),
    ("purify {d}/notes.txt", "unsupported file type"),
    ("purify {d}/missing.npz", "no such file"),
    # models of the wrong kind or dataset
    ("purify {d}/good.npz --density resnet-c10-normal", "is a classifier"),
    ("attack {d}/good.npz --clf pixelcnn-c10-cpu", "is a density model"),
    ("attack {d}/good.npz --clf resnet-c10-typo", "shipped:"),
    ("score {d}/good.npz --density {d}/not_a_run", "not found"),
    ("purify {d}/fmnist.npz --density pixelcnn-c10-cpu", "trained on cifar10"),
    ("attack {d}/fmnist.npz --clf resnet-c10-normal", "trained on cifar10"),
    # outputs that cannot be written (for root too: under a file, or in /proc)
    ("purify {d}/good.npz --out {d}/good.npz/out.npz", "not a folder"),
    ("purify {d}/good.npz --out /proc/pxd-test/out.npz", "cannot write"),
    ("purify {d}/good.npz --out {d}/out.txt", ".npz"),
    ("purify {d}/good.npz --out {d}/folder.npz", "is a folder"),
    ("purify {d}/good.npz --grid /proc/pxd-test/g.png", "--grid"),
    ("attack {d}/good.npz --out /proc/pxd-test/adv.npz", "cannot write"),
    ("score {d}/good.npz --plot {d}/good.npz/plots", "not a folder"),
    ("train-density --preset smoke --out /proc/pxd-test/run", "cannot write"),
    ("train-clf --preset smoke --out {d}/good.npz/run", "not a folder"),
    ("bench --out /proc/pxd-test/bench", "cannot write"),
    ("bench --speed --out {d}/good.npz/speed.json", "not a folder"),
]


def test_corpus_is_large_and_covers_every_command():
    assert len(CORPUS) >= 40
    cmds = {args.split()[0] for args, _ in CORPUS}
    assert {"purify", "attack", "score", "train-density", "train-clf", "bench", "zoo"} <= cmds


@pytest.mark.parametrize("args,needle", CORPUS, ids=[a for a, _ in CORPUS])
def test_bad_input_is_one_line_exit_2_no_output(files, tmp_path, monkeypatch, capsys,
                                                args, needle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PXD_DATA_DIR", raising=False)
    before = tree(files, tmp_path)
    code, out, err = pxd_main(args.format(d=files), capsys)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("pxd: error: "), err
    assert needle in lines[0], lines[0]
    assert tree(files, tmp_path) == before  # nothing written, not even a temp file


def test_usage_errors_need_no_click(capsys, monkeypatch):
    """typer >= 0.29 vendors click; the handler must not import it."""
    monkeypatch.setitem(sys.modules, "click", None)  # `import click` now fails
    code, _, err = pxd_main("purify in.npz --eps 16 --bogus", capsys)
    assert code == 2 and err.startswith("pxd: error: No such option: --bogus")


def test_third_party_logs_stay_off_the_terminal(tmp_path):
    """No absl/tfds line before the one-line error (here: Fashion-MNIST found nowhere,
    so the tfds fallback is imported and fails)."""
    env = dict(os.environ, PXD_FASHION_MNIST_DIR=str(tmp_path / "none"), HTTPS_PROXY="")
    env.pop("PXD_DATA_DIR", None)
    r = subprocess.run([sys.executable, "-m", "pxd", "score", "fashion_mnist:test[:2]",
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pxd: error: fashion_mnist not found"), \
        r.stderr


# --------------------------------------------------------------------------- README examples


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x = RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.savez("in.npz", x=x)
    imageio.write_image_folder("images", x)
    return x


def test_readme_purify_verbatim(user_dir, capsys):
    code, out, err = pxd_main("purify in.npz --eps 16", capsys)
    assert code == 0, err
    assert "wrote in.purified.npz" in err
    with np.load("in.purified.npz", allow_pickle=False) as z:
        assert np.array_equal(z["x_input"], user_dir)
        d = np.abs(z["x"].astype(int) - user_dir.astype(int))
        assert d.max() <= 16 and d.max() > 0 and (z["eps"] == 16).all()
    assert sorted(os.listdir(".")) == ["images", "in.npz", "in.purified.npz"]


def test_readme_score_verbatim(user_dir, capsys):
    code, out, err = pxd_main("score images/ --bpd", capsys)
    assert code == 0, err
    code, js, _ = pxd_main("score images/ --bpd --json", capsys)
    import json

    mean = json.loads(js)["inputs"]["images/"]["mean"]
    assert mean > 8.0  # uniform noise: no model codes it in under 8 bits per sub-pixel
    row = next(ln for ln in out.splitlines() if "images/" in ln)
    assert f"{mean:.4g}" in row


def test_attack_defaults_to_the_zoo_classifier(user_dir, capsys):
    code, out, err = pxd_main("attack in.npz --attack fgsm --eps-attack 8", capsys)
    assert code == 0, err
    assert "wrote in.fgsm-eps8.npz" in err
    with np.load("in.fgsm-eps8.npz", allow_pickle=False) as z:
        d = np.abs(z["x"].astype(int) - user_dir.astype(int))
        assert d.max() == 8  # FGSM moves every pixel it can by the full budget


def test_readme_bench_example_tiny(tmp_path, monkeypatch, capsys, cifar):

    monkeypatch.setenv("PXD_DATA_DIR", cifar)
    monkeypatch.chdir(tmp_path)
    code, out, err = pxd_main("bench --attack bim --eps-attack 8 --n 2 --adaptive-n 1 "
                              "--adaptive-steps 1 --defense none,pixeldefend", capsys)
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("report: bench-out/report.md") and "bench-out/acc_vs_eps" in last
    assert os.path.isfile("bench-out/report.md")
    for ln in out.splitlines():
        assert len(ln) <= 80, ln  # fits an 80-column log, nothing cut
    assert "…" not in out


def test_tables_stack_instead_of_cutting_cells(capsys, monkeypatch):
    from pxd.report.terminal import Reporter

    monkeypatch.setenv("COLUMNS", "80")
    cols = ["row", "CLEAN", "RAND", "FGSM", "BIM", "DEEPFOOL", "CW", "STRONGEST", "WORST/IMG"]
    rows = [["ResNet Normal + Adaptive PixelDefend"] + ["81/81/81"] * 8]
    Reporter().table("t", cols, rows)
    out = capsys.readouterr().out
    assert "…" not in out and max(len(ln) for ln in out.splitlines()) <= 80
    assert out.count("81/81/81") == 8 and "ResNet Normal + Adaptive PixelDefend" in out
    Reporter().table("small", ["quantity", "value"], [["n", 4]])
    assert "┃ quantity ┃ value ┃" in capsys.readouterr().out  # fits: a real table


def test_progress_in_a_log_has_an_eta(capsys, monkeypatch):
    from pxd.report.terminal import Reporter

    monkeypatch.setenv("PXD_PROGRESS_SECONDS", "0")
    with Reporter().progress("purify", total=4) as advance:
        for _ in range(4):
            advance(1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("purify: 1/4 (25%)") and "ETA" in lines[0]
    assert lines[-1].startswith("purify: 4/4 (100%)") and lines[-1].endswith("done")
