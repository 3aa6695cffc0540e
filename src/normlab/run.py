"""From a composed config to a trained, tested run with `results.json`.

The only module that knows both Hydra and Lightning: it instantiates the datamodule, the
network, the LightningModule, callbacks, loggers and Trainer from the config, fits, tests the
best checkpoint and writes the run's results.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.callbacks.divergence import divergence_record
from normlab.callbacks.history import MetricHistory
from normlab.cli import in_multirun
from normlab.config import validate_config
from normlab.errors import ConfigError, NormlabError
from normlab.hparams_record import record_hparams
from normlab.module import ImageClassifier
from normlab.quiet import quiet_lightning
from normlab.resume import (
    checkpoint_to_load,
    history_from_last_checkpoint,
    load_run,
    verify_checkpoint,
)
from normlab.summary import describe_run

log = logging.getLogger("normlab")

# Keys of the `model` config that configure the LightningModule, not the network.
MODULE_KEYS = ("compile", "channels_last")


def build_network(model_cfg: DictConfig) -> nn.Module:
    """Instantiate the network of `cfg.model` (its `_target_` with norm and dropout specs)."""
    net_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    for key in MODULE_KEYS:
        net_cfg.pop(key, None)
    try:
        return instantiate(net_cfg, _convert_="all")
    except Exception as err:
        # Hydra wraps the network's own ValueError; the innermost message names the key.
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, ValueError):
            message = str(cause)  # most already start with the key (model.norm.num_groups=...)
            prefix = "" if message.startswith("model.") else "model: "
            raise ConfigError(prefix + message) from None
        raise


def build_module(cfg: DictConfig, net: nn.Module) -> ImageClassifier:
    return ImageClassifier(
        net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        num_classes=cfg.model.num_classes,
        compile=cfg.model.get("compile", False),
        channels_last=cfg.model.get("channels_last", False),
        hparams=hyperparameters(cfg),
    )


def hyperparameters(cfg: DictConfig) -> dict[str, Any]:
    """The parts of the config that define the experiment, as plain values."""
    plain = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        for key in ("data", "model", "optimizer", "scheduler")
    }
    return {"seed": cfg.seed, **plain, "max_epochs": cfg.trainer.get("max_epochs")}


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a `callbacks` or `logger` group that has a `_target_`."""
    if not group:
        return []
    return [
        instantiate(node)
        for node in group.values()
        if isinstance(node, Mapping) and "_target_" in node
    ]


def task_overrides() -> list[str]:
    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return []


def launcher_target() -> str:
    if HydraConfig.initialized():
        return str(HydraConfig.get().launcher.get("_target_", ""))
    return ""


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; always leaves `results.json` in the output directory.

    With `resume=<run dir>` the run's saved config replaces `cfg` and training continues from
    its last checkpoint, in that directory.
    """
    resumed = load_run(cfg.resume, task_overrides()) if cfg.get("resume") else None
    if resumed is not None:
        cfg = resumed.config
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    quiet_lightning()
    results: dict[str, Any] = {"status": "failed"}
    trainer: L.Trainer | None = None
    try:
        validate_config(cfg, multirun=in_multirun(), launcher=launcher_target())
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        net = build_network(cfg.model)
        checkpoint, checkpoint_key = checkpoint_to_load(cfg, resumed)
        if checkpoint is not None:
            verify_checkpoint(checkpoint, checkpoint_key, net)  # before any data is read
        module = build_module(cfg, net)
        datamodule = instantiate(cfg.data)
        loggers = instantiate_all(cfg.get("logger"))
        callbacks = instantiate_all(cfg.get("callbacks"))
        if not loggers:  # logger=none: Lightning refuses a LearningRateMonitor with nowhere to log
            callbacks = [cb for cb in callbacks if not isinstance(cb, LearningRateMonitor)]
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        log.info(
            "%s: %s params, norm=%s, dropout=%s; output in %s",
            type(net).__name__,
            f"{sum(p.numel() for p in net.parameters()):,}",
            cfg.model.norm.name,
            f"{cfg.model.dropout.name}(p={cfg.model.dropout.p})",
            output_dir,
        )
        if trainer.is_global_zero:
            describe_run(cfg, net, output_dir)  # model_summary.txt, config_resolved.yaml
        if resumed is not None:
            log.info("resuming %s from %s", output_dir, checkpoint or "the start (no checkpoint)")
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = trainer.test(
            module, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
        )
        best = str(Path(best).relative_to(output_dir)) if best else ""
        results = collect_results(trainer, tested[0] if tested else {}, best)
        # status "diverged" (and where) when the DivergenceGuard stopped the run early.
        results.update(divergence_record(trainer))
        record_hparams(trainer.loggers, module.hparams, results, step=trainer.global_step)
    except NormlabError as err:
        results["error"] = str(err)
        raise
    except (KeyboardInterrupt, SystemExit):
        # Ctrl-C or SIGTERM (see normlab.interrupts), or Lightning exiting after either.
        results["status"] = "interrupted"
        log.warning("interrupted; continue with: python train.py resume=%s", output_dir)
        raise KeyboardInterrupt from None
    except Exception as err:
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        if trainer is not None and results["status"] in ("failed", "interrupted"):
            results.update(collect_results(trainer, {}, "", status=results["status"]))
        results["wall_s"] = round(time.perf_counter() - started, 3)
        results["overrides"] = resumed.overrides if resumed else task_overrides()
        # Under DDP every rank runs this function; rank 0 holds the reduced metrics.
        if trainer is None or trainer.is_global_zero:
            write_json(output_dir / "results.json", results)
    if not trainer.is_global_zero:
        return results
    log.info(
        "val acc best %.4f, test acc %.4f; results in %s",
        results["val_acc_best"],
        results["test_acc"],
        output_dir / "results.json",
    )
    return results


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
    return {
        "status": status,
        "val_acc_best": max(val_accs) if val_accs else None,
        "val_acc_final": final.get("val/acc"),
        "test_acc": test_metrics.get("test/acc"),
        "test_loss": test_metrics.get("test/loss"),
        "train_acc_final": final.get("train/acc"),
        "train_loss_final": final.get("train/loss"),
        "val_loss_final": final.get("val/loss"),
        "epochs_completed": len(history),
        "best_checkpoint": best_checkpoint,
        "history": history,
    }


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write atomically: a reader never sees half a file, even if the process dies here."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
