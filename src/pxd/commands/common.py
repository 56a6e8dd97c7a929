"""What several commands share: reading an input (dataset spec or image files) and bits/dim
with a progress bar."""

from __future__ import annotations

import os

import numpy as np

from pxd.report.terminal import Reporter
from pxd.storage import data, imageio


def load_input(spec: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A dataset spec (`cifar10:test[:500]`) or an image file/folder -> (x uint8 NHWC, y)."""
    if data.is_dataset_spec(spec) and not os.path.exists(spec):
        return data.load(spec, data_dir)
    return imageio.read_images(spec)


def bpd_with_progress(density, x: np.ndarray, rep: Reporter, label: str,
                      batch_size: int = 64) -> np.ndarray:
    """Bits/dim through the public API, with a progress bar."""
    from pxd import api

    with rep.progress(f"bits/dim {label}", total=len(x)) as advance:
        return api.bits_per_dim(x, density=density, batch_size=batch_size,
                                on_batch=lambda k: advance(k))
