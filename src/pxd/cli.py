"""The `pxd` command line: parses options, builds a config, calls one run_* function."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pxd import __version__
from pxd.errors import PxdError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="PixelDefend in JAX: train density models and classifiers, attack, purify, score.",
    pretty_exceptions_enable=False,
)

DataDir = Annotated[
    str | None,
    typer.Option("--data-dir", envvar="PXD_DATA_DIR",
                 help="Folder with cifar-10-binary.tar.gz and/or Fashion-MNIST idx .gz files."),
]
DensityOpt = Annotated[str | None, typer.Option(
    "--density", help="Density run dir or shipped model name (default: the zoo's).")]
Seed = Annotated[int, typer.Option("--seed", help="PRNG seed.")]
Json = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON object.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print results only.")]
Devices = Annotated[
    int | None,
    typer.Option("--devices", help="Virtual CPU devices (default: one per core)."),
]
Distributed = Annotated[
    bool,
    typer.Option("--distributed", help="Multi-host: call jax.distributed.initialize()."),
]


def _setup(devices: int | None, distributed: bool = False, quiet: bool = False,
           json_mode: bool = False):
    from pxd import devices as dev
    from pxd.report import Reporter

    dev.setup(devices, distributed)
    return Reporter(quiet=quiet, json_mode=json_mode)


def _version(value: bool):
    if value:
        typer.echo(f"pxd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
):
    """pxd: PixelDefend (Song et al., ICLR 2018) made fast, in JAX."""


@app.command("score")
def score(
    inputs: Annotated[list[str], typer.Argument(help="Files, folders or dataset specs.")],
    bpd: Annotated[bool, typer.Option("--bpd/--no-bpd", help="Score by bits/dim.")] = True,
    density: DensityOpt = None,
    reference: Annotated[str | None, typer.Option(
        help="Clean reference set, e.g. cifar10:train[:2000]: adds ROC AUC and p-values.")] = None,
    plot: Annotated[str | None, typer.Option("--plot", help="Write PNG figures here.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    data_dir: DataDir = None,
    devices: Devices = None,
    json_out: Json = False,
    quiet: Quiet = False,
):
    """Score images by bits/dim under the PixelCNN (detection of adversarial inputs)."""
    rep = _setup(devices, False, quiet, json_out)
    from pxd.commands.score import run_score

    if not bpd:
        raise PxdError("bits/dim is the only score pxd computes; drop --no-bpd")
    run_score(inputs, density=density, reference=reference, plot_dir=plot, data_dir=data_dir,
              batch_size=batch_size, rep=rep)


@app.command("purify")
def purify(
    input: Annotated[str, typer.Argument(help="File, folder or dataset spec.")],
    out: Annotated[str, typer.Option("--out", help="Output .npz (written when complete).")],
    eps: Annotated[float, typer.Option("--eps", help="eps_defend on the 0-255 scale.")] = 16,
    method: Annotated[str, typer.Option(help="pixeldefend or feature-squeeze.")] = "pixeldefend",
    density: DensityOpt = None,
    adaptive_threshold: Annotated[float | None, typer.Option(
        help="Adaptive PixelDefend: purify only images above this bits/dim.")] = None,
    grid: Annotated[str | None, typer.Option(help="PNG: inputs above purified.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    chunk: Annotated[int, typer.Option(help="Images per resumable chunk.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Images per device batch.")] = 32,
    data_dir: DataDir = None,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
):
    """Purify images with PixelDefend (greedy decode in the eps-ball) before classifying."""
    rep = _setup(devices, distributed, quiet, json_out)
    from pxd.commands.purify import run_purify

    run_purify(input, out, eps=eps, method=method, density=density,
               adaptive_threshold=adaptive_threshold, grid=grid, resume=resume, chunk=chunk,
               batch_size=batch_size, data_dir=data_dir, rep=rep)


@app.command("zoo")
def zoo_cmd(
    export: Annotated[str | None, typer.Option(
        "--export", help="Add this run dir to the package's zoo (measured on the test split).")]
    = None,
    name: Annotated[str | None, typer.Option(help="Zoo name for --export.")] = None,
    default: Annotated[bool, typer.Option(help="Make the exported model the default.")] = False,
    train_command: Annotated[str, typer.Option(help="How the run was trained (card).")] = "",
    with_state: Annotated[bool, typer.Option(
        help="Also keep the run's training state (train-density --resume-from).")] = False,
    data_dir: DataDir = None,
    json_out: Json = False,
    quiet: Quiet = False,
):
    """List the models shipped with pxd and what pxd measured for them."""
    rep = _setup(None, False, quiet, json_out)
    from pxd.commands.zoo import run_zoo_export, run_zoo_list

    if export is not None:
        if not name:
            raise PxdError("--export needs --name")
        run_zoo_export(export, name, default=default, command=train_command,
                       data_dir=data_dir, rep=rep, with_state=with_state)
        return
    run_zoo_list(rep)


@app.command("train-density")
def train_density(
    out: Annotated[str, typer.Option("--out", help="Run directory (config, checkpoints).")],
    dataset: Annotated[str, typer.Option(help="cifar10 or fashion_mnist.")] = "cifar10",
    preset: Annotated[str, typer.Option(help="smoke, cpu or paper.")] = "cpu",
    epochs: Annotated[float | None, typer.Option(help="Train this many epochs.")] = None,
    steps: Annotated[int | None, typer.Option(help="Train this many steps.")] = None,
    hours: Annotated[float | None, typer.Option(
        help="Budget in hours: steps from this machine's measured speed.")] = None,
    schedule: Annotated[str | None, typer.Option(
        help="Learning rate: cosine (to 0 at the budget) or exponential.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    init_from: Annotated[str | None, typer.Option(
        help="Start from this shipped model or run dir (fine-tune, same preset).")] = None,
    resume_from: Annotated[str | None, typer.Option(
        help="Continue a shipped model's own run (its saved training state) in --out.")]
    = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
):
    """Train the PixelCNN++ density model on clean images."""
    rep = _setup(devices, distributed, quiet, json_out)
    from pxd.commands.density import run_train_density
    from pxd.data import DATASETS
    from pxd.density import density_config

    if dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    if sum(v is not None for v in (epochs, steps, hours)) > 1:
        raise PxdError("give one budget: --epochs, --steps or --hours")
    cfg = density_config(dataset, preset, batch_size=batch_size, seed=seed, lr=lr,
                         schedule=schedule, init_from=init_from)
    if epochs is not None:
        if epochs <= 0:
            raise PxdError("--epochs must be positive")
        n = DATASETS[dataset].splits["train"]
        steps = max(1, round(epochs * n / cfg.batch_size))
    if steps is not None:
        if steps <= 0:
            raise PxdError("--steps must be positive")
        from pxd.config import replace

        cfg = replace(cfg, steps=steps)
    run_train_density(cfg, out, resume=resume, hours=hours, keep_steps=steps is None,
                      resume_from=resume_from, data_dir=data_dir, rep=rep)


# --- classifiers and attacks (train-clf, attack) ---


@app.command("train-clf")
def train_clf(
    out: Annotated[str, typer.Option("--out", help="Run directory (config, checkpoints).")],
    dataset: Annotated[str, typer.Option(help="cifar10 or fashion_mnist.")] = "cifar10",
    arch: Annotated[str, typer.Option(help="resnet or vgg.")] = "resnet",
    training: Annotated[str, typer.Option(
        help="normal, adv-fgsm, adv-bim or label-smoothing.")] = "normal",
    preset: Annotated[str, typer.Option(help="smoke, cpu or paper.")] = "cpu",
    epochs: Annotated[float | None, typer.Option(help="Train this many epochs.")] = None,
    steps: Annotated[int | None, typer.Option(help="Train this many steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Global batch size.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
):
    """Train a classifier (ResNet or VGG; normal, adversarial or label-smoothing)."""
    rep = _setup(devices, distributed, quiet, json_out)
    from pxd.classify import clf_config
    from pxd.commands.clf import run_train_clf
    from pxd.config import replace
    from pxd.data import DATASETS

    if dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
    if epochs is not None and steps is not None:
        raise PxdError("give --epochs or --steps, not both")
    cfg = clf_config(dataset, arch, training, preset, batch_size=batch_size, seed=seed)
    if epochs is not None:
        if epochs <= 0:
            raise PxdError("--epochs must be positive")
        steps = max(1, round(epochs * DATASETS[dataset].splits["train"] / cfg.batch_size))
    if steps is not None:
        if steps <= 0:
            raise PxdError("--steps must be positive")
        cfg = replace(cfg, steps=steps)
    run_train_clf(cfg, out, resume=resume, data_dir=data_dir, rep=rep)


@app.command("attack")
def attack_cmd(
    input: Annotated[str, typer.Argument(
        help="Images (.npz/.npy/PNG/JPEG/folder) or a dataset spec like cifar10:test[:100].")],
    clf: Annotated[str, typer.Option(
        "--clf", help="Classifier run dir or shipped model name (pxd zoo).")],
    attack: Annotated[str, typer.Option(
        "--attack", help="rand, fgsm, bim, deepfool, cw or pgd.")] = "fgsm",
    eps: Annotated[float, typer.Option(
        "--eps-attack", help="L-inf budget in pixel units (0..255).")] = 8.0,
    out: Annotated[str, typer.Option("--out", help="Output .npz.")] = "adv.npz",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 100,
    steps: Annotated[int | None, typer.Option(help="Iterations (bim, pgd).")] = None,
    restarts: Annotated[int | None, typer.Option(help="Random restarts (pgd).")] = None,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
):
    """Craft adversarial examples against a trained classifier; writes an .npz."""
    rep = _setup(devices, distributed, quiet, json_out)
    from pxd.commands.clf import run_attack

    run_attack(input, clf, attack=attack, eps=eps, out=out, batch_size=batch_size, steps=steps,
               restarts=restarts, seed=seed, data_dir=data_dir, rep=rep)


# --- end classifiers and attacks ---


# --- bench ---


@app.command("bench")
def bench(
    attack: Annotated[str, typer.Option(
        "--attack", help="all (rand,fgsm,bim,deepfool,cw) or a comma list (pgd too).")] = "all",
    eps_attack: Annotated[str, typer.Option(
        "--eps-attack", help="Comma list of L-inf budgets, 0-255 scale.")] = "2,8,16",
    clf: Annotated[list[str] | None, typer.Option(
        "--clf", help="Classifier run dir or shipped model name; repeat for more rows; "
        "'all': every shipped classifier for the dataset (default: the zoo's default).")] = None,
    density: DensityOpt = None,
    defense: Annotated[str, typer.Option(
        "--defense", help="all or a comma list of none, feature-squeeze, pixeldefend, "
        "adaptive-pixeldefend.")] = "all",
    eps_defend: Annotated[float, typer.Option(help="eps_defend, 0-255 scale.")] = 16,
    adaptive_threshold: Annotated[float | None, typer.Option(
        help="Bits/dim above which adaptive PixelDefend purifies (default: mean clean "
        "bits/dim of 256 held-out test images + 0.2).")] = None,
    n: Annotated[int, typer.Option("--n", help="First N test images.")] = 500,
    dataset: Annotated[str | None, typer.Option(
        help="Dataset (default: the classifier's).")] = None,
    out: Annotated[str, typer.Option("--out", help="Output folder (cache inside).")] = "bench-out",
    adaptive_steps: Annotated[int, typer.Option(
        help="BPDA-PGD steps (0: no adaptive column).")] = 40,
    adaptive_n: Annotated[int | None, typer.Option(
        help="Images for the adaptive column (default: all N).")] = None,
    adaptive_bpd_weight: Annotated[float, typer.Option(
        help="Weight of the bits/dim pull in the adaptive PixelDefend attack.")] = 1.0,
    restarts: Annotated[int, typer.Option(help="BPDA-PGD random restarts.")] = 1,
    attack_opt: Annotated[list[str] | None, typer.Option(
        "--attack-opt", help="ATTACK.OPTION=VALUE, repeatable (e.g. cw.search_steps=2).")] = None,
    speed: Annotated[bool, typer.Option(
        "--speed", help="Throughput benchmark instead (make bench); --out FILE.json.")] = False,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 32,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
):
    """Table 1 of the paper: attacks x defences x eps, adaptive BPDA, detection, sanity."""
    rep = _setup(devices, distributed, quiet, json_out)
    from pxd.commands import bench as bench_cmd

    if speed:
        bench_cmd.run_speed(out, density=density, batch_size=batch_size, data_dir=data_dir,
                            rep=rep)
        return
    bench_cmd.run_bench(
        attacks=attack, eps_attack=eps_attack, clfs=clf, density=density, defenses=defense,
        eps_defend=eps_defend, adaptive_threshold=adaptive_threshold, n=n, dataset=dataset,
        out=out, adaptive_steps=adaptive_steps, adaptive_n=adaptive_n,
        adaptive_bpd_weight=adaptive_bpd_weight, restarts=restarts, seed=seed,
        batch_size=batch_size, attack_opts=bench_cmd.parse_attack_opts(attack_opt),
        command=" ".join(sys.argv), data_dir=data_dir, rep=rep,
    )


# --- end bench ---


def main() -> None:
    """Entry point: bad input gives one line on stderr and exit 2, never a traceback."""
    debug = os.environ.get("PXD_DEBUG") == "1"
    try:
        app(standalone_mode=False)
    except PxdError as e:
        if debug:
            raise
        print(f"pxd: error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("pxd: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors and the unexpected
        import click

        if isinstance(e, click.exceptions.UsageError):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        print(f"pxd: error: {type(e).__name__}: {e} (set PXD_DEBUG=1 for a traceback)",
              file=sys.stderr)
        sys.exit(1)
