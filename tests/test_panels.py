"""The layout of every MP4 the commands write: named panels side by side, upscaled, a caption per frame."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest

from vplan.utils.files import write_mp4
from vplan.utils.panels import GAP_PX, STRIP_PX, labelled_panels


def squares(frames: int = 3, size: int = 16) -> np.ndarray:
    """Frames of 4x4-px squares of saturated colours (cubes on a table, as small as the tabletop draws them)."""
    rng = np.random.default_rng(0)
    colours = np.array([[200, 30, 30], [30, 160, 40], [40, 60, 210], [180, 180, 170]], np.uint8)
    cells = rng.integers(0, len(colours), (frames, size // 4, size // 4))
    return colours[cells].repeat(4, axis=1).repeat(4, axis=2)


def test_panels_are_upscaled_side_by_side_named_and_captioned():
    real, generated = squares(), squares()[::-1]
    frames = list(labelled_panels([("real", real), ("generated", generated)], ["chunk 0", "chunk 0", "chunk 1"]))
    scale = 256 // 16
    assert len(frames) == 3 and all(f.shape == frames[0].shape for f in frames)
    height, width = frames[0].shape[:2]
    assert height % 2 == 0 and width % 2 == 0  # yuv420p
    assert height == STRIP_PX + 16 * scale + STRIP_PX and width == 2 * 16 * scale + GAP_PX
    body = slice(STRIP_PX, STRIP_PX + 16 * scale)
    for t in range(3):  # the real frame on the left, nearest-neighbour upscaled; the generated one right of the gap
        assert np.array_equal(frames[t][body, : 16 * scale], real[t].repeat(scale, 0).repeat(scale, 1))
        assert np.array_equal(frames[t][body, 16 * scale + GAP_PX :], generated[t].repeat(scale, 0).repeat(scale, 1))
    names = frames[0][:STRIP_PX]
    assert (names < 128).any() and not np.array_equal(names[:, : 16 * scale], names[:, 16 * scale + GAP_PX :])
    captions = [f[-STRIP_PX:] for f in frames]
    assert np.array_equal(captions[0], captions[1]) and not np.array_equal(captions[1], captions[2])
    broken = list(labelled_panels([("real", real[:1])], ["pick up\nthe red cube"]))[0][-STRIP_PX:]
    assert np.array_equal(broken, list(labelled_panels([("real", real[:1])], ["pick up the red cube"]))[0][-STRIP_PX:])


def test_panels_of_other_lengths_or_sizes_and_a_caption_count_off_are_refused():
    with pytest.raises(ValueError, match="one length and frame size"):
        labelled_panels([("a", squares(3)), ("b", squares(2))])
    with pytest.raises(ValueError, match="a caption per frame"):
        labelled_panels([("a", squares(3))], ["x"])


def test_small_coloured_squares_keep_their_colour_through_the_mp4(tmp_path):
    """Written at 16 px, yuv420p's half-resolution colour smeared each square into its neighbours."""
    real = squares(4)
    write_mp4(tmp_path / "v.mp4", labelled_panels([("real", real)]), fps=10)
    scale = 256 // 16
    back = np.stack(imageio.mimread(tmp_path / "v.mp4"))[:, STRIP_PX : STRIP_PX + 16 * scale, : 16 * scale]
    centres = back[:, scale // 2 :: scale, scale // 2 :: scale].astype(int)  # each source pixel's middle
    assert np.abs(centres - real.astype(int)).max() <= 12  # 32 at 16 px (mean 6.7); 4 here (mean 1.1)
