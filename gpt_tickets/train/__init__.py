"""Training under an Accelerator: the step (one screen) and crash-safe checkpoints inside a phase."""
