"""PixelDefend in front of a classifier you already have.

Run: python examples/purify_before_classifier.py [N]   (CIFAR-10 from PXD_DATA_DIR or tfds)

`my_classifier` stands for your own model: any function from uint8 images (N, 32, 32, 3)
to logits. Here it wraps the shipped ResNet; a PyTorch model would be
`lambda x: torch_model(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).numpy()`.
"""

import sys

import numpy as np

import pxd

n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
x, y = pxd.load_dataset(f"cifar10:test[:{n}]")
clf = pxd.load_classifier()  # shipped default for CIFAR-10


def my_classifier(images: np.ndarray) -> np.ndarray:
    return clf.logits(images)


def accuracy(images: np.ndarray) -> float:
    return float(np.mean(my_classifier(images).argmax(-1) == y))


# An oblivious attack, crafted against the classifier alone (the paper's setting).
x_adv = pxd.attack(x, y, "bim", eps=8, clf=clf)
density = pxd.load_density()  # load once, reuse below
for name, images in (("clean", x), ("BIM eps 8", x_adv)):
    purified = pxd.purify(images, eps=16, density=density)
    print(f"{name:10s} accuracy {accuracy(images):6.1%}   after PixelDefend "
          f"{accuracy(purified):6.1%}")
