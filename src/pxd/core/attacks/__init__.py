"""Adversarial attacks of PixelDefend's Appendix A, on the 0..255 pixel scale.

A *logits function* maps float32 images (N, H, W, C) in [0, 255] to logits (N, K); it is
a closure over parameters in eval mode, so examples never interact. Every attack has the
signature `attack(logits_fn, x, y, *, eps, key, **options) -> x_adv` with

- x: uint8 (or integral float32) images (N, H, W, C); y: int labels (N,);
- eps: L-inf budget in pixel units, a python float or a per-example array (N,);
- x_adv: uint8, with |x_adv - x| <= floor(eps) element-wise and values in [0, 255].

The integer budget floor(eps) keeps every iterate on the integer grid inside the ball.

By family, one module each:

- grid.py: what they share (budget, project, finish, xent, noise, Kurakin's step count) and
  the staging that runs one attack eagerly or under an outer jit;
- sign.py: RAND, FGSM, BIM, and PGD, the one projected-sign loop with a pluggable oracle
  (BPDA in `pxd.core.adaptive` is PGD with its own oracle);
- deepfool_l2.py, cw_l2.py: the minimal-perturbation attacks;
- adversarial.py: adversarial training's batch (Appendix C);
- registry.py: `ATTACKS`, name -> `Attack` (function, title, how to run it).

Host loops that shrink a batch to its still-active examples are `pxd.engine.active`.
"""

from pxd.core.attacks.adversarial import adversarial_batch, training_eps
from pxd.core.attacks.cw_l2 import CWRound, CWState, cw, cw_raw
from pxd.core.attacks.deepfool_l2 import DeepFoolState, deepfool, deepfool_raw
from pxd.core.attacks.grid import (
    HostBatch,
    LogitsFn,
    WholeBatch,
    as_pytree,
    bim_steps,
    budget,
    finish,
    loss_grad,
    pgd_step_size,
    project,
    staged,
    traced,
    uniform_int_noise,
    xent,
)
from pxd.core.attacks.registry import ATTACKS, EPS_FREE, Attack
from pxd.core.attacks.sign import (
    PGDState,
    SignState,
    bim,
    fgsm,
    keep_best,
    pgd,
    pgd_loop,
    rand,
    sign_init,
    sign_update,
    xent_oracle,
)

__all__ = [
    "ATTACKS", "EPS_FREE", "Attack", "CWRound", "CWState", "DeepFoolState",
    "HostBatch", "LogitsFn", "PGDState", "SignState", "WholeBatch", "adversarial_batch",
    "as_pytree", "bim", "bim_steps", "budget", "cw", "cw_raw", "deepfool", "deepfool_raw",
    "fgsm", "finish", "keep_best", "loss_grad", "pgd", "pgd_loop", "pgd_step_size",
    "project", "rand", "sign_init", "sign_update", "staged", "traced", "training_eps",
    "uniform_int_noise", "xent", "xent_oracle",
]
