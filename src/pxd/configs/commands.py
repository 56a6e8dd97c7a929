"""One typed, frozen config per command that is not a trainer (the trainers' configs are in
pixelcnn.py and classifier.py). cli.py builds them from the options; each `run_*` takes one
(or the same fields as keywords, checked by `configs.base.from_dict`: unknown keys are errors).

Saved beside the outputs, resolved (defaults filled in): `config.json` inside an output
folder (bench's OUT, score's --plot folder, a training run), or a `config` member holding
the same JSON text inside a single .npz output (purify, attack), so that a command writes no
file beside the one it was asked for. Read back with `configs.base.load_json` or
`configs.base.loads`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PurifyConfig:
    """`pxd purify INPUT`: PixelDefend (eps on 0..255) or feature squeezing, chunked."""

    input: str
    out: str | None = None  # .npz; None: INPUT.purified.npz beside the input
    eps: float = 16
    method: str = "pixeldefend"  # or feature-squeeze
    density: str | None = None  # run dir or shipped name; None: the shipped default
    adaptive_threshold: float | None = None  # bits/dim; purify only images above it
    grid: str | None = None  # .png of inputs above purified
    resume: bool = False
    chunk: int = 256  # images per resumable chunk
    batch_size: int = 32
    data_dir: str | None = None


@dataclass(frozen=True)
class ScoreConfig:
    """`pxd score INPUTS`: bits/dim, and detection against a clean reference set."""

    inputs: tuple[str, ...]
    density: str | None = None
    reference: str | None = None  # dataset spec or files: adds ROC AUC and p-values
    plot_dir: str | None = None  # PNG figures (and this config) go here
    batch_size: int = 64
    data_dir: str | None = None


@dataclass(frozen=True)
class AttackConfig:
    """`pxd attack INPUT`: adversarial examples against a classifier, written to an .npz."""

    input: str
    clf: str | None = None  # run dir or shipped name; None: the shipped default
    attack: str = "fgsm"
    eps: float = 8.0  # L-inf budget, 0..255
    out: str | None = None  # None: INPUT.ATTACK-epsE.npz beside the input
    batch_size: int = 100
    steps: int | None = None  # bim, pgd
    restarts: int | None = None  # pgd
    seed: int = 0
    data_dir: str | None = None


@dataclass(frozen=True)
class ZooExportConfig:
    """`pxd zoo --export RUN_DIR --name NAME`. Not saved as a file: a zoo entry's config.json
    is the model's training config; its card records `train_command` and the figures."""

    run_dir: str
    name: str
    default: bool = False
    command: str = ""  # how the run was trained, for the card
    with_state: bool = False  # keep the training state (train-density --resume-from)
    data_dir: str | None = None
    overwrite: bool = False  # replace an entry of the same name


@dataclass(frozen=True)
class ZooImportConfig:
    """`pxd zoo --import-openai CKPT --out DIR`: openai/pixel-cnn's PixelCNN++ checkpoint
    (V1 file or V2 prefix) as a pxd density model directory. Not saved: the directory's
    config.json is the model's, its card.json records the source and this command."""

    checkpoint: str
    out: str
    command: str = ""  # the command line, for the card


@dataclass(frozen=True)
class BenchConfig:
    """`pxd bench`: Table 1. Lists stay as the user gave them ('all', '2,8,16'); the run
    parses them (`commands.bench.options`) and records the parsed values in results.json."""

    attacks: str = "all"
    eps_attack: str = "2,8,16"
    clfs: tuple[str, ...] | None = None  # run dirs, shipped names or 'all'; None: default
    density: str | None = None
    defenses: str = "all"
    eps_defend: float = 16
    adaptive_threshold: float | None = None  # None: mean clean bits/dim + 0.2
    n: int = 100
    dataset: str | None = None  # None: the classifier's
    out: str = "bench-out"
    adaptive_steps: int = 20  # 0: no adaptive column
    adaptive_n: int | None = 50
    adaptive_bpd_weight: float = 1.0
    restarts: int = 1
    seed: int = 0
    batch_size: int = 32
    attack_opts: dict | None = None  # {attack: {option: value}}
    command: str = ""  # the command line, for the report
    data_dir: str | None = None
    reuse_stale_cache: bool = False  # serve cached arrays made by older code (reported)


@dataclass(frozen=True)
class SpeedConfig:
    """`pxd bench --speed`: throughput against baselines, written to one JSON file."""

    out: str = "bench-out"  # a .json path, or a folder for OUT/speed.json
    density: str | None = None
    batch_size: int = 32
    data_dir: str | None = None
    paper_images: int = 16  # the paper preset's cached purify batch (0: skip that part)
