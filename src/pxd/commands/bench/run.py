"""`pxd bench`: Table 1 of the paper (CIFAR-10), reproduced on our models, plus an adaptive
BPDA column, BPD detection AUCs and sanity checks (Carlini et al. 2019).

Oblivious setting, as the paper: every attack is crafted against the classifier alone, then
each defence is applied and the defended classifier is scored. Cells are accuracies (%) at
each eps_attack joined with '/' (the paper's x/y/z for eps = 2/8/16). STRONGEST ATTACK is
the per-eps minimum over the attack columns (as the paper); WORST CASE PER IMAGE counts an
image only if it survives every attack. ADAPTIVE (BPDA) attacks each defence end to end
(`pxd.adaptive`); for no defence it is plain PGD.

Everything crafted is cached under OUT/cache (attacks keyed by classifier digest, attack,
eps, n, seed, options and, where results depend on it, batch size; purifications and bits/dim
by input digest, eps_defend and density digest), so reruns, new defences and new
classifiers reuse what exists. eps = 0 attacks are the inputs themselves (every attack
returns its input there), so those cells equal CLEAN.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import os
import time
import zlib

import numpy as np

from pxd.configs.base import check_eps
from pxd.core import metrics
from pxd.engine import devices
from pxd.errors import PxdError
from pxd.report.terminal import Reporter
from pxd.storage import imageio

DEFENCES = ("none", "feature-squeeze", "pixeldefend", "adaptive-pixeldefend")
PAPER_ATTACKS = ("rand", "fgsm", "bim", "deepfool", "cw")  # `--attack all`
KNOWN_ATTACKS = PAPER_ATTACKS + ("pgd",)
PAPER_EPS = (2, 8, 16)
TITLES = {"clean": "CLEAN", "rand": "RAND", "fgsm": "FGSM", "bim": "BIM",
          "deepfool": "DEEPFOOL", "cw": "CW", "pgd": "PGD", "strongest": "STRONGEST ATTACK",
          "worst": "WORST CASE PER IMAGE", "adaptive": "ADAPTIVE (BPDA)"}
ARCH_TITLES = {"resnet": "ResNet", "vgg": "VGG"}
TRAINING_TITLES = {"normal": "Normal", "adv-fgsm": "Adversarial FGSM",
                   "adv-bim": "Adversarial BIM", "label-smoothing": "Label Smoothing"}
DEFENCE_TITLES = {"none": "", "feature-squeeze": "Feature Squeezing",
                  "pixeldefend": "PixelDefend", "adaptive-pixeldefend": "Adaptive PixelDefend"}
# The paper's margin: threshold 3.2 bits/dim against a clean test mean of 3.0 (Appendix C).
THRESHOLD_MARGIN = 0.2
THRESHOLD_IMAGES = 256

# Table 1 of Song et al. (2018), CIFAR-10, eps_attack = 2/8/16, eps_defend = 16, transcribed.
# (network, training, defence) -> column -> "x/y/z". The paper's rows without a network name
# are ResNet rows; its "Feature Squeezing" row is a normally trained ResNet plus squeezing.
PAPER_TABLE1: dict[tuple[str, str, str], dict[str, str]] = {
    ("resnet", "normal", "none"): dict(
        clean="92/92/92", rand="92/87/76", fgsm="33/15/11", bim="10/00/00",
        deepfool="12/06/06", cw="07/00/00", strongest="07/00/00"),
    ("vgg", "normal", "none"): dict(
        clean="89/89/89", rand="89/88/80", fgsm="60/46/30", bim="44/02/00",
        deepfool="57/25/11", cw="37/00/00", strongest="37/00/00"),
    ("resnet", "adv-fgsm", "none"): dict(
        clean="91/91/91", rand="90/88/84", fgsm="88/91/91", bim="24/07/00",
        deepfool="45/00/00", cw="20/00/07", strongest="20/00/00"),
    ("resnet", "adv-bim", "none"): dict(
        clean="87/87/87", rand="87/87/86", fgsm="80/52/34", bim="74/32/06",
        deepfool="79/48/25", cw="76/42/08", strongest="74/32/06"),
    ("resnet", "label-smoothing", "none"): dict(
        clean="92/92/92", rand="91/88/77", fgsm="73/54/28", bim="59/08/01",
        deepfool="56/20/10", cw="30/02/02", strongest="30/02/01"),
    ("resnet", "normal", "feature-squeeze"): dict(
        clean="84/84/84", rand="83/82/76", fgsm="31/20/18", bim="13/00/00",
        deepfool="75/75/75", cw="78/78/78", strongest="13/00/00"),
    ("resnet", "adv-fgsm", "feature-squeeze"): dict(
        clean="86/86/86", rand="85/84/81", fgsm="73/67/55", bim="55/02/00",
        deepfool="85/85/85", cw="83/83/83", strongest="55/02/00"),
    ("resnet", "normal", "pixeldefend"): dict(
        clean="85/85/88", rand="82/83/84", fgsm="73/46/24", bim="71/46/25",
        deepfool="80/80/80", cw="78/78/78", strongest="71/46/24"),
    ("vgg", "normal", "pixeldefend"): dict(
        clean="82/82/82", rand="82/82/84", fgsm="80/62/52", bim="80/61/48",
        deepfool="81/76/76", cw="81/79/79", strongest="80/61/48"),
    ("resnet", "adv-fgsm", "pixeldefend"): dict(
        clean="88/88/86", rand="86/86/87", fgsm="81/68/67", bim="81/69/56",
        deepfool="85/85/85", cw="84/84/84", strongest="81/69/56"),
    ("resnet", "adv-fgsm", "adaptive-pixeldefend"): dict(
        clean="90/90/90", rand="86/87/87", fgsm="81/70/67", bim="81/70/56",
        deepfool="82/81/82", cw="81/80/81", strongest="81/70/56"),
}


# --------------------------------------------------------------------------- parsing


# DeepFool and CW find a minimal perturbation, then clip it to the eps-ball (Appendix A).
EPS_FREE_ATTACKS = ("deepfool", "cw")
BATCH_DEPENDENT_ATTACKS = ("rand", "pgd", "cw")


def _items(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def parse_eps_list(s: str, name: str = "--eps-attack") -> list[int]:
    """'2,8,16' -> [2, 8, 16] (sorted, unique integers on the 0..255 scale)."""
    try:
        vals = [float(v) for v in _items(s)]
    except ValueError:
        raise PxdError(f"{name} must be comma-separated numbers, got {s!r}") from None
    if not vals:
        raise PxdError(f"{name} names no value")
    return sorted({check_eps(v, name) for v in vals})


def parse_attacks(s: str) -> list[str]:
    names = list(PAPER_ATTACKS) if s.strip() == "all" else _items(s)
    bad = [a for a in names if a not in KNOWN_ATTACKS]
    if bad or not names:
        raise PxdError(f"unknown attack {', '.join(bad) or repr(s)} "
                       f"(choose from all, {', '.join(KNOWN_ATTACKS)})")
    return [a for a in KNOWN_ATTACKS if a in names]  # table order


def parse_defences(s: str) -> list[str]:
    names = list(DEFENCES) if s.strip() == "all" else _items(s)
    bad = [d for d in names if d not in DEFENCES]
    if bad or not names:
        raise PxdError(f"unknown defence {', '.join(bad) or repr(s)} "
                       f"(choose from all, {', '.join(DEFENCES)})")
    return [d for d in DEFENCES if d in names]  # table order


def _scalar(v: str):
    low = v.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    raise PxdError(f"attack option value {v!r} is not a number, true/false or none")


def parse_attack_opts(items: list[str] | None) -> dict[str, dict]:
    """['deepfool.max_iter=3', 'cw.search_steps=1'] -> {'deepfool': {'max_iter': 3}, ...}.

    Keys are checked against the attack's keyword options (e.g. cw: search_steps,
    max_iterations; deepfool: max_iter; bim/pgd: steps)."""
    from pxd.core import attacks

    out: dict[str, dict] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        attack, dot, opt = head.strip().partition(".")
        if not sep or not dot or not opt:
            raise PxdError(f"--attack-opt {item!r}: use ATTACK.OPTION=VALUE, "
                           "e.g. cw.search_steps=2")
        if attack not in attacks.ATTACKS:
            raise PxdError(f"--attack-opt {item!r}: unknown attack {attack!r}")
        params = inspect.signature(attacks.ATTACKS[attack]).parameters
        allowed = [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY
                   and p not in ("eps", "key")]
        if opt not in allowed:
            raise PxdError(f"--attack-opt {item!r}: {attack} has no option {opt!r} "
                           f"(options: {', '.join(allowed) or 'none'})")
        out.setdefault(attack, {})[opt] = _scalar(value)
    return out


# --------------------------------------------------------------------------- small pure helpers


def digest(x: np.ndarray) -> str:
    """sha256 of an array's shape, dtype and bytes."""
    h = hashlib.sha256(f"{x.shape}{x.dtype}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def _opts_tag(opts: dict) -> str:
    if not opts:
        return ""
    return "_" + hashlib.sha256(json.dumps(opts, sort_keys=True).encode()).hexdigest()[:8]


def pct(acc: float) -> str:
    """0.07 -> '07' (the paper's two-digit percentages)."""
    return f"{round(100 * acc):02d}"


def cell(acc_by_eps: dict[int, float], eps_list: list[int]) -> str:
    return "/".join(pct(acc_by_eps[e]) if e in acc_by_eps else "--" for e in eps_list)


def paper_cell(ref: str | None, eps_list: list[int]) -> str:
    """The paper's value for each of our eps (2, 8, 16 only), '--' elsewhere."""
    if ref is None:
        return "--"
    by_eps = dict(zip(PAPER_EPS, ref.split("/"), strict=True))
    return "/".join(by_eps.get(e, "--") for e in eps_list)


def row_accuracies(clean: np.ndarray, attack_correct: dict[str, dict[int, np.ndarray]],
                   eps_list: list[int], adaptive: dict[int, np.ndarray] | None = None) -> dict:
    """Accuracies of one table row: column -> {eps -> accuracy}.

    clean: bool (n,); attack_correct[attack][eps]: bool (n,). STRONGEST is the per-eps
    minimum over the attack columns, WORST CASE the fraction surviving all of them, so
    WORST <= STRONGEST <= every column by construction. adaptive[eps] may cover fewer images.
    """
    acc: dict[str, dict[int, float]] = {"clean": {e: float(clean.mean()) for e in eps_list}}
    for a, by_eps in attack_correct.items():
        acc[a] = {e: float(by_eps[e].mean()) for e in eps_list}
    names = list(attack_correct)
    acc["strongest"] = {e: min(acc[a][e] for a in names) for e in eps_list}
    acc["worst"] = {e: float(np.all([attack_correct[a][e] for a in names], 0).mean())
                    for e in eps_list}
    if adaptive is not None:
        acc["adaptive"] = {e: float(adaptive[e].mean()) for e in eps_list if e in adaptive}
    return acc


def consistency(name: str, clean: np.ndarray, attack_correct: dict, acc: dict,
                eps_list: list[int], adaptive: dict | None) -> list[dict]:
    """The grid's guarantees, checked: STRONGEST <= every column, WORST <= STRONGEST, and at
    eps = 0 every attack (and BPDA) leaves each image's outcome as on the clean image."""
    out = []
    cols = list(attack_correct)
    ok = all(acc["strongest"][e] <= acc[c][e] for c in cols for e in eps_list)
    out.append(dict(check=f"{name}: STRONGEST <= every attack column", ok=ok))
    ok = all(acc["worst"][e] <= acc["strongest"][e] for e in eps_list)
    out.append(dict(check=f"{name}: WORST CASE <= STRONGEST", ok=ok))
    if 0 in eps_list:
        same = all(np.array_equal(attack_correct[c][0], clean) for c in cols)
        if adaptive is not None and 0 in adaptive:
            same = same and np.array_equal(adaptive[0], clean[: len(adaptive[0])])
        out.append(dict(check=f"{name}: eps=0 equals CLEAN per image", ok=bool(same)))
    for c in out:
        c["status"] = "PASS" if c["ok"] else "FAIL"
    return out


def sanity_checks(label: str, acc: dict, eps_list: list[int], bim2x: dict | None,
                  n: int) -> list[dict]:
    """Carlini et al. (2019) checks on the undefended row; PASS or WARN."""
    out = []
    pos = [e for e in eps_list if e > 0]
    if "fgsm" in acc and "bim" in acc and pos:
        bad = [e for e in pos if acc["bim"][e] > acc["fgsm"][e]]
        out.append(dict(check=f"{label}: iterative >= single-step (BIM acc <= FGSM acc)",
                        ok=not bad, detail=", ".join(
                            f"eps {e}: BIM {pct(acc['bim'][e])} FGSM {pct(acc['fgsm'][e])}"
                            for e in pos)))
    if pos:
        s = [acc["strongest"][e] for e in eps_list]
        mono = all(b <= a for a, b in zip(s, s[1:], strict=False))
        low = acc["strongest"][max(pos)] <= 0.10
        out.append(dict(check=f"{label}: undefended accuracy falls towards 0 as eps grows",
                        ok=mono and low,
                        detail="strongest " + "/".join(pct(v) for v in s)
                        + ("" if mono else "; not monotone")
                        + ("" if low else f"; {pct(s[-1])}% > 10% at eps {max(pos)}")))
    if bim2x is not None:
        a1, a2 = bim2x["acc"], bim2x["acc_2x"]
        tol = max(0.02, 1.0 / n)  # two points, or one image on a small n
        out.append(dict(check=f"{label}: doubling BIM steps changes accuracy little",
                        ok=abs(a1 - a2) <= tol + 1e-9,
                        detail=f"eps {bim2x['eps']}: {bim2x['steps']} steps {pct(a1)}%, "
                               f"{bim2x['steps_2x']} steps {pct(a2)}%"))
    for c in out:
        c["status"] = "PASS" if c["ok"] else "WARN"
    return out


def bim_steps(eps: int) -> int:
    """Kurakin et al.'s count floor(min(eps + 4, 1.25 eps)), as attacks.bim uses."""
    return int(np.floor(min(eps + 4, 1.25 * eps)))


# --------------------------------------------------------------------------- the bench


class _Cache:
    """npz files under DIR/cache, validated by stored fields; counts hits and new files."""

    def __init__(self, root: str):
        self.root = root
        self.stats: dict[str, dict[str, int]] = {}
        os.makedirs(root, exist_ok=True)

    def get(self, kind: str, name: str, check: dict, compute) -> np.ndarray:
        path = os.path.join(self.root, name)
        st = self.stats.setdefault(kind, {"hits": 0, "new": 0})
        if os.path.exists(path):
            try:
                with np.load(path, allow_pickle=False) as z:
                    if all(str(z[k]) == str(v) for k, v in check.items()):
                        st["hits"] += 1
                        return z["x"]
            except (OSError, ValueError, KeyError):
                pass  # unreadable or stale: recompute
        x = compute()
        imageio.write_npz(path, x=x, **{k: np.asarray(str(v)) for k, v in check.items()})
        st["new"] += 1
        return x


def _craft_cached(cache: _Cache, m: dict, attack: str, e: int, opts: dict, x: np.ndarray,
                  y: np.ndarray, *, seed: int, batch_size: int, rep: Reporter) -> np.ndarray:
    """Oblivious attack on the classifier alone; key depends on (seed, attack, eps) only."""
    from pxd.engine.batched import craft

    # random starts fold in the batch index and CW's early abort is per batch
    tag = f"_b{batch_size}" if attack in BATCH_DEPENDENT_ATTACKS else ""
    name = f"adv_{m['digest'][:12]}_{attack}_{e}_{len(x)}_{seed}{tag}{_opts_tag(opts)}.npz"

    def compute():
        with rep.progress(f"{attack} eps={e} {_opts_tag(opts)[1:]} ({m['label']})",
                          total=len(x)) as advance:
            return craft(attack, m["logits_fn"], x, y, eps=float(e),
                         key=_seed_key(seed, attack, e), batch_size=batch_size,
                         on_batch=advance, **opts)

    return cache.get("attacks", name, {"input": digest(x), "clf": m["digest"],
                                       "opts": json.dumps(opts, sort_keys=True)}, compute)


def _bpda_cached(cache: _Cache, m: dict, defence: str, attack_fn, dparams, e: int,
                 x: np.ndarray, y: np.ndarray, settings: dict, *, seed: int, batch_size: int,
                 rep: Reporter) -> np.ndarray:
    """End-to-end BPDA-PGD on the defended classifier; batch b uses fold_in(key, b)."""
    import jax

    tag = _opts_tag(settings)
    name = f"bpda_{m['digest'][:12]}_{defence}_{e}_{len(x)}_{seed}_b{batch_size}{tag}.npz"

    def compute():
        key = _seed_key(seed, "bpda", defence, e)
        batch_no = iter(range(1 << 30))  # map_batches visits batches in order

        def one(xb, yb, eb):
            return attack_fn(m["logits_fn"], dparams, xb, yb, eb,
                             jax.random.fold_in(key, next(batch_no)))

        with rep.progress(f"BPDA-PGD {defence} eps={e} ({m['label']})",
                          total=len(x)) as advance:
            return devices.map_batches(one, (x, y, np.full(len(x), e, np.float32)),
                                       batch_size, on_batch=advance)

    return cache.get("bpda", name, {"input": digest(x), "clf": m["digest"],
                                    "settings": json.dumps(settings, sort_keys=True)}, compute)


def _seed_key(seed: int, *parts):
    """A key that depends only on (seed, parts): stable whatever else the run computes."""
    import jax

    key = jax.random.key(seed)
    for p in parts:
        key = jax.random.fold_in(key, zlib.crc32(str(p).encode()))
    return key


def _density_info(dens: dict) -> dict:
    """Identity and test bits/dim of the density model: the zoo card's full-test-split
    figure when shipped, else the run's best periodic evaluation."""
    from pxd.storage import shipped as zoo

    card = zoo.card_of(zoo.resolve(dens["path"]))
    bpd, bpd_n = card.get("test_bpd"), card.get("n_test")
    if bpd is None:
        bpd, bpd_n = dens["meta"].get("best_test_bpd"), dens["meta"].get("eval_n")
    return dict(path=dens["path"], sha256=dens["digest"], preset=dens["cfg"].preset,
                test_bpd=bpd, test_bpd_n=bpd_n)


def _load_classifiers(paths: list[str | None], dataset: str | None):
    from pxd.configs.datasets import DATASETS
    from pxd.models.classifiers import make_logits_fn
    from pxd.storage import shipped as zoo
    from pxd.storage.runs import load_classifier, params_digest

    ds = dataset or "cifar10"
    if "all" in paths:  # every shipped classifier for the dataset, default first
        shipped = [e for e in zoo.entries() if e["kind"] == "classifier" and e["dataset"] == ds]
        shipped.sort(key=lambda e: not e.get("default"))
        paths = [q for p in paths for q in ([e["path"] for e in shipped] if p == "all" else [p])]
        if not paths:
            raise PxdError(f"no classifiers shipped for {ds}")
    out = []
    for p in paths:
        if p is None:
            p = zoo.default_path("classifier", DATASETS[ds].shape)
        model, variables, cfg, meta = load_classifier(p)
        out.append(dict(
            path=p, cfg=cfg, meta=meta, digest=params_digest(variables),
            logits_fn=make_logits_fn(model, variables["params"],
                                     variables.get("batch_stats", {})),
            label=f"{ARCH_TITLES.get(cfg.arch, cfg.arch)} "
                  f"{TRAINING_TITLES.get(cfg.training, cfg.training)}",
        ))
    names = [c["label"] for c in out]
    for c in out:
        if names.count(c["label"]) > 1:  # same arch and training twice: tell them apart
            c["label"] += f" [{os.path.basename(os.path.normpath(c['path']))}]"
    return out


def run_bench(
    *,
    attacks: str = "all",
    eps_attack: str = "2,8,16",
    clfs: list[str] | None = None,
    density: str | None = None,
    defenses: str = "all",
    eps_defend: float = 16,
    adaptive_threshold: float | None = None,
    n: int = 100,
    dataset: str | None = None,
    out: str = "bench-out",
    adaptive_steps: int = 20,
    adaptive_n: int | None = 50,
    adaptive_bpd_weight: float = 1.0,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    attack_opts: dict[str, dict] | None = None,
    command: str = "",
    data_dir: str | None = None,
    rep: Reporter | None = None,
) -> dict:
    """Run the grid and write OUT/report.md, results.json, per_image.csv and PNG figures.

    attacks, eps_attack, defenses: comma lists ('all' allowed for attacks and defenses).
    adaptive_steps = 0 skips the BPDA column; adaptive_n limits it to the first images.
    adaptive_threshold None: mean clean bits/dim of 256 test images disjoint from the
    evaluated ones (the last of the split) + 0.2, the paper's margin (3.2 vs 3.0).
    """
    from pxd import api
    from pxd.configs.datasets import DATASETS
    from pxd.core import adaptive
    from pxd.core.likelihood import make_bpd_fn
    from pxd.core.purify import make_purifier
    from pxd.engine.batched import evaluate_bpd, predict
    from pxd.engine.devices import machine
    from pxd.storage import data
    from pxd.storage.runs import params_digest

    rep = rep or Reporter(quiet=True)
    t_start = time.perf_counter()
    attack_names = parse_attacks(attacks)
    eps_list = parse_eps_list(eps_attack)
    defence_names = parse_defences(defenses)
    e_def = check_eps(eps_defend, "--eps-defend")
    attack_opts = dict(attack_opts or {})
    if n < 1 or batch_size < 1 or restarts < 1 or adaptive_steps < 0:
        raise PxdError("--n, --batch-size and --restarts must be positive, "
                       "--adaptive-steps >= 0")
    k_adapt = n if adaptive_n is None else min(adaptive_n, n)
    if k_adapt < 1:
        raise PxdError("--adaptive-n must be positive")
    if dataset is not None and dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    imageio.check_writable(out, "--out", folder=True)

    models = _load_classifiers(list(clfs) if clfs else [None], dataset)
    dataset = dataset or models[0]["cfg"].dataset
    for m in models:
        if m["cfg"].dataset != dataset:
            raise PxdError(f"{m['path']} was trained on {m['cfg'].dataset}, not {dataset}")
    spec = f"{dataset}:test[:{n}]"
    x, y = data.load(spec, data_dir)
    n = len(x)
    k_adapt = min(k_adapt, n)
    shape = tuple(x.shape[1:])
    os.makedirs(out, exist_ok=True)
    cache = _Cache(os.path.join(out, "cache"))
    timings: dict[str, float] = {}

    # ---- density model: defences, detection, adaptive threshold
    from pxd.storage.runs import resolve_density

    needs_density = any(d in defence_names for d in ("pixeldefend", "adaptive-pixeldefend"))
    dens = None
    try:
        dmodel, dparams, dcfg, dmeta, dpath = resolve_density(density, shape)
        dens = dict(model=dmodel, params=dparams, cfg=dcfg, meta=dmeta, path=dpath,
                    digest=params_digest(dparams))
    except PxdError:
        if density is not None or needs_density:
            raise
        # detection is a bonus when no defence needs the density model
        rep.info("no density model: skipping the bits/dim detector")

    bpd_jit = make_bpd_fn(dens["model"]) if dens else None

    def bpd_of(xs: np.ndarray) -> np.ndarray:
        return cache.get("bpd", f"bpd_{digest(xs)[:16]}_{dens['digest'][:12]}.npz",
                         {"input": digest(xs), "density": dens["digest"]},
                         lambda: evaluate_bpd(bpd_jit, dens["params"], xs, batch_size))

    threshold = None
    threshold_how = None
    if dens is not None and "adaptive-pixeldefend" in defence_names:
        if adaptive_threshold is not None:
            threshold, threshold_how = float(adaptive_threshold), "given (--adaptive-threshold)"
        else:
            size = DATASETS[dataset].splits["test"]
            vspec = (f"{dataset}:test[-{THRESHOLD_IMAGES}:]" if n + THRESHOLD_IMAGES <= size
                     else f"{dataset}:train[:{THRESHOLD_IMAGES}]")
            xv, _ = data.load(vspec, data_dir)
            mean_v = float(np.mean(bpd_of(xv)))
            threshold = mean_v + THRESHOLD_MARGIN
            threshold_how = (f"mean clean bits/dim of {vspec} ({mean_v:.4f}) + "
                             f"{THRESHOLD_MARGIN} (the paper: 3.2 against a mean of 3.0)")
        rep.info(f"adaptive threshold {threshold:.4f} bits/dim: {threshold_how}")

    purify_fn = None
    if dens is not None and e_def > 0 and needs_density:
        purify_fn = make_purifier(dens["model"], "auto", max_eps=e_def)

    def purified(xs: np.ndarray, label: str) -> np.ndarray:
        """PixelDefend(xs) with eps_defend, cached by input digest."""
        if e_def == 0 or len(xs) == 0:
            return xs.copy()
        name = f"pur_{digest(xs)[:16]}_pixeldefend_{e_def}_{dens['digest'][:12]}.npz"

        def compute():
            eb = np.full(len(xs), e_def, np.int32)
            with rep.progress(f"purify {label}", total=len(xs)) as advance:
                return devices.map_batches(lambda a, b: purify_fn(dens["params"], a, b),
                                           (xs, eb), batch_size, on_batch=advance)

        return cache.get("purified", name, {"input": digest(xs), "eps_defend": e_def,
                                             "density": dens["digest"]}, compute)

    def defended(d: str, xs: np.ndarray, label: str) -> np.ndarray:
        if d == "none":
            return xs
        if d == "feature-squeeze":
            return api.feature_squeeze(xs)
        if d == "pixeldefend":
            return purified(xs, label)
        over = bpd_of(xs) > threshold  # adaptive: purify only the unlikely images
        if "pixeldefend" in defence_names:
            return np.where(over[:, None, None, None], purified(xs, label), xs)
        res = xs.copy()
        res[over] = purified(xs[over], label)
        return res

    # ---- per classifier: craft, defend, score
    results_rows = []
    per_image: dict[str, np.ndarray] = {}
    detection = []
    roc_by_eps: dict[int, dict] = {}
    checks, consistency_checks = [], []
    pos_eps = [e for e in eps_list if e > 0]
    for m in models:
        lf = m["logits_fn"]
        t0 = time.perf_counter()
        adv: dict[tuple[str, int], np.ndarray] = {}
        for a in attack_names:
            opts = attack_opts.get(a, {})
            for e in eps_list:
                if e == 0:
                    adv[(a, e)] = x
                    continue
                if a in EPS_FREE_ATTACKS:
                    # Minimal-perturbation attacks ignore eps until their final clip, and
                    # clipping commutes with rounding on the integer grid: craft once at 255.
                    full = _craft_cached(cache, m, a, 255, opts, x, y, seed=seed,
                                         batch_size=batch_size, rep=rep)
                    xi = x.astype(np.int16)
                    adv[(a, e)] = np.clip(full.astype(np.int16), xi - e, xi + e).astype(np.uint8)
                    continue
                adv[(a, e)] = _craft_cached(cache, m, a, e, opts, x, y, seed=seed,
                                            batch_size=batch_size, rep=rep)
        timings[f"craft {m['label']}"] = time.perf_counter() - t0

        # BIM with twice the steps at the largest eps (sanity check)
        bim2x = None
        if "bim" in attack_names and pos_eps:
            e = max(pos_eps)
            steps = bim_steps(e)
            opts = dict(attack_opts.get("bim", {}))
            steps = int(opts.get("steps") or steps)
            x2 = _craft_cached(cache, m, "bim", e, dict(opts, steps=2 * steps), x, y, seed=seed,
                               batch_size=batch_size, rep=rep)
            bim2x = dict(eps=e, steps=steps, steps_2x=2 * steps,
                         acc=float(np.mean(predict(lf, adv[("bim", e)], batch_size=batch_size)
                                           == y)),
                         acc_2x=float(np.mean(predict(lf, x2, batch_size=batch_size) == y)))

        # detection: BPD of clean (negative) against attacked (positive)
        if dens is not None:
            t0 = time.perf_counter()
            b_clean = bpd_of(x)
            for a in attack_names:
                aucs = {}
                for e in eps_list:
                    b_adv = bpd_of(adv[(a, e)])
                    aucs[e] = metrics.roc_auc(b_clean, b_adv)
                    if e > 0:
                        fpr, tpr = metrics.roc_curve(b_clean, b_adv)
                        name = a if len(models) == 1 else f"{m['label']}: {a}"
                        roc_by_eps.setdefault(e, {})[name] = (fpr, tpr, aucs[e])
                detection.append(dict(classifier=m["label"], attack=a, auc=aucs,
                                      mean_bpd={e: float(np.mean(bpd_of(adv[(a, e)])))
                                                for e in eps_list}))
            timings[f"bits/dim {m['label']}"] = time.perf_counter() - t0

        # oblivious grid
        t0 = time.perf_counter()
        rows_needed = list(dict.fromkeys(["none"] + defence_names))
        grid: dict[str, dict] = {}
        for d in rows_needed:
            clean_ok = predict(lf, defended(d, x, "clean"), batch_size=batch_size) == y
            corr = {a: {} for a in attack_names}
            for a in attack_names:
                for e in eps_list:
                    xa = adv[(a, e)]
                    xd = defended(d, xa, f"{a} eps={e}")
                    corr[a][e] = predict(lf, xd, batch_size=batch_size) == y
            grid[d] = dict(clean=clean_ok, corr=corr)
        timings[f"defend {m['label']}"] = time.perf_counter() - t0

        # adaptive BPDA column
        t0 = time.perf_counter()
        for d in defence_names if adaptive_steps > 0 else []:
            # eps_defend = 0 leaves images unchanged: the end-to-end attack is plain PGD
            d_att = "none" if d.endswith("pixeldefend") and e_def == 0 else d
            attack_fn = adaptive.make_bpda_attack(
                d_att, density_model=dens["model"] if dens else None, purify=purify_fn,
                eps_defend=e_def, threshold=threshold, bpd_weight=adaptive_bpd_weight,
                steps=adaptive_steps, restarts=restarts)
            xk, yk = x[:k_adapt], y[:k_adapt]
            settings = dict(steps=adaptive_steps, restarts=restarts, eps_defend=e_def,
                            density=dens["digest"] if dens and d != "none" else None,
                            threshold=threshold if d == "adaptive-pixeldefend" else None,
                            bpd_weight=adaptive_bpd_weight if d == "adaptive-pixeldefend"
                            else None)
            res = {}
            for e in eps_list:
                if e == 0:
                    xb = xk
                else:
                    xb = _bpda_cached(cache, m, d, attack_fn, dens["params"] if dens else None,
                                      e, xk, yk, settings, seed=seed, batch_size=batch_size,
                                      rep=rep)
                res[e] = predict(lf, defended(d, xb, f"BPDA {d} eps={e}"),
                                 batch_size=batch_size) == yk
            grid[d]["adaptive"] = res
        timings[f"adaptive {m['label']}"] = time.perf_counter() - t0

        for d in rows_needed:
            g = grid[d]
            acc = row_accuracies(g["clean"], g["corr"], eps_list, g.get("adaptive"))
            row_name = m["label"] + (f" + {DEFENCE_TITLES[d]}" if d != "none" else "")
            if d == "none":
                checks += sanity_checks(m["label"], acc, eps_list, bim2x, n)
            if d not in defence_names:
                continue
            consistency_checks += consistency(row_name, g["clean"], g["corr"], acc, eps_list,
                                              g.get("adaptive"))
            paper = (PAPER_TABLE1.get((m["cfg"].arch, m["cfg"].training, d))
                     if dataset == "cifar10" else None)  # Table 1 is CIFAR-10 only
            results_rows.append(dict(
                name=row_name, classifier=m["path"], defence=d, acc=acc, paper=paper,
                adaptive_images=k_adapt if "adaptive" in g else 0))
            per_image[f"{row_name} | CLEAN"] = g["clean"]
            for a in attack_names:
                for e in eps_list:
                    per_image[f"{row_name} | {TITLES[a]} | eps {e}"] = g["corr"][a][e]
            for e, v in g.get("adaptive", {}).items():
                per_image[f"{row_name} | {TITLES['adaptive']} | eps {e}"] = v
        if bim2x is not None:
            m["bim2x"] = bim2x

    wall = time.perf_counter() - t_start
    columns = ["clean"] + attack_names + ["strongest", "worst"] + \
        (["adaptive"] if adaptive_steps > 0 else [])
    info = dict(
        command=command, date=time.strftime("%Y-%m-%d %H:%M:%S"), machine=machine(),
        wall_s=wall, n=n, input=spec, seed=seed, eps_attack=eps_list, eps_defend=e_def,
        attacks=attack_names, defences=defence_names, attack_opts=attack_opts,
        adaptive=dict(steps=adaptive_steps, restarts=restarts, images=k_adapt,
                      bpd_weight=adaptive_bpd_weight,
                      alpha="max(1, round(eps/4))", method=ADAPTIVE_METHOD),
        threshold=threshold, threshold_how=threshold_how,
        classifiers=[dict(label=m["label"], path=m["path"], sha256=m["digest"],
                          arch=m["cfg"].arch, training=m["cfg"].training,
                          preset=m["cfg"].preset, test_acc=m["meta"].get("test_acc"),
                          test_n=m["meta"].get("n"), bim_2x_steps=m.get("bim2x"))
                     for m in models],
        density=None if dens is None else _density_info(dens),
        columns=columns, rows=results_rows, detection=detection, sanity=checks,
        consistency=consistency_checks, cache=cache.stats, timings=timings,
    )
    _write_outputs(out, info, x, y, per_image, roc_by_eps, eps_list, rep)
    _print_summary(info, rep)
    figures = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    rep.done(f"report: {os.path.join(out, 'report.md')} (full table, detection, checks); "
             f"figures: {', '.join(os.path.join(out, f) for f in figures)}; "
             f"per image: {os.path.join(out, 'per_image.csv')}")
    return info


ADAPTIVE_METHOD = (
    "BPDA-PGD (Athalye et al. 2018): forward through the real defence (exact PixelDefend "
    "decode, feature squeezing), backward as the identity; sign steps of max(1, round(eps/4)) "
    "on the integer grid, random start, per-image worst case over iterates and restarts judged "
    "by the real defended classifier. Adaptive PixelDefend: the direction adds the exact "
    "bits/dim gradient (L1-normalised, weight w) wherever bits/dim > T, so the attack also "
    "seeks to slip under the threshold; its first restart starts at the clean image. "
    "No defence: plain PGD."
)


def run_speed(out: str, *, density: str | None = None, batch_size: int = 32,
              data_dir: str | None = None, rep: Reporter | None = None, **sizes) -> dict:
    """`pxd bench --speed`: commands.speed.run_bench_speed, its JSON written to `out`
    (a .json path, or OUT/speed.json for a folder). `sizes` shrink it (tests)."""
    from pxd.commands.bench.speed import run_bench_speed

    path = out if out.endswith(".json") else os.path.join(out, "speed.json")
    imageio.check_writable(path, "--out")
    res = run_bench_speed(density=density, batch=batch_size, data_dir=data_dir, rep=rep,
                          **sizes)
    imageio.write_json(path, res)
    (rep or Reporter(quiet=True)).done(f"speed results written to {path}")
    return res


# --------------------------------------------------------------------------- outputs


def _grid_lines(info: dict) -> list[str]:
    eps_list = info["eps_attack"]
    cols = info["columns"]
    paper_cols = {"clean", "rand", "fgsm", "bim", "deepfool", "cw", "strongest"}
    show_paper = any(e in PAPER_EPS for e in eps_list)
    head = ["NETWORK / TRAINING / DEFENCE"] + [TITLES[c] for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in info["rows"]:
        vals = [cell(r["acc"].get(c, {}), eps_list) for c in cols]
        lines.append("| " + " | ".join([r["name"]] + vals) + " |")
        if show_paper and r["paper"] is not None:
            pv = [paper_cell(r["paper"].get(c), eps_list) if c in paper_cols else ""
                  for c in cols]
            lines.append("| " + " | ".join(["  paper Table 1"] + pv) + " |")
    return lines


def _report_md(info: dict) -> str:
    eps_list = info["eps_attack"]
    eps_s = "/".join(str(e) for e in eps_list)
    L = ["# pxd bench: PixelDefend Table 1", ""]
    L += [f"Command: `{info['command']}`", "",
          f"- date {info['date']}, machine {info['machine']}, wall time {info['wall_s']:.1f} s",
          f"- {info['n']} test images ({info['input']}), seed {info['seed']}",
          f"- cells: accuracy (%) at eps_attack = {eps_s} (0-255 scale), "
          f"eps_defend = {info['eps_defend']}"]
    if info["threshold"] is not None:
        L.append(f"- adaptive PixelDefend threshold {info['threshold']:.4f} bits/dim: "
                 f"{info['threshold_how']}")
    if info["attack_opts"]:
        L.append(f"- attack options: `{json.dumps(info['attack_opts'], sort_keys=True)}`")
    if tuple(eps_list) != PAPER_EPS or info["eps_defend"] != 16:
        L.append("- the paper's cells are for eps_attack 2/8/16 and eps_defend 16; '--' marks "
                 "eps it has no number for")
    L += ["", "## Models", "", "| role | path | sha256 (params) | preset | quality |",
          "|---|---|---|---|---|"]
    for c in info["classifiers"]:
        acc = c["test_acc"]
        q = f"test acc {acc:.4f} on {c['test_n']} images" if acc is not None else "test acc n/a"
        L.append(f"| classifier {c['label']} | `{c['path']}` | `{c['sha256']}` | "
                 f"{c['arch']} {c['preset']} | {q} |")
    d = info["density"]
    if d is not None:
        b = d["test_bpd"]
        q = (f"test bits/dim {b:.4f} on {d['test_bpd_n']} images" if b is not None
             else "test bits/dim n/a")
        L.append(f"| density | `{d['path']}` | `{d['sha256']}` | PixelCNN++ {d['preset']} | {q} |")
    L += ["", "## Accuracy (%)", "",
          "Oblivious attacks are crafted against the classifier alone, then the defence is "
          "applied (the paper's setting). STRONGEST ATTACK: per-eps minimum over the attack "
          "columns; WORST CASE PER IMAGE: images surviving every attack. ADAPTIVE (BPDA): "
          f"end-to-end attack on the defended classifier ({info['adaptive']['steps']} steps, "
          f"{info['adaptive']['restarts']} restart(s), first {info['adaptive']['images']} "
          "images); plain PGD for the undefended rows.", ""]
    L += _grid_lines(info)
    L += ["", "## Detection: ROC AUC of the bits/dim detector", "",
          "Clean test images negative, attacked images positive (0.5: no signal).", ""]
    if info["detection"]:
        L += ["| classifier | attack | " + " | ".join(f"eps {e}" for e in eps_list) + " |",
              "|---|---|" + "---|" * len(eps_list)]
        for r in info["detection"]:
            L.append(f"| {r['classifier']} | {TITLES[r['attack']]} | "
                     + " | ".join(f"{r['auc'][e]:.3f}" for e in eps_list) + " |")
    else:
        L.append("No density model: detection skipped.")
    L += ["", "## Sanity checks (Carlini et al. 2019)", ""]
    for c in info["sanity"]:
        L.append(f"- **{c['status']}** {c['check']}: {c.get('detail', '')}")
    L += ["", "## Internal consistency (guaranteed by construction)", ""]
    bad = [c for c in info["consistency"] if not c["ok"]]
    L.append(f"- {len(info['consistency']) - len(bad)}/{len(info['consistency'])} PASS")
    L += [f"- **FAIL** {c['check']}" for c in bad]
    L += ["", "## Adaptive attack", "", info["adaptive"]["method"], "",
          "## Cache", "", "`cache/` holds every crafted, purified and scored array: "
          + ", ".join(f"{k}: {v['new']} new, {v['hits']} reused"
                      for k, v in info["cache"].items()), ""]
    return "\n".join(L) + "\n"


def _write_outputs(out: str, info: dict, x, y, per_image: dict, roc_by_eps: dict,
                   eps_list: list[int], rep: Reporter) -> None:
    from pxd.report import plots

    imageio.write_json(os.path.join(out, "results.json"), _jsonable(info))
    imageio.atomic_write(os.path.join(out, "report.md"), lambda f: f.write(_report_md(info)),
                         mode="w")
    buf = io.StringIO()
    w = csv.writer(buf)
    names = list(per_image)
    w.writerow(["index", "label"] + names)
    for i in range(len(y)):
        w.writerow([i, int(y[i])] + [int(per_image[k][i]) if i < len(per_image[k]) else ""
                                     for k in names])
    imageio.atomic_write(os.path.join(out, "per_image.csv"), lambda f: f.write(buf.getvalue()),
                         mode="w")
    for d in info["defences"]:
        series = {}
        rows = [r for r in info["rows"] if r["defence"] == d]
        for r in rows:
            for c in info["columns"]:
                if c == "clean":
                    continue
                name = TITLES[c] if len(rows) == 1 else f"{r['name']}: {TITLES[c]}"
                series[name] = [100 * r["acc"][c].get(e, float("nan")) for e in eps_list]
        plots.accuracy_vs_eps(os.path.join(out, f"acc_vs_eps_{d}.png"), eps_list, series,
                              title=f"defence: {d}")
    for e, curves in roc_by_eps.items():
        plots.roc_curves(os.path.join(out, f"roc_eps{e}.png"), curves,
                         title=f"bits/dim detector, eps {e} (clean negative)")


def _jsonable(o):
    """Int keys (eps) to strings, arrays to lists, for results.json."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return o


def _print_summary(info: dict, rep: Reporter) -> None:
    eps_s = "/".join(str(e) for e in info["eps_attack"])
    cols = info["columns"]
    short = dict(TITLES, strongest="STRONGEST", worst="WORST/IMG", adaptive="BPDA")
    rep.table(f"accuracy (%) at eps {eps_s}, eps_defend {info['eps_defend']}, "
              f"n={info['n']}", ["row"] + [short[c] for c in cols],
              [[r["name"]] + [cell(r["acc"].get(c, {}), info["eps_attack"]) for c in cols]
               for r in info["rows"]])
    for c in info["sanity"]:
        rep.info(f"{c['status']}: {c['check']} ({c.get('detail', '')})")
    bad = [c for c in info["consistency"] if not c["ok"]]
    for c in bad:
        rep.error(f"consistency FAIL: {c['check']}")
    rep.json(_jsonable(info))
