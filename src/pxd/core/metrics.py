"""Detection metrics (numpy): ROC curve and AUC with ties handled, per-image p-values; the
Wilson interval for an accuracy measured on n images."""

from __future__ import annotations

import numpy as np


def roc_curve(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) as the threshold sweeps high to low."""
    scores = np.concatenate([neg, pos]).astype(np.float64)
    labels = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(lab)[distinct]
    fp = np.cumsum(1 - lab)[distinct]
    tpr = np.r_[0.0, tp / max(len(pos), 1)]
    fpr = np.r_[0.0, fp / max(len(neg), 1)]
    return fpr, tpr


def roc_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(score(pos) > score(neg)) + 0.5 P(equal): the Mann-Whitney statistic."""
    neg = np.asarray(neg, np.float64)
    pos = np.asarray(pos, np.float64)
    allv = np.concatenate([neg, pos])
    ranks = _average_ranks(allv)
    r_pos = ranks[len(neg) :].sum()
    n1, n0 = len(pos), len(neg)
    return float((r_pos - n1 * (n1 + 1) / 2) / (n1 * n0))


def _average_ranks(a: np.ndarray) -> np.ndarray:
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a), np.float64)
    sa = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sa[j + 1] == sa[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def p_values(reference: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Fraction of reference scores at least as high as each score (Figure 2's test)."""
    ref = np.sort(np.asarray(reference, np.float64))
    idx = np.searchsorted(ref, np.asarray(scores, np.float64), side="left")
    return (len(ref) - idx) / len(ref)


def summary(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    q = np.quantile(v, [0.05, 0.25, 0.5, 0.75, 0.95])
    return {"n": int(len(v)), "mean": float(v.mean()), "median": float(q[2]),
            "q05": float(q[0]), "q25": float(q[1]), "q75": float(q[3]), "q95": float(q[4])}


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default). Unlike the normal
    approximation it stays inside [0, 1] and is not empty at k = 0 or k = n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, mid - half)), float(min(1.0, mid + half))
