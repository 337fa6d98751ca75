"""Bottom layer: errors, event writers (JSONL, console, TensorBoard), work-directory files, timers, plots.

Imports nothing from jaxtrain above it."""
