"""Pictures for TensorBoard: a grid of images with true and predicted labels, and a confusion
matrix. Both return uint8 [H, W, 3] arrays for `SummaryWriter.add_image(..., dataformats="HWC")`.

matplotlib is imported only when a confusion matrix is drawn, and only its Agg canvas is used:
no pyplot, no global backend switch, no window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

RIGHT, WRONG, TEXT = (80, 220, 100), (255, 90, 90), (235, 235, 235)


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
    scale: int = 3,
) -> np.ndarray:
    """Tile uint8 [N, H, W, 3] images, each enlarged `scale` times, with two lines under each:
    the true label, and the prediction in green (right) or red (wrong)."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    font = ImageFont.load_default(size=13)
    line = 16
    cell_w, cell_h = w * scale + 4, h * scale + 2 * line + 4
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x, y = (i % columns) * cell_w + 2, (i // columns) * cell_h + 2
        tile = Image.fromarray(images[i]).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (x, y))
        right = true_names[i] == predicted_names[i]
        draw.text((x, y + h * scale), f"true {true_names[i]}", fill=TEXT, font=font)
        draw.text(
            (x, y + h * scale + line),
            f"pred {predicted_names[i]}",
            fill=RIGHT if right else WRONG,
            font=font,
        )
    return np.asarray(canvas)


def confusion_matrix_image(
    counts: np.ndarray, class_names: Sequence[str], title: str = ""
) -> np.ndarray:
    """Rows: true class, columns: predicted class. Cells are coloured by the fraction of the
    true class (so rare classes are as visible as common ones) and labelled with counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(class_names)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = counts / np.maximum(totals, 1)
    size = max(4.0, 0.45 * k + 1.5)
    fig = Figure(figsize=(size + 1.0, size), dpi=100)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    shown = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set(
        xticks=range(k),
        yticks=range(k),
        xticklabels=class_names,
        yticklabels=class_names,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    ax.tick_params(axis="x", labelrotation=45 if max(map(len, class_names)) > 2 else 0)
    if k <= 20:  # beyond that the numbers are unreadable; the colours still tell
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    dark = fractions[i, j] > 0.5
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")  # fmt: skip
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
