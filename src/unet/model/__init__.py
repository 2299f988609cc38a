"""The network of the paper and what is recorded with it: layers, sizes, loss."""
