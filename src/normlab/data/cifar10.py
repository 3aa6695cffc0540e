"""CIFAR-10 from torchvision's files, held in memory as uint8 tensors.

The archive is downloaded once into `data.root` (or placed there by hand); torchvision's own
`CIFAR10` class parses the pickled batches. Checksums are verified against torchvision's list
the first time and remembered in a stamp file, so later start-ups skip the 170 MB hash.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import shlex
import socket
from pathlib import Path
from typing import ClassVar

import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_md5

from normlab.data.base import ImageSplit, InMemoryDataModule
from normlab.errors import DataError

FOLDER = CIFAR10.base_folder  # "cifar-10-batches-py"
ARCHIVE = CIFAR10.filename  # "cifar-10-python.tar.gz"
CHECKSUMS = dict(
    CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
)
STAMP = ".normlab-verified.json"
URL = CIFAR10.url
# Where data=cifar10_jpeg looks (conf/data/cifar10_jpeg.yaml): the JPEG class folders.
JPEG_FOLDER = "cifar10-jpeg"

# Per-channel statistics of the CIFAR-10 training set (on the [0, 1] scale).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class _CIFAR10Files(CIFAR10):
    """torchvision's parser with its md5 checks turned off: we verify (or skip) checksums
    ourselves, so that an error can name the file at fault."""

    train_list: ClassVar[list] = [[name, None] for name, _ in CIFAR10.train_list]
    test_list: ClassVar[list] = [[name, None] for name, _ in CIFAR10.test_list]
    meta: ClassVar[dict] = {**CIFAR10.meta, "md5": None}


def _fingerprint(folder: Path) -> dict[str, list[int]]:
    return {
        name: [(folder / name).stat().st_size, (folder / name).stat().st_mtime_ns]
        for name in CHECKSUMS
    }


def verify_checksums(folder: Path) -> None:
    """Raise DataError naming the first file whose md5 differs from torchvision's list."""
    stamp = folder / STAMP
    fingerprint = _fingerprint(folder)
    if stamp.exists():
        try:
            if json.loads(stamp.read_text()) == fingerprint:
                return
        except (OSError, ValueError):
            pass
    for name, expected in CHECKSUMS.items():
        if not check_md5(str(folder / name), expected):
            raise DataError(
                f"CIFAR-10 file {folder / name} is corrupt (its md5 checksum does not match "
                f"torchvision's). Delete the folder {folder} and run again to re-download, or "
                f"place a fresh {ARCHIVE} in {folder.parent}."
            )
    # A read-only dataset folder is fine: we just verify again next time.
    with contextlib.suppress(OSError):
        stamp.write_text(json.dumps(fingerprint))


class CIFAR10DataModule(InMemoryDataModule):
    """CIFAR-10 with the 50k training images split 45k/5k (train/val) and the official 10k
    test set.

    Args:
        root: folder that holds (or will hold) `cifar-10-batches-py/`.
        download: fetch the archive when the files are missing.
        verify_checksums: check each file's md5 against torchvision's list (once; remembered).
    """

    class_names = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        verify_checksums: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser().resolve()
        self.download = download
        self.verify = verify_checksums

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def _missing(self) -> list[str]:
        return [name for name in CHECKSUMS if not (self.folder / name).is_file()]

    def prepare_data(self) -> None:
        """Download and unpack once (Lightning calls this on one process per machine)."""
        if not self._missing():
            return
        archive = self.root / ARCHIVE
        if not self.download and not archive.exists():
            raise DataError(self._not_found_message("data.download=false"))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(
                f"Cannot create the data folder {self.root} ({err.strerror}). Point data.root "
                "at a writable folder, e.g. data.root=/tmp/cifar10."
            ) from None
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(60)  # a stalled connection should fail, not hang forever
        try:
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(URL, str(self.root), filename=ARCHIVE, md5=CIFAR10.tgz_md5)
        except Exception as err:
            reason = getattr(err, "reason", None) or err
            raise DataError(self._not_found_message(f"download failed: {reason}")) from None
        finally:
            socket.setdefaulttimeout(previous_timeout)

    def _not_found_message(self, why: str) -> str:
        jpeg = self.root / JPEG_FOLDER
        if (jpeg / "train").is_dir():  # the JPEG copy is right here: that is the way out
            return (
                f"CIFAR-10 was not found in {self.folder} and could not be fetched ({why}), "
                f"but its JPEG copy is unpacked in {jpeg}: train on it with data=cifar10_jpeg "
                f"(e.g. python train.py data=cifar10_jpeg), or place {ARCHIVE} (from {URL}) in "
                f"{self.root} for the original files."
            )
        return (
            f"CIFAR-10 was not found in {self.folder} and could not be fetched ({why}). "
            f"Four ways out: place {ARCHIVE} (from {URL}) in {self.root} and it will "
            "be unpacked on the next run; point data.root at a folder that already holds "
            f"{FOLDER}/; if you have the JPEG copy ({JPEG_FOLDER}.tar.gz), unpack it with "
            f"tar -xzf {JPEG_FOLDER}.tar.gz -C {shlex.quote(str(self.root))}/ and train with "
            "data=cifar10_jpeg; "
            "or train offline on scikit-learn's digits with data=digits."
        )

    def load(self) -> tuple[ImageSplit, ImageSplit]:
        if self._missing():
            self.prepare_data()
        if missing := self._missing():
            raise DataError(self._not_found_message(f"missing {', '.join(missing)}"))
        if self.verify:
            verify_checksums(self.folder)
        return self._parse(train=True), self._parse(train=False)

    def _parse(self, train: bool) -> ImageSplit:
        try:
            dataset = _CIFAR10Files(str(self.root), train=train, download=False)
        except (
            pickle.UnpicklingError,
            EOFError,
            KeyError,
            ValueError,
            TypeError,
            AttributeError,
        ) as err:
            raise DataError(
                f"CIFAR-10 files in {self.folder} could not be read ({type(err).__name__}: "
                f"{err}); they are corrupt or not CIFAR-10's python version. Delete the folder "
                "and run again to re-download, or set data.verify_checksums=true to find the "
                "damaged file."
            ) from None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(dataset.targets, dtype=torch.long)
        if images.shape[1:] != (3, 32, 32) or len(images) != len(labels):
            raise DataError(
                f"CIFAR-10 files in {self.folder} hold images of shape {tuple(images.shape)} "
                f"and {len(labels)} labels; expected [N, 3, 32, 32] with one label each."
            )
        return ImageSplit(images, labels)
