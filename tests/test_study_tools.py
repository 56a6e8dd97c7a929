"""tools/classifier_study.py, tools/eps_defend_sweep.py and tools/training_curve.py: the
numbers they report are the bench's cells or the run's evaluations, their lines, intervals
and dominance rule are exact on cases worked by hand."""

import json
import os

import pytest
from helpers import load_tool

GRID = os.path.join(os.path.dirname(__file__), "..", "docs", "table1-n300", "all",
                    "results.json")


def test_classifier_study_reports_the_bench_cells():
    cs = load_tool("classifier_study")
    with open(GRID) as f:
        res = json.load(f)
    s = cs.study([res], None, training="normal")
    normal = {c["path"] for c in res["classifiers"] if c.get("training") == "normal"}
    # the grid's normally trained nets (small and wide ResNet, VGG), and no other
    assert {c["path"] for c in s["classifiers"]} == normal and len(normal) >= 2
    assert {c["training"] for c in s["classifiers"]} == {"normal"}
    rows = {(r["classifier"], r["defence"]): r for r in res["rows"]}
    for c in s["classifiers"]:
        pd, none = rows[(c["path"], "pixeldefend")], rows[(c["path"], "none")]
        assert c["pd_clean"]["acc"] == pd["acc"]["clean"]["2"]
        assert c["pd_strongest"]["8"]["ci95"] == pd["ci95"]["strongest"]["8"]
        assert c["purification_cost"] == none["acc"]["clean"]["2"] - pd["acc"]["clean"]["2"]
    assert [c["test_acc"] for c in s["classifiers"]] == sorted(c["test_acc"]
                                                              for c in s["classifiers"])


def test_classifier_study_line_is_exact_on_a_line():
    cs = load_tool("classifier_study")
    f = cs.fit([0.80, 0.85, 0.90], [0.30, 0.20, 0.10])
    assert f["slope"] == pytest.approx(-2.0) and f["slope_se"] == pytest.approx(0, abs=1e-9)
    assert f["at_paper_clean"] == pytest.approx(0.06)
    assert cs.fit([0.8], [0.3]) is None and cs.fit([0.8, 0.8], [0.3, 0.2]) is None


def test_eps_defend_dominance_rule():
    sw = load_tool("eps_defend_sweep")

    def cells(clean, *strongest, width=0.01):
        def c(v):
            return (v, v - width, v + width, 0, 300)
        return {"clean": {"2": c(clean), "8": c(clean)},
                "strongest": {"2": c(strongest[0]), "8": c(strongest[1])}}

    table = {"16": cells(0.80, 0.50, 0.20), "8": cells(0.85, 0.50, 0.20),
             "4": cells(0.90, 0.60, 0.10), "24": cells(0.805, 0.505, 0.20)}
    found = {d["eps_defend"]: d["significant"] for d in sw.dominating(table)}
    assert found == {"8": True, "24": False}  # 4 loses at eps 8; 24 wins within intervals
    assert sw.dominating({"8": table["8"]}) == []  # no paper setting in the sweep


def test_training_curve_reads_each_evaluation(tmp_path):
    tc = load_tool("training_curve")
    run = tmp_path / "adv"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(
        {"arch": "resnet", "training": "adv-bim", "preset": "wide", "init_from": "w"}))
    evals = [{"step": 50, "wall_s": 1800.0, "eval_acc": 0.8, "eval_bim_acc": 0.25,
              "eval_bim_eps": 8.0, "eval_bim_n": 500},
             {"step": 100, "wall_s": 5400.0, "eval_acc": 0.85, "eval_bim_acc": 0.3,
              "eval_bim_eps": 8.0, "eval_bim_n": 500}]
    (run / "meta.json").write_text(json.dumps({"eval_n": 1000, "evals": evals}))
    r = tc.load(str(run))
    bim = tc.points(r, "eval_bim_acc", "eval_bim_n")
    assert [(p["hours"], p["n"], p["acc"]) for p in bim] == [(0.5, 500, 0.25), (1.5, 500, 0.3)]
    # Wilson 95% for 125 of 500, worked by hand: centre 0.25191, half-width 0.03786
    assert bim[0]["lo"] == pytest.approx(0.21405, abs=1e-4)
    assert bim[0]["hi"] == pytest.approx(0.28976, abs=1e-4)
    md = tc.table(r)
    assert "| 100 | 1.50 | 85.0 [82.7, 87.1] | 30.0 [26.1, 34.2] |" in md
    tc.plot([r], str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
