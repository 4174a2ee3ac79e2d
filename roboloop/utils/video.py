"""mp4 writing (H.264 through imageio-ffmpeg's bundled ffmpeg, playable in browsers)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from roboloop.utils.io import atomic_path


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """Write ``frames`` (each H x W x 3 uint8) to ``path`` atomically; returns the path."""
    if not len(frames):
        raise ValueError("no frames to write")
    path = Path(path)
    # macro_block_size=1 keeps odd frame sizes instead of silently resizing them.
    with atomic_path(path) as tmp, imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                                      macro_block_size=1, ffmpeg_log_level="error") as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    return path
