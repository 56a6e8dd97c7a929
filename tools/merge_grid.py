#!/usr/bin/env python3
"""Join `pxd bench` runs of the same grid, one classifier each, into the report one run over
all of them writes (results.json, report.md, accuracy figures): for grids computed on several
machines, or across sessions whose cache did not survive. Refuses runs of different images,
settings, code versions or density models.

Usage: tools/merge_grid.py --out OUTDIR RUNDIR [RUNDIR ...]
e.g.   tools/merge_grid.py --out docs/table1-n300/all docs/table1-n300/resnet-c10-*
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pxd.commands.bench.merge import run_merge
from pxd.errors import PxdError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="pxd bench --out folders (each with results.json)")
    ap.add_argument("--out", required=True, help="folder for the joined report")
    a = ap.parse_args(argv)
    command = "tools/merge_grid.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        info = run_merge(a.runs, a.out, command=command)
    except (PxdError, OSError) as e:
        print(f"merge_grid: error: {e}", file=sys.stderr)
        return 2
    print(f"{a.out}/report.md: {len(info['classifiers'])} classifiers, {len(info['rows'])} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
