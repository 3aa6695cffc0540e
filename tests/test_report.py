"""Sweep reports from real multiruns of `train.py -m`: the tables agree with the jobs' own
results.json, failed and diverged jobs are named, and TensorBoard's HParams records hold
each run's real hyperparameters and metrics."""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, assert_names, hparams_records, md_table_rows, run_multirun
from filelock import FileLock
from finished_run import digits_run
from hydra.core.utils import JobReturn, JobStatus
from matplotlib.image import imread
from omegaconf import OmegaConf

from normlab.report import load_sweep, plots, write_report
from normlab.report.__main__ import main as report_main
from normlab.report.numbers import format_number, short_forms
from normlab.report.schema import schema_problem
from normlab.runner import sweep as sweep_callback
from normlab.runner.sweep import SweepReport

REPORT_FILES = (
    "summary.csv", "summary.md", "contrasts.csv", "val_acc_curves.png", "final_accuracy.png",
)  # fmt: skip


def job_results(sweep_dir: Path) -> dict[str, dict]:
    return {
        d.name: json.loads((d / "results.json").read_text())
        for d in sweep_dir.iterdir()
        if (d / "results.json").exists()
    }


def override(results: dict, key: str) -> str:
    return next(o.split("=", 1)[1] for o in results["overrides"] if o.split("=", 1)[0] == key)


def expected_cell(values: list[float]) -> str:
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def assert_png(path: Path) -> None:
    image = imread(path)  # matplotlib's own PNG reader: a real, decodable image
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, path


@pytest.fixture(scope="module")
def lesson_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The lesson's experiment, cut to 2 models x 2 seeds x 2 short epochs on digits. The
    command-line `model=` and `seed=` replace the experiment's own sweep (4 models x 3 seeds)."""
    sweep_dir = tmp_path_factory.mktemp("lesson") / "sweep"
    proc = run_multirun(
        "experiment=seed_lesson", "data=digits", "model=cnn,cnn_bn", "seed=0,1",
        "debug=fast", "trainer.max_epochs=2",
        sweep_dir=sweep_dir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, sweep_dir


@pytest.mark.slow
def test_multirun_report_aggregates_match_the_jobs_results(lesson_sweep):
    _, sweep_dir = lesson_sweep
    results = job_results(sweep_dir)
    assert sorted(results) == ["0", "1", "2", "3"]
    for name in REPORT_FILES:
        assert (sweep_dir / name).exists(), name

    # summary.csv: one row per job, with its status, overrides and every metric of results.json
    with (sweep_dir / "summary.csv").open() as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(results)
    for job, res in results.items():
        row = rows[job]
        assert row["status"] == res["status"] == "completed"
        assert row["seed"] == override(res, "seed") and row["model"] == override(res, "model")
        assert row["overrides"] == " ".join(res["overrides"])
        for key in ("val_acc_best", "val_acc_final", "test_acc", "train_loss_final", "wall_s"):
            assert float(row[key]) == pytest.approx(res[key], rel=1e-12), key
        assert float(row["train_val_gap"]) == pytest.approx(
            res["train_acc_eval_final"] - res["val_acc_final"]
        )
        assert int(row["epochs_completed"]) == len(res["history"]) == 2

    # summary.md: seeds folded per model, mean ± sample std computed here from results.json
    table = md_table_rows((sweep_dir / "summary.md").read_text(), "| configuration")
    assert sorted(table) == ["model=cnn", "model=cnn_bn"]
    for model in ("cnn", "cnn_bn"):
        runs = [r for r in results.values() if override(r, "model") == model]
        assert len(runs) == 2
        n, best, final, test, gap, diverged, failed = table[f"model={model}"]
        assert (n, diverged, failed) == ("2", "0", "0")
        assert best == expected_cell([r["val_acc_best"] for r in runs])
        assert final == expected_cell([r["val_acc_final"] for r in runs])
        assert test == expected_cell([r["test_acc"] for r in runs])
        assert gap == expected_cell([r["train_acc_eval_final"] - r["val_acc_final"] for r in runs])

    # per-epoch table: mean validation accuracy of each epoch over the seeds
    epochs = md_table_rows((sweep_dir / "summary.md").read_text(), "| val acc per epoch")
    for model in ("cnn", "cnn_bn"):
        runs = [r for r in results.values() if override(r, "model") == model]
        expected = [
            f"{statistics.fmean(r['history'][e]['val/acc'] for r in runs):.4f}" for e in (0, 1)
        ]
        assert epochs[f"model={model}"] == expected

    for name in REPORT_FILES[3:]:
        assert_png(sweep_dir / name)
    # models are not a numeric axis: no accuracy-against-value plot
    assert not list(sweep_dir.glob("accuracy_vs_*.png"))


@pytest.mark.slow
def test_report_command_rewrites_the_same_report(lesson_sweep):
    _, sweep_dir = lesson_sweep
    before = (sweep_dir / "summary.csv").read_text()
    for name in REPORT_FILES:
        (sweep_dir / name).unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "normlab.report", str(sweep_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (sweep_dir / "summary.csv").read_text() == before
    for name in REPORT_FILES[3:]:
        assert_png(sweep_dir / name)
    assert "model=cnn_bn" in proc.stdout


def test_report_command_on_a_folder_without_jobs_explains_itself(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 1
    assert "holds no job directories" in capsys.readouterr().err


def test_report_reads_results_files_only(tmp_path):
    """Two seeds of one configuration and a job that never wrote results.json: folded into
    mean ± std, the missing job listed, without torch or Lightning."""
    for job, (seed, acc) in enumerate([(0, 0.5), (1, 0.7)]):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "results.json").write_text(json.dumps({
            "status": "completed", "val_acc_best": acc, "val_acc_final": acc, "test_acc": acc,
            "overrides": [f"seed={seed}", "model=cnn"],
            "history": [{"epoch": 0, "val/acc": acc}],
        }))  # fmt: skip
    (tmp_path / "2" / ".hydra").mkdir(parents=True)
    (tmp_path / "2" / ".hydra" / "overrides.yaml").write_text("- seed=2\n- model=cnn\n")
    write_report(tmp_path, plots=False)
    markdown = (tmp_path / "summary.md").read_text()
    assert "3 jobs in 1 configurations: 2 completed, 1 missing." in markdown
    assert "0.6000 ± 0.1414" in markdown
    assert not list(tmp_path.glob(".*")), "no temporary or lock files left behind"


def test_a_job_ending_while_the_first_report_is_written_still_reports_itself(tmp_path, monkeypatch):
    """The race a fresh clone's `make test` lost once, forced: job 0 failed and is writing the
    sweep's first report (it read job 1 as running); job 1 finishes meanwhile. Job 1 must wait
    for that report and rewrite it, not skip because summary.md did not exist yet."""
    for job, status in enumerate(["failed", "running"]):
        (tmp_path / str(job)).mkdir()
        write_job(tmp_path / str(job), status, seed=job)
    decided = threading.Event()  # job 1 has either skipped its rewrite or is waiting to write

    class SignallingLock(FileLock):
        def acquire(self, *args, **kwargs):
            decided.set()
            return super().acquire(*args, **kwargs)

    monkeypatch.setattr(sweep_callback, "FileLock", SignallingLock)
    first_writer = FileLock(sweep_callback.lock_path(tmp_path))
    first_writer.acquire()  # job 0, mid-write: its report is not in place yet
    write_report(tmp_path, plots=False)
    stale = {name: (tmp_path / name).read_bytes() for name in ("summary.md", "summary.csv")}
    for name in stale:
        (tmp_path / name).unlink()
    write_job(tmp_path / "1", "completed", seed=1)
    config = OmegaConf.create({
        "hydra": {"mode": "MULTIRUN", "sweep": {"subdir": "1"},
                  "runtime": {"output_dir": str(tmp_path / "1")}},
    })  # fmt: skip

    def job_1_ends() -> None:
        try:
            SweepReport().on_job_end(config, JobReturn(status=JobStatus.COMPLETED))
        finally:
            decided.set()

    ending = threading.Thread(target=job_1_ends)
    ending.start()
    assert decided.wait(timeout=120)
    for name, data in stale.items():  # job 0 finishes writing its (stale) report
        (tmp_path / name).write_bytes(data)
    first_writer.release()
    ending.join(timeout=120)
    with (tmp_path / "summary.csv").open() as f:
        statuses = {row["job"]: row["status"] for row in csv.DictReader(f)}
    assert statuses == {"0": "failed", "1": "completed"}


def write_job(job_dir: Path, status: str, seed: int) -> None:
    acc = None if status != "completed" else 0.9
    (job_dir / "results.json").write_text(json.dumps({
        "status": status, "val_acc_best": acc, "test_acc": acc,
        "overrides": [f"seed={seed}"], "history": [],
    }))  # fmt: skip


def norm_lr_sweep(sweep_dir: Path) -> Path:
    """Jobs of a 2 norms x 2 learning rates x 2 seeds sweep, as their results.json files."""
    job = 0
    for norm in ("none", "batch"):
        for lr in ("0.01", "0.1"):
            for seed in (0, 1):
                acc = 0.5 + 0.1 * (norm == "batch") + 0.05 * (lr == "0.1") + 0.01 * seed
                acc += 0.003 * seed * (norm == "batch")  # a spread over seeds
                (sweep_dir / str(job)).mkdir(parents=True)
                (sweep_dir / str(job) / "results.json").write_text(json.dumps({
                    "status": "completed", "val_acc_best": acc, "val_acc_final": acc,
                    "test_acc": acc, "train_acc_final": acc + 0.05,
                    "overrides": [f"model/norm={norm}", f"optimizer.lr={lr}", f"seed={seed}"],
                    "history": [{"epoch": 0, "val/acc": acc}],
                }))  # fmt: skip
                job += 1
    return sweep_dir


def report_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "normlab.report", *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize(
    "baseline,names",
    [
        ("model/norm=bogus", ("--baseline model/norm=bogus", "never took the value 'bogus'")),
        ("model/nrom=batch", ("--baseline model/nrom=batch", "model/nrom is not swept")),
        ("model/norm", ("--baseline model/norm", "AXIS=VALUE")),
    ],
)
def test_report_command_refuses_a_baseline_the_sweep_does_not_have(
    tmp_path, capsys, baseline, names
):
    # Before: a mistyped value or axis silently dropped the axis from the contrasts, and a
    # baseline without "=" was accepted. In this process: main() prints the error and returns
    # the exit code; the command line around it runs in the tests next to this one.
    sweep_dir = norm_lr_sweep(tmp_path / "sweep")
    assert report_main([str(sweep_dir), "--no-plots", "--baseline", baseline]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    # The mistake, and the fix: the values the baseline can take.
    assert_names(message, *names, "model/norm: none, batch", "optimizer.lr: 0.01, 0.1")
    assert not (sweep_dir / "summary.md").exists()  # nothing written


def test_report_command_compares_with_the_baseline_named(tmp_path):
    sweep_dir = norm_lr_sweep(tmp_path / "sweep")
    proc = report_command(str(sweep_dir), "--no-plots", "--baseline", "model/norm=batch")
    assert proc.returncode == 0, proc.stderr
    contrasts = md_table_rows((sweep_dir / "summary.md").read_text(), "| comparison")
    assert "model/norm: none − batch" in contrasts and "model/norm: batch − none" not in contrasts
    assert "optimizer.lr: 0.1 − 0.01" in contrasts  # the other axis: its first value


@pytest.mark.slow
def test_hparams_tab_holds_each_runs_real_hyperparameters_and_metrics(lesson_sweep):
    _, sweep_dir = lesson_sweep
    for job, res in job_results(sweep_dir).items():
        hparams, scalars = hparams_records(sweep_dir / job)
        norm = {"cnn": "none", "cnn_bn": "batch"}
        assert hparams["model"] == override(res, "model")
        assert hparams["model/norm"] == norm[override(res, "model")]
        assert hparams["seed"] == float(override(res, "seed"))
        assert hparams["optimizer/lr"] == pytest.approx(0.001)  # the lesson's recipe
        assert hparams["data/batch_size"] == 4
        # experiment=seed_lesson sets the lesson's rate for every model; nn.Identity ignores it
        assert hparams["model/dropout/p"] == 0.5
        assert hparams["status"] == "completed" and hparams["name"] == res["name"]
        # the values that define the run, not constants such as the evaluation batch size
        assert "data/eval_batch_size" not in hparams and not any("paths" in k for k in hparams)
        assert "hp_metric" not in scalars
        assert scalars["val/acc_best"] == pytest.approx(res["val_acc_best"], abs=1e-6)
        assert scalars["test/acc"] == pytest.approx(res["test_acc"], abs=1e-6)
        assert scalars["val/epochs_completed"] == res["epochs_completed"]
        gap = res["train_acc_eval_final"] - res["val_acc_final"]  # dropout off (the report's)
        assert scalars["val/train_val_gap"] == pytest.approx(gap, abs=1e-6)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tensorboard_server(logdir: Path) -> Iterator[str]:
    """A real `tensorboard` process serving `logdir`; yields its address."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
         "--host", "127.0.0.1", "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def ask_until_loaded(request: urllib.request.Request | str, loaded) -> dict:
    """The server's JSON answer once `loaded(answer)` holds (it reads the logs after starting)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            answer = json.loads(urllib.request.urlopen(request, timeout=10).read())
        except OSError:
            answer = {}
        if loaded(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


def hparams_request(address: str) -> urllib.request.Request:
    """The request TensorBoard's HParams tab sends when it opens."""
    return urllib.request.Request(
        f"{address}/data/plugin/hparams/experiment",
        data=json.dumps({"experimentName": ""}).encode(),
        headers={"Content-Type": "application/json"},
    )


def groups(run_tags: dict[str, list[str]]) -> set[str]:
    """The chart groups of Scalars and Time Series: each tag's first part."""
    return {tag.split("/")[0] for tags in run_tags.values() for tag in tags}


def hparams_experiment(logdir: Path) -> dict:
    with tensorboard_server(logdir) as address:
        return ask_until_loaded(hparams_request(address), lambda e: e.get("hparamInfos"))


@pytest.mark.slow
def test_hparams_tab_shows_what_the_sweep_varies_and_the_accuracies(lesson_sweep):
    """The dashboard (tensorboard's webfiles, `_computeHParams`/`_computeMetrics`) sorts the
    hyperparameters that differ first and ticks the first five, and ticks the first five
    metrics in the order the server lists them."""
    _, sweep_dir = lesson_sweep
    experiment = hparams_experiment(sweep_dir)
    hparams = experiment["hparamInfos"]
    differing = [h["name"] for h in hparams if h.get("differs")]
    assert set(differing) == {"model", "model/norm", "name", "seed"}
    assert [h["name"] for h in hparams[: len(differing)]] == differing  # listed first
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    # only the run's final figures, the five displayed first
    assert metrics == ["test/acc", "train/acc", "train/loss", "val/acc", "val/acc_best",
                       "val/epochs_completed", "val/train_val_gap"]  # fmt: skip


@pytest.mark.slow
def test_tensorboard_opens_on_the_curves_not_on_the_final_figures(lesson_sweep):
    """Scalars and Time Series group charts by the tag's first part and open the first groups
    (Time Series: the first two, sorted by name). The final figures, one point each, sit on
    the charts of the curves they end and add no group, so the groups that open hold curves
    of every epoch."""
    _, sweep_dir = lesson_sweep
    with tensorboard_server(sweep_dir) as address:
        tags = ask_until_loaded(f"{address}/data/plugin/scalars/tags", lambda t: len(t) >= 8)
        series = ask_until_loaded(
            f"{address}/data/plugin/timeseries/tags",
            lambda t: t.get("scalars", {}).get("runTagInfo"),
        )
    finals = {run: t for run, t in tags.items() if run.endswith("/final")}
    curves = {run: t for run, t in tags.items() if not run.endswith("/final")}
    assert len(finals) == len(curves) == 4  # 2 models x 2 seeds
    assert groups(finals) <= groups(curves)  # no chart group of their own
    assert groups(finals) == {"test", "train", "val"}
    first_two = sorted(groups(series["scalars"]["runTagInfo"]))[:2]
    assert not set(first_two) & {"acc", "test"}, first_two


@pytest.mark.slow
def test_sweep_with_a_failed_and_a_diverged_job_still_reports_every_job(tmp_path):
    """lr -1 is rejected by the config checks (a failed job, so Hydra skips on_multirun_end
    and exits 1); lr 1000 blows the loss up (diverged). Jobs run two at a time with the joblib
    launcher."""
    sweep_dir = tmp_path / "sweep"
    proc = run_multirun(
        "data=digits", "model=cnn", "debug=fast", "trainer.max_epochs=2",
        "optimizer.lr=0.01,1000,-1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        sweep_dir=sweep_dir,
    )  # fmt: skip
    assert proc.returncode == 1
    assert_names(proc.stderr, "optimizer.lr=-1", "optimizer.lr=0.05")
    results = job_results(sweep_dir)
    by_lr = {override(r, "optimizer.lr"): r for r in results.values()}
    assert by_lr["0.01"]["status"] == "completed" and by_lr["0.01"]["epochs_completed"] == 2
    diverged = by_lr["1000"]
    assert diverged["status"] == "diverged" and diverged["epochs_completed"] == 1
    assert by_lr["-1"]["status"] == "failed"

    with (sweep_dir / "summary.csv").open() as f:
        rows = {row["optimizer.lr"]: row for row in csv.DictReader(f)}
    assert {lr: row["status"] for lr, row in rows.items()} == {
        "0.01": "completed", "1000": "diverged", "-1": "failed",
    }  # fmt: skip
    assert float(rows["0.01"]["test_acc"]) == pytest.approx(by_lr["0.01"]["test_acc"])

    markdown = (sweep_dir / "summary.md").read_text()
    assert "3 jobs in 3 configurations: 1 completed, 1 diverged, 1 failed." in markdown
    problems = md_table_rows(markdown, "| job")
    failed_job = next(j for j, r in results.items() if r["status"] == "failed")
    diverged_job = next(j for j, r in results.items() if r["status"] == "diverged")
    assert problems[failed_job][:3] == ["optimizer.lr=-1", "–", "failed"]
    assert "optimizer.lr=-1: the learning rate must be a positive number" in problems[failed_job][4]
    assert problems[diverged_job][:3] == ["optimizer.lr=1000", "–", "diverged"]
    table = md_table_rows(markdown, "| configuration")
    assert table["optimizer.lr=1000"][0] == "1" and table["optimizer.lr=1000"][5] == "1"
    assert table["optimizer.lr=-1"][0] == "0" and table["optimizer.lr=-1"][6] == "1"

    # a numeric axis (the learning rate) gets its own plot, diverged run marked
    for name in (*REPORT_FILES[3:], "accuracy_vs_optimizer.lr.png"):
        assert_png(sweep_dir / name)
    assert not list(sweep_dir.glob("*.lock")) and not list(sweep_dir.glob(".*.tmp"))


def test_numbers_read_as_people_write_them():
    assert format_number(0.0031622776601683794) == "0.00316"
    assert format_number(0.001) == "1e-3" and format_number("3e-4") == "3e-4"
    assert format_number(0.01) == "0.01" and format_number(0.23745812) == "0.237"
    assert format_number(1e-5) == "1e-5" and format_number(-0.00012345) == "-1.23e-4"
    assert format_number(12345.678) == "1.23e4" and format_number(100000.0) == "1e5"
    assert format_number(128) == "128" and format_number("1000") == "1000"
    assert format_number("cnn_bn") == "cnn_bn" and format_number("nan") == "nan"
    # different numbers keep different labels: digits are added where 3 would merge them
    assert short_forms(["0.0031622776601683794", "0.0031601", "cnn"]) == {
        "0.0031622776601683794": "0.003162", "0.0031601": "0.00316", "cnn": "cnn",
    }  # fmt: skip


def test_report_of_an_optuna_like_sweep_shows_short_numbers(tmp_path):
    """Learning rates and dropout rates with 16 digits: summary.md, the plot labels and the
    legends show 3 significant digits; summary.csv keeps the raw values; the sweep directory
    holds the jobs and the report only."""
    lrs = ["0.0031622776601683794", "0.0001", "0.031622776601683794"]
    for job, (lr, seed) in enumerate((lr, seed) for lr in lrs for seed in (0, 1)):
        acc = 0.5 + 0.1 * lrs.index(lr) + 0.01 * seed
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "results.json").write_text(json.dumps({
            "status": "completed", "val_acc_best": acc, "val_acc_final": acc, "test_acc": acc,
            "train_acc_final": acc + 0.05,
            "overrides": [f"optimizer.lr={lr}", "model.dropout.p=0.23745812", f"seed={seed}"],
            "history": [{"epoch": 0, "val/acc": acc}],
        }))  # fmt: skip
    write_report(tmp_path)
    markdown = (tmp_path / "summary.md").read_text()
    table = md_table_rows(markdown, "| configuration")
    assert list(table) == ["optimizer.lr=0.00316", "optimizer.lr=1e-4", "optimizer.lr=0.0316"]
    contrasts = md_table_rows(markdown, "| comparison")
    assert list(contrasts) == ["optimizer.lr: 1e-4 − 0.00316", "optimizer.lr: 0.0316 − 0.00316"]
    assert "0.0031622776601683794" not in markdown
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["optimizer.lr"] for row in rows[::2]] == lrs
    assert rows[0]["config"] == "optimizer.lr=0.00316"

    sweep = load_sweep(tmp_path)
    figure = plots._accuracy_vs(sweep.configs, "optimizer.lr")
    first = figure.axes[0]
    assert [t.get_text() for t in first.get_xticklabels()] == ["1e-4", "0.00316", "0.0316"]
    figure = plots._final_accuracy(sweep.configs)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == [c.label for c in sweep.configs] and "optimizer.lr=1e-4" in labels
    two_axes = load_sweep(tmp_path)
    for config in two_axes.configs:  # a second swept key: the legends name its short value
        config.shown["model.dropout.p"] = format_number(0.23745812)
    legend = plots._accuracy_vs(two_axes.configs, "optimizer.lr").axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["model.dropout.p=0.237"]

    jobs = {str(j) for j in range(6)}
    report = set(REPORT_FILES)
    assert {p.name for p in tmp_path.iterdir()} == jobs | report | {"accuracy_vs_optimizer.lr.png"}


def test_summary_csv_holds_lists_and_mappings_as_json_and_errors_whole(tmp_path):
    """results.json's non-scalar values (data=image_folder's classes and normalization, tags)
    were written as Python's repr; read back here with the csv module."""
    error = "RuntimeError: CUDA out of memory\nTried to allocate 2.00 GiB\n  (see the log)"
    jobs = [
        {"status": "completed", "test_acc": 0.5, "classes": ["cat", "dog"],
         "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.25]},
         "tags": ["baseline", "it's"], "name": "seed-0", "overrides": ["seed=0"]},
        {"status": "failed", "error": error, "tags": [], "overrides": ["seed=1"]},
    ]  # fmt: skip
    for job, results in enumerate(jobs):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "results.json").write_text(json.dumps(results))
    write_report(tmp_path, plots=False)
    with (tmp_path / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    completed, failed = rows
    assert json.loads(completed["classes"]) == ["cat", "dog"]
    assert json.loads(completed["normalization"]) == jobs[0]["normalization"]
    assert (
        json.loads(completed["tags"]) == ["baseline", "it's"] and json.loads(failed["tags"]) == []
    )
    assert completed["name"] == "seed-0" and float(completed["test_acc"]) == 0.5
    assert failed["error"] == error and failed["classes"] == "" and completed["error"] == ""


# ---------------------------------------------------------------------------------------------
# results.json is checked against its schema: a bad value is never counted, copied or guessed.

GOOD = {"status": "completed", "val_acc_best": 0.6, "val_acc_final": 0.6, "test_acc": 0.5}


def sweep_with_a_bad_job(sweep_dir: Path, bad: dict) -> Path:
    """Jobs 0 and 1 good; job 2's results.json has the better figure and `bad` in it."""
    for job, seed in enumerate((0, 1)):
        (sweep_dir / str(job)).mkdir()
        (sweep_dir / str(job) / "results.json").write_text(
            json.dumps({**GOOD, "overrides": [f"seed={seed}"]})
        )
    (sweep_dir / "2" / ".hydra").mkdir(parents=True)
    (sweep_dir / "2" / ".hydra" / "overrides.yaml").write_text("- seed=2\n")
    (sweep_dir / "2" / "results.json").write_text(
        json.dumps({**GOOD, "overrides": ["seed=2"], "test_acc": 0.9, **bad})
    )
    return sweep_dir


def test_the_report_command_names_an_unreadable_job_on_the_console(tmp_path):
    proc = report_command(str(sweep_with_a_bad_job(tmp_path, {"test_acc": "0.91"})), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert 'warning: job 2: results.json "test_acc" is text' in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "bad,at_fault",
    [
        ({"test_acc": "0.91"}, '"test_acc" is text ("0.91"), not a number'),
        ({"test_acc": True}, '"test_acc" is true, not a number'),
        ({"overrides": "seed=2"}, '"overrides" is text ("seed=2"), not a list of strings'),
        ({"overrides": ["seed=2", 3]}, '"overrides" holds 3, not only strings'),
        ({"epochs_completed": 2.5}, '"epochs_completed" is 2.5, not a whole number'),
        ({"status": "done"}, '"status" is text ("done"), not one of completed'),
        ({"history": [{"epoch": 0, "val/acc": "0.5"}]}, '"history" entry 0: val/acc is text'),
        ({"val_acc_best": float("nan")}, '"val_acc_best" is nan, not a finite number'),
    ],
    ids=["text", "bool", "overrides text", "overrides item", "epochs", "status", "history", "nan"],
)
def test_a_results_file_that_breaks_the_schema_is_unreadable_and_never_counted(
    tmp_path, bad, at_fault, caplog
):
    # In this process (the command line's console line is the test above's).
    assert report_main([str(sweep_with_a_bad_job(tmp_path, bad)), "--no-plots"]) == 0
    # Said once, naming the job and the key.
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 1 and said[0].startswith(f"job 2: results.json {at_fault}"), said
    markdown = (tmp_path / "summary.md").read_text()
    assert "3 jobs in 1 configurations: 2 completed, 1 unreadable." in markdown
    assert "| 2 | all runs | 2 | unreadable | – | results.json " + at_fault in markdown
    # Only the two good jobs in the mean: 0.5 and 0.5, not 0.9 or true.
    configs = md_table_rows(markdown, "| configuration")
    assert configs["all runs"][:4] == ["2", "0.6000 ± 0.0000", "0.6000 ± 0.0000", "0.5000 ± 0.0000"]
    with (tmp_path / "summary.csv").open(newline="") as f:
        rows = {row["job"]: row for row in csv.DictReader(f)}
    assert rows["2"]["status"] == "unreadable" and rows["2"]["test_acc"] == ""
    assert rows["2"]["seed"] == "2" and at_fault in rows["2"]["error"]


@pytest.mark.parametrize("content", ['{"status": "completed", "test_acc": 0.9', "[0.9]", "\xff"])
def test_a_results_file_that_is_not_a_json_object_is_unreadable(tmp_path, content):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_bytes(content.encode("latin-1"))
    sweep = load_sweep(tmp_path)
    assert sweep.jobs[0].status == "unreadable" and not sweep.jobs[0].measured
    assert sweep.jobs[0].detail.startswith("results.json ")


@pytest.mark.slow
def test_what_train_py_writes_fits_the_schema(tmp_path_factory):
    run = digits_run(tmp_path_factory)
    assert schema_problem(run.results) is None
    assert schema_problem({"status": "running", "overrides": ["seed=1"]}) is None
