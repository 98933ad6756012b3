"""Embedders, compatible training, checkpoints and metrics for Graceful."""
