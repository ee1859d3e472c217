"""Runnable examples: small linear-attention models and a training script."""
