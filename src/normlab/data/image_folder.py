"""Your own images, laid out in class folders, held in memory like every other dataset.

`root/train/<class>/*` (and optionally `root/test/<class>/*`) in torchvision's ImageFolder
convention: class names are the folder names, sorted; every image under a class folder counts,
at any depth and through symbolic links (normlab.data.image_files, which names in one warning
whatever it leaves out). Every image is decoded once, converted
to RGB, resized to `image_size` and stored as one uint8 tensor, which is cached on disk: the
next run loads the cache in about a second, and the cache is rebuilt when a file in the folder
is added, removed or changed.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from normlab.data.base import ImageSplit, InMemoryDataModule, count_or_fraction
from normlab.data.image_files import (
    IMAGE_SUFFIXES,
    SHOWN,
    LeftOut,
    folder_identity,
    images_under,
    per_class_counts,
)
from normlab.errors import DataError
from normlab.files import atomic_open

log = logging.getLogger("normlab")

CACHE_VERSION = 1


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image as uint8 RGB [H, W, 3]: grayscale and palette expanded, alpha dropped,
    16-bit and float images scaled to 8 bits (PIL's own convert would clip them)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit PNGs open as "I;16" or "I" depending on the Pillow version; both span 0..65535.
        top = 1.0 if image.mode == "F" and values.max() <= 1.0 else 65535.0
        grey = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def square_resize(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and crop the centre square: no image is stretched.
    Pixel for pixel torchvision's Resize(size) + CenterCrop(size) on a PIL image (the same
    rounding of the longer side and of the crop offsets)."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)  # half to even
    return image.crop((left, top, left + size, top + size))


def decode_image(path: Path, size: int) -> np.ndarray:
    """One file as uint8 [3, size, size]; a DataError that names the file when it is not an
    image, is truncated or is a decompression bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (size, size))  # decode at reduced scale: much faster
                rgb = Image.fromarray(to_rgb_array(image)) if image.mode != "RGB" else image
                array = np.asarray(square_resize(rgb, size), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(
            f"{path} is too large to decode safely ({err}). Remove it or shrink it; normlab "
            "refuses images that Pillow flags as decompression bombs."
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(
            f"{path} is not a readable image ({type(err).__name__}: {err}). Remove the file "
            "or replace it with a valid PNG, JPEG, BMP or WEBP image."
        ) from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))  # CHW, writable for torch


def class_folders(split_dir: Path, key: str) -> list[Path]:
    """The class folders of one split, sorted by name; DataError when there are none."""
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"{key}={split_dir} holds no class folders. Lay the images out as "
            f"{split_dir}/<class name>/<image file>, one folder per class."
        )
    return folders


def list_images(split_dir: Path, key: str) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, label)]) for one split, in a fixed order: every image under each
    class folder, at any depth and through symbolic links; the files left out are counted and
    named in one warning."""
    folders = class_folders(split_dir, key)
    files: list[tuple[Path, int]] = []
    left_out = LeftOut()
    # The split folder counts as walked: a link back up to it (train/dog/up -> train/) is a
    # loop, named as such.
    seen = {folder_identity(split_dir)}
    for label, folder in enumerate(folders):
        found = images_under(folder, left_out, seen)
        if not found:
            raise DataError(
                f"The class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, "
                "at any depth). Add images to it or remove the folder."
            )
        files += [(path, label) for path in found]
    if left_out:
        log.warning("Left out %d files or folders under %s: %s", len(left_out), split_dir,
                    left_out.describe())  # fmt: skip
    return [f.name for f in folders], files


def fingerprint(files: Sequence[tuple[Path, int]], root: Path, image_size: int) -> str:
    """Changes when a file is added, removed, renamed, resized or touched."""
    digest = hashlib.sha1(f"{CACHE_VERSION}:{image_size}".encode())
    for path, label in files:
        stat = path.stat()
        digest.update(
            f"{path.relative_to(root)}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()


def decode_all(files: Sequence[tuple[Path, int]], size: int, what: str) -> ImageSplit:
    """Decode every file; one DataError listing all the files that cannot be decoded."""
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    bad: list[DataError] = []
    started = last_report = time.monotonic()
    for i, (path, _) in enumerate(files):
        try:
            images[i] = decode_image(path, size)
        except DataError as err:  # keep going: the user gets the whole list in one go
            bad.append(err)
        if time.monotonic() - last_report > 3:  # a line every few seconds, readable in a log
            last_report = time.monotonic()
            log.info("Decoding %s: %d/%d images (%.0f s)", what, i + 1, len(files),
                     last_report - started)  # fmt: skip
    if bad:
        raise bad_images_error(bad, len(files), what)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)
    return ImageSplit(torch.from_numpy(images), labels)


def bad_images_error(bad: Sequence[DataError], total: int, what: str) -> DataError:
    """One paragraph for every undecodable image of a split: the count, the first few with
    their reasons, and a file that lists them all."""
    if len(bad) == 1:
        return bad[0]
    digest = hashlib.sha1(what.encode()).hexdigest()[:12]
    listing = Path(tempfile.gettempdir()) / f"normlab-bad-images-{digest}.txt"
    where = ""
    try:
        listing.write_text("".join(f"{err}\n" for err in bad))
        where = f" The full list is in {listing}."
    except OSError:
        pass
    shown = " ".join(str(err).split(" Remove")[0] for err in bad[:SHOWN])
    return DataError(
        f"{len(bad)} of the {total} images in {what} cannot be decoded; the first "
        f"{min(len(bad), SHOWN)}: {shown}{where} Remove these files or replace them with valid "
        "PNG, JPEG, BMP or WEBP images; nothing was cached."
    )


class ImageFolderDataModule(InMemoryDataModule):
    """Class-folder images: `root/train/<class>/*` and optionally `root/test/<class>/*`.

    Args:
        root: the dataset folder.
        image_size: every image is resized (shorter side) and centre-cropped to this square.
        val_size, test_size: held out of `train/`; a number below 1 is a fraction. The test
            split is held out only when there is no `test/` folder.
        mean, std: normalization statistics on the [0, 1] scale; null computes them from the
            training split (logged, and recorded in results.json).
        cache_dir: where the decoded tensors are cached (null: no cache).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        val_size: float = 0.1,
        test_size: float = 0.1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cache_dir: str | None = None,
        **kwargs,
    ) -> None:
        # Without both, both are computed from the training images in `load()`. The
        # transforms hold the statistics the run normalizes with (results.json reads them).
        self.stats_given = mean is not None and std is not None
        super().__init__(
            mean=mean if mean is not None else (0.5, 0.5, 0.5),
            std=std if std is not None else (0.5, 0.5, 0.5),
            val_size=val_size,
            **kwargs,
        )
        self.root = Path(root).expanduser().resolve()
        self.image_size = image_size
        self.test_size = test_size
        self.cache_dir = Path(cache_dir).expanduser().resolve() if cache_dir else None
        self.class_names = tuple(self.class_names_in(self.root))

    @staticmethod
    def class_names_in(root: str | Path) -> list[str]:
        """The class names of the folder `root` (its train/ subfolders); DataError naming
        the key when the layout is wrong. Cheap: lists folders, opens no image."""
        root = Path(root).expanduser().resolve()
        train_dir = root / "train"
        if not root.is_dir():
            raise DataError(
                f"data.root={root}: no such folder. Point data.root at a folder that holds "
                "train/<class>/<images> (and optionally test/<class>/<images>)."
            )
        if not train_dir.is_dir():
            raise DataError(
                f"data.root={root} has no train/ folder. Lay the images out as "
                f"{root}/train/<class>/<image file> (and optionally test/<class>/...)."
            )
        return [folder.name for folder in class_folders(train_dir, "data.root/train")]

    def load(self) -> tuple[ImageSplit, ImageSplit]:
        train_dir, test_dir = self.root / "train", self.root / "test"
        classes, train_files = list_images(train_dir, "data.root/train")
        test_files: list[tuple[Path, int]] = []
        if test_dir.is_dir():
            test_classes, test_files = list_images(test_dir, "data.root/test")
            if test_classes != classes:
                only_train = sorted(set(classes) - set(test_classes))
                only_test = sorted(set(test_classes) - set(classes))
                raise DataError(
                    f"data.root={self.root}: test/ and train/ have different class folders "
                    f"(only in train/: {only_train or 'none'}; only in test/: "
                    f"{only_test or 'none'}). Give both splits the same class folders."
                )
        self.class_names = tuple(classes)
        train, test = self._decode_or_cached(train_files, test_files)
        if not test_files:
            train, test = self._hold_out_test(train)
        # A fraction is of the whole train/ folder, as for test_size (0.1 + 0.1: 10% each);
        # the count is checked against what the test split left (setup() does both).
        self.val_fraction_of = len(train_files)
        if not self.stats_given:
            self._use_statistics_of(train)
        return train, test

    def _decode_or_cached(
        self, train_files: list[tuple[Path, int]], test_files: list[tuple[Path, int]]
    ) -> tuple[ImageSplit, ImageSplit]:
        key = fingerprint(train_files + test_files, self.root, self.image_size)
        cache = None
        if self.cache_dir is not None:
            name = hashlib.sha1(f"{self.root}|{self.image_size}".encode()).hexdigest()[:16]
            cache = self.cache_dir / f"image_folder_{name}.pt"
            if cache.is_file():
                try:
                    saved = torch.load(cache, weights_only=True)
                    if saved.get("fingerprint") == key:
                        log.info("Loaded %s from the cache %s: %s", self.root, cache,
                                 self._counts(train_files, test_files))  # fmt: skip
                        return (
                            ImageSplit(saved["train_images"], saved["train_labels"]),
                            ImageSplit(saved["test_images"], saved["test_labels"]),
                        )
                    log.info("The folder %s changed since it was cached: decoding again", self.root)
                except Exception as err:  # an unreadable cache is only a slower start
                    log.warning("Ignoring the unreadable cache %s (%s)", cache, err)
        log.info("Decoding %d images in %s%s: %s", len(train_files) + len(test_files), self.root,
                 " (cached afterwards)" if cache is not None else "",
                 self._counts(train_files, test_files))  # fmt: skip
        train = decode_all(train_files, self.image_size, f"{self.root / 'train'}")
        if test_files:
            test = decode_all(test_files, self.image_size, f"{self.root / 'test'}")
        else:  # the test split is held out of train/ later, after the cache is written
            empty = torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
            test = ImageSplit(empty, torch.empty(0, dtype=torch.long))
        if cache is not None:
            record = {
                "fingerprint": key,
                "train_images": train.images,
                "train_labels": train.labels,
                "test_images": test.images,
                "test_labels": test.labels,
            }
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with atomic_open(cache, "wb") as f:  # a crash leaves the old cache or none
                    torch.save(record, f)
            except OSError as err:  # a read-only or full disk costs the next run a decode
                log.warning("Could not write the cache %s (%s)", cache, err.strerror or err)
        return train, test

    def _counts(
        self, train_files: list[tuple[Path, int]], test_files: list[tuple[Path, int]]
    ) -> str:
        """`train/ cat 6, dog 210; test/ cat 2, dog 2`: the images of each class."""
        splits = [("train/", train_files), ("test/", test_files)]
        return "; ".join(
            f"{name} {per_class_counts(self.class_names, [label for _, label in files])}"
            for name, files in splits
            if files
        )

    def _hold_out_test(self, train: ImageSplit) -> tuple[ImageSplit, ImageSplit]:
        n_test = count_or_fraction(self.test_size, "data.test_size", len(train))
        # Its own fixed seed: the test split never moves, whatever split_seed says.
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(1234))
        return train.take(order[n_test:]), train.take(order[:n_test])

    def _use_statistics_of(self, train: ImageSplit) -> None:
        # Statistics of the training pool, validation included: train/, less the held-out
        # test split when there is no test/ folder (that split never moves). A fixed property
        # of the dataset, the same whatever split_seed or val_size.
        # Summed in chunks: 50k images as float would be 600 MB.
        total = torch.zeros(3, dtype=torch.float64)
        squares = torch.zeros(3, dtype=torch.float64)
        for chunk in train.images.split(4096):
            values = chunk.to(torch.float64).div_(255)
            total += values.sum((0, 2, 3))
            squares += values.square().sum((0, 2, 3))
        count = train.images.numel() // 3
        mean_t = total / count
        std_t = (squares / count - mean_t.square()).clamp_min(0).sqrt()
        mean = tuple(round(v, 4) for v in mean_t.tolist())
        std = tuple(round(v, 4) for v in std_t.tolist())
        log.info("Normalization statistics of %s/train: mean=%s std=%s", self.root, mean, std)
        flat = [channel for channel, value in zip("RGB", std, strict=True) if value <= 0]
        if flat:
            # Normalizing divides by the std: every input of that channel would be NaN or inf.
            given = [value if value > 0 else 1.0 for value in std]
            raise DataError(
                f"data.std=null: channel {', '.join(flat)} of the training images in "
                f"{self.root}/train has one value throughout (standard deviation 0 to 4 "
                "decimals), "
                "and normalizing divides by it. Give the statistics yourself, with a positive "
                f"std for every channel, e.g. data.mean=[{','.join(map(str, mean))}] "
                f"data.std=[{','.join(map(str, given))}]."
            )
        self.train_transform = type(self.train_transform)(
            mean, std, self.train_transform.crop_padding, self.train_transform.hflip
        )
        self.eval_transform = type(self.eval_transform)(mean, std)
