"""The `pxd` command line: parses options, builds a config, calls one run_* function."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated

import typer

from pxd import __version__
from pxd.configs.attacks import ATTACK_NAMES, PAPER_ATTACKS, choices
from pxd.errors import (
    Interrupted,
    PxdError,
    arm_interrupts,
    exit_line,
    hold_unraisable_interrupts,
    interrupt_pending,
    on_sigint,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="PixelDefend in JAX: train density models and classifiers, attack, purify, score.",
    pretty_exceptions_enable=False,
)


def _finite(opt: str, eps: bool = False):
    """A callback refusing NaN/inf (they pass range tests) and, for an eps, non-integers."""
    def check(value):
        from pxd.configs.base import check_eps, check_finite

        if value is not None:
            if eps:
                check_eps(value, opt)
            else:
                check_finite(value, opt)
        return value

    return check


DataDir = Annotated[str | None, typer.Option("--data-dir", envvar="PXD_DATA_DIR", help=(
    "Folder with cifar-10-binary.tar.gz and/or Fashion-MNIST idx .gz files."))]
DensityOpt = Annotated[str | None, typer.Option(
    "--density", help="Density run dir or shipped model name (default: the zoo's).")]
Seed = Annotated[int, typer.Option("--seed", help="PRNG seed.")]
Json = Annotated[bool, typer.Option("--json", help="Print one machine-readable JSON object.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print results only.")]
Verbose = Annotated[bool, typer.Option(
    "--verbose", help="Also show third-party log messages and warnings.")]
Devices = Annotated[int | None, typer.Option(
    "--devices", min=1, help="Virtual CPU devices (default: one per core).")]
Distributed = Annotated[bool, typer.Option(
    "--distributed", help="Multi-host: call jax.distributed.initialize().")]
Steps = Annotated[int | None, typer.Option(min=1, help="Train this many steps.")]
Epochs = Annotated[float | None, typer.Option(help="Train this many epochs.",
                                               callback=_finite("--epochs"))]
TrainBatch = Annotated[int | None, typer.Option(min=1, help="Global batch size.")]

_ARGS: list[str] = []  # this invocation's arguments, recorded in reports

# What Ctrl-C says on commands that keep finished work.
_RESUME_HINT = dict.fromkeys(("purify", "train-density", "train-clf"),
                             "rerun with --resume to continue")
_RESUME_HINT["bench"] = "rerun the same command: finished work is cached"


def _check_lr(lr: float | None) -> None:
    """Both trainers' --lr: positive (NaN too is refused)."""
    if lr is not None and not lr > 0:
        raise PxdError(f"--lr must be positive, got {lr:g}")


def _setup(devices: int | None, distributed: bool = False, quiet: bool = False,
           json_mode: bool = False, verbose: bool = False):
    from pxd.engine import devices as dev
    from pxd.report.terminal import Reporter, quiet_third_party

    if verbose:
        quiet_third_party(False)
    dev.setup(devices, distributed, compile_cache=True)  # unless PXD_COMPILATION_CACHE=off
    arm_interrupts()  # JAX is loaded: Ctrl-C may now stop the command where it is
    if distributed and dev.processes()[0] != 0:  # process 0 reports for all
        return Reporter(silent=True)
    return Reporter(quiet=quiet, json_mode=json_mode)


def _config(name: str, /, **fields):
    """The command's frozen config (`pxd.configs.commands.<name>`) from its options."""
    from pxd.configs import commands
    from pxd.configs.base import from_dict

    return from_dict(getattr(commands, name), fields)


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
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
    data_dir: DataDir = None,
    devices: Devices = None,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """Score images by bits/dim under the PixelCNN (detection of adversarial inputs)."""
    if not bpd:
        raise PxdError("bits/dim is the only score pxd computes; drop --no-bpd")
    rep = _setup(devices, False, quiet, json_out, verbose)
    from pxd.commands.score import run_score

    run_score(_config("ScoreConfig", inputs=inputs, density=density, reference=reference,
                      plot_dir=plot, data_dir=data_dir, batch_size=batch_size), rep=rep)


@app.command("purify")
def purify(
    input: Annotated[str, typer.Argument(help="File, folder or dataset spec.")],
    out: Annotated[str | None, typer.Option(
        "--out", help="Output .npz, written when complete (default: INPUT.purified.npz "
        "beside the input).")] = None,
    eps: Annotated[float, typer.Option("--eps", callback=_finite("--eps", eps=True),
                                       help="eps_defend on the 0-255 scale.")] = 16,
    method: Annotated[str, typer.Option(help="pixeldefend or feature-squeeze.")] = "pixeldefend",
    density: DensityOpt = None,
    adaptive_threshold: Annotated[float | None, typer.Option(
        help="Adaptive PixelDefend: purify only images above this bits/dim.",
        callback=_finite("--adaptive-threshold"))] = None,
    grid: Annotated[str | None, typer.Option(help="PNG: inputs above purified.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    chunk: Annotated[int, typer.Option(min=1, help="Images per resumable chunk.")] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per device batch.")] = 32,
    data_dir: DataDir = None,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """Purify images with PixelDefend (greedy decode in the eps-ball) before classifying."""
    rep = _setup(devices, distributed, quiet, json_out, verbose)
    from pxd.commands.purify import run_purify

    run_purify(_config("PurifyConfig", input=input, out=out, eps=eps, method=method,
                       density=density, adaptive_threshold=adaptive_threshold, grid=grid,
                       resume=resume, chunk=chunk, batch_size=batch_size, data_dir=data_dir),
               rep=rep)


@app.command("zoo")
def zoo_cmd(
    export: Annotated[str | None, typer.Option(
        "--export", help="Add this run dir to the package's zoo (measured on the test split).")]
    = None,
    name: Annotated[str | None, typer.Option(help="Zoo name for --export.")] = None,
    default: Annotated[bool, typer.Option(help="Make the exported model the default.")] = False,
    train_command: Annotated[str, typer.Option(help="How the run was trained (card).")] = "",
    with_state: Annotated[bool, typer.Option(
        help="Also keep the training state (train-density/train-clf --resume-from).")]
    = False,
    overwrite: Annotated[bool, typer.Option(
        help="With --export: replace the zoo's model of the same --name.")] = False,
    data_dir: DataDir = None,
    import_openai: Annotated[str | None, typer.Option(
        "--import-openai", help="openai/pixel-cnn's PixelCNN++ checkpoint (V1 file or V2 "
        "prefix) to write as a density model dir --out.")] = None,
    out: Annotated[str | None, typer.Option(help="Directory for --import-openai.")] = None,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """List the models shipped with pxd and what pxd measured for them."""
    flags = {"--export": export, "--name": name, "--default": default, "--overwrite": overwrite,
             "--train-command": train_command, "--with-state": with_state}
    if import_openai is not None and (given := [k for k, v in flags.items() if v]):
        raise PxdError(f"--import-openai does not take {', '.join(given)}")
    if out is not None and import_openai is None:
        raise PxdError("--out is for --import-openai")
    if export is not None and not name:
        raise PxdError("--export needs --name")
    rep = _setup(None, False, quiet, json_out, verbose)
    from pxd.commands.zoo import run_zoo_export, run_zoo_import_openai, run_zoo_list

    if import_openai is not None:
        run_zoo_import_openai(_config("ZooImportConfig", checkpoint=import_openai, out=out or "",
                                      command=" ".join(["pxd"] + _ARGS)), rep=rep)
        return
    if export is not None:
        run_zoo_export(_config("ZooExportConfig", run_dir=export, name=name, default=default,
                               command=train_command, data_dir=data_dir,
                               with_state=with_state, overwrite=overwrite), rep=rep)
        return
    run_zoo_list(rep)


@app.command("train-density")
def train_density(
    out: Annotated[str, typer.Option("--out", help="Run directory (config, checkpoints).")],
    dataset: Annotated[str, typer.Option(help="cifar10 or fashion_mnist.")] = "cifar10",
    preset: Annotated[str, typer.Option(help="smoke, cpu or paper.")] = "cpu",
    epochs: Epochs = None,
    steps: Steps = None,
    hours: Annotated[float | None, typer.Option(
        help="Budget in hours: steps from this machine's measured speed.",
        callback=_finite("--hours"))] = None,
    schedule: Annotated[str | None, typer.Option(
        help="Learning rate: cosine (to 0 at the budget) or exponential.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.",
                                             callback=_finite("--lr"))] = None,
    init_from: Annotated[str | None, typer.Option(
        help="Start from this shipped model or model dir, its network included (fine-tune; "
        "the preset gives the recipe).")] = None,
    resume_from: Annotated[str | None, typer.Option(
        help="Continue a shipped model's own run (its saved training state) in --out.")]
    = None,
    batch_size: TrainBatch = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """Train the PixelCNN++ density model on clean images."""
    from pxd.configs.base import replace
    from pxd.configs.datasets import check_dataset, training_steps
    from pxd.configs.pixelcnn import density_config

    check_dataset(dataset)
    if hours is not None and (epochs is not None or steps is not None):
        raise PxdError("give one budget: --epochs, --steps or --hours")
    _check_lr(lr)
    cfg = density_config(dataset, preset, batch_size=batch_size, seed=seed, lr=lr,
                         schedule=schedule, init_from=init_from)
    steps = training_steps(dataset, epochs, steps, cfg.batch_size)
    cfg = replace(cfg, steps=steps)
    rep = _setup(devices, distributed, quiet, json_out, verbose)
    from pxd.commands.train import run_train_density

    run_train_density(cfg, out, resume=resume, hours=hours, keep_steps=steps is None,
                      resume_from=resume_from, data_dir=data_dir, rep=rep,
                      network_from_init=True)


@app.command("train-clf")
def train_clf(
    out: Annotated[str, typer.Option("--out", help="Run directory (config, checkpoints).")],
    dataset: Annotated[str, typer.Option(help="cifar10 or fashion_mnist.")] = "cifar10",
    arch: Annotated[str, typer.Option(help="resnet or vgg.")] = "resnet",
    training: Annotated[str, typer.Option(
        help="normal, adv-fgsm, adv-bim or label-smoothing.")] = "normal",
    preset: Annotated[str, typer.Option(help="smoke, cpu, wide (ResNet) or paper.")] = "cpu",
    epochs: Epochs = None,
    steps: Steps = None,
    batch_size: TrainBatch = None,
    lr: Annotated[float | None, typer.Option(
        help="Peak learning rate (e.g. lower for a warm start).",
        callback=_finite("--lr"))] = None,
    warmup_steps: Annotated[int | None, typer.Option(
        min=0, help="Steps of linear learning-rate warm-up (default: the preset's).")] = None,
    eval_every: Annotated[int | None, typer.Option(
        min=1, help="Evaluate and rewrite best/ every this many steps, with a checkpoint at "
        "least as often (default: the preset's).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out.")] = False,
    init_from: Annotated[str | None, typer.Option(
        help="Start from this classifier run dir or shipped model (warm start, same arch "
        "and preset).")] = None,
    resume_from: Annotated[str | None, typer.Option(
        help="Continue a shipped classifier's own run (its saved training state) in --out.")]
    = None,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """Train a classifier (ResNet or VGG; normal, adversarial or label-smoothing)."""
    from pxd.configs.base import replace
    from pxd.configs.classifier import clf_config, eval_every_fields
    from pxd.configs.datasets import check_dataset, training_steps

    check_dataset(dataset)
    _check_lr(lr)
    cfg = clf_config(dataset, arch, training, preset, batch_size=batch_size, seed=seed,
                     lr=lr, init_from=init_from, warmup_steps=warmup_steps)
    if eval_every is not None:
        cfg = replace(cfg, **eval_every_fields(cfg, eval_every))
    cfg = replace(cfg, steps=training_steps(dataset, epochs, steps, cfg.batch_size))
    rep = _setup(devices, distributed, quiet, json_out, verbose)
    from pxd.commands.train import run_train_clf

    run_train_clf(cfg, out, resume=resume, resume_from=resume_from,
                  keep_steps=epochs is None and steps is None, eval_every=eval_every,
                  data_dir=data_dir, rep=rep)


@app.command("attack")
def attack_cmd(
    input: Annotated[str, typer.Argument(
        help="Images (.npz/.npy/PNG/JPEG/folder) or a dataset spec like cifar10:test[:100].")],
    clf: Annotated[str | None, typer.Option(
        "--clf", help="Classifier run dir or shipped model name (default: the zoo's for the "
        "images' dataset; see pxd zoo).")] = None,
    attack: Annotated[str, typer.Option(
        "--attack", help=choices() + ".")] = "fgsm",
    eps: Annotated[float, typer.Option(
        "--eps-attack", callback=_finite("--eps-attack", eps=True),
        help="L-inf budget in pixel units (0..255).")] = 8.0,
    out: Annotated[str | None, typer.Option(
        "--out", help="Output .npz (default: INPUT.ATTACK-epsE.npz beside the input).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 100,
    steps: Annotated[int | None, typer.Option(min=1, help="Iterations (bim, pgd).")] = None,
    restarts: Annotated[int | None, typer.Option(min=1, help="Random restarts (pgd).")] = None,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """Craft adversarial examples against a trained classifier; writes an .npz."""
    rep = _setup(devices, distributed, quiet, json_out, verbose)
    from pxd.commands.attack import run_attack

    run_attack(_config("AttackConfig", input=input, clf=clf, attack=attack, eps=eps, out=out,
                       batch_size=batch_size, steps=steps, restarts=restarts, seed=seed,
                       data_dir=data_dir), rep=rep)


@app.command("bench")
def bench(
    attack: Annotated[str, typer.Option(
        "--attack", help=f"all ({','.join(PAPER_ATTACKS)}) or a comma list of "
        f"{','.join(ATTACK_NAMES)}.")] = "all",
    eps_attack: Annotated[str, typer.Option(
        "--eps-attack", help="Comma list of L-inf budgets, 0-255 scale.")] = "2,8,16",
    clf: Annotated[list[str] | None, typer.Option(
        "--clf", help="Classifier run dir or shipped model name; repeat for more rows; "
        "'all': every shipped classifier for the dataset (default: the zoo's default).")] = None,
    density: DensityOpt = None,
    defense: Annotated[str, typer.Option(
        "--defense", help="all or a comma list of none, feature-squeeze, pixeldefend, "
        "adaptive-pixeldefend.")] = "all",
    eps_defend: Annotated[float, typer.Option(callback=_finite("--eps-defend", eps=True),
                                              help="eps_defend, 0-255 scale.")] = 16,
    adaptive_threshold: Annotated[float | None, typer.Option(
        help="Bits/dim above which adaptive PixelDefend purifies (default: mean clean "
        "bits/dim of 256 held-out test images + 0.2).",
        callback=_finite("--adaptive-threshold"))] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="First N test images.")] = 100,
    dataset: Annotated[str | None, typer.Option(
        help="Dataset (default: the classifier's).")] = None,
    out: Annotated[str, typer.Option("--out", help="Output folder (cache inside).")] = "bench-out",
    adaptive_steps: Annotated[int, typer.Option(
        min=0, help="BPDA-PGD steps (0: no adaptive column).")] = 20,
    adaptive_n: Annotated[int | None, typer.Option(
        min=1, help="Images for the adaptive column (default: 50, at most N).")] = 50,
    adaptive_bpd_weight: Annotated[float, typer.Option(
        help="Weight of the bits/dim pull in the adaptive PixelDefend attack.",
        callback=_finite("--adaptive-bpd-weight"))] = 1.0,
    restarts: Annotated[int, typer.Option(min=1, help="BPDA-PGD random restarts.")] = 1,
    attack_opt: Annotated[list[str] | None, typer.Option(
        "--attack-opt", help="ATTACK.OPTION=VALUE, repeatable (e.g. cw.search_steps=2).")] = None,
    speed: Annotated[bool, typer.Option(
        "--speed", help="Throughput benchmark instead (make bench); --out FILE.json.")] = False,
    reuse_stale_cache: Annotated[bool, typer.Option(
        "--reuse-stale-cache", help="Reuse cached arrays made by older code (the report "
        "says so) instead of recomputing them.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
    paper_images: Annotated[int, typer.Option(
        min=0, help="With --speed: batch for the paper preset's cached purify (0: skip; "
                    "64-256 on a GPU; below 8 the path is weight-bandwidth bound).")] = 16,
    data_dir: DataDir = None,
    seed: Seed = 0,
    devices: Devices = None,
    distributed: Distributed = False,
    json_out: Json = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """Table 1 of the paper: attacks x defences x eps, adaptive BPDA, detection, sanity."""
    from pxd.commands import bench as bench_cmd

    attack_opts = bench_cmd.parse_attack_opts(attack_opt)
    rep = _setup(devices, distributed, quiet, json_out, verbose)
    if speed:
        bench_cmd.run_speed(_config("SpeedConfig", out=out, density=density,
                                    batch_size=batch_size, data_dir=data_dir,
                                    paper_images=paper_images), rep=rep)
        return
    bench_cmd.run_bench(_config(
        "BenchConfig", attacks=attack, eps_attack=eps_attack, clfs=clf, density=density,
        defenses=defense, eps_defend=eps_defend, adaptive_threshold=adaptive_threshold, n=n,
        dataset=dataset, out=out, adaptive_steps=adaptive_steps, adaptive_n=adaptive_n,
        adaptive_bpd_weight=adaptive_bpd_weight, restarts=restarts, seed=seed,
        batch_size=batch_size, attack_opts=attack_opts, command=" ".join(["pxd"] + _ARGS),
        data_dir=data_dir, reuse_stale_cache=reuse_stale_cache), rep=rep)


# --------------------------------------------------------------------------- entry point

def _command_name(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input gives one line on stderr and exit 2, never a traceback;
    Ctrl-C gives `pxd: interrupted` and exit 130."""
    args = sys.argv[1:] if argv is None else list(argv)
    _ARGS[:] = args
    debug = os.environ.get("PXD_DEBUG") == "1"
    from pxd.report.terminal import quiet_third_party

    quiet_third_party(not (debug or "--verbose" in args))
    cmd = _command_name(args)
    # Our own exception, not KeyboardInterrupt: typer turns that into a silent exit.
    try:
        old_handler = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: keep Python's KeyboardInterrupt
        old_handler = None
    old_unraisable = sys.unraisablehook
    sys.unraisablehook = hold_unraisable_interrupts(old_unraisable)
    code = 0
    # A Ctrl-C that pxd.__main__'s handler held during the imports stays pending.
    arm_interrupts(False, forget=old_handler is not on_sigint)
    try:
        from pxd.configs.env import check_env

        check_env()  # before JAX, which parses JAX_NUM_CPU_DEVICES at import
        rv = app(args=args, prog_name="pxd", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except PxdError as e:
        if debug:
            raise
        print(f"pxd: error: {' '.join(str(e).split())}", file=sys.stderr)
        code = 2
    except (Interrupted, KeyboardInterrupt):
        hint = _RESUME_HINT.get(cmd or "")
        print("pxd: interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        code = 130
    except Exception as e:  # typer/click's own exceptions (vendored or not), and the unexpected
        line, code, ours = exit_line(e)
        if debug and ours:
            raise
        if line:
            print(line, file=sys.stderr)
    finally:
        sys.unraisablehook = old_unraisable
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    if interrupt_pending() and code == 0:  # Ctrl-C held until the end: still an interrupt
        print("pxd: interrupted", file=sys.stderr)
        code = 130
    if code in (2, 130) and argv is None:
        # Skip the interpreter's teardown: it segfaulted under an XLA compile that Ctrl-C
        # stopped, and printed tensorstore tracebacks after a failed (disk full) save.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
