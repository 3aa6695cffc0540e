"""Evaluating a finished run (`eval.py`, through the real Hydra command line) and classifying
image files with it (`python -m normlab.predict`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import REPO, assert_names, compose_config, run_cli
from finished_run import digits_run, write_lightning_checkpoint
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from normlab.errors import ConfigError
from normlab.runner.build import build_network
from normlab.runner.evaluate import evaluate
from normlab.runner.predict import main as predict_main
from normlab.runner.rundir import network_weights
from normlab.runner.runstate import retire_eval_record

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


def run_of_another_model(destination, model: str = "cnn"):
    """A run directory whose network is not the default one: the composed config of
    `model=<model> data=digits` as its saved config, and a real Lightning checkpoint of that
    network (one training step) as its best.ckpt."""
    (destination / ".hydra").mkdir(parents=True)
    cfg = write_lightning_checkpoint(destination / "checkpoints" / "best.ckpt", model)
    OmegaConf.save(cfg, destination / ".hydra" / "config.yaml")
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
def test_eval_retakes_the_bn_evaluations_the_config_asks_for(run, tmp_path):
    from normlab.training.evaluations import batch_stats_accuracy

    proc = run_cli(
        "eval.py", f"run={run.run_dir}", "callbacks.bn_eval.batch_stats=true", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run.run_dir / "eval.json").read_text())
    cfg, net = trained(run.run_dir, "best.ckpt")
    test = held_out_test_set(cfg)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    expected = batch_stats_accuracy(
        net, test.images, test.labels, datamodule.eval_transform, cfg.data.batch_size
    )
    assert result["test_acc_batch_stats"] == pytest.approx(expected, abs=1e-6)
    assert result["test_acc"] == run.results["test_acc"], "the usual test is unchanged"


@pytest.mark.slow
def test_lightnings_own_lines_reach_eval_log_once(run, tmp_path):
    copy = copy_run(run.run_dir, tmp_path / "run")
    proc = run_cli(
        "eval.py", f"run={copy}", "trainer.limit_test_batches=1", "threads=2", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = "`Trainer(limit_test_batches=1)` was configured so 1 batch will be used."
    (log,) = (tmp_path / "logs" / "evals").glob("*/eval.log")
    assert said in log.read_text()
    # The thread policy of train.py, and its line (threads= decides over OMP_NUM_THREADS=1).
    assert "torch threads: 2 (set by threads=; threads=N overrides)" in log.read_text()
    # On the console once, through normlab's handler (not Lightning's own as well).
    assert (proc.stdout + proc.stderr).count(said) == 1


@pytest.mark.slow
def test_a_mistyped_key_gets_a_did_you_mean_before_lightning_is_imported(run, tmp_path):
    proc = run_cli("eval.py", f"run={run.run_dir}", "data.eval_batchsize=50", cwd=tmp_path)
    assert proc.returncode == 1
    assert "did you mean data.eval_batch_size?" in proc.stderr


@pytest.mark.slow
def test_the_config_eval_uses_is_checked_before_anything_is_built(run, tmp_path):
    # The run's own config with the overrides applied, by train.py's checks: one paragraph.
    cases = [
        ("data.eval_batch_size=0", "data.eval_batch_size=0", "data.eval_batch_size=1000"),
        ("+model.norm.epss=1e-3", "did you mean model.norm.eps?"),
        ("experiment=seed_lesson", "experiment is a global config group"),
        ("debug=fast", "debug is a global config group"),
    ]
    if not torch.cuda.is_available():
        gpu = ("trainer.accelerator=gpu", "No supported gpu backend", "trainer.accelerator=cpu")
        cases.append(gpu)
    # Independent processes, mostly start-up: two at a time.
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(
            pool.map(
                lambda case: run_cli("eval.py", f"run={run.run_dir}", case[0], cwd=tmp_path), cases
            )
        )
    for (override, *names), proc in zip(cases, procs, strict=True):
        assert proc.returncode == 1, override
        assert_names(proc.stderr, *names)
        assert "Traceback" not in proc.stderr, override


@pytest.mark.slow
def test_a_checkpoint_file_of_a_run_with_another_network(tmp_path):
    # train.py's pre-run checks compared the checkpoint with the default network and
    # refused it; the run's own config describes it.
    other = run_of_another_model(tmp_path / "cnn_run")
    checkpoint = other / "checkpoints" / "best.ckpt"
    proc = run_cli("eval.py", f"ckpt_path={checkpoint}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((other / "eval.json").read_text())
    assert result["which"] == "best" and result["checkpoint"] == "checkpoints/best.ckpt"
    # which= means a checkpoint of run=: with a file named too, it would be ignored.
    proc = run_cli("eval.py", f"ckpt_path={checkpoint}", "which=last", cwd=tmp_path)
    assert proc.returncode == 1
    assert_names(proc.stderr, "which=last", f"ckpt_path={checkpoint}", "both say")


@pytest.mark.slow
def test_a_checkpoint_is_this_runs_best_only_if_it_is_that_file(run, tmp_path):
    own = copy_run(run.run_dir, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere" / "checkpoints" / "best.ckpt"
    elsewhere.parent.mkdir(parents=True)
    shutil.copy(own / "checkpoints" / "best.ckpt", elsewhere)

    def evaluated(*args: str) -> dict:
        return evaluate(eval_config(*args), list(args))

    # The same weights, from a file that is not the run's: tested with the run's config, but
    # results.json's test_acc (measured with the run's own best.ckpt) is not claimed for it.
    result = evaluated(f"run={own}", f"ckpt_path={elsewhere}")
    assert result["test_acc"] == run.results["test_acc"]
    assert result["which"] is None and result["recorded_test_acc"] is None
    assert result["checkpoint"] == str(elsewhere)
    # The run's own file, however spelled, is its best checkpoint.
    result = evaluated(f"ckpt_path={own}/checkpoints/../checkpoints/best.ckpt")
    assert result["which"] == "best" and result["checkpoint"] == "checkpoints/best.ckpt"
    assert result["recorded_test_acc"] == run.results["test_acc"]
    # A damaged results.json: nothing recorded to compare with, and no traceback.
    (own / "results.json").write_text('{"test_acc": 0.9')
    assert evaluated(f"run={own}")["recorded_test_acc"] is None
    (own / "results.json").write_text("[0.9]")
    assert evaluated(f"run={own}")["recorded_test_acc"] is None


@pytest.mark.slow
def test_errors_name_the_key_that_named_the_run(run, tmp_path):
    checkpoint = run.run_dir / "checkpoints" / "best.ckpt"
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"^run={missing}: no such directory"):
        evaluate(eval_config(f"run={missing}", f"ckpt_path={checkpoint}"))
    (missing / ".hydra").mkdir(parents=True)
    with pytest.raises(ConfigError, match=f"^run={missing}: .*config.yaml is missing"):
        evaluate(eval_config(f"run={missing}", f"ckpt_path={checkpoint}"))
    # Found from the checkpoint's folder: the message quotes ckpt_path=, as typed.
    damaged = copy_run(run.run_dir, tmp_path / "damaged")
    (damaged / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    file = damaged / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError) as err:
        evaluate(eval_config(f"ckpt_path={file}"))
    assert str(err.value).startswith(f"ckpt_path={file}: ")  # the key, as typed
    assert_names(str(err.value), str(damaged.resolve()), "saved config", "cannot be read")


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
        capture_output=True, text=True, cwd=REPO, timeout=600,
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
def test_predict_takes_the_thread_count_of_the_runs_config(run, tmp_path, capsys):
    copy = copy_run(run.run_dir, tmp_path / "run")
    cfg = OmegaConf.load(copy / ".hydra" / "config.yaml")
    cfg.threads = 2
    OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")
    image = tmp_path / "digit.png"
    Image.fromarray(held_out_test_set(cfg).images[0].permute(1, 2, 0).numpy()).save(image)
    before = torch.get_num_threads()
    try:
        assert predict_main([f"run={copy}", str(image)]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.startswith(f"{image}: ")


@pytest.mark.slow
def test_predict_rejects_unreadable_files_and_missing_runs(run, tmp_path, capsys):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    # The run's checkpoints, with a config that describes another network (no batch norm).
    other_model = copy_run(run.run_dir, tmp_path / "other_model")
    cfg = OmegaConf.load(other_model / ".hydra" / "config.yaml")
    cfg.model = compose_config(["model=cnn"]).model
    OmegaConf.save(cfg, other_model / ".hydra" / "config.yaml")
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (32, 32)).save(gif)  # a real GIF: training skips the type, so does predict
    for argv, message in [
        ([f"run={run.run_dir}", str(not_an_image)], "not a readable image"),
        ([f"run={run.run_dir}", str(gif)], "not one of the image types normlab reads"),
        ([f"run={run.run_dir}/lo gs ü", str(gif)], "Quote it"),
        ([f"run={run.run_dir}", str(tmp_path / "absent.png")], "no such image file"),
        ([f"run={tmp_path / 'nowhere'}", str(not_an_image)], "no such directory"),
        ([f"run={run.run_dir}"], "at least one image"),
        (
            [f"run={other_model}", str(not_an_image)],
            f"run={other_model} which=best: its checkpoint "
            f"{other_model / 'checkpoints' / 'best.ckpt'} was saved by a different "
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


# ---------------------------------------------------------------------------------------------
# A run that is still training: its checkpoints are not final, so nothing is scored from them.

HOLD_LOCK = """
import sys
from normlab.files import FolderLock
lock = FolderLock(sys.argv[1])
assert lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # held until the test closes our stdin
"""


@pytest.fixture
def training_run(run, tmp_path):
    """A copy of the finished run whose folder lock another process holds, as train.py's
    does while it trains; released when the test ends."""
    copy = copy_run(run.run_dir, tmp_path / "training")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(copy)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert holder.stdout.readline().strip() == "locked"  # waits for the lock, no sleeping
    yield copy
    holder.stdin.close()
    holder.wait(timeout=60)


@pytest.mark.slow
def test_eval_refuses_a_run_whose_lock_another_process_holds(run, training_run, tmp_path):
    proc = run_cli("eval.py", f"run={training_run}", cwd=tmp_path)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 1, message[-3000:]
    assert_names(message, f"run={training_run}", "still training")
    assert_names(message, f"python eval.py run={training_run}")  # the fix: once it finishes
    assert "Traceback" not in message and not (training_run / "eval.json").exists()
    # Its own checkpoint named as a file is the same run, still training.
    proc = run_cli("eval.py", f"ckpt_path={training_run}/checkpoints/best.ckpt", cwd=tmp_path)
    assert proc.returncode == 1 and "still training" in proc.stderr
    # A copy taken out of the run is a snapshot: tested, and not called the run's best.
    snapshot = tmp_path / "snapshot.ckpt"
    shutil.copy(training_run / "checkpoints" / "best.ckpt", snapshot)
    result = evaluate(eval_config(f"run={training_run}", f"ckpt_path={snapshot}"))
    assert result["which"] is None and result["recorded_test_acc"] is None


@pytest.mark.slow
def test_predict_refuses_a_run_that_is_training(run, training_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(SystemExit) as exit_info:
        predict_main([f"run={training_run}", str(image)])
    assert exit_info.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "this run is still training" in err and "python -m normlab.predict run=" in err


@pytest.mark.slow
def test_a_run_that_says_running_but_holds_no_lock_is_refused_with_the_resume_command(
    run, tmp_path
):
    copy = copy_run(run.run_dir, tmp_path / "killed")
    (copy / "results.json").write_text('{"status": "running", "overrides": []}')
    with pytest.raises(ConfigError) as err:
        evaluate(eval_config(f"run={copy}"))
    assert 'status "running"' in str(err.value)
    assert f"python train.py resume={copy}" in str(err.value)


@pytest.mark.slow
def test_an_unfinished_run_is_tested_and_eval_json_says_so(run, tmp_path, caplog):
    copy = copy_run(run.run_dir, tmp_path / "interrupted")
    results = json.loads((copy / "results.json").read_text())
    (copy / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    with caplog.at_level("WARNING", logger="normlab"):
        result = evaluate(eval_config(f"run={copy}"))
    assert json.loads((copy / "eval.json").read_text())["run_status"] == "interrupted"
    assert result["which"] == "best" and "the run did not finish" in caplog.text


@pytest.mark.slow
def test_a_truncated_checkpoint_is_named_by_the_keys_the_user_typed(run, tmp_path):
    copy = copy_run(run.run_dir, tmp_path / "truncated")
    best = copy / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(ConfigError) as err:
        evaluate(eval_config(f"run={copy}"))
    message = str(err.value)
    prefix = f"run={copy} which=best: its checkpoint {best}: not a readable PyTorch checkpoint"
    assert message.startswith(prefix), message
    assert "which=last" in message and "checkpoint=" not in message


@pytest.mark.parametrize("which,retired", [("best", True), ("last", True), (None, False)])
def test_a_resumed_runs_own_eval_json_is_retired_a_copys_kept(tmp_path, which, retired):
    record = {"which": which, "test_acc": 0.5, "run_status": "interrupted"}
    (tmp_path / "eval.json").write_text(json.dumps(record))
    moved = retire_eval_record(tmp_path)
    assert (moved is not None) == retired
    assert (tmp_path / "eval.json").exists() != retired
    if retired:
        kept = json.loads(moved.read_text())
        assert kept["test_acc"] == 0.5 and "resumed" in kept["superseded"]
    assert retire_eval_record(tmp_path / "nowhere") is None


@pytest.mark.slow
def test_predict_reads_a_quoted_run_as_eval_py_does(run, tmp_path, capsys):
    copy = copy_run(run.run_dir, tmp_path / "lo gs ü" / "a, b")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    assert predict_main([f"run='{copy}'", str(image)]) == 0  # Hydra's quotes, as eval.py takes
    assert capsys.readouterr().out.startswith(f"{image}: ")
