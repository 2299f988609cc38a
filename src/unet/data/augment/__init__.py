"""Augmentation of training tiles: the paper's deformations and extras."""
