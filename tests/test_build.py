"""From composed configs to objects (normlab.runner.build), with the real Hydra composition."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf

from normlab.errors import ConfigError
from normlab.runner.build import build_network, build_network_or_error, network_spec


def initialized(model_cfg, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network(model_cfg)


def same_network(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return (
        repr(a) == repr(b) and sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    )


def test_model_keys_may_interpolate_keys_outside_the_model():
    # A model setting that points outside the model node (the root's keys, data.*) resolves
    # against the whole config, as everywhere else in Hydra.
    literal = compose_config(["data=digits", "model=cnn_bn", "model.norm.eps=0.001"])
    linked = compose_config(
        [
            "data=digits",
            "model=cnn_bn",
            "+norm_eps=0.001",
            "model.norm.eps=${norm_eps}",
            "model.num_classes=${data.val_size}",  # 180: a root key's value reaches the net
        ]
    )
    assert network_spec(linked.model)["norm"]["eps"] == 0.001
    assert network_spec(linked.model)["num_classes"] == 180
    with_link = initialized(linked.model)
    assert with_link(torch.zeros(2, 3, 32, 32)).shape == (2, 180)
    norms = [m for m in with_link.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.eps == 0.001 for m in norms)

    # Otherwise the network is the one the plain values describe: same layers, same weights.
    linked.model.num_classes = 10
    assert same_network(initialized(linked.model), initialized(literal.model))
    # A plain mapping (a checkpoint's hyperparameters) builds as before.
    plain = OmegaConf.to_container(literal.model, resolve=True)
    assert same_network(initialized(plain), initialized(literal.model))


def test_a_network_that_cannot_be_built_is_one_config_error():
    cfg = compose_config(["data=digits", "model=cnn_bn", "model.norm.eps=${no_such_key}"])
    with pytest.raises(ConfigError) as err:
        build_network_or_error(cfg.model)
    assert str(err.value).startswith(
        "model.norm.eps: its value cannot be resolved (InterpolationKeyError: Interpolation "
        "key 'no_such_key' not found)."
    )
    # A layer's own refusal, named by normlab's network_error.
    cfg = compose_config(["model=cnn", "model/norm=group", "model.norm.num_groups=4"])
    with pytest.raises(ConfigError, match="^model.norm.num_groups=4 does not divide the 6 "):
        build_network_or_error(cfg.model)
