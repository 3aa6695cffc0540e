"""Classify image files with a finished run.

    python -m normlab.predict run=<run dir> [which=best|last] [top=3] IMAGE [IMAGE ...]

`run=` is read by Hydra's override grammar, as eval.py reads it: a path with a space, a comma
or a non-ASCII letter goes in single quotes inside the shell's, "run='/data/my runs/x'".

PNG, JPEG, BMP or WEBP (the types training reads; others are refused) of any size and
mode: each image is converted as data=image_folder converts training images (RGB, 16-bit
scaled to 8, shorter side resized to the network's image size and centre-cropped) and
normalized with the statistics the run recorded, exactly as validation batches are. Prints
the top classes with their probabilities, using the dataset's class names.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.utils import instantiate

from normlab.data.batches import BatchTransform
from normlab.data.image_files import IMAGE_SUFFIXES, is_image_name
from normlab.data.image_folder import decode_image
from normlab.errors import ConfigError, DataError
from normlab.runner.build import build_network_or_error
from normlab.runner.cli import exit_on_user_error
from normlab.runner.rundir import checkpoint_path, network_weights, read_results, saved_config
from normlab.runner.runstate import (
    check_not_training,
    check_run_architecture,
    load_run_checkpoint,
    parse_run,
)
from normlab.runner.threads import threads_for_run

USAGE = "usage: python -m normlab.predict run=<run dir> [which=best|last] [top=3] IMAGE [IMAGE ...]"


class Predictor:
    """A finished run's network, ready to classify images (on the CPU, in evaluation mode)."""

    def __init__(self, run_dir: Path, which: str = "best") -> None:
        cfg = saved_config(run_dir, "run")
        check_not_training(run_dir, "-m normlab.predict", " IMAGE [IMAGE ...]")
        path = checkpoint_path(run_dir, which)
        checkpoint = load_run_checkpoint(run_dir, which, path)
        self.net = build_network_or_error(cfg.model)
        # A message naming the mismatch (a checkpoint copied in from another run, a config
        # edited since), not load_state_dict's RuntimeError listing every tensor.
        check_run_architecture(checkpoint, self.net, run_dir, which, path)
        self.net.load_state_dict(network_weights(checkpoint["state_dict"]))
        self.net.eval()
        # `threads=` of the run's config (null: chosen for this machine, as train.py does).
        self.threads_setting: int | None = cfg.get("threads")
        self.image_size = int(cfg.data.get("image_size", 32))
        self.channels = int(cfg.model.get("in_channels", 3))
        # The run recorded its classes and statistics: the data folder need not exist here.
        recorded = read_results(run_dir)
        if recorded.get("classes") and recorded.get("normalization"):
            self.class_names = [str(name) for name in recorded["classes"]]
            stats = recorded["normalization"]
            self.transform = BatchTransform(tuple(stats["mean"]), tuple(stats["std"]))
        else:  # a run from before results.json recorded them
            datamodule = instantiate(cfg.data)  # cheap: nothing is loaded before setup()
            self.class_names = [str(name) for name in datamodule.class_names]
            self.transform = datamodule.eval_transform

    def read(self, path: Path) -> torch.Tensor:
        """One image file as uint8 [C, H, W] at the network's input size, prepared as
        data=image_folder prepares training images (RGB, 16-bit scaled, shorter side resized
        and centre-cropped)."""
        if not path.is_file():
            raise DataError(f"{path}: no such image file.")
        if not is_image_name(path):  # the types training reads, no others
            raise DataError(
                f"{path}: not one of the image types normlab reads "
                f"({', '.join(IMAGE_SUFFIXES)}), the same list data=image_folder trains on. "
                "Convert it to PNG or JPEG first."
            )
        pixels = torch.from_numpy(decode_image(path, self.image_size))
        if self.channels == 1:  # ITU-R 601 luma, as Pillow's convert("L")
            weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            pixels = (pixels.float() * weights).sum(0, keepdim=True).round().to(torch.uint8)
        return pixels

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for uint8 [N, C, H, W] images."""
        return self.net(self.transform(images)).softmax(dim=1)

    def top_classes(self, paths: Sequence[Path], k: int = 3) -> list[list[tuple[str, float]]]:
        """The k most probable (class name, probability) pairs of each image, best first."""
        probs = self.probabilities(torch.stack([self.read(p) for p in paths]))
        values, indices = probs.topk(min(k, probs.size(1)), dim=1)
        return [
            [(self.class_names[i], float(v)) for v, i in zip(row_v, row_i, strict=True)]
            for row_v, row_i in zip(values.tolist(), indices.tolist(), strict=True)
        ]


def parse_args(argv: Sequence[str]) -> tuple[dict[str, str], list[Path]]:
    options = {"which": "best", "top": "3"}
    images = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in ("run", "which", "top"):
            # run= by Hydra's grammar, as eval.py reads it: one quoting rule for both.
            options[key] = parse_run(value) if key == "run" else value
        else:
            images.append(Path(arg))
    if "run" not in options or not images:
        raise ConfigError(f"predict needs run=<run dir> and at least one image. {USAGE}")
    if not options["top"].isdigit() or int(options["top"]) < 1:
        raise ConfigError(f"top={options['top']}: give a positive number of classes to print.")
    return options, images


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    with exit_on_user_error():
        options, images = parse_args(argv)
        predictor = Predictor(Path(options["run"]), options["which"])
        # torch's default, a thread per core, is slow on a busy machine (normlab.runner.threads).
        torch.set_num_threads(threads_for_run(predictor.threads_setting, None)[0])
        for path, top in zip(
            images, predictor.top_classes(images, int(options["top"])), strict=True
        ):
            print(f"{path}: " + ", ".join(f"{name} {prob:.3f}" for name, prob in top))
    return 0
