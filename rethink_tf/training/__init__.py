"""Training: strategies, optimisers, checkpoints, callbacks and the custom train_steps."""
