"""Batch normalization written out from the lesson's equations.

`batchnorm` is the lesson's function, kept as a teaching reference (with the `eps` the lesson
left out). `ScratchBatchNorm2d` grows it into a layer that is a drop-in replacement for
`torch.nn.BatchNorm2d`: same constructor, same parameters and buffers (so checkpoints load into
either), same numbers in training and evaluation. Gradients come from autograd through the
plain tensor operations below, which is the point: nothing is hidden in a fused kernel.
"""

from __future__ import annotations

import torch
from torch import nn


def batchnorm(
    X: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Normalize each channel of an [N, C, H, W] batch to zero mean and unit variance.

    This is the lesson's `batchnorm()` with one fix: the variance gets `eps` added before the
    square root. Without it a channel that is constant over the batch (a dead ReLU map, a
    padded border) has variance 0 and its output is 0/0 = NaN, which then spreads through
    every later layer. `eps=0` reproduces the lesson's original behaviour.

    Args:
        X: mini-batch of feature maps, shape [N, C, H, W].
        gamma: per-channel scale, shape [C].
        beta: per-channel shift, shape [C].
        eps: added to the variance for numerical stability.
    """
    if X.dim() != 4:
        raise ValueError(f"batchnorm expects an [N, C, H, W] tensor, got shape {tuple(X.shape)}")
    C = X.size(1)
    mean = X.mean(dim=(0, 2, 3)).reshape(1, C, 1, 1)
    variance = ((X - mean) ** 2).mean(dim=(0, 2, 3)).reshape(1, C, 1, 1)
    X_hat = (X - mean) / torch.sqrt(variance + eps)
    return gamma.reshape(1, C, 1, 1) * X_hat + beta.reshape(1, C, 1, 1)


class ScratchBatchNorm2d(nn.Module):
    """`nn.BatchNorm2d` rebuilt from tensor operations.

    Training mode normalizes with the statistics of the current batch and updates
    `running_mean` and the *unbiased* `running_var` (as PyTorch does: the batch variance times
    n / (n - 1), where n = N * H * W). Evaluation mode normalizes with the running statistics.
    `bias=False` keeps the scale but drops the shift (as in torch >= 2.14).
    `momentum=None` replaces the exponential average with a cumulative one (factor
    1 / num_batches_tracked). With `track_running_stats=False` batch statistics are used in
    both modes, exactly as in PyTorch.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.zeros(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        # Under bf16/fp16 autocast, compute in float32 and return the input's dtype, as
        # PyTorch's kernels do: statistics rounded to 8 bits of mantissa would drift.
        out_dtype = x.dtype
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        # Same rule as nn.BatchNorm2d: batch statistics in training, and also in evaluation
        # when there are no running statistics to fall back on.
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats:
            mean, var = self._batch_statistics(x)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, values_per_channel=x.numel() // x.size(1))
        else:
            mean, var = self.running_mean, self.running_var
        shape = (1, -1, 1, 1)
        x_hat = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.weight is not None:
            x_hat = x_hat * self.weight.reshape(shape)
        if self.bias is not None:
            x_hat = x_hat + self.bias.reshape(shape)
        return x_hat.to(out_dtype)

    def _batch_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.numel() // x.size(1) <= 1:
            # PyTorch's exact message: one value per channel has no variance to normalize by.
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        return mean, var

    @torch.no_grad()
    def _update_running_stats(
        self, mean: torch.Tensor, var: torch.Tensor, values_per_channel: int
    ) -> None:
        self.num_batches_tracked.add_(1)
        unbiased_var = var * (values_per_channel / (values_per_channel - 1))
        if self.momentum is None:
            # Cumulative moving average over every batch seen so far. The factor stays a
            # tensor: float(num_batches_tracked) would wait for the GPU on every step and,
            # under torch.compile, break the graph and recompile for each new value.
            factor = 1.0 / self.num_batches_tracked
            self.running_mean.lerp_(mean, factor)
            self.running_var.lerp_(unbiased_var, factor)
        else:
            self.running_mean.mul_(1 - self.momentum).add_(mean, alpha=self.momentum)
            self.running_var.mul_(1 - self.momentum).add_(unbiased_var, alpha=self.momentum)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )
