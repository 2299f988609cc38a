"""The Lightning-free core: load a model, run it on tiles, stitch, post-process."""
