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


# --------------------------------------------------------------------------- shared data

import pytest  # noqa: E402

from pxd.storage import data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def local_data_dir() -> str | None:
    """PXD_DATA_DIR if set (empty: no local data, as on a bare machine), else
    <repo>/../shared/data if it exists."""
    if "PXD_DATA_DIR" in os.environ:
        return os.environ["PXD_DATA_DIR"] or None
    d = REPO.parent / "shared" / "data"
    return str(d) if d.is_dir() else None


def cifar_dir() -> str:
    """The folder holding CIFAR-10's official archive, or skip the test saying why."""
    d = local_data_dir()
    if d is None or not (
        os.path.isfile(os.path.join(d, data.CIFAR_TARBALL))
        or os.path.isdir(os.path.join(d, data.CIFAR_FOLDER))
    ):
        pytest.skip(
            "CIFAR-10 not found: set PXD_DATA_DIR to a folder holding cifar-10-binary.tar.gz"
        )
    return d


def fashion_dir() -> str | None:
    """Folder argument for data.load that finds Fashion-MNIST (None: the system folder)."""
    name = data._FASHION_FILES["train"][0]
    system = os.environ.get(data.ENV_FASHION_DIR) or data.FASHION_MNIST_SYSTEM_DIR
    for d in (local_data_dir(), system):
        if d and os.path.isfile(os.path.join(d, name)):
            return None if d == system else d
    pytest.skip(
        "Fashion-MNIST not found: apt-get install dataset-fashion-mnist, or set PXD_DATA_DIR "
        "to a folder holding its four idx .gz files"
    )


@pytest.fixture(scope="session")
def cifar() -> str:
    """CIFAR-10's folder for data.load (the test skips with the reason when absent)."""
    return cifar_dir()


@pytest.fixture(scope="session")
def fashion() -> str | None:
    return fashion_dir()


# --------------------------------------------------------------------------- scheduling

FIRST = ("test_interrupt.py",)  # the slowest file (real-signal subprocess tests)


def pytest_collection_modifyitems(config, items):
    """For `make test` (pytest-xdist, --dist loadfile: a file stays on one worker, so its
    module fixtures are built once): the slowest file goes first, so one worker runs it while
    the other works through the rest, instead of it running alone at the end."""
    items.sort(key=lambda it: it.path.name not in FIRST)
