"""Dataset readers, training samples and LightningDataModules."""
