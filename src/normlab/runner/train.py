"""From a composed config to a trained, tested run with `results.json`.

config -> checks -> datamodule + network + LightningModule + Trainer -> fit, test ->
results.json. The runner is the only part of normlab that knows both Hydra and Lightning.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, Timer
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import ModelSummary
from omegaconf import DictConfig, OmegaConf, open_dict

from normlab.errors import NormlabError
from normlab.files import DiskFullError, atomic_open, disk_full, write_json
from normlab.runner.build import build_module, build_network, build_trainer
from normlab.runner.checks import check_run, checked_by_preflight
from normlab.runner.cli import quiet_lightning
from normlab.runner.commands import command
from normlab.runner.console import JOB_SUMMARY, in_multirun
from normlab.runner.continue_sweep import job_in_continued_sweep, say_kept
from normlab.runner.names import choice, defining_hparams, is_run_setting, run_name
from normlab.runner.rundir import (
    claim_run_dir,
    history_from_last_checkpoint,
    launcher_target,
    plan_run,
    read_results,
    release_folder,
    task_overrides,
)
from normlab.runner.runstate import retire_eval_record
from normlab.runner.sweep import report_interrupted_sweep
from normlab.runner.threads import (
    ddp_processes,
    load_warning,
    threads_for_run,
    threads_kept_for_ranks,
)
from normlab.slurm import job_record as slurm_job_record
from normlab.training import ImageClassifier, MetricHistory, divergence_record
from normlab.training.hparams import record_hparams

log = logging.getLogger("normlab")
job_log = logging.getLogger(JOB_SUMMARY)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; always leaves `results.json` in the output directory.

    With `resume=<run dir>` the run's saved config replaces `cfg` and training continues from
    its last checkpoint, in that directory.
    """
    overrides = task_overrides()
    output_dir = Path(cfg.paths.output_dir)
    # A job of a sweep being continued (resume=<sweep dir>): kept, continued or run anew.
    job = job_in_continued_sweep(output_dir)
    if job == "keep":
        return kept_job(output_dir)
    if job == "continue":
        with open_dict(cfg):
            cfg.resume = str(output_dir)
        overrides = [o for o in overrides if is_run_setting(o)]
    plan = plan_run(cfg, overrides)
    cfg = plan.config
    name = run_name(cfg.get("name"), plan.overrides)
    with open_dict(cfg):
        cfg.name = name  # the TensorBoard run's folder: logger.tensorboard.version is ${name}
    output_dir = Path(cfg.paths.output_dir)
    # Checked, created and locked by Preflight for a single run; a sweep's job does it here.
    claim_run_dir(
        output_dir, plan.resumed, key="hydra.sweep.dir" if in_multirun() else "hydra.run.dir"
    )
    started = time.perf_counter()
    quiet_lightning()
    results: dict[str, Any] = {"status": "failed"}
    trainer: L.Trainer | None = None
    threads: int | None = None
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    training = False  # whether fit() started: before it, a resumed run's files stay as they were
    cleanup = contextlib.ExitStack()  # undone when the run ends, however it ends
    try:
        if not checked_by_preflight():  # a job of a sweep, or a call from Python
            check_run(plan, multirun=in_multirun(), launcher=launcher_target())
        ranks = ddp_processes(cfg.get("trainer"))
        threads, why = threads_for_run(cfg.get("threads"), hydra_cfg, ranks)
        if plan.threads is not None and cfg.get("threads") is None:
            threads, why = plan.threads, "the count the run started with (results.json)"
        torch.set_num_threads(threads)
        cleanup.enter_context(threads_kept_for_ranks(threads, ranks))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        net = build_network(cfg.model)
        module = build_module(cfg, net)
        datamodule = instantiate(cfg.data)
        trainer = build_trainer(cfg)
        choices = dict(hydra_cfg.runtime.choices) if hydra_cfg is not None else {}
        if plan.choices is not None:  # resumed: the run's own, not the resume command's
            choices = plan.choices
        announce(cfg, name, net, trainer, choices, output_dir)
        log.info("torch threads: %d (%s; threads=N overrides)", threads, why)
        if warning := load_warning(threads):
            log.warning("%s", warning)
        describe_run(cfg, module, output_dir, show=bool(cfg.get("verbose")))
        if plan.resumed:
            start = plan.checkpoint or "the start (no checkpoint)"
            log.info("resuming %s from %s", output_dir, start)
            if trainer.is_global_zero and (retired := retire_eval_record(output_dir)):
                log.info("eval.json tested checkpoints this run replaces: now %s", retired.name)
        if plan.note:
            log.warning("%s", plan.note)
        if trainer.is_global_zero:
            # Until the run ends, results.json says it started: a job killed outright (SIGKILL,
            # an out-of-memory kill) is then listed by the report as interrupted, not missing.
            # The thread count too: a resume after SIGKILL must keep it to stay bit-identical.
            running = {"status": "running", "overrides": plan.overrides, "threads": threads}
            write_json(output_dir / "results.json", running)
        training = True
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.checkpoint, weights_only=True)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = trainer.test(
            module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
        )
        best = relative_to_run(best, output_dir)
        results = collect_results(trainer, tested[0] if tested else {}, best)
        results.update(data_record(datamodule))
        # status "diverged" (and where) when the DivergenceGuard stopped the run early.
        results.update(divergence_record(trainer))
        results.update(stop_record(trainer, results))
        hparams = defining_hparams(cfg, name, plan.overrides, choices)
        record_hparams(trainer.loggers, hparams, results, step=trainer.global_step)
    except NormlabError as err:
        # On the config: running it again would fail again (a continued sweep keeps it).
        results.update(error=str(err), failure="config")
        raise
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C or SIGTERM (see normlab.runner.cli), or Lightning exiting after either.
        results["status"] = "interrupted"
        log.warning("interrupted; continue with: %s", command("train.py", resume=output_dir))
        raise KeyboardInterrupt from None
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            failure = disk_full(output_dir, "the run stopped")
            results["error"] = str(failure)
            raise failure from None
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    except Exception as err:
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        cleanup.close()
        if trainer is not None and results["status"] in ("failed", "interrupted"):
            results.update(collect_results(trainer, {}, "", status=results["status"]))
        results["wall_s"] = round(time.perf_counter() - started, 3)
        results["overrides"] = plan.overrides
        results["name"] = name
        results["threads"] = threads
        results["tags"] = [str(t) for t in cfg.get("tags") or []]
        results.update(slurm_job_record())  # which SLURM job produced it, under SLURM
        # Under DDP every rank runs this function; rank 0 holds the reduced metrics. A resumed
        # run that failed before training keeps the results.json it had.
        if (trainer is None or trainer.is_global_zero) and (training or not plan.resumed):
            record_results(output_dir, results)
        # The next job of a sweep (or the next normlab.train call) runs in this process.
        release_folder(output_dir)
        if in_multirun() and results["status"] == "interrupted":
            report_interrupted_sweep()
    if not trainer.is_global_zero:
        return results
    summary = final_summary(results)
    if in_multirun():
        job_log.info("#%s %s: %s", hydra_cfg.job.num if hydra_cfg else "?", name, summary)
    else:
        log.info("done: %s", summary)
    log.info("results: %s", output_dir / "results.json")
    return results


def kept_job(output_dir: Path) -> dict[str, Any]:
    """A finished job of a continued sweep: its results as recorded, its folder untouched."""
    results = read_results(output_dir)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    job = hydra_cfg.job.num if hydra_cfg is not None else "?"
    say_kept(job, str(results.get("name") or output_dir.name), final_summary(results))
    return results


def final_summary(results: Mapping[str, Any]) -> str:
    """`val acc best 0.9667, test acc 0.9444 (3 epochs, 4.1 s)`; missing figures as `-`."""

    def num(key: str) -> str:
        value = results.get(key)
        return f"{value:.4f}" if isinstance(value, int | float) else "-"

    status = results.get("status", "completed")
    return (
        f"val acc best {num('val_acc_best')}, test acc {num('test_acc')} "
        f"({plural(results.get('epochs_completed', 0), 'epoch')}, {results.get('wall_s', 0):.1f} s)"
        + ("" if status == "completed" else f", {status}")
    )


def plural(count: Any, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def record_results(output_dir: Path, results: dict[str, Any]) -> None:
    """Write results.json; on a full disk, say so instead of hiding the run's own error."""
    try:
        write_json(output_dir / "results.json", results)
    except DiskFullError as err:
        log.error("results.json not written: %s", err)


def relative_to_run(path: str, output_dir: Path) -> str:
    """A checkpoint's path relative to the run directory (as results.json records it)."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(output_dir.resolve()))
    except ValueError:
        return str(path)


def stop_record(trainer: L.Trainer, results: Mapping[str, Any]) -> dict[str, Any]:
    """Why training ended: "max_epochs", or what cut it short (max_time, max_steps, early
    stopping, divergence)."""
    if results.get("status") == "diverged":
        return {"stopped_by": "divergence"}
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or results.get("epochs_completed", 0) >= max_epochs:
        return {"stopped_by": "max_epochs"}
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    remaining = timer.time_remaining("train") if timer is not None else None
    if remaining is not None and remaining <= 0:
        done = results.get("epochs_completed")
        return {
            "stopped_by": "max_time",
            "stopped_reason": f"trainer.max_time ran out after {done} of {max_epochs} epochs",
        }
    if 0 < trainer.max_steps <= trainer.global_step:
        return {"stopped_by": "max_steps"}
    if any(
        getattr(cb, "stopped_epoch", 0) for cb in trainer.callbacks if isinstance(cb, EarlyStopping)
    ):
        return {"stopped_by": "early_stopping"}
    return {"stopped_by": "other", "stopped_reason": "training ended before trainer.max_epochs"}


def collect_results(
    trainer: L.Trainer,
    test_metrics: Mapping[str, float],
    best_checkpoint: str,
    status: str = "completed",
) -> dict[str, Any]:
    history = next((cb.epochs for cb in trainer.callbacks if isinstance(cb, MetricHistory)), [])
    if not history and trainer.checkpoint_callbacks:  # ddp_spawn: epochs ran in child processes
        history = history_from_last_checkpoint([cb.dirpath for cb in trainer.checkpoint_callbacks])
    final = history[-1] if history else {}
    val_accs = [row["val/acc"] for row in history if "val/acc" in row]
    # Further test figures (callbacks.bn_eval): test/acc_batch_stats -> test_acc_batch_stats.
    extra = {k.replace("/", "_"): v for k, v in test_metrics.items() if k.count("/") == 1}
    optimizer = trainer.optimizers[0] if trainer.optimizers else None
    return {
        **extra,
        "status": status,
        "val_acc_best": max(val_accs) if val_accs else None,
        "val_acc_final": final.get("val/acc"),
        "test_acc": test_metrics.get("test/acc"),
        "test_loss": test_metrics.get("test/loss"),
        "train_acc_final": final.get("train/acc"),
        "train_acc_eval_final": final.get("train/acc_eval"),
        # optimizer.lr as the optimizer got it: resolved (e.g. scaled with the batch size).
        "lr": optimizer.defaults.get("lr") if optimizer is not None else None,
        "train_loss_final": final.get("train/loss"),
        "val_loss_final": final.get("val/loss"),
        # Counted by the fit loop when MetricHistory is absent (callbacks=none).
        "epochs_completed": len(history) or trainer.current_epoch,
        "best_checkpoint": best_checkpoint,
        "history": history,
    }


def data_record(datamodule: L.LightningDataModule) -> dict[str, Any]:
    """What predict and the report need to know of the data without opening it again: the
    class names (folder names for data=image_folder) and the normalization statistics the
    run used (computed from the training images when data.mean/std are null)."""
    transform = getattr(datamodule, "eval_transform", None)
    record: dict[str, Any] = {"classes": [str(c) for c in getattr(datamodule, "class_names", ())]}
    if transform is not None:
        record["normalization"] = {"mean": list(transform.mean), "std": list(transform.std)}
    return record


@rank_zero_only
def announce(
    cfg: DictConfig,
    name: str,
    net: Any,
    trainer: L.Trainer,
    choices: Mapping[str, Any],
    output_dir: Path,
) -> None:
    """What is training, on what, and where its results go: three lines."""

    def chosen(group: str, node: Any) -> str:
        return choice(choices, group, node) or "none"

    dropout = chosen("model/dropout", cfg.model.get("dropout"))
    dropout_p = OmegaConf.select(cfg, "model.dropout.p", default=None)
    params = sum(param.numel() for param in net.parameters())
    devices = trainer.num_devices * trainer.num_nodes
    device = str(trainer.strategy.root_device.type) + (f" x{devices}" if devices > 1 else "")
    log.info("run %s -> %s", name, output_dir)
    log.info(
        "model %s (%s, %s params): norm %s, dropout %s%s",
        chosen("model", cfg.model),
        type(net).__name__,
        f"{params:,}",
        chosen("model/norm", cfg.model.get("norm")),
        dropout,
        f" p={dropout_p}" if dropout_p is not None and dropout != "none" else "",
    )
    log.info(
        "data %s, batch %s; %s lr %s, schedule %s; %s on %s",
        chosen("data", cfg.data),
        cfg.data.get("batch_size"),
        chosen("optimizer", cfg.optimizer),
        cfg.optimizer.get("lr"),
        chosen("scheduler", cfg.get("scheduler")),
        plural(cfg.trainer.get("max_epochs"), "epoch"),
        device,
    )


@rank_zero_only
def describe_run(cfg: DictConfig, module: ImageClassifier, output_dir: Path, show: bool) -> None:
    """Save what the run is before it starts: the network layer by layer
    (`model_summary.txt`, Lightning's ModelSummary) and the fully resolved config
    (`config_resolved.yaml`; `.hydra/config.yaml` keeps the interpolations). `verbose=true`
    also prints them."""
    summary = str(ModelSummary(module, max_depth=-1))
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    for name, text in (("model_summary.txt", summary), ("config_resolved.yaml", resolved)):
        with atomic_open(output_dir / name) as f:
            f.write(text + ("" if text.endswith("\n") else "\n"))
    if show:
        log.info("model summary (model_summary.txt):\n%s", summary)
        log.info("config (config_resolved.yaml):\n%s", resolved)
