"""Videos a person watches: panels side by side, each named above it, a caption under every frame.

One layout for every MP4 the commands write (`vplan run`, the evals, `bench executor`), so that the real frames are
always on the left and every panel says what it is. Frames are upscaled (nearest neighbour) to about
`PANEL_PX` high: a 64-px frame plays at a size the eye can read, and the MP4's half-resolution colour (yuv420p)
then no longer smears a cube's colour into the table around it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

PANEL_PX = 256  # about this high, in whole multiples of a frame's height
GAP_PX = 4  # white columns between panels
STRIP_PX = 24  # height of the names above and of the caption below
FONT_PX = 14


@lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_PX)  # Pillow's own font: nothing to download


def _text_strip(width: int, text: str) -> np.ndarray:
    """A white (STRIP_PX, width, 3) strip with `text` on one line in black, cut with "..." to fit."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, STRIP_PX), "white")
    draw = ImageDraw.Draw(image)
    text, room = " ".join(text.split()), width - 8  # an LLM's subgoal may hold line breaks
    if draw.textlength(text, font=_font()) > room:
        while text and draw.textlength(text + "...", font=_font()) > room:
            text = text[:-1]
        text += "..."
    draw.text((4, (STRIP_PX - FONT_PX) // 2 - 1), text, fill="black", font=_font())
    return np.asarray(image)


def labelled_panels(panels: Sequence[tuple[str, Sequence[np.ndarray]]],
                    captions: Sequence[str] | None = None) -> Iterator[np.ndarray]:
    """Video frames (uint8, even sizes) of the `panels` — (name, frames) pairs, all with as many (H, W, 3) frames
    of one size — side by side, upscaled, each named above; `captions` (one per frame) under them. Checked at
    once, made one by one as they are taken (`write_mp4` streams them): a long episode's upscaled frames are
    never all in memory."""
    videos = [np.asarray(frames) for _, frames in panels]
    length, shape = len(videos[0]), videos[0].shape[1:]
    if any(len(video) != length or video.shape[1:] != shape for video in videos):
        raise ValueError(f"expected panels of one length and frame size, got {[v.shape for v in videos]}")
    if captions is not None and len(captions) != length:
        raise ValueError(f"expected a caption per frame ({length}), got {len(captions)}")
    scale = max(1, PANEL_PX // shape[0])
    width = len(videos) * shape[1] * scale + (len(videos) - 1) * GAP_PX
    pad = width % 2  # yuv420p wants even sizes
    gap = np.full((shape[0] * scale, GAP_PX, 3), 255, np.uint8)
    names = []
    for i, (name, _) in enumerate(panels):
        names.append(_text_strip(shape[1] * scale, name))
        names.append(np.full((STRIP_PX, GAP_PX if i < len(panels) - 1 else pad, 3), 255, np.uint8))
    header = np.concatenate(names, axis=1)
    return _frames(videos, captions, scale, gap, pad, header, width)


def _frames(videos: list[np.ndarray], captions: Sequence[str] | None, scale: int, gap: np.ndarray, pad: int,
            header: np.ndarray, width: int) -> Iterator[np.ndarray]:
    strips: dict[str, np.ndarray] = {}
    for t in range(len(videos[0])):
        row = []
        for i, video in enumerate(videos):
            row.append(video[t].repeat(scale, axis=0).repeat(scale, axis=1))
            row.append(gap if i < len(videos) - 1 else gap[:, :pad])
        parts = [header, np.concatenate(row, axis=1)]
        if captions is not None:
            if captions[t] not in strips:
                strips[captions[t]] = _text_strip(width + pad, captions[t])
            parts.append(strips[captions[t]])
        frame = np.concatenate(parts, axis=0)
        yield frame if frame.shape[0] % 2 == 0 else np.concatenate([frame, np.full_like(frame[-1:], 255)])
