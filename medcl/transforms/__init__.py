"""Volume transforms (MONAI), patch and stain augmentations, views."""
