"""The GPU path, checked on the CPU: bf16 autocast and channels-last with every norm and
dropout choice, torch.compile and its checkpoints, a loader that never reads data back to the
host, and no per-step host synchronization from the module, logging or progress bar."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config, config_options
from torch.utils._python_dispatch import TorchDispatchMode

from normlab.data import BatchTransform, SyntheticDataModule, TensorBatchLoader
from normlab.runner.build import build_network
from normlab.runner.rundir import network_weights
from normlab.training import ImageClassifier, MetricHistory, TerminalProgressBar

NORMS = config_options("model/norm")
DROPOUTS = {
    "none": [],
    "standard": [],
    "channel": ["model.dropout.p=0.2"],
    "scratch": ["model.dropout.placement=all"],
}


def network(norm: str, dropout: str, seed: int = 0) -> torch.nn.Module:
    """The lesson's CNN with a configured norm and dropout, built as train.py builds it."""
    overrides = ["model=cnn", f"model/norm={norm}", f"model/dropout={dropout}", *DROPOUTS[dropout]]
    cfg = compose_config(overrides)
    torch.manual_seed(seed)
    return build_network(cfg.model)


def classifier(net: torch.nn.Module, **kwargs) -> ImageClassifier:
    sgd = functools.partial(torch.optim.SGD, lr=0.01, momentum=0.9)
    return ImageClassifier(net, optimizer=sgd, **kwargs)


def train_step(module: ImageClassifier, images, labels, bf16: bool) -> torch.Tensor:
    """One forward and backward in training mode, with the RNG (dropout masks) fixed."""
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = module(images)
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    return logits


def without_dropout(module: ImageClassifier) -> ImageClassifier:
    """Dropout layers in eval mode (identity), norms still in training mode: dropout draws
    its mask differently for bf16 and float32 tensors, so only this part is comparable."""
    for layer in module.modules():
        if "Dropout" in type(layer).__name__:
            layer.eval()
    return module


@pytest.mark.parametrize("norm", NORMS)
def test_bf16_and_channels_last_compute_the_fp32_function(norm):
    data = torch.Generator().manual_seed(0)  # fixed inputs, whatever ran before this test
    images = torch.randn(8, 3, 32, 32, generator=data)
    labels = torch.randint(10, (8,), generator=data)
    for dropout in DROPOUTS:
        # Every layer in training mode: runs, and gives finite gradients everywhere.
        fast = classifier(network(norm, dropout), channels_last=True)
        logits = train_step(fast, images, labels, bf16=True)
        assert logits.dtype == torch.bfloat16  # autocast reached the network's layers
        assert fast.net.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
        for name, param in fast.net.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), (dropout, name)

        # The same function as in float32, to bf16's precision (8-bit mantissa, five layers).
        reference = without_dropout(classifier(network(norm, dropout)))
        fast = without_dropout(classifier(network(norm, dropout), channels_last=True))
        expected = train_step(reference, images, labels, bf16=False)
        logits = train_step(fast, images, labels, bf16=True)
        torch.testing.assert_close(logits.float(), expected, atol=0.1, rtol=0.05)
        # Gradients as one vector (a conv bias before batch norm has a gradient of ~0 whose
        # direction is rounding noise in either precision). Over 15 random batches bf16 was
        # 5-13% off in this norm; a wrong layout or dtype path is off by 100% or more.
        ours = torch.cat([p.grad.flatten() for p in fast.net.parameters()])
        theirs = torch.cat([p.grad.flatten() for p in reference.net.parameters()])
        assert (ours - theirs).norm() < 0.2 * theirs.norm(), dropout
        # Running statistics stay float32, and close to the float32 run's.
        for ours, theirs in zip(fast.net.buffers(), reference.net.buffers(), strict=True):
            assert ours.dtype == theirs.dtype
            torch.testing.assert_close(ours, theirs, atol=0.02, rtol=0.02)


# One network per norm family, each dropout choice in at least one of them: compiling all 24
# pairs would cost minutes on a CPU, and what compile can trip on is the layer code itself
# (graph breaks, recompiles, in-place buffer updates), which these cover. The "aot_eager"
# backend traces exactly as the default one does (Dynamo, then AOT autograd) but skips code
# generation, which takes ~30 s per network on 2 CPU cores.
COMPILED = [
    ("none", "standard"),
    ("batch", "channel"),
    ("scratch_batch", "scratch"),
    ("group", "none"),
    ("layer", "scratch"),
    ("instance", "standard"),
]


@pytest.mark.parametrize("norm,dropout", COMPILED)
def test_compiled_network_matches_eager_and_saves_plain_names(norm, dropout):
    torch._dynamo.reset()
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(10, (8,))
    eager = classifier(network(norm, dropout))
    compiled = classifier(network(norm, dropout), compile={"backend": "aot_eager"})
    with torch._dynamo.config.patch(error_on_recompile=False):
        for _ in range(2):  # running statistics move: the second step uses the first's
            expected = train_step(eager, images, labels, bf16=False)
            logits = train_step(compiled, images, labels, bf16=False)
            torch.testing.assert_close(logits, expected)
    for ours, theirs in zip(compiled.net.parameters(), eager.net.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad)
    # Saved under the network's own names: they load into a network that was never compiled.
    state = compiled.state_dict()
    assert not [key for key in state if "_orig_mod" in key]
    fresh = network(norm, dropout, seed=5)
    fresh.load_state_dict(network_weights(state))
    torch.testing.assert_close(fresh.eval()(images), compiled.eval()(images))


def test_scratch_batchnorm_cumulative_average_compiles_without_graph_breaks():
    # momentum=None used float(num_batches_tracked): a host sync per step on a GPU, and under
    # torch.compile a graph break plus a recompile for every new batch count.
    from normlab.nn import ScratchBatchNorm2d

    torch._dynamo.reset()
    layer = ScratchBatchNorm2d(4, momentum=None)
    reference = torch.nn.BatchNorm2d(4, momentum=None)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    for step in range(4):
        x = torch.randn(6, 4, 5, 5) + step
        torch.testing.assert_close(compiled(x), reference(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.running_mean, reference.running_mean)
    torch.testing.assert_close(layer.running_var, reference.running_var)


def test_loader_never_reads_data_back_to_the_host():
    # On the meta device a tensor has a shape but no data: any operation that needs values
    # on the host (.item(), boolean masks, nonzero) raises. The loader must only queue work.
    images = torch.empty(70, 3, 32, 32, dtype=torch.uint8, device="meta")
    labels = torch.empty(70, dtype=torch.long, device="meta")
    transform = BatchTransform((0.5,) * 3, (0.25,) * 3, crop_padding=4, hflip=True)
    loader = TensorBatchLoader(images, labels, 16, transform, train=True)
    batches = list(loader)
    assert len(batches) == 4
    assert all(x.shape == (16, 3, 32, 32) and x.device.type == "meta" for x, _ in batches)


class CountHostSyncs(TorchDispatchMode):
    """Counts the operations that make a GPU wait for the host: reading a value
    (`.item()`, `bool(t)`), and ops whose output size depends on data."""

    SYNCING = ("aten._local_scalar_dense", "aten.nonzero", "aten.unique", "aten.masked_select")

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket).startswith(self.SYNCING):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.slow
def test_no_host_sync_per_training_step(tmp_path):
    """Host syncs in a fit must not grow with the number of steps: the module, the metrics,
    logging, the history and a progress bar drawn as in a terminal all stay on the device."""

    def syncs_in_fit(steps: int) -> int:
        datamodule = SyntheticDataModule(
            train_size_total=16 * steps + 40, test_size=40, val_size=40, batch_size=16,
            eval_batch_size=40, crop_padding=2, hflip=True,
        )  # fmt: skip
        module = classifier(network("scratch_batch", "scratch"))
        bar = TerminalProgressBar(1, force=True)
        # The bar reads the running loss and accuracy at each epoch's end and every
        # READ_EVERY_S seconds: by the clock, not by the step, so left out on a slow machine.
        bar.READ_EVERY_S = math.inf
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=2,
            logger=L.pytorch.loggers.TensorBoardLogger(tmp_path / f"tb{steps}", name=""),
            callbacks=[MetricHistory(print_summary=False), bar],
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        with CountHostSyncs() as counter:
            trainer.fit(module, datamodule=datamodule)
        assert trainer.global_step == 2 * steps
        return counter.count

    assert syncs_in_fit(3) == syncs_in_fit(9)
