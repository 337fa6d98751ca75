"""Checkpoints: the Orbax store, restore, fine-tuning from a trained run."""
