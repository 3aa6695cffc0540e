"""Finding the images of a class folder: every image at any depth, through symbolic links,
and a count with names of every file left out (never a silent skip).

One list of image types serves training (data=image_folder) and `python -m normlab.predict`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SHOWN = 3  # names shown per reason in a warning


def is_image_name(path: str | Path) -> bool:
    """Whether the file's suffix is one of the image types normlab reads."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


@dataclass
class LeftOut:
    """Files under the class folders that are not used, by reason."""

    reasons: dict[str, list[Path]] = field(default_factory=dict)

    def add(self, reason: str, path: Path) -> None:
        self.reasons.setdefault(reason, []).append(path)

    def __len__(self) -> int:
        return sum(len(paths) for paths in self.reasons.values())

    def describe(self) -> str:
        """`files that are not images: 2 (a.txt, b.gif); broken links or special files: 1
        (c.png)`: each reason with its count and first few paths."""
        parts = []
        for reason, paths in self.reasons.items():
            shown = ", ".join(str(p) for p in paths[:SHOWN])
            more = f", and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
            parts.append(f"{reason}: {len(paths)} ({shown}{more})")
        return "; ".join(parts)


def images_under(folder: Path, left_out: LeftOut, seen: set[tuple[int, int]]) -> list[Path]:
    """Every image file under `folder`, at any depth and through symbolic links, in a fixed
    (sorted) order. `seen` holds the (device, inode) of the folders already walked: a folder
    reached again (a link loop, or two links to one folder) is walked once, and named in
    `left_out` with everything else that is not used."""
    found: list[Path] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            identity = folder_identity(current)
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as err:
            left_out.add(f"unreadable folders ({err.strerror})", current)
            continue
        if identity in seen:
            left_out.add("linked folders already walked (a loop, or a second link)", current)
            continue
        seen.add(identity)
        subfolders = []
        for entry in entries:
            path = current / entry.name
            if entry.name.startswith("."):
                if is_image_name(path):  # a hidden image is most likely a mistake: say so
                    left_out.add("hidden files", path)
                continue
            if _is_dir(entry):
                subfolders.append(path)
            elif not _is_file(entry):
                left_out.add("broken links or special files", path)
            elif is_image_name(path):
                found.append(path)
            else:
                left_out.add("files that are not images", path)
        stack.extend(reversed(subfolders))  # depth first, in name order
    return sorted(found)


def folder_identity(folder: Path) -> tuple[int, int]:
    stat = folder.stat()  # follows links: a linked folder is the folder it points to
    return stat.st_dev, stat.st_ino


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file(follow_symlinks=True)
    except OSError:
        return False


def per_class_counts(names: Sequence[str], labels: Sequence[int]) -> str:
    """`cat 6, dog 210`: how many images each class has."""
    counts = [0] * len(names)
    for label in labels:
        counts[label] += 1
    return ", ".join(f"{name} {count}" for name, count in zip(names, counts, strict=True))
