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

# Files slowest first, by their summed test times (`pytest --durations=0`, 2026-11-26):
# purify ~320 s, interrupt 245, bench 220, train_density 180, certificates 160, attacks 150,
# ... (two busy cores). A file not listed runs after these.
BY_COST = ("test_purify.py", "test_interrupt.py", "test_bench.py", "test_bench_cache.py",
           "test_train_density.py",
           "test_distributed.py",
           "test_certificates.py", "test_attacks.py", "test_pixelcnn.py", "test_openai_import.py",
           "test_api.py",
           "test_ux.py", "test_cli.py", "test_clf.py", "test_zoo.py", "test_classifiers.py",
           "test_shipped.py", "test_configs.py", "test_data.py", "test_layout.py",
           "test_imageio.py")


def pytest_collection_modifyitems(config, items):
    """For `make test` (pytest-xdist, --dist loadfile --no-loadscope-reorder: a file stays on
    one worker, so its module fixtures are built once, and files are handed out in this
    order): slowest file first, each idle worker taking the next (longest-processing-time
    first), so the two workers finish within a small file of each other. xdist's default
    order (most tests first) left one worker up to a minute behind."""
    rank = {name: i for i, name in enumerate(BY_COST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(BY_COST)))
