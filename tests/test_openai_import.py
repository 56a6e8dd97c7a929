"""`pxd zoo --import-openai`: openai/pixel-cnn checkpoints written by TensorFlow from OpenAI's
own code (tests/fixtures/openai, figures.json says how) give, under pxd, the bits/dim that
OpenAI's discretized_mix_logistic_loss gave them; broken inputs get one-line errors."""

import json
import os
import shutil
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pxd
from pxd.commands.zoo import run_zoo_import_openai
from pxd.core.likelihood import make_bpd_fn
from pxd.core.purify import auto_method, first_difference_gaps, make_purifier
from pxd.errors import PxdError
from pxd.models.pixelcnn import build_model
from pxd.storage import openai, tfckpt

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "openai")
FIG = json.load(open(os.path.join(FIX, "figures.json")))["models"]
TOL = 1e-3  # bits/dim


def images() -> np.ndarray:
    """figures.json's "images" recipe."""
    rng = np.random.default_rng(1234)
    a = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    return np.concatenate([a, np.repeat(np.repeat(b, 4, axis=1), 4, axis=2)])


def ckpt(name: str, fmt: str) -> str:
    return os.path.join(FIX, FIG[name]["checkpoints"][fmt])


# ------------------------------------------------------------------ a V2 writer for crafting


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(num: int, payload, wt: int = 2) -> bytes:
    if wt == 0:
        return _varint(num << 3) + _varint(payload)
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1) + b"\0" * 5  # one restart; type 0, crc unchecked


def write_v2(prefix: str, tensors: dict[str, np.ndarray]) -> None:
    """A V2 checkpoint as TensorFlow lays it out (one shard, uncompressed blocks)."""
    data, entries = bytearray(), [(b"", _field(1, 1, 0) + _field(3, _field(1, 1, 0)))]
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name], "<f4")
        shape = b"".join(_field(2, _field(1, d, 0)) for d in a.shape)
        entry = _field(1, 1, 0) + _field(2, shape) + _field(4, len(data), 0) \
            + _field(5, a.nbytes, 0)
        entries.append((name.encode(), entry))
        data += a.tobytes()
    blk = _block(entries)
    meta = _block([])
    index = _block([(entries[-1][0], _varint(0) + _varint(len(blk) - 5))])
    handles = _varint(len(blk)) + _varint(len(meta) - 5) + _varint(len(blk) + len(meta)) \
        + _varint(len(index) - 5)
    footer = handles.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57)
    with open(prefix + ".index", "wb") as f:
        f.write(blk + meta + index + footer)
    with open(prefix + ".data-00000-of-00001", "wb") as f:
        f.write(bytes(data))


def tensors_of(path: str) -> dict[str, np.ndarray]:
    ck = tfckpt.Checkpoint(path)
    return {n: ck.read(n) for n in ck.shapes}


# ------------------------------------------------------------------ reading


def test_v1_and_v2_hold_the_same_tensors():
    v1, v2 = tfckpt.Checkpoint(ckpt("f4r1m3", "v1")), tfckpt.Checkpoint(ckpt("f4r1m3", "v2"))
    assert (v1.format, v2.format) == ("V1", "V2")
    adam = {n for n in v2.shapes if n.startswith("Variable")}
    assert len(v2.shapes) == FIG["f4r1m3"]["tf_variables"] and adam  # Adam slots kept in V2
    assert set(v1.shapes) == set(v2.shapes) - adam
    for n in v1.shapes:
        assert v1.shapes[n] == v2.shapes[n]
        np.testing.assert_array_equal(v1.read(n), v2.read(n))
    g = v2.read("model/conv2d_0/g")
    assert g.shape == (4,) and not np.array_equal(g, v2.read("model/conv2d_0/g" + openai.EMA))


def test_written_v2_reads_back(tmp_path):
    t = {"a/b": np.arange(6, dtype=np.float32).reshape(2, 3), "c": np.float32([1.5])}
    write_v2(str(tmp_path / "x"), t)
    back = tensors_of(str(tmp_path / "x"))
    assert set(back) == set(t) and all(np.array_equal(back[k], t[k]) for k in t)


def test_layer_table_of_the_released_model():
    spec = openai.layers(160, 5, 10)
    n = sum(int(np.prod(d["shape"])) + 2 * d["shape"][-1] for d in spec)
    assert 3 * len(spec) == 567 and n == 53_659_080  # FINDINGS: 567 tensors, ~53.7M
    shapes = {d["name"] + "/V": d["shape"] for d in spec}
    shapes["model/conv2d_0/V"] = (2, 3, 4, 160)
    assert openai.infer_sizes(shapes) == (160, 5, 10)


# ------------------------------------------------------------------ exactness


@pytest.mark.parametrize("name,fmt", [("f4r1m3", "v1"), ("f4r1m3", "v2"), ("f4r2m5", "v2")])
def test_import_gives_openai_bits_per_dim(tmp_path, name, fmt):
    out = str(tmp_path / "imported")
    card = run_zoo_import_openai(ckpt(name, fmt), out)
    fig = FIG[name]
    d = pxd.load_density(out)
    bpd = np.asarray(pxd.bits_per_dim(images(), density=d))
    np.testing.assert_allclose(bpd, fig["bpd_ema"], atol=TOL, rtol=0)
    # the EMA weights, not the raw ones: those score measurably differently
    assert np.min(np.abs(np.asarray(fig["bpd_raw"]) - fig["bpd_ema"])) > 20 * TOL
    assert card["source"]["format"] == fmt.upper() and card["source"]["weights"] == "EMA"
    assert (d.model.nr_filters, d.model.nr_resnet, d.model.nr_mix) == (
        fig["nr_filters"], fig["nr_resnet"], fig["nr_logistic_mix"])
    src = {f["file"]: f["sha256"] for f in card["source"]["files"]}
    assert src and all(fig["sha256"][f] == h for f, h in src.items())
    assert "--import-openai" in card["import_command"] and card["imported"]
    assert sorted(os.listdir(out)) == ["card.json", "config.json", "meta.json", "params.msgpack"]


def test_without_ema_shadows_the_raw_weights_are_used(tmp_path):
    t = {n: a for n, a in tensors_of(ckpt("f4r1m3", "v2")).items() if not n.endswith(openai.EMA)}
    write_v2(str(tmp_path / "raw"), t)
    card = run_zoo_import_openai(str(tmp_path / "raw"), str(tmp_path / "out"))
    bpd = np.asarray(pxd.bits_per_dim(images(), density=str(tmp_path / "out")))
    np.testing.assert_allclose(bpd, FIG["f4r1m3"]["bpd_raw"], atol=TOL, rtol=0)
    assert card["source"]["weights"].startswith("raw")


def _bpd(path: str, **options) -> np.ndarray:
    params, sizes, _ = openai.read_params(tfckpt.Checkpoint(path))
    model = build_model(dict(openai.model_options(*sizes), **options), 3)
    return np.asarray(make_bpd_fn(model)(params, jnp.asarray(images())))


def _no_flip(kind, v, g, b):
    w, bias = _fold(kind, v, g, b)
    return (w[::-1, ::-1] if kind == "deconv2d" else w), bias


def _bias_kept(d, kernel, bias, nr_mix):
    if d["role"] in ("u_in", "ul_in_v", "ul_in_h"):
        k, _ = _convert(d, kernel, np.zeros_like(bias), nr_mix)
        return k, bias
    return _convert(d, kernel, bias, nr_mix)


def _head_unordered(d, kernel, bias, nr_mix):
    return (kernel, bias) if d["role"] == "head" else _convert(d, kernel, bias, nr_mix)


_fold, _convert = openai.fold, openai.convert


@pytest.mark.parametrize("mutant", ["deconv not flipped", "bias on the padding",
                                    "head in OpenAI's order", "skips outputs",
                                    "mixture per channel"])
def test_each_agreement_matters(monkeypatch, mutant):
    # every place where the two networks are written differently changes the likelihood
    # when the importer stops bridging it: the fixture test would catch a drift
    options = {}
    if mutant == "deconv not flipped":
        monkeypatch.setattr(openai, "fold", _no_flip)
    elif mutant == "bias on the padding":
        monkeypatch.setattr(openai, "convert", _bias_kept)
    elif mutant == "head in OpenAI's order":
        monkeypatch.setattr(openai, "convert", _head_unordered)
    else:
        options = {"skips outputs": {"skips": "outputs"},
                   "mixture per channel": {"mixture": "channel"}}[mutant]
    bpd = _bpd(ckpt("f4r2m5", "v2"), **options)
    assert np.max(np.abs(bpd - FIG["f4r2m5"]["bpd_ema"])) > TOL  # the fixture test's bound


def test_joint_mixture_logits_match_its_closed_form():
    model = build_model(dict(openai.model_options(4, 1, 3)), 3)
    params, _, _ = openai.read_params(tfckpt.Checkpoint(ckpt("f4r1m3", "v2")))
    x = jnp.asarray(images()[:2])
    exact = np.asarray(make_bpd_fn(model, exact=True)(params, x))
    np.testing.assert_allclose(exact, FIG["f4r1m3"]["bpd_ema"][:2], atol=TOL, rtol=0)
    np.testing.assert_allclose(exact, np.asarray(make_bpd_fn(model)(params, x)), atol=1e-4)


def test_imported_model_purifies_exactly_on_the_unet_path():
    params, sizes, _ = openai.read_params(tfckpt.Checkpoint(ckpt("f4r1m3", "v1")))
    model = build_model(openai.model_options(*sizes), 3)
    assert auto_method(model) == "unet"
    x = images()[[0, 5], :8, :8]
    e = jnp.full((2,), 8, jnp.int32)
    ref = np.asarray(make_purifier(model, "reference")(params, x, e))
    out = np.asarray(make_purifier(model, "auto", max_eps=8)(params, x, e))
    if not np.array_equal(ref, out):
        assert max(first_difference_gaps(model, params, x, ref, out, 8)) < 1e-4
    assert not np.array_equal(ref, x)


# ------------------------------------------------------------------ bad input


def _crafted(tmp_path, case: str) -> str:
    src = tensors_of(ckpt("f4r1m3", "v2"))
    p = str(tmp_path / "bad")
    if case == "missing":
        src = {n: a for n, a in src.items() if not n.startswith("model/dense_2/")}
    elif case == "extra":
        src["model/dense_99/V"] = np.zeros((8, 4), np.float32)
    elif case == "shape":
        src["model/conv2d_5/V"] = src["model/conv2d_5/V"][:1]
    elif case == "conditional":
        src["model/conditional_weights_0/hw"] = np.zeros((10, 8), np.float32)
    elif case == "partial ema":
        del src["model/dense_0/b" + openai.EMA]
    elif case == "not pixelcnn":
        src = {"resnet/conv/kernel": np.zeros((3, 3, 3, 8), np.float32)}
    if case in ("missing", "extra", "shape", "conditional", "partial ema", "not pixelcnn"):
        write_v2(p, src)
        return p
    if case == "empty":
        open(p, "wb").close()
    elif case == "truncated v1":
        blob = open(ckpt("f4r1m3", "v1"), "rb").read()
        open(p, "wb").write(blob[: len(blob) // 2])
    elif case == "truncated shard":
        write_v2(p, src)
        with open(p + ".data-00000-of-00001", "r+b") as f:
            f.truncate(1000)
    elif case == "missing shard":
        shutil.copy(ckpt("f4r1m3", "v2") + ".index", p + ".index")
    elif case == "no checkpoint in folder":
        os.makedirs(p)
        open(os.path.join(p, "notes.txt"), "w").write("x")
    elif case == "text file":
        open(p, "w").write("not a checkpoint\n" * 10)
    return p


BAD = {
    "missing": "model/dense_2/V is missing",
    "extra": "unexpected variable model/dense_99/V",
    "shape": "model/conv2d_5/V has shape",
    "conditional": "class-conditional",
    "partial ema": "EMA weights for only",
    "not pixelcnn": "no model/conv2d_0/V",
    "empty": "is empty",
    "truncated v1": "truncated",
    "truncated shard": "data shard 0 is truncated",
    "missing shard": "data shard bad.data-00000-of-00001 is missing",
    "no checkpoint in folder": "holds no checkpoint",
    "text file": "not a TensorFlow checkpoint",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoints_are_named_and_leave_nothing(tmp_path, case):
    p = _crafted(tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(PxdError, match=BAD[case]):
        run_zoo_import_openai(p, str(out))
    assert not out.exists() and not (tmp_path / "out.tmp").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out.")]  # its temp folder


def test_a_users_dest_tmp_folder_is_left_alone(tmp_path):
    """The import writes into a fresh hidden folder beside --out, never into OUT.tmp, which
    may be the user's own (it used to be emptied first)."""
    mine = tmp_path / "m.tmp"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    run_zoo_import_openai(ckpt("f4r1m3", "v1"), str(tmp_path / "m"))
    assert (mine / "keep.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["m", "m.tmp"]


def test_cli_one_line_error_exit_2(tmp_path):
    p = _crafted(tmp_path, "conditional")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "pxd", "zoo", "--import-openai", p, "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pxd: error: ") and "conditional" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("imports,extra,says", [
    (True, ["--name", "x"], "does not take --name"),
    (True, ["--export", "d", "--with-state"], "does not take --export, --with-state"),
    (True, ["--overwrite"], "does not take --overwrite"),
    (False, [], "--out is for --import-openai"),
])
def test_cli_import_refuses_flags_it_would_ignore(tmp_path, imports, extra, says):
    """--name, --export, --with-state ... mean nothing to an import: refused, not ignored."""
    out = str(tmp_path / "out")
    args = (["--import-openai", ckpt("f4r1m3", "v1")] if imports else []) + ["--out", out]
    args += extra
    r = subprocess.run([sys.executable, "-m", "pxd", "zoo"] + args, capture_output=True,
                       text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    line = r.stderr.strip()
    assert r.returncode == 2 and line.startswith("pxd: error: ") and line.endswith(says), line
    assert not os.path.exists(out)


def test_cli_import_then_score(tmp_path):
    out = str(tmp_path / "m")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "pxd", "zoo", "--import-openai",
                        ckpt("f4r2m5", "v2"), "--out", out, "--json"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    card = json.loads(r.stdout)
    assert card["import_command"].startswith("pxd zoo --import-openai")
    assert card == json.load(open(os.path.join(out, "card.json")))
    assert jax.tree_util.tree_leaves(pxd.load_density(out).params)
    bpd = np.asarray(pxd.bits_per_dim(images(), density=pxd.load_density(out)))
    np.testing.assert_allclose(bpd, FIG["f4r2m5"]["bpd_ema"], atol=TOL, rtol=0)  # and scores


def test_joint_channel_scores_are_the_logits_up_to_a_constant():
    # the purifier ranks values by channel_scores: under the joint mixture they must be
    # channel c's conditional given channels < c, as the logits are
    from pxd.models.pixelcnn import PixelCNN

    params, sizes, _ = openai.read_params(tfckpt.Checkpoint(ckpt("f4r1m3", "v2")))
    model = build_model(openai.model_options(*sizes), 3)
    v = {"params": params}
    x = jnp.asarray(images()[:1, :4, :4])
    h = model.apply(v, x, method=PixelCNN.features)
    logits = np.asarray(model.apply(v, h, x, method=PixelCNN.logits))
    start = jnp.zeros(x.shape[:3], jnp.int32)
    for c in range(3):
        sc = np.asarray(model.apply(v, h, x, c, start, 256, method=PixelCNN.channel_scores))
        d = sc - logits[..., c, :]
        np.testing.assert_allclose(d - d[..., :1], 0, atol=2e-3)
    # and the weights are the posterior given the earlier channels, not the prior
    per = build_model(dict(openai.model_options(*sizes), mixture="channel"), 3)
    sc_j = np.asarray(model.apply(v, h, x, 2, start, 256, method=PixelCNN.channel_scores))
    sc_p = np.asarray(per.apply(v, h, x, 2, start, 256, method=PixelCNN.channel_scores))
    d = sc_j - sc_p
    assert np.max(np.abs(d - d[..., :1])) > 0.1


def test_a_folder_with_one_checkpoint_and_an_existing_out(tmp_path):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for f in os.listdir(FIX):
        if f.startswith("f4r1m3_v2.ckpt"):
            shutil.copy(os.path.join(FIX, f), folder / f)
    card = run_zoo_import_openai(str(folder), str(tmp_path / "a"))
    assert card["source"]["format"] == "V2" and len(card["source"]["files"]) == 2
    # a TensorFlow `checkpoint` state file picks among several
    shutil.copy(ckpt("f4r1m3", "v1"), folder / "other.ckpt")
    with pytest.raises(PxdError, match="2 checkpoints"):
        run_zoo_import_openai(str(folder), str(tmp_path / "b"))
    (folder / "checkpoint").write_text('model_checkpoint_path: "other.ckpt"\n')
    assert run_zoo_import_openai(str(folder), str(tmp_path / "b"))["source"]["format"] == "V1"
    before = sorted(os.listdir(tmp_path / "a"))
    with pytest.raises(PxdError, match="already exists"):
        run_zoo_import_openai(str(folder), str(tmp_path / "a"))
    assert sorted(os.listdir(tmp_path / "a")) == before


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_damaged_bytes_are_one_error_never_a_traceback(tmp_path, fmt):
    """Bytes changed anywhere in a checkpoint's metadata (the V1 file's table, the V2 index)
    give a PxdError naming a file, or read as some checkpoint; never another exception."""
    src = ckpt("f4r1m3", fmt)
    meta = src if fmt == "v1" else src + ".index"
    blob = open(meta, "rb").read()
    rng = np.random.default_rng(1)  # 400 tries: some V2 ones once raised TypeError
    size = len(blob) if fmt == "v2" else min(len(blob), 8192)  # V1: its table sits at the end
    errors = 0
    for t in range(400):
        bad = bytearray(blob)
        lo = 0 if fmt == "v2" else len(blob) - size
        for p in rng.integers(lo, len(blob), int(rng.integers(1, 8))):
            bad[p] = int(rng.integers(0, 256))
        d = tmp_path / f"t{t}"
        d.mkdir()
        p = str(d / "c.ckpt")
        if fmt == "v1":
            open(p, "wb").write(bytes(bad))
        else:
            open(p + ".index", "wb").write(bytes(bad))
            shutil.copy(src + ".data-00000-of-00001", p + ".data-00000-of-00001")
        try:
            ck = tfckpt.Checkpoint(p)
            for name in ck.shapes:
                ck.read(name)
        except PxdError as e:
            errors += 1
            assert "\n" not in str(e) and str(e)
    assert errors > 0  # the damage was seen at least once


def test_unwritable_out_parent_is_found_before_reading(tmp_path, monkeypatch):
    """The hidden folder beside --out is made first, so a parent pxd cannot write in is one
    line before the ~860 MB checkpoint is read (as root, permissions cannot stage this)."""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    def never(*a, **k):
        raise AssertionError("the checkpoint was read before --out was checked")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tfckpt, "Checkpoint", never)
    with pytest.raises(PxdError, match="cannot write in its parent directory"):
        run_zoo_import_openai(ckpt("f4r1m3", "v1"), str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_train_density_fine_tunes_an_imported_model(tmp_path, cifar):
    """`pxd train-density --init-from DIR` on an imported model: the run takes DIR's network
    (OpenAI's wiring and joint mixture, which no preset has), starts at its weights, trains,
    and the result scores like any density model. Without adopting the network the preset's
    is refused, as before."""
    from pxd.commands.train import init_network, run_train_density
    from pxd.configs.pixelcnn import density_config
    from pxd.engine.jobs import initial_params
    from pxd.storage.runs import load_density, params_digest

    src = str(tmp_path / "imported")
    run_zoo_import_openai(ckpt("f4r1m3", "v1"), src)
    cfg = density_config("cifar10", "smoke", init_from=src, steps=2, ckpt_every=2, eval_n=4,
                         batch_size=2)
    with pytest.raises(PxdError, match="same --dataset and --preset"):
        run_train_density(cfg, str(tmp_path / "refused"), data_dir=cifar)
    adopted = init_network(cfg)
    assert adopted.model == load_density(src)[2].model
    p0 = initial_params(adopted, build_model(adopted.model, 3), (32, 32, 3),
                        key=jax.random.key(1))
    assert params_digest(p0) == params_digest(load_density(src)[1])
    out = str(tmp_path / "tuned")
    r = run_train_density(cfg, out, data_dir=cifar, network_from_init=True)
    assert r["step"] == 2 and r["digest"] != params_digest(p0)
    bpd = np.asarray(pxd.bits_per_dim(images(), density=pxd.load_density(out)))
    assert np.isfinite(bpd).all()
