#!/usr/bin/env python3
"""The README's `make demo` table and times, generated from a committed `make demo` run
(docs/demo/results.json, report.md, and run.json with the measured `make demo` wall time).

    python tools/demo_table.py            # print the README's generated blocks
    python tools/demo_table.py --write    # rewrite them in README.md (between the markers)
    python tools/demo_table.py --check    # exit 1 when README.md and docs/demo disagree
    python tools/demo_table.py --diff demo-out/results.json
        # each cell of a fresh run that differs from docs/demo/results.json (exit 0: reported)
    python tools/demo_table.py --diff NEW/results.json --against OLD/results.json
        # the same between any two bench runs (e.g. a grid row re-run at new cache versions)
    python tools/demo_table.py --take demo-out --wall-s 281 --venv-s 80 --conditions "idle"
        # a new reference run: copy its results.json and report.md into docs/demo, record
        # the `time make demo` wall seconds in run.json, and rewrite README.md (as --write)

After a change that moves a cell: `time make demo`, then --take; after editing docs/demo by
hand or merging: --write.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "docs", "demo")
README = os.path.join(ROOT, "README.md")
BLOCKS = ("demo-time", "demo-table")


def _load(path: str) -> dict:
    from pxd.commands.bench.figures import from_json

    with open(path) as f:
        return from_json(json.load(f))


def _mmss(s: float) -> str:
    m, s = divmod(round(s), 60)
    return f"{m} min {s:02d} s"


def _phases(info: dict) -> str:
    t = info["timings"]

    def total(prefix: str) -> float:
        return sum(v for k, v in t.items() if k.startswith(prefix))

    return (f"the bench itself {info['wall_s']:.0f} s: crafting {total('craft '):.0f} s, "
            f"bits/dim {total('bits/dim '):.0f} s, defended grid {total('defend '):.0f} s, "
            f"BPDA column {total('adaptive '):.0f} s")


def render(info: dict, run: dict) -> dict[str, str]:
    """The README's generated blocks, by marker name."""
    from pxd.commands.bench.outputs import grid_lines

    when = (f"{run['date']}, {run['machine']}, commit {run['commit'][:7]}, "
            f"{run['conditions']}")
    time_line = (f"`make demo` took **{_mmss(run['wall_s'])}** ({run['how']}; {when}; "
                 f"{_phases(info)}; `docs/demo/`).")
    table = [re.sub(r"^\|   paper Table 1 \|", "| &nbsp;&nbsp;paper |", ln)
             for ln in grid_lines(info)]
    pd = next((r for r in info["rows"] if r["defence"] == "pixeldefend"), None)
    ci = ""
    if pd is not None:
        def iv(c: str) -> str:
            return "/".join(f"{100 * lo:.0f}–{100 * hi:.0f}"
                              for lo, hi in (pd["ci95"][c][e] for e in info["eps_attack"]))
        ci = (f"95% intervals of {pd['name']}: strongest attack {iv('strongest')}"
              + (f", BPDA {iv('adaptive')}" if "adaptive" in pd["ci95"] else "") + ".")
    inside = [f"{r['name']} {sum(c['inside'] for c in r['paper_check'])}/"
              f"{len(r['paper_check'])}" for r in info["rows"] if r.get("paper_check")]
    if inside:
        ci += (" The paper's cells inside our interval: " + ", ".join(inside)
               + " (`docs/demo/report.md` lists the others).")
    head = f"{time_line} Command: `{info['command']}`, {info['input']}, " \
           f"eps_defend {info['eps_defend']}."
    table_block = _wrap(head) + "\n\n" + "\n".join(table) + "\n\n" + _wrap(ci)
    return {"demo-time": _wrap(time_line), "demo-table": table_block}


# A wrapped line must not start what Markdown reads as a list, heading, quote or rule.
_BLOCK_START = re.compile(r"^([-+*]\s|\d+[.)]\s|#|>|[-=]+\s*$)")


def _wrap(text: str) -> str:
    for width in range(95, 70, -1):
        out = textwrap.fill(text.strip(), width=width, break_long_words=False,
                            break_on_hyphens=False)
        if not any(_BLOCK_START.match(ln) for ln in out.splitlines()):
            return out
    return " ".join(text.split())


def _marked(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- {name}: [^\n]*-->\n)(.*?)(\n<!-- /{name} -->)", re.S)


def readme_blocks(text: str) -> dict[str, str]:
    out = {}
    for name in BLOCKS:
        m = _marked(name).search(text)
        if m is None:
            raise SystemExit(f"demo_table: error: README.md has no <!-- {name}: ... --> block")
        out[name] = m.group(2)
    return out


def rewrite(text: str, blocks: dict[str, str]) -> str:
    for name in BLOCKS:
        text = _marked(name).sub(lambda m, n=name: m.group(1) + blocks[n] + m.group(3), text)
    return text


def cells(info: dict) -> dict[tuple, tuple]:
    """(row, column, eps) -> (k, n): every cell of a run, as counts."""
    return {(r["name"], c, e): tuple(kn) for r in info["rows"]
            for c, by_eps in r["counts"].items() for e, kn in by_eps.items()}


def diff(ref: dict, new: dict, *, old: str = "committed", now: str = "this run") -> list[str]:
    a, b = cells(ref), cells(new)
    out = []
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            fa = "absent" if key not in a else f"{a[key][0]}/{a[key][1]}"
            fb = "absent" if key not in b else f"{b[key][0]}/{b[key][1]}"
            out.append(f"{key[0]} | {key[1]} | eps {key[2]}: {old} {fa}, {now} {fb}")
    return out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU"


def _take(src: str, wall_s: float, conditions: str, commit: str | None,
          venv_s: float | None, where: str = "a fresh clone") -> None:
    from pxd.storage import files

    info = _load(os.path.join(src, "results.json"))
    os.makedirs(DEMO, exist_ok=True)
    for f in ("results.json", "report.md"):
        with open(os.path.join(src, f), "rb") as fh:  # atomically: no half-copied reference
            files.write_bytes(os.path.join(DEMO, f), fh.read())
    commit = commit or subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"],
                                      capture_output=True, text=True, check=True).stdout.strip()
    run = dict(date=info["date"].split()[0], machine=f"{_cpu()}, {info['machine']}",
               commit=commit,
               wall_s=wall_s, conditions=conditions,
               how=f"`time make demo` in {where}, after its `make venv`"
               + (f" of {_mmss(venv_s)}" if venv_s is not None else ""))
    from pxd.storage.files import write_json

    write_json(os.path.join(DEMO, "run.json"), run)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite README.md's blocks")
    g.add_argument("--check", action="store_true", help="exit 1 if README.md is stale")
    g.add_argument("--diff", metavar="RESULTS", help="report cells differing from docs/demo")
    g.add_argument("--take", metavar="OUT", help="make OUT (a make demo run) the reference")
    ap.add_argument("--against", metavar="OLD",
                    help="with --diff: compare with this results.json, not docs/demo's")
    ap.add_argument("--wall-s", type=float, help="with --take: `time make demo` seconds")
    ap.add_argument("--conditions", default="", help="with --take: the machine's load")
    ap.add_argument("--venv-s", type=float, help="with --take: `time make venv` seconds")
    ap.add_argument("--where", default="a fresh clone",
                    help="with --take: where it ran (default: a fresh clone)")
    ap.add_argument("--commit", help="with --take: the commit it ran (default: HEAD here)")
    a = ap.parse_args(argv)
    ref_path = os.path.join(DEMO, "results.json")
    if a.take:
        if a.wall_s is None:
            ap.error("--take needs --wall-s")
        _take(a.take, a.wall_s, a.conditions, a.commit, a.venv_s, a.where)
        print(f"docs/demo/ now holds {a.take}'s run; README.md rewritten from it")
        a.write = True
    if a.against and not a.diff:
        ap.error("--against needs --diff")
    if a.diff:
        against = a.against or ref_path
        try:
            ref, new = _load(against), _load(a.diff)
        except (OSError, ValueError, KeyError) as e:
            print(f"demo_table: error: {e}", file=sys.stderr)
            return 2
        old = "old" if a.against else "committed"
        lines = diff(ref, new, old=old)
        both = cells(ref).keys() & cells(new).keys()
        moved = [ln for ln in lines if "absent" not in ln]
        shown = a.against or "docs/demo/results.json"
        print(f"{a.diff}: {len(moved)} of {len(both)} cells differ from {shown}"
              + (f"; {len(lines) - len(moved)} cells are in only one of them"
                 if len(lines) > len(moved) else "") + " (reported, not a failure)")
        for ln in moved + [ln for ln in lines if "absent" in ln and not a.against]:
            print("  " + ln)
        return 0
    with open(os.path.join(DEMO, "run.json")) as f:
        blocks = render(_load(ref_path), json.load(f))
    if not (a.write or a.check):
        print("\n\n".join(blocks[n] for n in BLOCKS))
        return 0
    with open(README) as f:
        text = f.read()
    if a.check:
        stale = [n for n, v in readme_blocks(text).items() if v != blocks[n]]
        if stale:
            print(f"demo_table: README.md's {', '.join(stale)} differ from docs/demo; "
                  "run python tools/demo_table.py --write", file=sys.stderr)
            return 1
        return 0
    readme_blocks(text)  # both markers present
    from pxd.storage.files import write_text

    write_text(README, rewrite(text, blocks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
