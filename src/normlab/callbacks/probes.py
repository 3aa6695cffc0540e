"""Which layers the diagnostics watch, and the forward hooks that measure them.

Layers are named by their module path inside the network (`features.0.norm`, `head.1.act`),
the names `print(net)` shows. The hooks are registered once and return at once unless their
probe is switched on, so an uninstrumented step pays only a Python function call per watched
layer. Every statistic stays a tensor on the training device until the caller collects them
all in one host transfer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from normlab.layers.batchnorm import ScratchBatchNorm2d

# nn's _NormBase covers BatchNorm*, SyncBatchNorm and InstanceNorm*.
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, ScratchBatchNorm2d)
BATCH_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, ScratchBatchNorm2d)


def is_batch_norm(module: nn.Module) -> bool:
    """A batch norm that keeps running statistics (the ones evaluation uses)."""
    return isinstance(module, BATCH_NORM_TYPES) and module.running_var is not None


@dataclass
class WatchedLayers:
    """The layers of one network that the diagnostics report on, by module path."""

    # Normalization layers, and the `norm` slot of blocks built without one (an nn.Identity):
    # a network without normalization then reports the same tags, for side-by-side plots.
    norms: dict[str, nn.Module] = field(default_factory=dict)
    batch_norms: dict[str, nn.Module] = field(default_factory=dict)
    relus: dict[str, nn.Module] = field(default_factory=dict)
    # Layers that own parameters directly (conv, linear, norm affine): gradient and update.
    weighted: dict[str, list[nn.Parameter]] = field(default_factory=dict)

    @classmethod
    def of(cls, net: nn.Module) -> WatchedLayers:
        layers = cls()
        for name, module in net.named_modules():
            if not name:
                continue
            if isinstance(module, NORM_TYPES) or name.rsplit(".", 1)[-1] == "norm":
                layers.norms[name] = module
            if is_batch_norm(module):
                layers.batch_norms[name] = module
            if isinstance(module, nn.ReLU):
                layers.relus[name] = module
            params = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if params:
                layers.weighted[name] = params
        return layers


def channel_variance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased per-channel variance of [N, C, ...] activations, as batch norm's running_var
    accumulates it."""
    return x.detach().var(dim=[d for d in range(x.dim()) if d != 1])


class Probe:
    """Forward hooks that measure while `active` and keep count of the time they took."""

    def __init__(self) -> None:
        self.active = False
        self.busy_s = 0.0
        self._handles: list = []

    def _timed(self, hook: Callable) -> Callable:
        """Wrap a hook: return at once unless active, else run it and add up its time."""

        def timed_hook(*args):
            if not self.active:
                return None
            began = time.perf_counter()
            result = hook(*args)
            self.busy_s += time.perf_counter() - began
            return result

        return timed_hook

    def take_busy_s(self) -> float:
        busy, self.busy_s = self.busy_s, 0.0
        return busy

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class TrainingProbe(Probe):
    """Measures one training step when `active`: activation mean and std before and after
    each norm layer, the fraction of zero ReLU outputs, and for batch norms the ratio of the
    running variance (as it stood before this batch) to this batch's variance."""

    def __init__(self, layers: WatchedLayers) -> None:
        super().__init__()
        self.layers = layers
        self.scalars: dict[str, torch.Tensor] = {}
        self.var_ratios: dict[str, torch.Tensor] = {}
        self._running_var_before: dict[str, torch.Tensor] = {}
        for name, module in layers.norms.items():
            self._handles.append(module.register_forward_hook(self._norm_hook(name)))
        for name, module in layers.batch_norms.items():
            self._handles.append(module.register_forward_pre_hook(self._bn_pre_hook(name)))
        for name, module in layers.relus.items():
            self._handles.append(module.register_forward_hook(self._relu_hook(name)))

    def _norm_hook(self, name: str):
        @self._timed
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not module.training:
                return
            x, y = inputs[0].detach(), output.detach()
            self.scalars[f"activation_mean/{name}/before"] = x.mean()
            self.scalars[f"activation_mean/{name}/after"] = y.mean()
            self.scalars[f"activation_std/{name}/before"] = x.std()
            self.scalars[f"activation_std/{name}/after"] = y.std()
            if name in self._running_var_before:
                ratio = self._running_var_before.pop(name) / channel_variance(x)
                self.var_ratios[name] = ratio
                self.scalars[f"bn_var_ratio/{name}/train"] = ratio.mean()

        return hook

    def _bn_pre_hook(self, name: str):
        @self._timed
        def hook(module: nn.Module, inputs: tuple) -> None:
            if module.training:
                # The forward pass updates running_var in place; keep the value it replaces.
                self._running_var_before[name] = module.running_var.detach().clone()

        return hook

    def _relu_hook(self, name: str):
        @self._timed
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if module.training:
                self.scalars[f"relu_zero_fraction/{name}"] = (output.detach() == 0).float().mean()

        return hook

    def take(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The statistics measured since the last call: (scalars, per-channel var ratios)."""
        scalars, ratios = self.scalars, self.var_ratios
        self.scalars, self.var_ratios, self._running_var_before = {}, {}, {}
        return scalars, ratios


class ValidationProbe(Probe):
    """Measures each batch norm's per-channel input variance on the first `max_images` images
    of a validation epoch (evaluation mode: dropout off, running statistics in use; the same
    images every epoch). Its ratio to the running variance is the variance shift: far from 1
    when dropout feeds a batch norm (Li et al. 2019). 256 images give each channel tens of
    thousands of values; the variance of a whole validation set took longer than drawing the
    pictures.
    """

    def __init__(self, layers: WatchedLayers, max_images: int = 256) -> None:
        super().__init__()
        self.max_images = max_images
        self.variances: dict[str, torch.Tensor] = {}
        self._modules = layers.batch_norms
        self._handles = [
            module.register_forward_hook(self._hook(name))
            for name, module in layers.batch_norms.items()
        ]

    def _hook(self, name: str):
        @self._timed
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if not module.training and name not in self.variances:
                self.variances[name] = channel_variance(inputs[0][: self.max_images])

        return hook

    def take_var_ratios(self) -> dict[str, torch.Tensor]:
        """running_var / variance of the measured batch, per channel, for each batch norm."""
        ratios = {
            name: self._modules[name].running_var.detach() / variance
            for name, variance in self.variances.items()
        }
        self.variances = {}
        return ratios


def gradient_norms(layers: WatchedLayers) -> Iterator[tuple[str, torch.Tensor]]:
    """(layer, L2 norm of the gradient of all its parameters) for layers that have one."""
    for name, params in layers.weighted.items():
        grads = [p.grad.detach() for p in params if p.grad is not None]
        if grads:
            yield name, torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))


def snapshot(layers: WatchedLayers) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in params] for name, params in layers.weighted.items()}


def update_ratios(
    layers: WatchedLayers, before: dict[str, list[torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(layer, ||W_after - W_before|| / ||W_before||) over all parameters of the layer: how
    far one optimizer step moved it, relative to its size (about 1e-3 is the classic healthy
    value; far below, the layer has stopped learning)."""
    for name, params in layers.weighted.items():
        old = before.get(name)
        if old is None:
            continue
        delta = torch.stack([(p.detach() - o).norm() for p, o in zip(params, old, strict=True)])
        size = torch.linalg.vector_norm(torch.stack([o.norm() for o in old]))
        yield name, torch.linalg.vector_norm(delta) / size.clamp_min(1e-12)
