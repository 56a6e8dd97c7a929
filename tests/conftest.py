"""Two virtual CPU devices for every test, so single-device assumptions fail loudly; the
offline data beside the checkout (as `make test` sets it) when PXD_DATA_DIR is unset."""

import os
from pathlib import Path

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "2")
_shared = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if "PXD_DATA_DIR" not in os.environ and _shared.is_dir():
    os.environ["PXD_DATA_DIR"] = str(_shared)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)
