"""The lesson's data pipeline and training loop, transcribed as the baseline to beat.

`lesson_loaders` is the lesson's cell 4: torchvision's `CIFAR10` dataset converting every image
with `ToTensor()` and `Normalize((0.5,)*3, (0.5,)*3)` (`lesson_transform`) in two DataLoader
worker processes (`lesson_dataloaders`, for any dataset).
`train_and_validate` is the lesson's loop line for line: the per-step `.item()` calls, the
accuracy through `torch.max(outputs.data, 1)`, validation on the test set each epoch and a
`torch.save` of the whole model at the end of it. What differs: the prints are gone, the model
is saved into `save_dir`, an optional per-step `scheduler` can run a recipe's schedule, and
`train_steps` / `eval_images` cut an epoch short so the benchmark can extrapolate one from a
measured part (`clock` records when each part ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from normlab.bench.probes import PhaseClock


def lesson_transform() -> Callable[[Image.Image], torch.Tensor]:
    """The lesson's per-image transform: `ToTensor()` then `Normalize((0.5,)*3, (0.5,)*3)`."""
    import torchvision.transforms as transforms

    return transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )


def lesson_dataloaders(
    trainset: Dataset, testset: Dataset, batch_size: int = 4
) -> tuple[DataLoader, DataLoader]:
    """The lesson's cell 4 DataLoaders over any datasets: shuffled training batches, test
    batches in order, two worker processes each."""
    trainloader = DataLoader(trainset, batch_size=batch_size, shuffle=True, num_workers=2)
    testloader = DataLoader(testset, batch_size=batch_size, shuffle=False, num_workers=2)
    return trainloader, testloader


def lesson_loaders(root: Path, batch_size: int = 4) -> tuple[DataLoader, DataLoader]:
    """The lesson's train and test loaders over the CIFAR-10 files in `root`.

    torchvision's own `CIFAR10` class with its md5 checks turned off (the benchmark's files
    are synthetic): the same parsing, `__getitem__` (a PIL image per sample) and transforms.
    """
    from normlab.data.cifar10 import _CIFAR10Files

    transform = lesson_transform()
    trainset = _CIFAR10Files(root=str(root), train=True, download=False, transform=transform)
    testset = _CIFAR10Files(root=str(root), train=False, download=False, transform=transform)
    return lesson_dataloaders(trainset, testset, batch_size)


def lesson_device() -> torch.device:
    """Where the lesson's loop trains: the GPU when there is one, as normlab's
    `accelerator: auto` does, so the two sides are timed on the same hardware."""
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def train_and_validate(
    model: nn.Module,
    loss_criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainloader: DataLoader,
    testloader: DataLoader,
    save_dir: Path,
    *,
    train_steps: int | None = None,
    eval_images: int | None = None,
    clock: PhaseClock | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> list[list[float]]:
    """One epoch of the lesson's loop; returns its history row like the lesson does.
    `scheduler` (not the lesson's: it has none) is stepped after every optimizer step, so the
    loop can run a recipe with a per-step schedule (the time-to-accuracy race)."""
    device = next(model.parameters()).device
    clock = clock or PhaseClock()
    history = []
    train_data_size = len(trainloader.dataset)
    test_data_size = len(testloader.dataset)
    epoch = 0
    clock.start()

    model.train()
    train_loss = 0.0
    train_acc = 0.0

    for i, (inputs, labels) in enumerate(trainloader):
        if i == train_steps:
            break
        inputs = inputs.to(device)
        labels = labels.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        train_loss += loss.item() * inputs.size(0)
        _ret, predictions = torch.max(outputs.data, 1)
        correct_counts = predictions.eq(labels.data.view_as(predictions))
        acc = torch.mean(correct_counts.type(torch.FloatTensor))
        train_acc += acc.item() * inputs.size(0)
        clock.step_done()
    clock.mark("train")

    valid_loss, valid_acc, seen = validate(model, loss_criterion, testloader, eval_images)
    clock.mark("eval", images=seen)

    avg_train_loss = train_loss / train_data_size
    avg_train_acc = train_acc / train_data_size
    avg_test_loss = valid_loss / test_data_size
    avg_test_acc = valid_acc / test_data_size
    history.append([avg_train_loss, avg_test_loss, avg_train_acc, avg_test_acc])
    torch.save(model, Path(save_dir) / f"cifar10_model_{epoch}.pt")
    clock.mark("end")
    return history


def validate(
    model: nn.Module, loss_criterion: nn.Module, testloader: DataLoader, eval_images: int | None
) -> tuple[float, float, int]:
    """The lesson's validation pass: summed loss, summed accuracy and images seen."""
    device = next(model.parameters()).device
    valid_loss = 0.0
    valid_acc = 0.0
    seen = 0
    with torch.no_grad():
        model.eval()
        for _j, (inputs, labels) in enumerate(testloader):
            if eval_images is not None and seen >= eval_images:
                break
            inputs = inputs.to(device)
            labels = labels.to(device)
            outputs = model(inputs)
            loss = loss_criterion(outputs, labels)
            valid_loss += loss.item() * inputs.size(0)
            _ret, predictions = torch.max(outputs.data, 1)
            correct_counts = predictions.eq(labels.data.view_as(predictions))
            acc = torch.mean(correct_counts.type(torch.FloatTensor))
            valid_acc += acc.item() * inputs.size(0)
            seen += inputs.size(0)
    return valid_loss, valid_acc, seen


def loader_throughput(loader: Iterable, images: int) -> float:
    """Images per second drawn from a fresh iterator over `loader` once its first batch is
    out (worker start-up is an epoch's fixed cost, timed with the training epoch), until
    `images` more have come out."""
    batches = iter(loader)
    next(batches)
    start = time.perf_counter()
    seen = 0
    for inputs, _ in batches:
        seen += inputs.size(0)
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)
