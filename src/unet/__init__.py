"""U-Net (Ronneberger et al. 2015) for biomedical image segmentation."""

import os

# albumentations (data.augmentation.extra) checks for a newer version over the network when
# it is imported, unless this is set: runs must work offline and start without waiting.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
