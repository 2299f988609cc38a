"""Writing outputs safely: atomic files, writers, pictures, progress, pixel sizes."""
