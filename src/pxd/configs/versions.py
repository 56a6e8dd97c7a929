"""Versions of the code that makes each kind of array the bench caches.

Every cached array records its kind's version and pxd's; an array of another version is
recomputed (unless `pxd bench --reuse-stale-cache`). Bump a constant when a change can move
any bit of that kind of array (its maths, rounding, key derivation, batching), not for
speed-only or cosmetic changes. Note the bump and why on the line.
"""

from __future__ import annotations

# oblivious attacks: core/attacks.py, engine/batched.craft (keys, batching, grid rounding)
# 2: classifiers apply with guard images; one device program per chunk (determinism)
ATTACK = 2
# PixelDefend purification: core/purify.py, engine/batched.purify_batches
# 2: purifiers run with guard images; one device program per chunk (determinism)
PURIFY = 2
# bits/dim: models/pixelcnn.py, models/mixture.py, core/likelihood.py
# 2: bits/dim with guard images; one device program per chunk (determinism)
BPD = 2
# feature squeezing: core/squeeze.feature_squeeze (not cached; recorded in reports)
SQUEEZE = 1
# end-to-end BPDA-PGD: core/adaptive.py
# 2: adaptive PixelDefend's bits/dim gradient in its own program (issue 27 determinism fix)
# 3: guard images in the classifier and purifier; one device program per chunk
# 4: guard images in adaptive PixelDefend's bits/dim too
BPDA = 4
# classifier predictions: engine/batched.predict (not cached; recorded in reports)
# 2: classifiers apply with guard images; one device program per chunk
PREDICT = 2

# the bench cache's kinds -> the version of the code that makes them
CACHED = {"attacks": ATTACK, "purified": PURIFY, "bpd": BPD, "bpda": BPDA}
# every kind a bench report names
ALL = dict(CACHED, squeeze=SQUEEZE, predictions=PREDICT)
