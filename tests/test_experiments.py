"""Every packaged experiment composes, sweeps over seeds, and every configuration in its sweep
builds a working network; the Optuna search runs a real (tiny) study end to end."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import yaml
from conftest import CONF, REPO, run_cli
from hydra.core.override_parser.overrides_parser import OverridesParser

from normlab.runner.build import build_network

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def sweep_params(name: str) -> dict[str, list[str]]:
    """The experiment's `hydra.sweeper.params`, each expanded by Hydra's own override parser."""
    raw = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())["hydra"]["sweeper"]
    parser = OverridesParser.create()
    params = {}
    for key, value in raw["params"].items():
        override = parser.parse_override(f"{key}={value}")
        params[key] = [str(v) for v in override.sweep_string_iterator()]
    return params


def test_the_issue_s_experiments_are_all_packaged():
    assert set(EXPERIMENTS) >= {
        "seed_lesson", "norm_dropout_grid", "bn_learning_rate", "bn_batch_size",
        "dropout_overfitting", "dropout_before_bn",
    }  # fmt: skip


def configurations(params: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every network the sweep builds (all combinations of the `model...` overrides), and
    every value of the other overrides once (they do not change the network)."""
    model_keys = [k for k in params if k.startswith("model")]
    first = {k: v[0] for k, v in params.items()}
    combos = [
        {**first, **dict(zip(model_keys, values, strict=True))}
        for values in itertools.product(*(params[k] for k in model_keys))
    ]
    combos += [{**first, key: v} for key in params if key not in model_keys for v in params[key]]
    return combos


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_sweeps_seeds_and_every_configuration_builds(compose_cfg, name):
    params = sweep_params(name)
    assert len(params.pop("seed")) >= 3
    assert params, "an experiment compares configurations"
    for setting in configurations(params):
        overrides = [f"{k}={v}" for k, v in setting.items()]
        cfg = compose_cfg([f"experiment={name}", "data=digits", *overrides])
        assert cfg.data._target_.endswith("DigitsDataModule")  # the command line picks the data
        for key, value in setting.items():
            if not (CONF / key).is_dir():  # a value (not a config group) lands as given
                assert str(_select(cfg, key)) == value, key
        net = build_network(cfg.model)
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10), overrides
        assert cfg.trainer.max_epochs >= 5


def _select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_epochs_stay_overridable_on_the_command_line(compose_cfg):
    cfg = compose_cfg(["experiment=bn_learning_rate", "trainer.max_epochs=3"])
    assert cfg.trainer.max_epochs == 3


def test_seed_lesson_keeps_the_lessons_recipe(compose_cfg):
    cfg = compose_cfg(["experiment=seed_lesson"])
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.001, 0.9, 0)
    assert cfg.data.batch_size == 4 and not cfg.scheduler  # constant learning rate
    assert sweep_params("seed_lesson")["model"] == [
        "cnn",
        "cnn_bn",
        "cnn_dropout",
        "cnn_bn_dropout",
    ]


def test_bn_learning_rate_spans_1e_3_to_1_with_and_without_bn():
    params = sweep_params("bn_learning_rate")
    rates = sorted(float(v) for v in params["optimizer.lr"])
    assert rates[0] == 0.001 and rates[-1] == 1.0
    assert params["model/norm"] == ["none", "batch"]


def test_every_experiment_is_documented():
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    text = "\n".join(path.read_text() for path in docs)
    for name in EXPERIMENTS:
        assert f"experiment={name}" in text, name


def test_optuna_search_config(compose_cfg):
    cfg = compose_cfg(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.storage is None  # in memory: the plugin's sqlite storage is unreliable
    assert set(sweeper.params) == {"optimizer.lr", "model.dropout.p", "model/norm"}
    assert cfg.optimized_metric == "val_acc_best"


@pytest.mark.slow
def test_optuna_study_runs_and_returns_the_best_validation_accuracy(tmp_path):
    sweep_dir = tmp_path / "optuna"
    proc = run_cli(
        "train.py", "hparams_search=optuna", "data=digits", "debug=fast",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1",
        f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )  # fmt: skip
    # (no -m above: the search config sets multirun mode itself)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    assert len(results) == 2
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(r["val_acc_best"] for r in results))
    assert set(best["best_params"]) == {"optimizer.lr", "model.dropout.p", "model/norm"}
    # each trial's overrides carry the sampled values, and the sweep got its report
    for r in results:
        keys = {o.split("=", 1)[0] for o in r["overrides"]}
        assert {"optimizer.lr", "model.dropout.p", "model/norm"} <= keys
    assert (sweep_dir / "summary.md").exists()
