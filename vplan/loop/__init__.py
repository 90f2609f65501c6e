"""Slow learning: the shared training loop and its safetensors checkpoints."""
