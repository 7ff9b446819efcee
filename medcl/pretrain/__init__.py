"""Contrastive pretraining: partition sampling, volume and patch pretraining, fine-tuning."""
