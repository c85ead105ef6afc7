"""The step loop, evaluation, checkpoints and early stopping."""
