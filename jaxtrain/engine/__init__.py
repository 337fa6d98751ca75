"""Execution: the pure train step, K steps per compiled call, compiling, input to the devices, memory."""
