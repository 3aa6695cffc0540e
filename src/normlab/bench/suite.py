"""The measurements behind `python -m normlab.bench`.

Every comparison runs both sides in this one process (or, for start-up and memory, in child
processes started from it), alternating A, B, A, B and keeping each side's best, so that load
from other work on the machine falls on both and the ratios stay meaningful.

Both pipelines read the same synthetic CIFAR-10 in the real on-disk format (see
`cifar_files`): normlab through `data=cifar10`, the lesson through torchvision's `CIFAR10`.
normlab's side is always the real thing a user runs: the config composed by Hydra from
`conf/` (`model=cnn_bn_dropout data=cifar10`, default callbacks and TensorBoard logger) and
`normlab.runner.train`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from normlab.bench.lesson import (
    lesson_device,
    lesson_loaders,
    loader_throughput,
    train_and_validate,
)
from normlab.bench.probes import PhaseClock, epoch_seconds
from normlab.runner.build import build_network
from normlab.runner.train import train


@dataclass(frozen=True)
class Sizes:
    """How much of each comparison is measured. Training epochs are extrapolated from
    `train_steps` steps (after `warmup` steps) and `eval_images` evaluated images to a full
    epoch of `train_images` training and `test_images` evaluated images, the lesson's."""

    train_images: int = 50_000
    test_images: int = 10_000
    batch_sizes: tuple[int, ...] = (4, 128)
    # batch size -> images drawn from the lesson's loader (normlab's: a whole epoch)
    loader_images: dict[int, int] = field(default_factory=lambda: {4: 3_000, 128: 10_000})
    train_steps: dict[int, int] = field(default_factory=lambda: {4: 600, 128: 60})
    warmup: dict[int, int] = field(default_factory=lambda: {4: 50, 128: 5})
    eval_images: int = 1_000
    val_size: int = 5_000  # normlab's validation split (data.val_size)
    memory_train_steps: int = 20
    repeats: int = 2
    # the busy-machine comparison: `python train.py data=digits` runs of this many epochs
    threads_epochs: int = 3
    threads_manual: tuple[int, ...] = (1, 2)


QUICK = Sizes(
    train_images=1_500,
    test_images=500,
    batch_sizes=(4, 32),
    loader_images={4: 200, 32: 400},
    train_steps={4: 12, 32: 6},
    warmup={4: 2, 32: 2},
    eval_images=200,
    val_size=300,
    memory_train_steps=2,
    repeats=1,
    threads_epochs=1,
)


# --- normlab's side, composed from the real configs -------------------------------------


def checked_repo(path: Path) -> Path:
    """The repository whose `conf/` and `train.py` are measured (given, not guessed from where
    this package is installed)."""
    repo = Path(path).resolve()
    if not (repo / "conf" / "train.yaml").is_file() or not (repo / "train.py").is_file():
        raise SystemExit(
            f"error: {repo} holds no conf/train.yaml and train.py: run the benchmark from the "
            "repository root (make bench), or pass --repo <repository root>."
        )
    return repo


def compose_config(repo: Path, overrides: Sequence[str]) -> DictConfig:
    """`conf/train.yaml` with overrides, as `python train.py <overrides>` would compose it."""
    import normlab  # noqa: F401 - registers the resolvers the configs use

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(repo / "conf"), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def data_overrides(data_root: Path, batch_size: int, sizes: Sizes) -> list[str]:
    return [
        "model=cnn_bn_dropout",
        # The lesson's optimizer on every side (its loop hard-codes it): the same arithmetic
        # per step, and stable at batch 4, where the default lr 0.05 diverges to NaN.
        "optimizer.lr=0.001",
        "optimizer.nesterov=false",
        "optimizer.weight_decay=0",
        "scheduler=none",
        "data=cifar10",
        f"data.root={data_root}",
        "data.download=false",
        "data.verify_checksums=false",
        f"data.batch_size={batch_size}",
        f"data.val_size={sizes.val_size}",
    ]


def fit_overrides(data_root: Path, batch_size: int, out_dir: Path, sizes: Sizes) -> list[str]:
    """One epoch cut to the measured part; the sanity check and the final test are one-off
    costs of a run (start-up measures them), not of an epoch."""
    eval_batches = -(-sizes.eval_images // 1000)  # data.eval_batch_size is 1000
    return [
        *data_overrides(data_root, batch_size, sizes),
        f"paths.output_dir={out_dir}",
        "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0",
        # The network diagnostics are a research instrument with their own cost (measured by
        # `python -m normlab.bench.diagnostics`); off here so the rows measure the training
        # machinery itself.
        "callbacks/diagnostics=none",
        f"trainer.limit_train_batches={sizes.train_steps[batch_size]}",
        f"trainer.limit_val_batches={eval_batches}",
        "trainer.limit_test_batches=1",
    ]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Keep a fit's console output (info lines, per-epoch summaries) out of the table."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "normlab")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def normlab_fit(cfg: DictConfig, warmup: int, clock_path: Path) -> dict[str, Any]:
    """`normlab.runner.train` on `cfg` with an `EpochClock` added to its callbacks."""
    with open_dict(cfg):
        cfg.callbacks.bench_clock = {
            "_target_": "normlab.bench.probes.EpochClock",
            "path": str(clock_path),
            "warmup": warmup,
        }
    with quiet():
        results = train(cfg)
    if results["status"] != "completed":
        raise RuntimeError(f"normlab's fit did not complete: {results.get('error')}")
    return json.loads(clock_path.read_text())


def plain_loop(cfg: DictConfig, steps: int, warmup: int) -> dict[str, Any]:
    """A hand-written PyTorch loop over normlab's own loader, with the same network,
    optimizer and per-step schedule as the fit of `cfg`: forward, loss, backward, step, and
    the loss and accuracy summed on the device (no per-step host sync), as a careful
    hand-written loop would."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    net = build_network(cfg.model).to(device)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    datamodule.train_set = datamodule.train_set.to(device)
    loader = datamodule.train_dataloader()
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    scheduler = None
    if cfg.scheduler:
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=min(steps, len(loader)))
    clock = PhaseClock(warmup)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    net.train()
    clock.start()
    for step, (images, labels) in enumerate(loader):
        if step == steps:
            break
        logits = net(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        clock.step_done()
    clock.mark("train")
    summary = clock.summary()
    summary["train_loss"] = float(loss_sum) / (steps * loader.batch_size)
    return summary


# --- the comparisons --------------------------------------------------------------------


def best(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return min(runs, key=lambda run: run[key])


def compare_loaders(data_root: Path, sizes: Sizes, repo: Path) -> list[dict[str, Any]]:
    """Images per second out of each pipeline at each batch size: normlab's training batches
    (random crop, flip and normalization included) against the lesson's `ToTensor` +
    `Normalize` per image in 2 worker processes (no augmentation)."""
    rows = []
    for batch_size in sizes.batch_sizes:
        cfg = compose_config(repo, data_overrides(data_root, batch_size, sizes))
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        ours, lesson = [], []
        for _ in range(sizes.repeats):
            trainloader, _ = lesson_loaders(data_root, batch_size)
            lesson.append(loader_throughput(trainloader, sizes.loader_images[batch_size]))
            loader = datamodule.train_dataloader()
            ours.append(loader_throughput(loader, len(loader) * batch_size))
        rows.append(
            {
                "batch_size": batch_size,
                "normlab_images_per_s": max(ours),
                "lesson_images_per_s": max(lesson),
                "lesson_images_measured": sizes.loader_images[batch_size],
                "normlab_images_measured": (len(loader) - 1) * batch_size,
                "ratio": max(ours) / max(lesson),
            }
        )
    return rows


def compare_training(
    data_root: Path, sizes: Sizes, workdir: Path, repo: Path
) -> list[dict[str, Any]]:
    """Per batch size: a training epoch of the lesson's loop and pipeline, of normlab's fit,
    and of a plain loop over normlab's loader; epochs extrapolated from the measured part."""
    rows = []
    for batch_size in sizes.batch_sizes:
        steps, warmup = sizes.train_steps[batch_size], sizes.warmup[batch_size]
        lesson_runs, fit_runs, plain_runs = [], [], []
        for repeat in range(sizes.repeats):
            out_dir = workdir / f"fit_b{batch_size}_{repeat}"
            cfg = compose_config(repo, fit_overrides(data_root, batch_size, out_dir, sizes))
            lesson_runs.append(lesson_epoch(cfg, data_root, batch_size, sizes, workdir))
            fit_runs.append(normlab_fit(cfg, warmup, workdir / f"clock_b{batch_size}_{repeat}"))
            plain_runs.append(plain_loop(cfg, steps, warmup))
        full_steps = -(-sizes.train_images // batch_size)  # the lesson keeps the last batch
        for run in lesson_runs + fit_runs:
            run["epoch_s"] = epoch_seconds(run, full_steps, sizes.test_images)
        lesson, fit = best(lesson_runs, "epoch_s"), best(fit_runs, "epoch_s")
        # Overhead compares typical steps (medians): both sides serve batches from the same
        # loader in-process, and a median ignores the steps another process pre-empted.
        plain_step = best(plain_runs, "per_step_median_s")["per_step_median_s"]
        fit_step = best(fit_runs, "per_step_median_s")["per_step_median_s"]
        rows.append(
            {
                "batch_size": batch_size,
                "steps_measured": steps,
                "epoch_steps": full_steps,
                "lesson": lesson,
                "normlab": fit,
                "plain": best(plain_runs, "per_step_median_s"),
                "epoch_speedup": lesson["epoch_s"] / fit["epoch_s"],
                "fit_step_median_s": fit_step,
                "plain_step_median_s": plain_step,
                "overhead_ratio": fit_step / plain_step,
            }
        )
    return rows


def lesson_epoch(
    cfg: DictConfig, data_root: Path, batch_size: int, sizes: Sizes, workdir: Path
) -> dict[str, Any]:
    """The lesson's loop with its own optimizer (SGD lr 0.001, momentum 0.9) on the network
    normlab builds for `cfg` (same layers, same initial weights)."""
    torch.manual_seed(cfg.seed)
    model = build_network(cfg.model)
    model.to(lesson_device())
    trainloader, testloader = lesson_loaders(data_root, batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    clock = PhaseClock(sizes.warmup[batch_size])
    train_and_validate(
        model,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        trainloader,
        testloader,
        workdir,
        train_steps=sizes.train_steps[batch_size],
        eval_images=sizes.eval_images,
        clock=clock,
    )
    return clock.summary()


LAUNCHER = """
import json, os, subprocess, sys, time
started = time.time()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
seconds = time.time() - started
report = {"started": started, "seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
          "cpu_s": usage.ru_utime + usage.ru_stime,
          "returncode": os.waitstatus_to_exitcode(status)}
open(sys.argv[1], "w").write(json.dumps(report))
"""


def run_child(
    command: list[str], report: Path, cwd: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `command` to completion in `cwd`: its start time (`time.time()`), wall seconds, CPU
    seconds and peak resident memory in MB (Linux reports ru_maxrss in kilobytes)."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(report), *command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    result = json.loads(report.read_text()) if report.exists() else {"returncode": proc.returncode}
    if proc.returncode != 0 or result["returncode"] != 0:
        output = (proc.stdout + proc.stderr)[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed:\n{output}")
    return result


# --- a busy machine: thread settings -----------------------------------------------------

SPINNER = "while True: pass"


def thread_settings(repo: Path, manual: Sequence[int]) -> list[tuple[str, list[str], dict]]:
    """(label, train.py overrides, environment) for the default and each manual setting. With
    a `threads` key in the config (normlab's own choice) the manual ones are `threads=<n>`,
    otherwise OMP_NUM_THREADS=<n>; the default run gets neither, whatever this process has."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    has_setting = "threads" in compose_config(repo, ["data=digits"])
    settings = [("default", [], env)]
    for n in manual:
        if has_setting:
            settings.append((f"threads={n}", [f"threads={n}"], env))
        else:
            settings.append((f"OMP_NUM_THREADS={n}", [], {**env, "OMP_NUM_THREADS": str(n)}))
    return settings
