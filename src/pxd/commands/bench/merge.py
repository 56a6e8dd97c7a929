"""Several bench runs over the same images, settings and density model, one classifier each,
joined into the report one run over all of them would have written.

Every cell of a row depends on its classifier alone (the density model, the images and the
adaptive threshold are shared), so the join is exact: the rows, detection AUCs, checks and
intervals are those of a run with `--clf A,B,...`. It lets the grid be computed on several
machines, or across sessions whose cache does not survive, and read as one table.
"""

from __future__ import annotations

import os
import time

from pxd.commands.bench.figures import from_json
from pxd.errors import PxdError
from pxd.storage import files

# What must be equal in every part for the join to be a joint run's report.
SHARED = ("n", "input", "seed", "eps_attack", "eps_defend", "attacks", "defences",
          "attack_opts", "adaptive", "threshold", "threshold_how", "columns", "versions")

# What each part brings of its own.
PER_RUN = ("density", "classifiers", "rows", "detection", "sanity", "consistency", "command",
           "date", "machine", "wall_s")


def _relabel(text: str, old: str, new: str) -> str:
    """`text` (a row's name, a check) with its leading classifier label `old` made `new`."""
    if text == old or text.startswith((old + ":", old + " +")):
        return new + text[len(old):]
    return text


def _check_shared(parts: list[dict], names: list[str]) -> None:
    for info, name in zip(parts, names, strict=True):
        missing = [k for k in SHARED + PER_RUN if k not in info]
        if missing:
            raise PxdError(f"{name}: its results.json lacks {', '.join(missing)} (written by "
                           "an older pxd, or not a bench run); re-run it to merge it")
    first = parts[0]
    for info, name in zip(parts[1:], names[1:], strict=True):
        for key in SHARED:
            if info.get(key) != first.get(key):
                raise PxdError(f"{name} differs from {names[0]} in {key!r} "
                               f"({info.get(key)!r} against {first.get(key)!r}); "
                               "only runs of the same grid can be merged")
        a, b = first["density"], info["density"]
        if (a and a["sha256"]) != (b and b["sha256"]):
            raise PxdError(f"{name} used another density model than {names[0]}")


def _labels(parts: list[dict]) -> list[dict[str, str]]:
    """Per part, old label -> label in the joined run: a label two classifiers share gets the
    classifier's folder name, as `pxd bench --clf A,B` names them."""
    all_labels = [c["label"] for info in parts for c in info["classifiers"]]
    out = []
    for info in parts:
        m = {}
        for c in info["classifiers"]:
            lab = c["label"]
            if all_labels.count(lab) > 1 and " [" not in lab:
                m[lab] = f"{lab} [{os.path.basename(os.path.normpath(c['path']))}]"
        out.append(m)
    return out


def _cache_sum(parts: list[dict]) -> dict:
    total: dict = {}
    for info in parts:
        for kind, st in info.get("cache", {}).items():
            t = total.setdefault(kind, {})
            for k, v in st.items():
                if k == "versions":
                    made = t.setdefault("versions", {})
                    for m, c in v.items():
                        made[m] = made.get(m, 0) + c
                else:
                    t[k] = t.get(k, 0) + v
    return total


def merge_runs(parts: list[dict], names: list[str] | None = None, *,
               command: str = "merged") -> dict:
    """The joined results (in-memory form: int eps keys) of bench results in `parts`, each
    from a run over other classifiers; a one-line PxdError when they are not one grid."""
    if not parts:
        raise PxdError("merge: no runs given")
    names = names or [f"run {i + 1}" for i in range(len(parts))]
    parts = [from_json(p) for p in parts]
    _check_shared(parts, names)
    seen: dict[str, str] = {}
    for info, name in zip(parts, names, strict=True):
        for c in info["classifiers"]:
            if c["path"] in seen:
                raise PxdError(f"{name} and {seen[c['path']]} both hold classifier "
                               f"{c['path']}; give each run of it once")
            seen[c["path"]] = name
    relabel = _labels(parts)
    joined = {k: parts[0][k] for k in SHARED}
    # one model (same digest) may be named by a path in one part and by its zoo name in
    # another (reports before shipped.shown); the name reads on any machine
    joined["density"] = next((p["density"] for p in parts if p["density"]
                              and not os.path.isabs(p["density"]["path"])), parts[0]["density"])
    for k in ("classifiers", "rows", "detection", "sanity", "consistency"):
        joined[k] = []
    joined["timings"] = {}
    for info, m in zip(parts, relabel, strict=True):
        for c in info["classifiers"]:
            joined["classifiers"].append(dict(c, label=m.get(c["label"], c["label"])))
        labels = list(m.items())
        by_path = {c["path"]: c["label"] for c in info["classifiers"]}
        for r in info["rows"]:
            old = by_path[r["classifier"]]
            joined["rows"].append(dict(r, name=_relabel(r["name"], old, m.get(old, old))))
        for d in info["detection"]:
            joined["detection"].append(dict(d, classifier=m.get(d["classifier"],
                                                                d["classifier"])))
        for k in ("sanity", "consistency"):
            for c in info[k]:
                c = dict(c)
                for old, new in labels:
                    c["check"] = _relabel(c["check"], old, new)
                joined[k].append(c)
        for t, s in info.get("timings", {}).items():
            step, _, lab = t.partition(" ")
            joined["timings"][f"{step} {m.get(lab, lab)}"] = s
    machines = list(dict.fromkeys(p["machine"] for p in parts))
    joined.update(
        command=command, date=time.strftime("%Y-%m-%d %H:%M:%S"), machine="; ".join(machines),
        wall_s=sum(p["wall_s"] for p in parts), cache=_cache_sum(parts),
        reuse_stale_cache=any(p.get("reuse_stale_cache") for p in parts),
        merged_from=[dict(name=name, command=p["command"], date=p["date"],
                          machine=p["machine"], wall_s=p["wall_s"])
                     for p, name in zip(parts, names, strict=True)])
    return joined


def run_merge(dirs: list[str], out: str, *, command: str = "merged") -> dict:
    """Read DIR/results.json of each bench run in `dirs`; write the joined results.json,
    report.md and accuracy figures into `out`. Returns the joined results."""
    from pxd.commands.bench.figures import write_figures
    from pxd.commands.bench.outputs import jsonable, report_md

    parts = []
    for d in dirs:
        path = os.path.join(d, "results.json")
        if not os.path.isfile(path):
            raise PxdError(f"{d}: no results.json (a `pxd bench --out` folder is expected)")
        parts.append(files.read_json(path))
    if os.path.exists(out) and not os.path.isdir(out):
        raise PxdError(f"--out {out}: exists and is not a folder")
    info = merge_runs(parts, list(dirs), command=command)
    report = report_md(info)  # before any file is written: no results.json without its report
    os.makedirs(out, exist_ok=True)
    files.write_json(os.path.join(out, "results.json"), jsonable(info))
    files.write_text(os.path.join(out, "report.md"), report)
    write_figures(out, info)
    return info
