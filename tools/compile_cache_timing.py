"""First and repeated `pxd.attack` calls in one new process, with JAX's persistent
compilation cache off or pointed at a folder: run it three times in a row (off, then an empty
folder, then the folder the second run filled) to see what the cache saves a new process.

    JAX_NUM_CPU_DEVICES=1 taskset -c 0 python tools/compile_cache_timing.py off 0.1 bim,pgd,fgsm
    ... /tmp/pc 0.1 bim,pgd,fgsm      # twice: empty, then filled

Arguments: the cache folder (or `off`), JAX's minimum compile time for an entry in seconds
(pxd's `engine/compile_cache` uses 0.2; the figures in docs/BENCHMARKS.md used 0.1), and the
attacks. Each attack runs at eps 8, 16, 8 on the first 100 CIFAR-10 test images
(`PXD_DATA_DIR`), the shipped classifier.
"""

import sys
import time

import jax

if sys.argv[1] != "off":
    jax.config.update("jax_compilation_cache_dir", sys.argv[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(sys.argv[2]))

import pxd  # noqa: E402

x, y = pxd.load_dataset("cifar10:test[:100]")
clf = pxd.load_classifier()
for name in sys.argv[3].split(","):
    for eps in (8, 16, 8):
        t = time.perf_counter()
        pxd.attack(x, y, name, eps=eps, clf=clf)
        print(name, eps, f"{time.perf_counter() - t:.2f}s", flush=True)
