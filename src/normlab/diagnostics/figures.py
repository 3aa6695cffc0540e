"""The prediction grid for TensorBoard: validation images with their true and predicted
labels, as a uint8 [H, W, 3] array (`SummaryWriter.add_image(..., dataformats="HWC")`).

Drawn with Pillow rather than a matplotlib figure of 32 subplots, which costs far more for a
picture drawn at the end of every validation epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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
