"""The attacks' names, without importing JAX: the CLI's help and choices, the API's checks
and the bench's `--attack all` read them here, and `pxd.core.attacks.registry` refuses to
import if its entries and these names ever part (so a new attack is one entry there and one
name here, and a test that forgets either fails)."""

from __future__ import annotations

PAPER_ATTACKS = ("rand", "fgsm", "bim", "deepfool", "cw")  # Table 1's, `--attack all`
ATTACK_NAMES = PAPER_ATTACKS + ("pgd",)  # the registry's order


def choices() -> str:
    """'rand, fgsm, ..., cw or pgd' for a help text."""
    return ", ".join(ATTACK_NAMES[:-1]) + " or " + ATTACK_NAMES[-1]
