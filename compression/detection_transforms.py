"""Image and box transforms for detectors: the letterbox that fits an image into a detector's
square input, its inverse for boxes, and the training augmentations (horizontal flip and scale
jitter) that move the boxes with the pixels.

Boxes are ``(N, 4) float32`` absolute ``x1, y1, x2, y2`` pixels, as in
:class:`compression.detection_data.DetectionSample`. Everything here is numpy and Pillow: the
same letterbox serves training, evaluation and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The grey the letterbox pads with (Darknet and most YOLO ports pad with about half intensity).
PAD_VALUE = 114
# A box cut by the image border is kept only if this share of its area stays inside.
MIN_VISIBLE_FRACTION = 0.25
# ... and if it is at least this many pixels wide and high after the cut.
MIN_BOX_SIDE = 1.0


@dataclass(frozen=True)
class Placement:
    """Where an image went in the square input: ``x_in = x * scale_x + pad_x`` (``y`` alike;
    the two scales differ only by the rounding of the resized size)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    size: int  # the square input's side, pixels

    def boxes_to_input(self, boxes: np.ndarray) -> np.ndarray:
        out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        out[:, [0, 2]] = out[:, [0, 2]] * self.scale_x + self.pad_x
        out[:, [1, 3]] = out[:, [1, 3]] * self.scale_y + self.pad_y
        return out

    def boxes_to_image(self, boxes: np.ndarray, width: int, height: int) -> np.ndarray:
        """Boxes in input pixels back to the original image's pixels, clipped to it."""
        out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale_y
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
        return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    pil = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(pil, dtype=np.uint8)


def place(
    image: np.ndarray, size: int, *, zoom: float = 1.0, offset: tuple[float, float] | None = None
) -> tuple[np.ndarray, Placement]:
    """Scale ``image`` (``(H, W, 3) uint8``) so its longer side is ``size * zoom`` pixels and
    put it on a ``size x size`` grey canvas at ``offset`` (its top-left corner in canvas pixels,
    negative where it is cropped); ``None`` centres it. ``zoom=1`` and ``offset=None`` is the
    plain letterbox."""
    if size < 1:
        raise ValueError(f"input size must be positive, got {size}")
    if zoom <= 0:
        raise ValueError(f"zoom must be positive, got {zoom}")
    h, w = image.shape[:2]
    scale = size * zoom / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = _resize(image, new_w, new_h)
    if offset is None:
        ox, oy = (size - new_w) // 2, (size - new_h) // 2
    else:
        ox, oy = round(offset[0]), round(offset[1])
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    # The part of the resized image that lands on the canvas.
    x0, y0 = max(0, ox), max(0, oy)
    x1, y1 = min(size, ox + new_w), min(size, oy + new_h)
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = resized[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    # Box coordinates follow the rounded size exactly: x' = x * (new_w / w) + ox.
    where = Placement(scale_x=new_w / w, scale_y=new_h / h, pad_x=ox, pad_y=oy, size=size)
    return canvas, where


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, Placement]:
    """``image`` scaled to fit ``size x size`` (aspect kept) and centred on grey."""
    return place(image, size)


def clip_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    width: float,
    height: float,
    *,
    min_visible: float = MIN_VISIBLE_FRACTION,
    min_side: float = MIN_BOX_SIDE,
) -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to ``[0, width] x [0, height]``; drop those left narrower or lower than
    ``min_side`` pixels or with less than ``min_visible`` of their area inside."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not len(boxes):
        return boxes, labels
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    bw, bh = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    inside = bw.clip(0) * bh.clip(0)
    keep = (bw >= min_side) & (bh >= min_side) & (inside >= min_visible * np.maximum(area, 1e-9))
    return out[keep], labels[keep]


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror an image left to right and its boxes with it: ``x1' = W - x2``, ``x2' = W - x1``."""
    w = image.shape[1]
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), out


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    scale_range: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training view of a sample in the detector's ``size x size`` input.

    With ``flip`` the image is mirrored half the time. The zoom is drawn uniformly from
    ``scale_range`` (``(1, 1)``: the plain letterbox size); a zoomed-out image lands at a random
    place on the grey canvas, a zoomed-in one is cropped at a random place. Boxes follow, are
    clipped, and those mostly cut off are dropped (:func:`clip_boxes`).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if flip and rng.random() < 0.5:
        image, boxes = hflip(image, boxes)
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be 0 < low <= high, got {scale_range}")
    zoom = float(rng.uniform(lo, hi)) if hi > lo else float(lo)
    h, w = image.shape[:2]
    scaled_w, scaled_h = w * size * zoom / max(h, w), h * size * zoom / max(h, w)
    if (lo, hi) == (1.0, 1.0):
        offset = None  # no jitter asked: the evaluation letterbox exactly
    else:
        ox = rng.uniform(min(0.0, size - scaled_w), max(0.0, size - scaled_w))
        oy = rng.uniform(min(0.0, size - scaled_h), max(0.0, size - scaled_h))
        offset = (float(ox), float(oy))
    canvas, where = place(image, size, zoom=zoom, offset=offset)
    moved = where.boxes_to_input(boxes)
    kept, kept_labels = clip_boxes(moved, labels, size, size)
    return canvas, kept, kept_labels
