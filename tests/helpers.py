"""Small helpers several test files share (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")


def load_tool(name: str):
    """tools/NAME.py as a module (tools/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def backend_compiles() -> Iterator[list[str]]:
    """A list that grows by one per XLA backend compile inside the block (JAX's own event);
    the listener is removed after."""
    from jax import monitoring

    seen: list[str] = []

    def count(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(event)

    monitoring.register_event_duration_secs_listener(count)
    try:
        yield seen
    finally:
        monitoring.unregister_event_duration_listener(count)


def train_smoke_models(root, data_dir: str, *, steps: int, eval_n: int) -> dict:
    """A smoke-preset CIFAR-10 PixelCNN and ResNet trained `steps` steps into `root`:
    {"density": dir, "clf": dir, "data_dir": data_dir}."""
    from pxd.commands.train import run_train_clf, run_train_density
    from pxd.configs.classifier import clf_config
    from pxd.configs.pixelcnn import density_config

    dens, clf = os.path.join(root, "density"), os.path.join(root, "clf")
    run_train_density(density_config("cifar10", "smoke", steps=steps, eval_n=eval_n), dens,
                      data_dir=data_dir)
    run_train_clf(clf_config("cifar10", "resnet", "normal", "smoke", steps=steps,
                             eval_n=eval_n, test_n=eval_n), clf, data_dir=data_dir)
    return dict(density=dens, clf=clf, data_dir=data_dir)
