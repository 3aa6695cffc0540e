"""What a run was, written down before it starts: the network layer by layer and the fully
resolved config, printed and saved as `model_summary.txt` and `config_resolved.yaml` in the
run directory (`.hydra/config.yaml` keeps the interpolations; this file keeps their values).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

log = logging.getLogger("normlab")


def model_summary(net: nn.Module, input_shape: tuple[int, ...]) -> str:
    """One line per layer: module path, type, output shape for one input, own parameters."""
    shapes: dict[str, tuple[int, ...]] = {}

    def keep_shape(name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if isinstance(output, torch.Tensor):
                shapes[name] = tuple(output.shape[1:])

        return hook

    named = [(name, m) for name, m in net.named_modules() if name]
    handles = [m.register_forward_hook(keep_shape(name)) for name, m in named]
    was_training = net.training
    try:
        net.eval()  # no running statistics updated, no dropout drawn
        with torch.no_grad():
            param = next(net.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            # net.forward, not net(...): a network compiled in place would compile here.
            net.forward(torch.zeros(1, *input_shape, device=device))
    finally:
        net.train(was_training)
        for handle in handles:
            handle.remove()

    rows = [("layer", "type", "output", "params")]
    for name, module in named:
        own = sum(p.numel() for p in module.parameters(recurse=False))
        shape = "x".join(map(str, shapes[name])) if name in shapes else "-"
        depth = name.count(".")
        rows.append(("  " * depth + name, type(module).__name__, shape, f"{own:,}" if own else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d:>{widths[3]}}"
        for a, b, c, d in rows
    ]
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    lines.append(f"{type(net).__name__}: {total:,} parameters ({trainable:,} trainable)")
    return "\n".join(lines) + "\n"


@rank_zero_only
def describe_run(cfg: DictConfig, net: nn.Module, output_dir: Path) -> None:
    """Print and save the model summary and the resolved config (rank zero only)."""
    image_size = int(cfg.data.get("image_size", 32))
    in_channels = int(cfg.model.get("in_channels", 3))
    summary = model_summary(net, (in_channels, image_size, image_size))
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    (output_dir / "model_summary.txt").write_text(summary)
    (output_dir / "config_resolved.yaml").write_text(resolved)
    log.info("model summary (model_summary.txt):\n%s", summary)
    log.info("config (config_resolved.yaml):\n%s", resolved)
