"""Every command's config: strict (unknown keys and wrong types are errors), frozen, and
saved resolved with the outputs."""

import dataclasses
import json
import os

import numpy as np
import pytest

from pxd.commands.purify import run_purify
from pxd.commands.score import run_score
from pxd.configs import commands
from pxd.configs.base import from_dict, load_json, loads, to_json
from pxd.errors import PxdError

CONFIGS = [commands.PurifyConfig, commands.ScoreConfig, commands.AttackConfig,
           commands.ZooExportConfig, commands.BenchConfig, commands.SpeedConfig]
REQUIRED = {"input": "in.npz", "inputs": ["in.npz"], "run_dir": "run", "name": "m"}


def _minimal(cls) -> dict:
    return {f.name: REQUIRED[f.name] for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


@pytest.mark.parametrize("cls", CONFIGS)
def test_unknown_key_and_wrong_type_are_errors(cls, tmp_path):
    cfg = from_dict(cls, _minimal(cls))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # frozen
    with pytest.raises(PxdError, match="unknown config key.*bogus"):
        from_dict(cls, dict(_minimal(cls), bogus=1))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(json.loads(to_json(cfg)), typo=2)))
    with pytest.raises(PxdError, match="typo"):
        load_json(cls, str(path))
    path.write_text(to_json(cfg))
    assert load_json(cls, str(path)) == cfg == loads(cls, to_json(cfg))
    name = next(f.name for f in dataclasses.fields(cls) if f.type in ("int", "bool"))
    with pytest.raises(PxdError, match=name):
        from_dict(cls, dict(_minimal(cls), **{name: "three"}))


def test_run_functions_refuse_unknown_options(tmp_path):
    with pytest.raises(PxdError, match="unknown config key.*epss"):
        run_purify("in.npz", str(tmp_path / "o.npz"), epss=4)
    from pxd.commands import bench

    with pytest.raises(PxdError, match="unknown config key.*attack\\b"):
        bench.run_bench(attack="fgsm")  # the option is `attacks`


def test_purify_saves_its_resolved_config_in_the_npz(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("in.npz", x=np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), np.uint8))
    run_purify("in.npz", method="feature-squeeze")
    assert sorted(os.listdir(".")) == ["in.npz", "in.purified.npz"]  # nothing beside it
    with np.load("in.purified.npz", allow_pickle=False) as z:
        cfg = loads(commands.PurifyConfig, z["config"])
    assert cfg == commands.PurifyConfig("in.npz", out="in.purified.npz",
                                        method="feature-squeeze")


def test_score_saves_its_config_beside_its_figures(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "in.npz", x=x)
    plots = str(tmp_path / "plots")
    run_score([str(tmp_path / "in.npz")], plot_dir=plots, batch_size=2)
    cfg = load_json(commands.ScoreConfig, os.path.join(plots, "config.json"))
    assert cfg.inputs == (str(tmp_path / "in.npz"),) and cfg.plot_dir == plots


def test_attack_saves_its_config_in_the_npz(tmp_path):
    from pxd.commands.attack import run_attack

    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "in.npz", x=x, y=np.array([0, 1]))
    out = str(tmp_path / "adv.npz")
    run_attack(str(tmp_path / "in.npz"), attack="fgsm", eps=4, out=out, batch_size=2)
    with np.load(out, allow_pickle=False) as z:
        cfg = loads(commands.AttackConfig, z["config"])
    assert cfg == commands.AttackConfig(str(tmp_path / "in.npz"), attack="fgsm", eps=4.0,
                                        out=out, batch_size=2)
