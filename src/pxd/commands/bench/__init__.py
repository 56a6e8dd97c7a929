"""`pxd bench`: the paper's Table 1 on our models (run.py) and `--speed` (speed.py).

- options.py: the list options as typed ('2,8,16', 'all', 'cw.search_steps=2'), parsed;
- paper.py: the paper's Table 1 and the bench's vocabulary (attacks, defences, titles);
- rows.py: a row's accuracies, the grid's consistency checks, the sanity checks;
- cache.py: crafted, purified and scored arrays under OUT/cache, keyed by what made them;
- outputs.py: results.json, report.md, per_image.csv, figures, the terminal summary;
- run.py: `run_bench`, the steps of a run, and `run_speed`.
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
from pxd.commands.bench.rows import consistency, row_accuracies, sanity_checks
from pxd.commands.bench.run import _load_classifiers, run_bench, run_speed

__all__ = [
    "DEFENCES", "KNOWN_ATTACKS", "PAPER_ATTACKS", "PAPER_EPS", "PAPER_TABLE1", "TITLES",
    "_load_classifiers", "bim_steps", "cell", "consistency", "paper_cell", "parse_attack_opts",
    "parse_attacks", "parse_defences", "parse_eps_list", "pct", "row_accuracies", "run_bench",
    "run_speed", "sanity_checks",
]
