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
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normlab.callbacks.history import MetricHistory
from normlab.errors import ConfigError, NormlabError
from normlab.module import ImageClassifier
from normlab.quiet import quiet_lightning
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
            raise ConfigError(f"model: {cause}") from None
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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test one configuration; always leaves `results.json` in the output directory."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    quiet_lightning()
    results: dict[str, Any] = {"status": "failed"}
    trainer: L.Trainer | None = None
    try:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        net = build_network(cfg.model)
        module = build_module(cfg, net)
        datamodule = instantiate(cfg.data)
        callbacks = instantiate_all(cfg.get("callbacks"))
        loggers = instantiate_all(cfg.get("logger"))
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        log.info(
            "%s: %s params, norm=%s, dropout=%s; output in %s",
            type(net).__name__,
            f"{sum(p.numel() for p in net.parameters()):,}",
            cfg.model.norm.name,
            f"{cfg.model.dropout.name}(p={cfg.model.dropout.p})",
            output_dir,
        )
        describe_run(cfg, net, output_dir)  # model_summary.txt, config_resolved.yaml
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        best = str(Path(best).relative_to(output_dir)) if best else ""
        results = collect_results(trainer, tested[0] if tested else {}, best)
    except NormlabError as err:
        results["error"] = str(err)
        raise
    except Exception as err:
        results["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        if trainer is not None and results["status"] == "failed":
            results.update(collect_results(trainer, {}, "", status="failed"))
        results["wall_s"] = round(time.perf_counter() - started, 3)
        results["overrides"] = task_overrides()
        write_json(output_dir / "results.json", results)
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
