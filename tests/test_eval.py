"""Evaluating a finished run (`eval.py`, through the real Hydra command line) and classifying
image files with it (`python -m normlab.predict`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import REPO, compose_config, run_cli
from finished_run import digits_run
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from normlab.errors import ConfigError
from normlab.runner.build import build_network
from normlab.runner.evaluate import evaluate
from normlab.runner.predict import main as predict_main
from normlab.runner.rundir import network_weights

TEST_IMAGES = 360  # the digits test split


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return digits_run(tmp_path_factory)


def eval_config(*overrides: str):
    return compose_config(overrides, config_name="eval")


def trained(run_dir, checkpoint: str):
    """(config, network with the checkpoint's weights), loaded without normlab.runner.evaluate."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    net = build_network(cfg.model)
    state = torch.load(run_dir / "checkpoints" / checkpoint, weights_only=True)["state_dict"]
    net.load_state_dict(network_weights(state))
    return cfg, net.eval()


def copy_run(run_dir, destination):
    """A copy of a finished run's config, checkpoints and results (not its logs)."""
    for part in (".hydra", "checkpoints"):
        shutil.copytree(run_dir / part, destination / part)
    shutil.copy(run_dir / "results.json", destination / "results.json")
    return destination


def probabilities(cfg, net, images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(list(cfg.data.mean)).view(1, -1, 1, 1)
    std = torch.tensor(list(cfg.data.std)).view(1, -1, 1, 1)
    with torch.no_grad():
        return net((images.float() / 255 - mean) / std).softmax(dim=1)


def held_out_test_set(cfg):
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return datamodule.test_set


@pytest.mark.slow
def test_eval_reproduces_the_recorded_test_accuracy_with_overrides_applied(run, tmp_path):
    proc = run_cli("eval.py", f"run={run.run_dir}", "data.eval_batch_size=50", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run.run_dir / "eval.json").read_text())
    assert result["test_acc"] == run.results["test_acc"] == result["recorded_test_acc"]
    assert result["which"] == "best" and result["checkpoint"] == "checkpoints/best.ckpt"
    # The override reached the run's config: 360 test images in batches of 50.
    assert result["test_batches"] == -(-TEST_IMAGES // 50)
    assert result["overrides"] == ["data.eval_batch_size=50"]
    assert f"test acc {run.results['test_acc']:.4f}" in proc.stdout + proc.stderr
    # This evaluation's own log went to logs/evals/, not into the training run.
    assert list((tmp_path / "logs" / "evals").glob("*/eval.log"))
    assert not (run.run_dir / "eval.log").exists()


@pytest.mark.slow
def test_lightnings_own_lines_reach_eval_log_once(run, tmp_path):
    copy = copy_run(run.run_dir, tmp_path / "run")
    proc = run_cli("eval.py", f"run={copy}", "trainer.limit_test_batches=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = "`Trainer(limit_test_batches=1)` was configured so 1 batch will be used."
    (log,) = (tmp_path / "logs" / "evals").glob("*/eval.log")
    assert said in log.read_text()
    # On the console once, through normlab's handler (not Lightning's own as well).
    assert (proc.stdout + proc.stderr).count(said) == 1


@pytest.mark.slow
def test_a_mistyped_key_gets_a_did_you_mean_before_lightning_is_imported(run, tmp_path):
    proc = run_cli("eval.py", f"run={run.run_dir}", "data.eval_batchsize=50", cwd=tmp_path)
    assert proc.returncode == 1
    assert "did you mean data.eval_batch_size?" in proc.stderr


@pytest.mark.slow
def test_eval_of_the_last_checkpoint_matches_a_plain_forward_pass(run):
    cfg, net = trained(run.run_dir, "last.ckpt")
    test = held_out_test_set(cfg)
    expected = (probabilities(cfg, net, test.images).argmax(1) == test.labels).float().mean()
    overrides = ["trainer.accelerator=cpu"]
    result = evaluate(eval_config(f"run={run.run_dir}", "which=last", *overrides), overrides)
    assert result["test_acc"] == pytest.approx(expected.item(), abs=1e-6)
    assert result["checkpoint"] == "checkpoints/last.ckpt" and result["recorded_test_acc"] is None


@pytest.mark.slow
def test_missing_run_directory_is_a_clear_error_that_creates_nothing(tmp_path):
    missing = tmp_path / "no-such-run"
    proc = run_cli("eval.py", f"run={missing}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"run={missing}: no such directory" in proc.stderr
    assert not missing.exists()


@pytest.mark.slow
def test_missing_checkpoint_and_bad_override_name_the_fix(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run.run_dir / ".hydra", copy / ".hydra")
    with pytest.raises(ConfigError, match=r"no best checkpoint at .*best\.ckpt"):
        evaluate(eval_config(f"run={copy}"))
    with pytest.raises(ConfigError, match="which=best or which=last"):
        evaluate(eval_config(f"run={run.run_dir}", "which=final"))
    with pytest.raises(ConfigError, match="was saved by a different architecture"):
        overrides = ["model/norm=group"]  # no running statistics: the weights do not fit
        evaluate(eval_config(f"run={run.run_dir}", *overrides), overrides)


@pytest.mark.slow
def test_predict_classifies_image_files_of_any_size(run, tmp_path):
    cfg, net = trained(run.run_dir, "best.ckpt")
    test = held_out_test_set(cfg)
    names = [str(d) for d in range(10)]
    files = []
    for i in range(3):
        pixels = test.images[i].permute(1, 2, 0).numpy()
        files.append(tmp_path / f"exact_{i}.png")  # the model's own size, lossless
        Image.fromarray(pixels).save(files[-1])
    big = Image.fromarray(test.images[3].permute(1, 2, 0).numpy()).resize((200, 150))
    big.save(tmp_path / "big.jpg", quality=95)
    big.convert("L").save(tmp_path / "grey.png")
    big.convert("RGBA").save(tmp_path / "rgba.png")
    files += [tmp_path / "big.jpg", tmp_path / "grey.png", tmp_path / "rgba.png"]

    proc = subprocess.run(
        [sys.executable, "-m", "normlab.predict", f"run={run.run_dir}", "top=3", *map(str, files)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == [str(f) for f in files]
    printed = []
    for line in lines:
        pairs = [item.rsplit(" ", 1) for item in line.split(": ", 1)[1].split(", ")]
        classes, probs = [c for c, _ in pairs], [float(p) for _, p in pairs]
        assert len(classes) == 3 and set(classes) <= set(names)
        assert probs == sorted(probs, reverse=True) and 0 <= sum(probs) <= 1.0015
        printed.append(list(zip(classes, probs, strict=True)))

    # The lossless 32x32 images go through no resizing: same numbers as a plain forward pass.
    expected = probabilities(cfg, net, test.images[:3])
    for row, shown in zip(expected, printed[:3], strict=True):
        top = row.topk(3)
        assert [c for c, _ in shown] == [names[i] for i in top.indices.tolist()]
        assert [p for _, p in shown] == pytest.approx(top.values.tolist(), abs=1e-3)
    # A 200x150 photo of the same digit, in three colour modes, is resized and read alike.
    assert printed[3][0][0] == printed[4][0][0] == printed[5][0][0]


@pytest.mark.slow
def test_predict_rejects_unreadable_files_and_missing_runs(run, tmp_path, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    # The run's checkpoints, with a config that describes another network (no batch norm).
    other_model = copy_run(run.run_dir, tmp_path / "other_model")
    cfg = OmegaConf.load(other_model / ".hydra" / "config.yaml")
    cfg.model = compose_config(["model=cnn"]).model
    OmegaConf.save(cfg, other_model / ".hydra" / "config.yaml")
    for argv, message in [
        ([f"run={run.run_dir}", str(not_an_image)], "not a readable image"),
        ([f"run={run.run_dir}", str(tmp_path / "absent.png")], "no such image file"),
        ([f"run={tmp_path / 'nowhere'}", str(not_an_image)], "no such directory"),
        ([f"run={run.run_dir}"], "at least one image"),
        (
            [f"run={other_model}", str(not_an_image)],
            f"checkpoint={other_model / 'checkpoints' / 'best.ckpt'} was saved by a different "
            "architecture (SeedCNN with norm=BatchNorm2d, dropout=Dropout): it has 10 this "
            "network lacks (features.0.norm.weight,",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            predict_main(argv)
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert message in " ".join(err.split()), err
        assert "Traceback" not in err
