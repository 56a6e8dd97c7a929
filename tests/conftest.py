"""Two virtual CPU devices for every test, so single-device assumptions fail loudly."""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 2)
