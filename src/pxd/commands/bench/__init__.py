"""`pxd bench`: Table 1 of the paper (run.py) and `--speed` (speed.py)."""

from pxd.commands.bench.run import *  # noqa: F403
from pxd.commands.bench.run import _load_classifiers  # noqa: F401
