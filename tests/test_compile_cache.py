"""The persistent compilation cache (`pxd.engine.compile_cache`): one folder per runtime and
machine, off when asked or when the folder cannot be made, and damaged entries change
neither the arrays nor the one line on stderr."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from pxd.engine import compile_cache


def test_folder_per_runtime_and_machine(monkeypatch):
    import jax

    a = compile_cache.folder("/base")
    assert a == compile_cache.folder("/base") and a.startswith("/base/")
    monkeypatch.setattr(compile_cache, "_cpu_fingerprint", lambda: "model name: other\nflags: x")
    b = compile_cache.folder("/base")
    monkeypatch.setattr(jax, "__version__", "0.0.0")
    c = compile_cache.folder("/base")
    assert len({a, b, c}) == 3


def test_off_unasked_and_unwritable(monkeypatch, tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    for raw, default_on in (("off", True), ("0", True), ("", False)):
        monkeypatch.setenv(compile_cache.ENV, raw)
        assert compile_cache.enable(default_on=default_on) is None
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(compile_cache.ENV, str(blocker / "cache"))
    assert compile_cache.enable(default_on=True) is None
    assert jax.config.jax_compilation_cache_dir == before


def test_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_base() == str(tmp_path / "pxd" / "xla")


def test_cli_damaged_entries_same_arrays_same_stderr(tmp_path, cifar):
    """Three `pxd attack` runs on one cache folder: empty (entries written), then every
    entry truncated to half (JAX fails to read them and compiles), then as left. The same
    images each time, and with -q stderr is the command's one line, exit 0. The variable
    is unset: the CLI uses the cache by default, in $XDG_CACHE_HOME/pxd/xla."""
    cache = tmp_path / "pxd" / "xla"
    env = {k: v for k, v in os.environ.items() if k != "PXD_COMPILATION_CACHE"}
    env.update(XDG_CACHE_HOME=str(tmp_path), JAX_NUM_CPU_DEVICES="1", PXD_DATA_DIR=cifar)
    outs = []
    for run in range(3):
        out = tmp_path / f"a{run}.npz"
        r = subprocess.run([sys.executable, "-m", "pxd", "attack", "cifar10:test[:4]",
                            "--attack", "fgsm", "--eps-attack", "8", "--out", str(out), "-q"],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stderr == f"attacked 4 images: wrote {out}\n", r.stderr  # its one line
        with np.load(out) as z:
            outs.append(z["x"])
        entries = glob.glob(str(cache / "*" / "*-cache"))
        if run == 0:
            assert entries, "the CLI wrote no cache entries"
            for e in entries:
                data = open(e, "rb").read()
                open(e, "wb").write(data[: len(data) // 2])
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("raw", ["on", "1"])
def test_api_on_when_asked(monkeypatch, tmp_path, raw):
    """The API's call (default off) turns the cache on when the variable says so; JAX's
    config is recorded, not changed, so this worker's later compiles stay as they were."""
    import jax

    seen = {}
    monkeypatch.setattr(jax.config, "update", lambda k, v: seen.__setitem__(k, v))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv(compile_cache.ENV, raw)
    path = compile_cache.enable(default_on=False)
    assert path is not None and path.startswith(str(tmp_path / "pxd" / "xla"))
    assert os.path.isdir(path) and seen["jax_compilation_cache_dir"] == path
