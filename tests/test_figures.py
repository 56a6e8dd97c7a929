"""The bench's accuracy figures: they draw valid PNGs from a small synthetic results dict, and
the summary figure plots exactly the results' cells (in memory and read back from JSON)."""

import json
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import load_tool

from pxd.commands.bench.figures import attack_panels, from_json, summary_series, write_figures
from pxd.commands.bench.outputs import jsonable
from pxd.core.metrics import wilson

EPS = [2, 8, 16]
N = 40
K_ADAPT = 20
# (defence) -> column -> k per eps; chosen so that the strongest attack is BIM at eps 2 and 8
# but FGSM at 16: its line equals no single attack's.
K = {
    "none": dict(clean=[33] * 3, fgsm=[10, 6, 2], bim=[4, 0, 3], strongest=[4, 0, 2],
                 worst=[3, 0, 0], adaptive=[1, 0, 0]),
    "pixeldefend": dict(clean=[30] * 3, fgsm=[25, 12, 4], bim=[24, 9, 6],
                        strongest=[24, 9, 4], worst=[22, 7, 3], adaptive=[11, 2, 0]),
}


def _row(defence: str) -> dict:
    counts = {c: {e: [k, K_ADAPT if c == "adaptive" else N] for e, k in zip(EPS, ks, strict=True)}
              for c, ks in K[defence].items()}
    return dict(name="Toy" + ("" if defence == "none" else " + PixelDefend"),
                classifier="/zoo/toy-clf", defence=defence,
                acc={c: {e: k / n for e, (k, n) in v.items()} for c, v in counts.items()},
                ci95={c: {e: list(wilson(k, n)) for e, (k, n) in v.items()}
                      for c, v in counts.items()},
                counts=counts, paper=None, paper_check=[], adaptive_images=K_ADAPT)


def _info() -> dict:
    return dict(n=N, eps_attack=EPS, eps_defend=16, defences=["none", "pixeldefend"],
                columns=["clean", "fgsm", "bim", "strongest", "worst", "adaptive"],
                adaptive=dict(images=K_ADAPT), rows=[_row("none"), _row("pixeldefend")],
                classifiers=[dict(label="Toy", path="/zoo/toy-clf")])


def _is_png(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = plt.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 200
    return img


def test_figures_write_valid_pngs(tmp_path):
    paths = write_figures(str(tmp_path), _info())
    assert sorted(os.path.basename(p) for p in paths) == [
        "acc_vs_eps_none.png", "acc_vs_eps_pixeldefend.png", "summary_toy-clf.png"]
    for p in paths:
        img = _is_png(p)
        assert img[..., :3].std() > 0.05  # something drawn, not a blank canvas
    assert not [f for f in os.listdir(tmp_path) if not f.endswith(".png")]  # no temp files


def test_summary_plots_the_cells():
    info = _info()
    for loaded in (info, from_json(json.loads(json.dumps(jsonable(info))))):
        panels = summary_series(loaded, "/zoo/toy-clf")
        assert [p["title"] for p in panels] == [
            f"STRONGEST oblivious attack, n={N}",
            f"ADAPTIVE: BPDA-PGD through the defence\n(plain PGD without one), n={K_ADAPT}"]
        for p, column in zip(panels, ("strongest", "adaptive"), strict=True):
            assert [ln["label"] for ln in p["lines"]] == ["no defence", "PixelDefend"]
            for ln, d in zip(p["lines"], ("none", "pixeldefend"), strict=True):
                ks = K[d]
                n = K_ADAPT if column == "adaptive" else N
                assert ln["x"] == [0] + EPS
                # exactly the cells (as the bench stored them), and those are k / n
                row = next(r for r in loaded["rows"] if r["defence"] == d)
                assert ln["y"] == [100 * row["acc"]["clean"][2]] + [
                    100 * row["acc"][column][e] for e in EPS]
                assert ln["y"] == pytest.approx(
                    [100 * ks["clean"][0] / N] + [100 * k / n for k in ks[column]], abs=1e-12)
                cis = [wilson(ks["clean"][0], N)] + [wilson(k, n) for k in ks[column]]
                assert ln["lo"] == [100 * lo for lo, _ in cis]
                assert ln["hi"] == [100 * hi for _, hi in cis]


def test_attack_figure_plots_every_column_and_the_strongest_as_band():
    (panel,) = attack_panels(_info(), "pixeldefend")
    ks = K["pixeldefend"]
    assert [ln["label"] for ln in panel["lines"]] == [
        "FGSM", "BIM", "WORST CASE PER IMAGE", f"ADAPTIVE (BPDA), n={K_ADAPT}"]
    for ln, c in zip(panel["lines"], ("fgsm", "bim", "worst", "adaptive"), strict=True):
        n = K_ADAPT if c == "adaptive" else N
        assert ln["x"] == EPS
        assert ln["y"] == pytest.approx([100 * k / n for k in ks[c]], abs=1e-12)
    assert panel["band"]["y"] == pytest.approx([100 * k / N for k in ks["strongest"]], abs=1e-12)
    lo, hi = wilson(ks["clean"][0], N)
    assert panel["clean"] == pytest.approx((100 * ks["clean"][0] / N, 100 * lo, 100 * hi))
    # every line keeps its own style: none hides under another's colour and marker
    styles = [ln["style"] for ln in panel["lines"]]
    assert len(set(styles)) == len(styles)


def test_figures_tool_redraws_from_results_json(tmp_path):
    tool = load_tool("figures")
    res = tmp_path / "results.json"
    res.write_text(json.dumps(jsonable(_info())))
    assert tool.main([str(res), str(tmp_path / "figs")]) == 0
    _is_png(str(tmp_path / "figs" / "summary_toy-clf.png"))
    res.write_text("{not json")
    assert tool.main([str(res), str(tmp_path / "figs2")]) == 2
    assert not (tmp_path / "figs2").exists()


def test_accuracy_panels_rejects_unknown_interval_style(tmp_path):
    from pxd.report import plots

    with pytest.raises(ValueError):
        plots.accuracy_panels(str(tmp_path / "x.png"), [], intervals="lines")
    assert not (tmp_path / "x.png").exists()


def test_figures_without_adaptive_column_or_undefended_row(tmp_path):
    info = _info()
    info["columns"].remove("adaptive")
    info["defences"] = ["pixeldefend"]
    info["rows"] = info["rows"][1:]
    for r in info["rows"]:
        for part in ("acc", "ci95", "counts"):
            del r[part]["adaptive"]
    (panel,) = summary_series(info, "/zoo/toy-clf")
    assert [ln["label"] for ln in panel["lines"]] == ["PixelDefend"]
    paths = write_figures(str(tmp_path), info)
    assert sorted(os.path.basename(p) for p in paths) == [
        "acc_vs_eps_pixeldefend.png", "summary_toy-clf.png"]
    for p in paths:
        _is_png(p)
