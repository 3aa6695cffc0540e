"""Pictures for TensorBoard: a grid of images with true and predicted labels, and a confusion
matrix, as uint8 [H, W, 3] arrays, and `add_picture` to write them.

Both are drawn with Pillow in a few milliseconds (a matplotlib figure of the same matrix took
about 120 ms here), so they can be drawn at the end of every validation epoch.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from tensorboard.compat.proto.summary_pb2 import Summary

RIGHT, WRONG, TEXT = (80, 220, 100), (255, 90, 90), (235, 235, 235)
BACKGROUND = (20, 20, 20)
LINE = 13  # pixel height of a label line under each image


def to_uint8_images(
    images: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None
) -> np.ndarray:
    """Undo the data normalization of float [N, C, H, W] images -> uint8 [N, H, W, 3]."""
    images = images.detach().float().cpu()
    if mean is not None and std is not None:
        shape = (1, -1, 1, 1)
        images = images * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)
    else:  # unknown normalization: stretch each image to the full range
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - low) / (high - low).clamp_min(1e-8)
    if images.size(1) == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def prediction_grid(
    images: np.ndarray,
    true_names: Sequence[str],
    predicted_names: Sequence[str],
    columns: int = 8,
    scale: int = 2,
) -> np.ndarray:
    """Tile uint8 [N, H, W, 3] images, each enlarged `scale` times, with two lines under each:
    the true label, and the prediction in green (right) or red (wrong)."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    tile_h, tile_w = h * scale, w * scale
    cell_h, cell_w = tile_h + 2 * LINE + 4, tile_w + 4
    canvas = np.empty((rows * cell_h, columns * cell_w, 3), dtype=np.uint8)
    canvas[:] = BACKGROUND
    tiles = images.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        y, x = (i // columns) * cell_h + 2, (i % columns) * cell_w + 2
        canvas[y : y + tile_h, x : x + tile_w] = tiles[i]
        right = true_names[i] == predicted_names[i]
        for offset, label in (
            (tile_h, text_strip(f"true {true_names[i]}", TEXT, tile_w)),
            (
                tile_h + LINE,
                text_strip(f"pred {predicted_names[i]}", RIGHT if right else WRONG, tile_w),
            ),
        ):
            canvas[y + offset : y + offset + LINE, x : x + tile_w] = label
    return canvas


@functools.lru_cache(maxsize=1024)
def text_strip(text: str, colour: tuple[int, int, int], width: int) -> np.ndarray:
    """A line of text on the grid's background, rendered once per (text, colour, width): the
    same few labels recur every epoch, and FreeType rendering dominated the grid's cost."""
    strip = Image.new("RGB", (width, LINE), BACKGROUND)
    ImageDraw.Draw(strip).text((0, 0), text, fill=colour, font=ImageFont.load_default(size=11))
    return np.asarray(strip)


def confusion_matrix_image(
    counts: np.ndarray, class_names: Sequence[str], title: str = ""
) -> np.ndarray:
    """Rows: true class, columns: predicted class. Cells are coloured by the fraction of the
    true class (so rare classes show as clearly as common ones) and labelled with counts."""
    k = len(class_names)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cell = int(np.clip(360 // max(k, 1), 8, 36))
    labelled = cell >= 18  # below that, names and counts would overlap: colours only
    font = ImageFont.load_default(size=max(9, min(13, cell // 3)))
    names = [str(n) for n in class_names] if labelled else []
    label_w = max((int(font.getlength(n)) for n in names), default=0) + 8
    top, left = 44 + (label_w if labelled else 0), 24 + label_w
    width, height = left + k * cell + 10, top + k * cell + 10
    canvas = Image.new("RGB", (max(width, 320), height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 4), title, fill="black", font=font)
    draw.text((6, 22), "rows: true class, columns: predicted class", fill="dimgrey", font=font)
    for i in range(k):
        for j in range(k):
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=blues(fractions[i, j]))
            if labelled and counts[i, j]:
                text = str(int(counts[i, j]))
                colour = "white" if fractions[i, j] > 0.5 else "black"
                draw.text((x + cell / 2, y + cell / 2), text, fill=colour, font=font, anchor="mm")
    for i, name in enumerate(names):
        centre = i * cell + cell / 2
        draw.text((left - 4, top + centre), name, fill="black", font=font, anchor="rm")
        # Column names written downwards, like the rotated tick labels of a plot.
        label = Image.new("RGB", (label_w, cell), "white")
        ImageDraw.Draw(label).text(
            (label_w - 4, cell / 2), name, fill="black", font=font, anchor="rm"
        )
        canvas.paste(label.rotate(90, expand=True), (left + i * cell, top - label_w))
    draw.rectangle([left - 1, top - 1, left + k * cell, top + k * cell], outline="grey")
    return np.asarray(canvas)


def blues(fraction: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1), like matplotlib's "Blues" colour map."""
    light, dark = np.array([247, 251, 255]), np.array([8, 48, 107])
    return tuple(int(v) for v in np.round(light + (dark - light) * float(fraction)))


def add_picture(writer, tag: str, image: np.ndarray, step: int) -> None:
    """Write a uint8 [H, W, 3] image to a `torch.utils.tensorboard.SummaryWriter` as JPEG.

    `SummaryWriter.add_image` converts to float, resizes with Lanczos even at scale 1 and
    compresses a PNG hard: about 60 ms per picture here. A JPEG of the array as it is takes a
    few milliseconds (quality 90 without chroma subsampling keeps the coloured labels crisp),
    and TensorBoard shows JPEG and PNG alike.
    """
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90, subsampling=0)
    picture = Summary.Image(
        height=image.shape[0],
        width=image.shape[1],
        colorspace=3,
        encoded_image_string=buffer.getvalue(),
    )
    # The call add_image itself ends in.
    writer._get_file_writer().add_summary(
        Summary(value=[Summary.Value(tag=tag, image=picture)]), step
    )
