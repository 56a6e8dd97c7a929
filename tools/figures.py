#!/usr/bin/env python3
"""Redraw a bench run's accuracy figures (acc_vs_eps_*.png, summary_*.png) from its
results.json alone, with the functions `pxd bench` itself calls.

Usage: tools/figures.py RESULTS.json OUTDIR
e.g.   tools/figures.py docs/table1-n300/all/results.json docs/table1-n300/all
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pxd.commands.bench.figures import from_json, write_figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a pxd bench results.json")
    ap.add_argument("outdir", help="folder for the PNG files (created if missing)")
    a = ap.parse_args(argv)
    try:
        with open(a.results) as f:
            info = from_json(json.load(f))
    except (OSError, ValueError) as e:
        print(f"figures: error: cannot read {a.results}: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.outdir, exist_ok=True)
    for path in write_figures(a.outdir, info):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
