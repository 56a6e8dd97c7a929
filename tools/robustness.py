"""Clean, FGSM and BIM accuracy (eps 2/8/16) of classifiers on the first N CIFAR-10 test
images, through the public API (`pxd.attack`, `Classifier.predict`).

    python tools/robustness.py --n 500 resnet-c10-normal resnet-c10-adv-bim [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

import pxd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clfs", nargs="+", help="shipped names or train-clf run dirs")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args()
    x, y = pxd.load_dataset(f"cifar10:test[:{a.n}]", data_dir=a.data_dir)
    for name in a.clfs:
        clf = pxd.load_classifier(name)
        row = {"clean": float(np.mean(clf.predict(x) == y))}
        for attack in ("fgsm", "bim"):
            for eps in (2, 8, 16):
                xa = pxd.attack(x, y, attack, eps=eps, clf=clf)
                row[f"{attack}{eps}"] = float(np.mean(clf.predict(xa) == y))
        print(name, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
