"""The datasets pxd knows: image shape, classes and split sizes (static facts, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pxd.errors import PxdError


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; also readable dict-style (`info["shape"]`)."""

    name: str
    shape: tuple[int, int, int]  # (H, W, C) of one image
    num_classes: int
    class_names: tuple[str, ...]
    splits: dict[str, int]  # split name -> number of examples
    tfds_name: str
    download_url: str  # tfds downloads from here; probed first to fail fast offline

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        shape=(32, 32, 3),
        num_classes=10,
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        splits={"train": 50000, "test": 10000},
        tfds_name="cifar10",
        download_url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        shape=(28, 28, 1),
        num_classes=10,
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        splits={"train": 60000, "test": 10000},
        tfds_name="fashion_mnist",
        download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}


def training_steps(dataset: str, epochs: float | None, steps: int | None,
                   batch_size: int) -> int | None:
    """--epochs or --steps as a step count of `batch_size` images (None: the preset's);
    the one epochs -> steps conversion, for every trainer."""
    if epochs is not None and steps is not None:
        raise PxdError("give --epochs or --steps, not both")
    if epochs is not None:
        if not epochs > 0:
            raise PxdError(f"--epochs must be positive, got {epochs:g}")
        return max(1, round(epochs * DATASETS[dataset].splits["train"] / batch_size))
    return steps


def check_dataset(dataset: str) -> None:
    """A one-line error for a dataset pxd does not know."""
    if dataset not in DATASETS:
        raise PxdError(f"unknown dataset '{dataset}' (choose from {', '.join(DATASETS)})")
