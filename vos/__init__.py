"""vos-compare: run video object segmentation methods side by side.

The library is usable without the app::

    import vos
    clip = vos.video.open_clip("bear.mp4")
    method = vos.methods.create("tvos", weights="hub")
    for label_map in method.segment(clip, first_mask): ...
"""

__version__ = "0.1.0"
