"""Which layers the diagnostics watch, and the forward hooks that measure them.

Layers are named by their module path inside the network (`features.0.norm`, `head.1.act`),
the names `print(net)` shows. The hooks are registered once and return at once unless their
probe is switched on, so an uninstrumented step pays only a Python function call per watched
layer. Every statistic stays a tensor on the training device until the caller collects them
all in one host transfer.

Layers are recognised by where they sit and what they hold, not by a list of classes, so a
norm of your own is watched like torch's: the `norm` slot of a block is a normalization layer,
and a layer with a `running_var` buffer is a batch norm (its evaluation uses those statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

# torch's own normalization layers, for networks not built from normlab's blocks (_NormBase
# covers BatchNorm*, SyncBatchNorm and InstanceNorm*).
TORCH_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def is_batch_norm(module: nn.Module) -> bool:
    """A layer that keeps running statistics of its input variance (the ones evaluation uses)."""
    return isinstance(getattr(module, "running_var", None), torch.Tensor)


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
            if isinstance(module, TORCH_NORMS) or is_batch_norm(module) or name.endswith("norm"):
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
    """Forward hooks that measure only while `active`."""

    def __init__(self) -> None:
        self.active = False
        self._handles: list = []

    def _when_active(self, hook: Callable) -> Callable:
        def gated_hook(*args):
            return hook(*args) if self.active else None

        return gated_hook

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
        @self._when_active
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
        @self._when_active
        def hook(module: nn.Module, inputs: tuple) -> None:
            if module.training:
                # The forward pass updates running_var in place; keep the value it replaces.
                self._running_var_before[name] = module.running_var.detach().clone()

        return hook

    def _relu_hook(self, name: str):
        @self._when_active
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
    """Measures each batch norm's per-channel input variance on the first batch of a
    validation epoch: its first `max_images` images, or all of it when the batch is smaller
    (evaluation mode: dropout off, running statistics in use; the same images every epoch).
    Its ratio to the running variance is the variance shift: far from 1 when dropout feeds a
    batch norm (Li et al. 2019). 256 images give each channel tens of thousands of values,
    without paying for the variance of a whole validation set.
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
        @self._when_active
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
