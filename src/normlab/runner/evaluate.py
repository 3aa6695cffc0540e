"""Re-test a finished run with its own saved config and checkpoint: `python eval.py run=<dir>`.

The run's `.hydra/config.yaml` is the source of truth (the files in `conf/` may have changed
since it trained). `key=value` overrides from the command line are applied on top of it, and
`eval.json` is written beside the run's `results.json`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from normlab.errors import ConfigError
from normlab.files import write_json
from normlab.runner.build import (
    batch_limits_named,
    build_module,
    build_network_or_error,
    build_test_trainer,
)
from normlab.runner.checks import check_settings
from normlab.runner.cli import quiet_lightning
from normlab.runner.console import in_multirun, launcher_target
from normlab.runner.names import override_key
from normlab.runner.rundir import (
    CHECKPOINTS,
    CONFIG,
    apply_overrides,
    check_architecture,
    checkpoint_path,
    config_dirs,
    load_checkpoint,
    read_results,
    saved_config,
)
from normlab.runner.runstate import check_not_training, check_run_architecture, load_run_checkpoint
from normlab.runner.threads import threads_for_run
from normlab.runner.train import relative_to_run

log = logging.getLogger("normlab")

# Keys of conf/eval.yaml itself; every other override is meant for the run's config.
EVAL_KEYS = ("run", "which", "ckpt_path")
# Runs whose checkpoints will not change again.
FINISHED = ("completed", "diverged")


def no_such_key(override: str) -> ConfigError:
    """eval.py's message for an override that names no key of the run's config."""
    group = override.lstrip("+~").partition("=")[0]
    if is_config_group(group):  # a group with no node of its own: `# @package _global_`
        return ConfigError(
            f"eval.py: {override}: {group} is a global config group (its options set keys all "
            "over the config), which eval.py does not support: it re-tests a run with the "
            "run's own config. Give the settings you mean to change as key=value, e.g. "
            "data.eval_batch_size=500 or trainer.limit_test_batches=5."
        )
    return ConfigError(
        f"eval.py: the override {override} does not name a key or config group of the run's "
        "config. Overrides go onto the run's saved config: use key=value "
        "(data.eval_batch_size=500, trainer.accelerator=cpu) or a group of train.py "
        "(trainer=cpu)."
    )


def is_config_group(name: str) -> bool:
    """Whether `name` (`experiment`, `model/norm`) is a config group of the configs composed."""
    return any((folder / name).is_dir() for folder in config_dirs())


def evaluate(eval_cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Test a run's best (or last) checkpoint; write and return `eval.json`'s contents.

    Args:
        eval_cfg: the composed `conf/eval.yaml` (`run`, `which`, `ckpt_path`, and the
            training groups).
        overrides: the command-line overrides; all but `run`, `which` and `ckpt_path` are
            applied to the run's saved config, with the values Hydra composed into `eval_cfg`.
    """
    started = time.perf_counter()
    quiet_lightning()
    run_dir, cfg, ckpt, ckpt_key = locate(eval_cfg, overrides)
    which = run_checkpoint(run_dir, ckpt)
    if which is not None:  # the run's own checkpoint: final only once the run has ended
        check_not_training(run_dir, "eval.py")
    if absent := apply_overrides(cfg, eval_cfg, overrides, skipped=EVAL_KEYS):
        raise no_such_key(absent[0])
    check_eval_settings(cfg)
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    threads, why = threads_for_run(cfg.get("threads"), hydra_cfg)
    torch.set_num_threads(threads)
    log.info("torch threads: %d (%s; threads=N overrides)", threads, why)
    L.seed_everything(cfg.seed, verbose=False)
    net = build_network_or_error(cfg.model)
    # Plain weights only (weights_only=True), and a clear message when model overrides
    # describe a network the checkpoint's weights do not fit.
    if ckpt_key == "run":  # named by run= and which=: the messages say so
        checkpoint = load_run_checkpoint(run_dir, str(which), ckpt)
        check_run_architecture(checkpoint, net, run_dir, str(which), ckpt)
    else:
        checkpoint = load_checkpoint(ckpt, key=ckpt_key)
        check_architecture(checkpoint, net, ckpt, key=ckpt_key)
    module = build_module(cfg, net)
    module.load_state_dict(checkpoint["state_dict"])
    datamodule = instantiate(cfg.data)
    trainer = build_test_trainer(cfg)
    with batch_limits_named():
        metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    status = read_results(run_dir).get("status")
    result: dict[str, Any] = {
        "run": str(run_dir),
        "which": which,
        "checkpoint": relative_to_run(str(ckpt), run_dir),
        "test_acc": metrics.get("test/acc"),
        "test_loss": metrics.get("test/loss"),
        # callbacks.bn_eval's figures (test/acc_batch_stats -> test_acc_batch_stats), as train.py
        **{k.replace("/", "_"): v for k, v in metrics.items() if k.count("/") == 1},
        "test_batches": int(sum(trainer.num_test_batches)),
        # What train.py measured with this very file: only the run's own best checkpoint.
        "recorded_test_acc": read_results(run_dir).get("test_acc") if which == "best" else None,
        # How the run stood when tested: a run that did not finish may be resumed, and its
        # checkpoints then change (eval.json says which state it describes).
        "run_status": status,
        "overrides": [o for o in overrides if override_key(o) not in EVAL_KEYS],
        "wall_s": round(time.perf_counter() - started, 3),
    }
    if trainer.is_global_zero:
        record_evaluation(run_dir, result, status)
    return result


def record_evaluation(run_dir: Path, result: dict[str, Any], status: Any) -> None:
    """Write eval.json and say what was tested (and whether the run may still change it)."""
    write_json(run_dir / "eval.json", result)
    recorded = result["recorded_test_acc"]
    log.info(
        "test acc %.4f with %s%s; written to %s",
        result["test_acc"],
        result["checkpoint"],
        f" (recorded at training: {recorded:.4f})" if recorded is not None else "",
        run_dir / "eval.json",
    )
    if result["which"] is not None and status not in FINISHED:
        log.warning(
            "the run did not finish (results.json: status %s): this tests its checkpoint "
            "as it is now; resumed, the run replaces it, and eval.json then describes the "
            "older one (run eval.py again after it ends)",
            status,
        )


def locate(
    eval_cfg: DictConfig, overrides: Sequence[str] = ()
) -> tuple[Path, DictConfig, Path, str]:
    """(run directory, its saved config, the checkpoint to test, the key that named the
    checkpoint) from `run=`, `which=` and `ckpt_path=`; ConfigError naming the key at fault."""
    run = eval_cfg.get("run")
    which = str(eval_cfg.get("which", "best"))
    ckpt_file = eval_cfg.get("ckpt_path")
    if not ckpt_file:
        if not run:
            raise ConfigError(
                "eval.py needs the run to test: python eval.py run=<run dir>, "
                "e.g. run=logs/runs/2026-01-31_12-00-00_1234 (add which=last for the last "
                "epoch), or a checkpoint file: ckpt_path=<run dir>/checkpoints/best.ckpt."
            )
        run_dir = Path(str(run)).expanduser()
        cfg = saved_config(run_dir, "run")
        return run_dir, cfg, checkpoint_path(run_dir, which), "run"
    if "which" in {override_key(o) for o in overrides} or which != "best":
        # which= would otherwise be ignored: the file named is what gets tested.
        raise ConfigError(
            f"which={which} and ckpt_path={ckpt_file} both say which checkpoint to test: "
            "which= picks the best or last checkpoint of run=, ckpt_path= names a file. "
            "Give one of them, e.g. python eval.py run=<run dir> which=last, or "
            "python eval.py ckpt_path=<run dir>/checkpoints/last.ckpt."
        )
    ckpt = Path(str(ckpt_file)).expanduser()
    if not ckpt.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_file}: no such file. Give a checkpoint of a training run, "
            "e.g. ckpt_path=logs/runs/<run>/checkpoints/best.ckpt, or the run: run=<run dir>."
        )
    if run:  # the config the checkpoint is tested with comes from the run named
        run_dir = Path(str(run)).expanduser()
        return run_dir, saved_config(run_dir, "run"), ckpt, "ckpt_path"
    # <run dir>/checkpoints/<file>.ckpt: the run's config is two folders up.
    run_dir = ckpt.resolve().parent.parent
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_file}: its run's config ({run_dir / CONFIG}) is missing, so "
            "the network and data it was trained with are unknown. Pass a checkpoint from a "
            "run's checkpoints/ folder, or name the run too: run=<run dir>."
        )
    try:
        cfg = saved_config(run_dir, "run")
    except ConfigError as err:
        # saved_config's messages start with `run=<dir>`, which the user did not type.
        message = str(err).removeprefix(f"run={run_dir}")
        raise ConfigError(f"ckpt_path={ckpt_file}: its run directory {run_dir}{message}") from None
    return run_dir, cfg, ckpt, "ckpt_path"


def run_checkpoint(run_dir: Path, ckpt: Path) -> str | None:
    """ "best" or "last" when `ckpt` is that checkpoint of the run in `run_dir`; None for any
    other file (a copy elsewhere, another run's best.ckpt), which results.json says nothing
    about."""
    for which, relative in CHECKPOINTS.items():
        if ckpt.resolve() == (run_dir / relative).resolve():
            return which
    return None


# What eval.py does not check: loggers are not built, and of the callbacks only bn_eval
# (booleans its constructor checks).
UNUSED_NODES = ("callbacks", "logger")


def check_eval_settings(cfg: DictConfig) -> None:
    """The checks train.py runs before a run, on the config this evaluation uses (the run's
    own with the overrides applied): an impossible value (data.eval_batch_size=0) or a
    mistyped key added with `+` is one paragraph naming the key, not a traceback from
    Lightning. The network is checked when it is built."""
    used = OmegaConf.masked_copy(cfg, [key for key in cfg if key not in UNUSED_NODES])
    check_settings(used, in_multirun(), launcher_target())
