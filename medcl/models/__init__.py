"""Models: encoders (by name), the UNet with contrastive taps, projection heads."""
