"""Pretrained text encoders and item texts for text-aware recommenders."""
