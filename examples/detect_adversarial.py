"""Detecting adversarial images by their bits/dim under the PixelCNN (the paper's Fig. 2).

Run: python examples/detect_adversarial.py [N]   (CIFAR-10 from PXD_DATA_DIR or tfds)
"""

import sys

import numpy as np

import pxd

n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
density = pxd.load_density()
reference, _ = pxd.load_dataset("cifar10:train[:256]")  # clean images to calibrate on
x, y = pxd.load_dataset(f"cifar10:test[:{n}]")

ref_bpd = pxd.bits_per_dim(reference, density=density)
clean_bpd = pxd.bits_per_dim(x, density=density)
print(f"clean test images: {clean_bpd.mean():.3f} bits/dim (reference {ref_bpd.mean():.3f})")
for attack in ("fgsm", "bim"):
    adv_bpd = pxd.bits_per_dim(pxd.attack(x, y, attack, eps=8), density=density)
    auc = pxd.roc_auc(clean_bpd, adv_bpd)  # higher bits/dim = more suspicious
    flagged = np.mean(pxd.p_values(ref_bpd, adv_bpd) < 0.05)
    print(f"{attack:5s} eps 8: {adv_bpd.mean():.3f} bits/dim, ROC AUC {auc:.3f}, "
          f"{flagged:.0%} flagged at p < 0.05")
