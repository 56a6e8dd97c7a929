"""`pxd bench`: the paper's Table 1 on our models (run.py) and `--speed` (speed.py).

- options.py: the list options as typed ('2,8,16', 'all', 'cw.search_steps=2'), parsed;
- paper.py: the paper's Table 1 and the bench's vocabulary (attacks, defences, titles);
- rows.py: a row's accuracies, the grid's consistency checks, the sanity checks;
- cache.py: crafted, purified and scored arrays under OUT/cache, keyed by what made them;
- outputs.py: results.json, report.md, per_image.csv, figures, the terminal summary;
- plan.py: the options checked into a `Plan`; the classifiers and density model loaded;
- defences.py: the defences as cached functions of uint8 arrays, the adaptive threshold;
- steps.py: the per-classifier steps (craft, detect, defend, attack end to end, rows);
- run.py: `run_bench` (the steps in order, then the outputs) and `run_speed`;
- merge.py: one-classifier runs of one grid joined into the report of a run over all;
- speed.py, speed_attacks.py: `--speed`, throughput against baselines in the same run.
"""

from pxd.commands.bench.options import (
    parse_attack_opts,
    parse_attacks,
    parse_defences,
    parse_eps_list,
)
from pxd.commands.bench.paper import (
    DEFENCES,
    KNOWN_ATTACKS,
    PAPER_ATTACKS,
    PAPER_EPS,
    PAPER_TABLE1,
    TITLES,
    bim_steps,
    cell,
    paper_cell,
    pct,
)
from pxd.commands.bench.plan import load_classifiers
from pxd.commands.bench.rows import consistency, row_accuracies, sanity_checks
from pxd.commands.bench.run import run_bench, run_speed

_load_classifiers = load_classifiers  # the name tests and tools knew

__all__ = [
    "DEFENCES", "KNOWN_ATTACKS", "PAPER_ATTACKS", "PAPER_EPS", "PAPER_TABLE1", "TITLES",
    "_load_classifiers", "bim_steps", "cell", "consistency", "load_classifiers",
    "paper_cell", "parse_attack_opts", "parse_attacks", "parse_defences", "parse_eps_list",
    "pct", "row_accuracies", "run_bench", "run_speed", "sanity_checks",
]
