"""vos-compare: run video object segmentation methods side by side.

The library is usable without the app::

    from vos import masks, methods, video

    clip = video.open_clip("bear.mp4")
    first_mask = masks.read_palette_png("bear_00000.png", size=clip.size)
    method = methods.create("mixture", variant="rgb")  # weight-free; "tvos" with weights="hub" fetches a checkpoint
    for label_map in method.segment(clip, first_mask): ...
"""

__version__ = "0.1.0"
