"""Sample grids people can read: small images upscaled (nearest, so pixels stay pixels) and every image or row
labelled (a class, or a text): DiT's grid at each evaluation and its ``fid_samples.png``, MAE's reconstructions."""
from __future__ import annotations

import numpy as np
import torch

MIN_CELL = 64  # pixels: an 8x8 digit is drawn 8x larger, a 32x32 latent-decoded image 2x; 256 px images stay


def image_grid(images: torch.Tensor, per_row: int, labels: list[int | str] | None = None, pad: int = 2,
               min_cell: int = MIN_CELL) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one HxWx3 uint8 grid of `per_row` images per row (grey replicated to RGB).

    Images smaller than `min_cell` pixels are upscaled by a whole factor (nearest). With `labels` (a class, or a
    text, per image), each image gets its label written above it, or, when every row holds one label (the
    evaluation grid: a row per class; MAE's rows: original / masked / reconstruction), the row gets it once at
    its left ("class 3" for a class).
    """
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = images[:, :3].float()
    scale = -(-min_cell // max(images.shape[-2:]))  # ceil
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    grid = make_grid(images, nrow=per_row, padding=pad, pad_value=1.0)
    out = Image.fromarray(grid.permute(1, 2, 0).clamp(0, 1).mul(255).round().to(torch.uint8).numpy())
    if labels is None:
        return np.asarray(out)
    labels = [v if isinstance(v, str) else int(v) for v in labels]
    h, w = images.shape[-2:]
    rows = [labels[i:i + per_row] for i in range(0, len(labels), per_row)]
    by_row = all(len(set(r)) == 1 for r in rows)
    row_text = [r[0] if isinstance(r[0], str) else f"class {r[0]}" for r in rows]
    text_h = 12  # PIL's default bitmap font is ~11 px high and ~6 px wide
    left, top = (max(56, 8 + 6 * max(map(len, row_text))), 0) if by_row else (0, text_h)
    canvas = Image.new("RGB", (out.width + left, out.height + top * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y0 = r * (h + pad + top)  # the row's top edge on the canvas
        canvas.paste(out.crop((0, r * (h + pad), out.width, (r + 1) * (h + pad) + pad)), (left, y0 + top))
        if by_row:
            draw.text((4, y0 + pad + h // 2 - text_h // 2), row_text[r], fill="black")
        else:
            for c, label in enumerate(row):
                draw.text((left + pad + c * (w + pad), y0 + 1), str(label), fill="black")
    return np.asarray(canvas)
