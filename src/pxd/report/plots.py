"""Figures (matplotlib, headless): BPD histograms (paper Fig. 1), ROC curves (Fig. 2),
accuracy against epsilon. Files are written atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pxd.storage.files import atomic_path  # noqa: E402


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)


def bpd_histograms(path: str, sets: dict[str, list[float]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, vals in sets.items():
        ax.hist(vals, bins=40, alpha=0.5, density=True, label=name)
    ax.set_xlabel("bits per dimension")
    ax.set_ylabel("density")
    ax.legend()
    _save(fig, path)


def roc_curves(path: str, curves: dict[str, tuple], title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def accuracy_vs_eps(path: str, eps: list[float], series: dict[str, list[float]],
                    title: str = "") -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, acc in series.items():
        ax.plot(eps, acc, marker="o", label=name)
    ax.set_xlabel("epsilon (0-255 scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
