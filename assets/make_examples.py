"""Generate the app's example clip: two coloured shapes gliding over a texture, with exact masks.

    .venv/bin/python assets/make_examples.py

Writes into assets/examples/: shapes.mp4 (2 s, 320x240, 24 fps), shapes_00000.png (its first-frame palette mask:
the prompt) and shapes_gt.zip (every frame's palette mask: the ground truth the app scores J&F against). Small,
deterministic files, so they can live in the repository.
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from vos import masks, synthetic, video  # noqa: E402

HERE = Path(__file__).resolve().parent / "examples"
NAME = "shapes"
FPS = 24.0
FRAMES = 48
SIZE = (240, 320)  # (H, W)


def _png_bytes(label_map: np.ndarray) -> bytes:
    image = Image.frombytes("P", label_map.shape[::-1], np.ascontiguousarray(label_map).tobytes())
    image.putpalette(masks.palette().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main() -> None:
    clip = synthetic.moving_shapes(FRAMES, SIZE, num_objects=2, seed=3, object_scale=0.16, speed=0.015)
    HERE.mkdir(parents=True, exist_ok=True)
    video.write_mp4(clip.frames, HERE / f"{NAME}.mp4", fps=FPS, crf=18)
    masks.write_palette_png(clip.masks[0], HERE / f"{NAME}_00000.png")
    # Fixed timestamps keep the zip byte-identical from one generation to the next.
    with zipfile.ZipFile(HERE / f"{NAME}_gt.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for index, label_map in enumerate(clip.masks):
            info = zipfile.ZipInfo(f"{NAME}/{index:05d}.png", date_time=(2024, 1, 1, 0, 0, 0))
            archive.writestr(info, _png_bytes(label_map))
    for path in sorted(HERE.iterdir()):
        print(f"{path.relative_to(HERE.parent.parent)}  {path.stat().st_size / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
