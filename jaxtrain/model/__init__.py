"""Models, augmentation, optimizers and host-side evaluation metrics."""
