#!/bin/bash
# Issue 14's headline grid at n = 300 (the adaptive BPDA column too): one `pxd bench` run per
# classifier into one OUT so they share its cache, then one run over all of them that reads
# everything back from the cache and writes the full report (OUT/report.md, results.json).
# Re-running skips what the cache holds, so it continues across sessions if OUT survives.
# Where OUT does not survive (another machine, a new session), each classifier's report in
# OUT.per-clf/ is kept instead and `tools/merge_grid.py --out ALL OUT.per-clf/*` joins them.
# Usage: [CLFS="name ..."] tools/table1_n300.sh OUT [extra pxd bench options, e.g. --devices 1]
# CLFS: the classifiers (default: every shipped CIFAR-10 classifier, the default first).
set -euo pipefail
OUT=${1:?usage: [CLFS="name ..."] tools/table1_n300.sh OUT [pxd bench options]}
shift
CLFS=${CLFS:-"resnet-c10-normal resnet-c10-wide resnet-c10-adv-bim resnet-c10-wide-adv-bim
  resnet-c10-label-smoothing resnet-c10-adv-fgsm resnet-c10-wide-adv-fgsm vgg-c10-normal"}
GRID=(--attack all --eps-attack 2,8,16 --n 300 --adaptive-n 300 --adaptive-steps 20)
for c in $CLFS; do
  echo "=== $c start $(date -Is)"
  pxd bench --clf "$c" "${GRID[@]}" --out "$OUT" -q "$@" > "$OUT.$c.log" 2>&1
  mkdir -p "$OUT.per-clf/$c" && cp "$OUT"/report.md "$OUT"/results.json "$OUT.per-clf/$c/"
  echo "=== $c done $(date -Is)"
done
echo "=== all start $(date -Is)"
CLF_ARGS=()  # --clf repeats: it takes one name each (or `all`), not a comma list
for c in $CLFS; do CLF_ARGS+=(--clf "$c"); done
pxd bench "${CLF_ARGS[@]}" "${GRID[@]}" --out "$OUT" "$@"
echo "=== all done $(date -Is)"
