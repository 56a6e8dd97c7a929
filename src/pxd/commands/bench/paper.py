"""The paper's Table 1 and the bench's fixed vocabulary: attacks, defences, column titles,
the adaptive threshold's margin, and how a cell is printed ('07/00/00')."""

from __future__ import annotations

from pxd.configs.attacks import ATTACK_NAMES
from pxd.configs.attacks import PAPER_ATTACKS as PAPER_ATTACKS  # `--attack all`
from pxd.core.attacks import ATTACKS, EPS_FREE
from pxd.core.attacks import bim_steps as bim_steps  # Kurakin's count, written once there

DEFENCES = ("none", "feature-squeeze", "pixeldefend", "adaptive-pixeldefend")


KNOWN_ATTACKS = ATTACK_NAMES  # the paper's five, then pgd


PAPER_EPS = (2, 8, 16)


TITLES = {"clean": "CLEAN", **{a: spec.title for a, spec in ATTACKS.items()},
          "strongest": "STRONGEST ATTACK", "worst": "WORST CASE PER IMAGE",
          "adaptive": "ADAPTIVE (BPDA)"}


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


# DeepFool and CW find a minimal perturbation, then clip it to the eps-ball (Appendix A).
EPS_FREE_ATTACKS = EPS_FREE


ADAPTIVE_METHOD = (
    "BPDA-PGD (Athalye et al. 2018): forward through the real defence (exact PixelDefend "
    "decode, feature squeezing), backward as the identity; sign steps of max(1, round(eps/4)) "
    "on the integer grid, random start, per-image worst case over iterates and restarts judged "
    "by the real defended classifier. Adaptive PixelDefend: the direction adds the exact "
    "bits/dim gradient (L1-normalised, weight w) wherever bits/dim > T, so the attack also "
    "seeks to slip under the threshold; its first restart starts at the clean image. "
    "No defence: plain PGD."
)


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
