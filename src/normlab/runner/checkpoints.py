"""A run's checkpoints, read back: only ever with `torch.load(weights_only=True)` (tensors
and plain containers, never pickled code), checked to fit the network they are loaded into."""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normlab.errors import ConfigError, NormlabError

CHECKPOINTS = {"best": Path("checkpoints") / "best.ckpt", "last": Path("checkpoints") / "last.ckpt"}


# The network's weights inside the LightningModule's state dict (`ImageClassifier.net`).
NET_PREFIX = "net."


def checkpoint_path(run_dir: str | Path, which: str, key: str = "run") -> Path:
    """The run's best or last checkpoint, checked to exist."""
    if which not in CHECKPOINTS:
        raise ConfigError(f"which={which!r}: choose which=best or which=last.")
    path = Path(run_dir) / CHECKPOINTS[which]
    if not path.is_file():
        found = sorted(p.name for p in path.parent.glob("*.ckpt"))
        raise ConfigError(
            f"{key}={run_dir}: no {which} checkpoint at {path} "
            f"({'found ' + ', '.join(found) if found else 'no checkpoints at all'}). "
            "A run writes checkpoints/best.ckpt and last.ckpt once it has finished an epoch; "
            + ("try which=last." if "last.ckpt" in found else "train it (longer) first.")
        )
    return path


def resume_checkpoint(run_dir: Path) -> tuple[Path | None, str]:
    """The checkpoint a resumed run continues from: last.ckpt, or when it cannot be read (a
    crash mid-write on a file system without atomic renames, a damaged copy) the newest
    checkpoint that can, said in the note. None when the run never wrote one; ConfigError when
    it wrote some and none can be read (starting over would discard the run)."""
    last = run_dir / CHECKPOINTS["last"]
    found = (
        sorted((run_dir / "checkpoints").glob("*.ckpt"))
        if (run_dir / "checkpoints").is_dir()
        else []
    )
    if not found:
        return None, ""
    readable: list[tuple[tuple[int, int, bool], Path]] = []
    problems: list[str] = []
    for path in found:
        try:
            state = load_checkpoint(path, "resume")
        except ConfigError as err:
            problems.append(f"{path.name}: {str(err).split(': ', 1)[-1].split('. ')[0]}")
            continue
        rank = (int(state.get("epoch", -1)), int(state.get("global_step", -1)), path == last)
        readable.append((rank, path))
    if not readable:
        raise ConfigError(
            f"resume={run_dir}: none of its checkpoints can be read ({'; '.join(problems)}), "
            "so it cannot be continued, and starting over would discard it. Restore "
            "checkpoints/ from a copy, or start a new run; nothing was changed."
        )
    newest = max(readable)[1]
    if newest == last:
        return last, ""
    why = "is missing" if not last.exists() else "cannot be read"
    return newest, (
        f"checkpoints/last.ckpt {why}; resuming from the newest readable checkpoint, "
        f"checkpoints/{newest.name} (epoch {max(readable)[0][0]}): the run repeats the epochs "
        "after it."
    )


def user_checkpoint(ckpt_path: str | None) -> Path | None:
    """The checkpoint named by the `ckpt_path` key, checked to exist."""
    if ckpt_path is None:
        return None
    if str(ckpt_path) in ("last", "best", "hpc", "registry"):
        # Lightning would look for these in the new run's empty folder and silently train
        # from scratch.
        raise ConfigError(
            f"ckpt_path={ckpt_path} would look in this new run's own (empty) folder. To "
            "continue an earlier run use resume=<its run dir>; to start from a checkpoint "
            "give its file, e.g. ckpt_path=logs/runs/<run>/checkpoints/last.ckpt."
        )
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={ckpt_path}: no such file. Give the path of a .ckpt file, e.g. "
            "ckpt_path=logs/runs/<run>/checkpoints/last.ckpt."
        )
    return path


def load_checkpoint(path: Path, key: str = "ckpt_path") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)`, refusing files that carry pickled code."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        what = f" ({found.group(1)})" if found else ""
        raise ConfigError(
            f"{key}={path}: refused to load: the file holds pickled Python objects{what}, "
            "which could run code when loaded. normlab reads checkpoints with "
            "torch.load(weights_only=True); use a checkpoint written by normlab, or re-save "
            "this one's weights as a plain state_dict if you trust its source."
        ) from None
    except Exception as err:  # truncated, empty, or not a torch file at all
        first_line = (str(err).splitlines() or [""])[0]
        raise ConfigError(
            f"{key}={path}: not a readable PyTorch checkpoint ({type(err).__name__}: "
            f"{first_line}). Point {key} at a .ckpt file written by normlab."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"{key}={path}: not a Lightning checkpoint (no 'state_dict'). Point {key} at a "
            ".ckpt file from a run's checkpoints/ folder."
        )
    return checkpoint


def network_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's own entries of a LightningModule state dict, without the `net.` prefix."""
    return {
        name.removeprefix(NET_PREFIX): tensor
        for name, tensor in state_dict.items()
        if name.startswith(NET_PREFIX)
    }


def check_architecture(checkpoint: dict[str, Any], net: nn.Module, path: Path, key: str) -> None:
    """ConfigError unless the checkpoint's network weights fit `net` name for name and shape."""
    saved = {n: tuple(t.shape) for n, t in network_weights(checkpoint["state_dict"]).items()}
    wanted = {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}
    if saved == wanted:
        return
    missing = [n for n in wanted if n not in saved]
    extra = [n for n in saved if n not in wanted]
    reshaped = [n for n in wanted if n in saved and saved[n] != wanted[n]]
    problems = []
    if missing:
        problems.append(f"it lacks {len(missing)} of this network's tensors ({examples(missing)})")
    if extra:
        problems.append(f"it has {len(extra)} this network lacks ({examples(extra)})")
    if reshaped:
        name = reshaped[0]
        problems.append(
            f"{len(reshaped)} differ in shape ({name}: {list(saved[name])} there, "
            f"{list(wanted[name])} here)"
        )
    model = checkpoint.get("hyper_parameters", {}).get("model", {})
    raise ConfigError(
        f"{key}={path} was saved by a different architecture ({describe_model(model)}): "
        f"{'; '.join(problems)}. Use the model options the checkpoint was trained with (see "
        "its run's .hydra/config.yaml), or a checkpoint of this model."
    )


def examples(names: list[str]) -> str:
    return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")


def describe_model(model: Mapping[str, Any]) -> str:
    """`SeedCNN with norm=BatchNorm2d, dropout=Dropout`, from a model config's `_target_`s."""

    def name(node: Any) -> str:
        if not isinstance(node, Mapping):
            return "?"
        # Checkpoints written before norms and dropouts were `_target_`s name them `name`.
        return str(node.get("_target_") or node.get("name") or "?").rsplit(".", 1)[-1]

    if not model:
        return "another network"
    return (
        f"{name(model)} with norm={name(model.get('norm'))}, dropout={name(model.get('dropout'))}"
    )


def history_from_last_checkpoint(checkpoint_dirs: list[Path]) -> list[dict[str, float]]:
    """The per-epoch history saved in `last.ckpt`.

    Under `strategy=ddp_spawn` training happens in child processes, and the MetricHistory of
    the process that writes results.json never sees an epoch; the checkpoint holds them.
    [] when the file cannot be read: this runs while a failed run records its results, and
    a damaged last.ckpt must not replace the error that stopped the run.
    """
    for folder in checkpoint_dirs:
        path = Path(folder) / CHECKPOINTS["last"].name
        if path.is_file():
            try:
                states = load_checkpoint(path, "checkpoint").get("callbacks")
            except NormlabError:
                return []
            history = states.get("MetricHistory") if isinstance(states, dict) else None
            epochs = history.get("epochs") if isinstance(history, dict) else None
            return list(epochs) if isinstance(epochs, list) else []
    return []
