"""Build the normalization and dropout layers named in the `model/norm` and `model/dropout`
config groups.

A spec is either a name (`"batch"`) or a mapping with a `name` key and that layer's options,
exactly as the YAML files in `conf/model/norm/` and `conf/model/dropout/` hold them. Networks
call `make_norm2d(spec, channels)` once per conv block and `make_dropout(spec, ...)` once per
place dropout goes, so adding a new choice means adding one entry here and one YAML file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from normlab.layers.batchnorm import ScratchBatchNorm2d
from normlab.layers.dropout import ScratchDropout, check_dropout_probability

Spec = str | Mapping[str, Any]

# Each builder takes the channel count and that layer's options.
NORM_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "none": lambda channels: nn.Identity(),
    "batch": lambda channels, **o: nn.BatchNorm2d(channels, **o),
    "scratch_batch": lambda channels, **o: ScratchBatchNorm2d(channels, **o),
    # GroupNorm (Wu & He, 2018): statistics per sample over groups of channels.
    "group": lambda channels, num_groups=2, **o: nn.GroupNorm(num_groups, channels, **o),
    # LayerNorm over a whole feature map stack (C, H, W) with a per-channel affine is
    # GroupNorm with a single group; nn.LayerNorm would need the spatial size up front.
    "layer": lambda channels, **o: nn.GroupNorm(1, channels, **o),
    "instance": lambda channels, affine=True, **o: nn.InstanceNorm2d(channels, affine=affine, **o),
}

DROPOUT_BUILDERS: dict[str, Callable[[float], nn.Module]] = {
    "none": lambda p: nn.Identity(),
    "standard": lambda p: nn.Dropout(p),
    # Drops whole feature maps (Tompson et al., 2015): neighbouring pixels are correlated, so
    # element-wise dropout on conv maps removes little information.
    "channel": lambda p: nn.Dropout2d(p),
    "scratch": lambda p: ScratchDropout(p),
}

# Where dropout layers go in a network: between the fully connected layers (the lesson's
# choice), after every conv block (so dropout feeds the next block's normalization), or both.
PLACEMENTS = ("head", "conv", "all")


def _split(spec: Spec, kind: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    options = dict(spec)
    name = options.pop("name", None)
    if name is None:
        raise ValueError(f"a {kind} spec needs a 'name' key, got {dict(spec)}")
    return str(name), options


def norm_name(spec: Spec) -> str:
    return _split(spec, "norm")[0]


def make_norm2d(spec: Spec, num_channels: int) -> nn.Module:
    """The normalization layer for a conv block with `num_channels` output channels."""
    name, options = _split(spec, "norm")
    if name not in NORM_BUILDERS:
        raise ValueError(
            f"model.norm.name={name!r} is not a normalization this template knows; "
            f"choose one of {sorted(NORM_BUILDERS)} (model/norm=<choice> on the command line)."
        )
    num_groups = options.get("num_groups")
    if name == "group" and num_groups is not None and num_channels % num_groups:
        raise ValueError(
            f"model.norm.num_groups={num_groups} does not divide the {num_channels} channels of "
            "a conv layer in this network; GroupNorm needs equal groups. Pick a divisor of every "
            "layer's width (2 works for the lesson's CNN: 6 and 16 channels)."
        )
    try:
        return NORM_BUILDERS[name](num_channels, **options)
    except TypeError as err:
        raise ValueError(f"model.norm: option not accepted by the {name!r} norm: {err}") from err


def dropout_settings(spec: Spec) -> tuple[str, float, str]:
    """(name, p, placement) of a dropout spec, validated."""
    name, options = _split(spec, "dropout")
    if name not in DROPOUT_BUILDERS:
        raise ValueError(
            f"model.dropout.name={name!r} is not a dropout this template knows; "
            f"choose one of {sorted(DROPOUT_BUILDERS)} (model/dropout=<choice>)."
        )
    try:
        p = check_dropout_probability(options.get("p", 0.0))
    except ValueError as err:
        raise ValueError(f"model.dropout.p: {err}") from None
    placement = options.get("placement", "head")
    if placement not in PLACEMENTS:
        raise ValueError(
            f"model.dropout.placement={placement!r}; choose one of {list(PLACEMENTS)}."
        )
    if name == "channel" and placement != "conv":
        raise ValueError(
            "model.dropout: channel dropout drops whole feature maps, which only exist after "
            "conv layers; set model.dropout.placement=conv (or pick model/dropout=standard)."
        )
    return name, p, placement


def make_dropout(spec: Spec) -> nn.Module:
    """One dropout layer as the spec describes (nn.Identity for `none`)."""
    name, p, _ = dropout_settings(spec)
    return DROPOUT_BUILDERS[name](p)
