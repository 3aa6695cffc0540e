"""The lesson's hand-written loop as an arm of the time-to-accuracy race, one process per run:

    python -m normlab.bench.race_loop --arm lesson --seed 1 --data <cifar10-jpeg> ...

`--arm lesson`: the lesson as written (its CNN, batch 4, SGD lr 0.001 momentum 0.9,
`ToTensor()` + `Normalize(0.5, 0.5)` per image in two DataLoader workers).
`--arm lesson_loop_normlab_recipe`: the same loop and data pipeline running normlab's recipe
(the race config's `normlab_recipe`, composed as `train.py` composes it: its network, batch
size, optimizer, per-step schedule, augmentation and normalization).

Both train on the training split and validate, inside `train_and_validate`, on the validation
split that `train.py` uses (the same `ImageFolderDataModule` split); each epoch is recorded by
`normlab.bench.race_trace.record_epoch`. The run stops at the first epoch whose validation
accuracy reaches the target, or after its epoch cap. Run by `normlab.bench.time_to_accuracy`,
which times it from the process's launch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from normlab.bench.lesson import (
    lesson_dataloaders,
    lesson_device,
    lesson_transform,
    train_and_validate,
)
from normlab.bench.race_trace import record_epoch
from normlab.bench.time_to_accuracy import ArrayImages, LessonCNN, load_race_config
from normlab.data.base import ImageSplit

ARMS = ("lesson", "lesson_loop_normlab_recipe")


def as_torchvision_array(split: ImageSplit, transform: Callable[[Image.Image], Any]) -> ArrayImages:
    # torchvision's CIFAR10 layout: the [N, H, W, 3] transpose, a PIL image per sample.
    images = split.images.permute(0, 2, 3, 1).numpy()
    return ArrayImages(images, split.labels.tolist(), transform)


def recipe_transform(data_cfg: Any) -> Callable[[Image.Image], torch.Tensor]:
    """normlab's recipe as per-image torchvision transforms: its augmentation, then its
    normalization."""
    import torchvision.transforms as transforms

    steps: list[Any] = []
    if data_cfg.crop_padding:
        steps.append(transforms.RandomCrop(32, padding=int(data_cfg.crop_padding)))
    if data_cfg.hflip:
        steps.append(transforms.RandomHorizontalFlip())
    normalize = transforms.Normalize(tuple(data_cfg.mean), tuple(data_cfg.std))
    return transforms.Compose([*steps, transforms.ToTensor(), normalize])


def eval_transform(data_cfg: Any) -> Callable[[Image.Image], torch.Tensor]:
    import torchvision.transforms as transforms

    normalize = transforms.Normalize(tuple(data_cfg.mean), tuple(data_cfg.std))
    return transforms.Compose([transforms.ToTensor(), normalize])


def splits(args: argparse.Namespace, race: dict) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
    """The training, validation and test images as `train.py` splits them (uint8)."""
    from normlab.data.image_folder import ImageFolderDataModule

    dm = ImageFolderDataModule(
        str(args.data),
        mean=(0.5,) * 3,  # unused: the loop normalizes per image
        std=(0.5,) * 3,
        cache_dir=str(args.cache_dir),
        val_size=race["data"]["val_size"],
        split_seed=race["data"]["split_seed"],
    )
    dm.setup()
    return dm.train_set, dm.val_set, dm.test_set


def lesson_setup(train: ImageSplit, val: ImageSplit, test: ImageSplit) -> dict:
    model = LessonCNN()
    trainloader, valloader = lesson_dataloaders(
        as_torchvision_array(train, lesson_transform()),
        as_torchvision_array(val, lesson_transform()),
    )
    return {
        "model": model,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9),
        "scheduler": None,
        "trainloader": trainloader,
        "valloader": valloader,
        "test": as_torchvision_array(test, lesson_transform()),
        "max_epochs": None,  # the race config's lesson.max_epochs
    }


def recipe_setup(args: argparse.Namespace, race: dict, splits_: tuple) -> dict:
    from hydra.utils import instantiate

    from normlab.bench.suite import compose_config
    from normlab.runner.build import build_network

    train, val, test = splits_
    overrides = ["data=cifar10_jpeg", f"data.root={args.data}", *race["normlab_recipe"]]
    cfg = compose_config(args.repo, overrides)
    model = build_network(cfg.model)
    trainloader, valloader = lesson_dataloaders(
        as_torchvision_array(train, recipe_transform(cfg.data)),
        as_torchvision_array(val, eval_transform(cfg.data)),
        batch_size=cfg.data.batch_size,
    )
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    epochs = cfg.trainer.max_epochs
    scheduler = None
    if cfg.get("scheduler"):
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=epochs * len(trainloader))
    return {
        "model": model,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "trainloader": trainloader,
        "valloader": valloader,
        "test": as_torchvision_array(test, eval_transform(cfg.data)),
        "max_epochs": epochs,
    }


def run(args: argparse.Namespace) -> None:
    race = load_race_config(args.config)
    torch.set_num_threads(race["threads"])
    torch.manual_seed(args.seed)  # the network's initial weights and the batch order
    data = splits(args, race)
    if args.arm == "lesson":
        arm = lesson_setup(*data)
        max_epochs = race["lesson"]["max_epochs"]
    else:
        arm = recipe_setup(args, race, data)
        max_epochs = arm["max_epochs"]
    # The GPU when there is one, as normlab's accelerator: auto (train_and_validate moves each
    # batch to the model's device).
    model, criterion = arm["model"].to(lesson_device()), nn.CrossEntropyLoss()
    # Untimed (record_epoch subtracts it): big batches, no workers.
    test_batches = DataLoader(arm["test"], batch_size=1000)
    for epoch in range(1, max_epochs + 1):
        row = train_and_validate(
            model,
            criterion,
            arm["optimizer"],
            arm["trainloader"],
            arm["valloader"],
            args.workdir,
            scheduler=arm["scheduler"],
        )
        val_acc = row[0][3]  # the lesson's avg "test" accuracy, here on the validation split
        record_epoch(args.trace, epoch, val_acc, model, test_batches)
        if val_acc >= race["target_acc"]:
            break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normlab.bench.race_loop", description=__doc__)
    parser.add_argument("--arm", choices=ARMS, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--config", type=Path, required=True, help="the race config (YAML)")
    parser.add_argument("--data", type=Path, required=True, help="<data>/{train,test}/<class>/")
    parser.add_argument("--cache-dir", type=Path, required=True, help="normlab's image cache")
    parser.add_argument("--repo", type=Path, required=True, help="holds conf/ (the recipe)")
    parser.add_argument("--trace", type=Path, required=True, help="per-epoch JSON lines")
    parser.add_argument("--workdir", type=Path, required=True, help="the lesson's torch.save")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
