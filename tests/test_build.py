"""From composed configs to objects (normlab.runner.build), with the real Hydra composition."""

from __future__ import annotations

import torch
from conftest import compose_config
from omegaconf import OmegaConf

from normlab.runner.build import build_network, network_spec


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
