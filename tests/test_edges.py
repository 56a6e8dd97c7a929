"""Boundaries tested exactly at their edge, on cases where a one-line slip shows: rounding
to the pixel grid (round, not floor), and the bench's "paper cell inside our interval"
rule with its +-0.5 for percents printed whole. No model, no data: milliseconds."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from pxd.commands.bench.rows import against_paper, intervals
from pxd.core import attacks
from pxd.core.metrics import wilson


def test_finish_rounds_to_the_nearest_pixel_then_clips():
    """Offsets whose floor, ceil and round all differ somewhere; halves go to even, as
    jnp.round does; the ball (eps 8) and [0, 255] clip before the cast."""
    x0 = np.array([100.0] * 9 + [3.0, 250.0], np.float32)
    d = np.array([0.4, 0.5, 0.6, 1.5, -0.4, -0.6, 2.49, 7.6, 9.0, -5.7, 7.7], np.float32)
    want = np.array([100, 100, 101, 102, 100, 99, 102, 108, 108, 0, 255], np.uint8)
    got = np.asarray(attacks.finish(jnp.asarray((x0 + d)[None]), jnp.asarray(x0[None]),
                                    jnp.full((1,), 8.0)))
    np.testing.assert_array_equal(got[0], want)
    assert got.dtype == np.uint8


def test_every_attack_output_is_rounded_not_truncated():
    """A random linear 3-class model: DeepFool's float result has fractional parts on both
    sides of .5; the attack's uint8 output must be that result rounded (a floor moves
    about half of the sub-pixels, as the one-line slip of issue 27 did)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)

    def logits_fn(x):
        return jnp.einsum("bhwc,khwc->bk", x / 255.0, jnp.asarray(w))

    x = rng.integers(60, 200, (2, 4, 4, 3)).astype(np.uint8)
    y = np.asarray(jnp.argmax(logits_fn(x.astype(np.float32)), -1))
    raw = np.asarray(attacks.deepfool_raw(logits_fn, x.astype(np.float32), y, quantize=True))
    frac = raw - np.floor(raw)
    assert (frac > 0.6).sum() >= 10 and (frac < 0.4).sum() >= 10  # rounding matters here
    out = np.asarray(attacks.deepfool(logits_fn, x, y, eps=255.0))
    far = np.abs(frac - 0.5) > 0.05  # no tie-breaking doubt
    np.testing.assert_array_equal(out[far], np.clip(np.round(raw), 0, 255)[far])


def test_deepfool_default_overshoot_as_called_by_default():
    """DeepFool called without options (as `pxd.attack(..., "deepfool")` calls it) uses the
    published overshoot 0.02: its L2 is 1.02 times the exact distance to the boundary of
    a linear two-class model (0: the boundary itself, which `quantize` may not cross)."""
    w = np.zeros((2, 4, 4, 3), np.float32)
    w[0] = 1.0

    def logits_fn(x):
        return jnp.einsum("bhwc,khwc->bk", x, jnp.asarray(w)) - jnp.array([24.0 * 48, 0.0])

    x = np.full((1, 4, 4, 3), 30.0, np.float32)  # logit 0 - logit 1 = 48 * (30 - 24) > 0
    dist = 48 * 6 / np.sqrt(48)  # |margin| / |gradient of the margin|
    raw = np.asarray(attacks.deepfool_raw(logits_fn, x, np.array([0])))  # all defaults
    l2 = float(np.linalg.norm(raw - x))
    assert l2 == pytest.approx(1.02 * dist, rel=2e-3)
    # the attack itself (what pxd.attack and the bench call), from 60: each sub-pixel
    # steps 36 to the boundary at 24, times 1.02 is 36.72, so 23 on the grid (24 without)
    x = np.full((1, 4, 4, 3), 60, np.uint8)
    out = np.asarray(attacks.deepfool(logits_fn, x, np.array([0]), eps=255.0))
    np.testing.assert_array_equal(out, np.full_like(x, 23))


@pytest.mark.parametrize("count,paper,inside", [
    ((4, 10), 69, True),   # high edge 68.73%: 69 is inside only with the +-0.5
    ((4, 10), 70, False),  # 69.5 > 68.73: outside, the rule is no wider than 0.5
    ((6, 10), 31, True),   # low edge 31.27%: 31 is inside only with the +-0.5
    ((6, 10), 30, False),  # 30.5 < 31.27
    ((7, 10), 40, True),   # inside either way
    ((5, 10), 77, False),  # high edge 76.34%: inside with a rule of +-1, not +-0.5
    ((4, 10), 16, False),  # low edge 16.82%: the same on the low side
])
def test_paper_cell_inside_our_interval_at_its_edges(count, paper, inside):
    k, n = count
    lo, hi = wilson(k, n)
    assert (round(100 * lo, 2), round(100 * hi, 2)) == {
        (4, 10): (16.82, 68.73), (5, 10): (23.66, 76.34), (6, 10): (31.27, 83.18),
        (7, 10): (39.68, 89.22)}[count]
    ci = intervals({"clean": {2: [k, n], 8: [k, n], 16: [k, n]}})
    (check, _, _) = against_paper(ci, {"clean": f"{paper}/{paper}/{paper}"})
    assert check["inside"] is inside and check["paper"] == paper and check["eps"] == 2


def test_paper_cell_exactly_half_a_percent_from_our_interval_is_inside():
    """A printed 70 stands for [69.5, 70.5]%: an interval ending exactly at 69.5% or
    starting exactly at 70.5% meets it (closed intervals on both sides)."""
    assert 0.695 * 100 == 69.5 and 0.705 * 100 == 70.5  # exact in binary floating point
    ci = {"clean": {2: [0.2, 0.695], 8: [0.705, 0.9], 16: [0.2, 0.694]}}
    checks = against_paper(ci, {"clean": "70/70/70"})
    assert [c["inside"] for c in checks] == [True, True, False]
