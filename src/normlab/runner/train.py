"""From a composed config to a trained, tested run with `results.json`.

config -> plan (`resume=`, `ckpt_path=`) -> run directory claimed -> `prepare_run` (checks
once, threads, seed, network, datamodule, Trainer) -> fit, test -> results.json, written by
`RunRecord` however the run ends. The runner is the only part of normlab that knows both
Hydra and Lightning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from normlab.files import write_json
from normlab.runner.build import batch_limits_named
from normlab.runner.claims import claim_run_dir
from normlab.runner.cli import quiet_lightning
from normlab.runner.console import JOB_SUMMARY, in_multirun
from normlab.runner.continue_sweep import job_in_continued_sweep, say_kept
from normlab.runner.names import defining_hparams, is_run_setting
from normlab.runner.outcome import (
    RunRecord,
    collect_results,
    data_record,
    early_stopping_fired,
    final_summary,
    relative_to_run,
    stop_record,
)
from normlab.runner.prepare import PreparedRun, named_plan, prepare_run
from normlab.runner.rundir import read_results, task_overrides
from normlab.training import divergence_record
from normlab.training.hparams import record_hparams

__all__ = ["final_summary", "relative_to_run"]  # importable from here as before

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
    plan, name = named_plan(cfg, overrides)
    output_dir = Path(plan.config.paths.output_dir)
    # Claimed by Preflight for a single run already (then a no-op); a sweep's job does it here.
    claim_run_dir(
        output_dir, plan.resumed, key="hydra.sweep.dir" if in_multirun() else "hydra.run.dir"
    )
    quiet_lightning()
    with RunRecord(plan, name, output_dir) as record:
        run = prepare_run(plan, name, record)
        fit_and_test(run, record)
    results = record.results
    if not run.trainer.is_global_zero:
        return results
    summary = final_summary(results)
    if in_multirun():
        job = HydraConfig.get().job.num if HydraConfig.initialized() else "?"
        job_log.info("#%s %s: %s", job, name, summary)
    else:
        log.info("done: %s", summary)
    log.info("results: %s", output_dir / "results.json")
    return results


def fit_and_test(run: PreparedRun, record: RunRecord) -> None:
    """Train, test the best checkpoint, and put what came out into `record.results`."""
    trainer, module, datamodule, plan = run.trainer, run.module, run.datamodule, run.plan
    if trainer.is_global_zero:
        # Until the run ends, results.json says it started: a job killed outright (SIGKILL,
        # an out-of-memory kill) is then listed by the report as interrupted, not missing.
        # The thread count too: a resume after SIGKILL must keep it to stay bit-identical.
        running = {"status": "running", "overrides": plan.overrides, "threads": record.threads}
        write_json(record.output_dir / "results.json", running)
    record.training = True
    with batch_limits_named():
        trainer.fit(module, datamodule=datamodule, ckpt_path=plan.checkpoint, weights_only=True)
        early_stopped = early_stopping_fired(trainer)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = trainer.test(
            module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
        )
    best = relative_to_run(best, record.output_dir)
    results = record.results
    results.update(collect_results(trainer, tested[0] if tested else {}, best))
    results.update(data_record(datamodule))
    # status "diverged" (and where) when the DivergenceGuard stopped the run early.
    results.update(divergence_record(trainer))
    results.update(stop_record(trainer, results, early_stopped))
    hparams = defining_hparams(run.config, record.name, plan.overrides, run.choices)
    record_hparams(trainer.loggers, hparams, results, step=trainer.global_step)


def kept_job(output_dir: Path) -> dict[str, Any]:
    """A finished job of a continued sweep: its results as recorded, its folder untouched."""
    results = read_results(output_dir)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    job = hydra_cfg.job.num if hydra_cfg is not None else "?"
    say_kept(job, str(results.get("name") or output_dir.name), final_summary(results))
    return results
