"""Streamed prediction of images larger than memory into OME-Zarr stores."""
