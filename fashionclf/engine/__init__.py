"""The training engine: device and precision, inference, the training loop, torchrun."""
