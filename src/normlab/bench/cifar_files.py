"""A synthetic CIFAR-10 written in the real on-disk format, so that both pipelines run their
real loading code offline: the lesson's through torchvision's `CIFAR10` dataset, normlab's
through `data=cifar10`.

`cifar-10-batches-py/` as the archive unpacks it: five training batches and a test batch,
each a pickled dict whose `data` rows hold 3072 uint8 values (1024 red, 1024 green, 1024
blue, row-major), plus `batches.meta`. The images are `normlab.data.synthetic`'s (one mean
colour per class plus noise), so a network can learn them; their md5 sums are not
CIFAR-10's, so checksum verification must be off (`data.verify_checksums=false`).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import ClassVar

from normlab.data.synthetic import make_synthetic

LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
TRAIN_BATCHES = 5


class Py2Pickler(pickle._Pickler):
    """Pickles `bytes` as Python 2's `str` (the BINSTRING opcode), as the real files were
    written by Python 2's cPickle.

    Python 3's protocol 2 would store a numpy array's raw bytes as a latin-1 text to re-encode
    on loading, which made the files ~50% larger and ~5x slower to load than the real ones.
    """

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def write_cifar10(root: Path, train_images: int = 50_000, test_images: int = 10_000) -> Path:
    """Write the files into `root/cifar-10-batches-py/`; returns `root`."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = make_synthetic(train_images, len(LABEL_NAMES), 32, seed=1)
    test = make_synthetic(test_images, len(LABEL_NAMES), 32, seed=2)
    per_batch = -(-train_images // TRAIN_BATCHES)
    parts = {
        f"data_batch_{i + 1}": (train, slice(i * per_batch, (i + 1) * per_batch))
        for i in range(TRAIN_BATCHES)
    }
    parts["test_batch"] = (test, slice(None))
    for name, (split, rows) in parts.items():
        images, labels = split.images[rows], split.labels[rows]
        entry = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": images.reshape(len(images), -1).numpy(),
            "filenames": [f"{name}_{i}.png" for i in range(len(images))],
        }
        with (folder / name).open("wb") as f:
            Py2Pickler(f, protocol=2).dump(entry)
    meta = {"num_cases_per_batch": per_batch, "label_names": LABEL_NAMES, "num_vis": 3072}
    with (folder / "batches.meta").open("wb") as f:
        Py2Pickler(f, protocol=2).dump(meta)
    return Path(root)
